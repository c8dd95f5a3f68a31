"""Runs as users meet them: resuming with the saved settings, signals and exit codes, progress without a
terminal, memory and permission failures, too-large batches, truncated text, the wrong kind of model.
Each case: the exit code, the one line, and what is left on disk."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from electra.cli import run
from electra.commands import COMMANDS

from conftest import sentences
from test_pipeline import pretrain_args, prepared  # noqa: F401 - the module-scoped fixture


def cli(capsys, *argv) -> tuple[int, str, str]:
    code = run(COMMANDS, [str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def wait_for_rows(path, proc, timeout=120):
    deadline = time.time() + timeout
    while not path.exists() or not path.read_text().strip():
        assert time.time() < deadline and proc.poll() is None, "the run ended or hung before its first row"
        time.sleep(0.05)


# --- resume ------------------------------------------------------------------------------------------

def test_resume_keeps_the_saved_settings_and_records_history(prepared, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "run"
    assert cli(capsys, *pretrain_args(prepared, out, "--max-steps", "4", "--save-every", "2", "--lr", "2e-3"))[0] == 0
    # resumed with only a longer --max-steps: save-every 2 and lr 2e-3 still hold (not the defaults)
    code, _, err = cli(capsys, "pretrain", "--data", prepared / "data", "--out", out, "--max-steps", "6", "--resume")
    assert code == 0, err
    assert "resuming with changed settings: max_steps 4 -> 6" in err
    saved = json.loads((out / "run.json").read_text())
    assert saved["train"]["save_every"] == 2 and saved["train"]["lr"] == 2e-3 and saved["train"]["max_steps"] == 6
    assert [h["from_step"] for h in saved["history"]] == [0, 4]
    assert saved["history"][1]["changed"] == {"max_steps": [4, 6]}
    assert sorted(p.name for p in out.glob("step-*")) == ["step-00000002", "step-00000004", "step-00000006"]


@pytest.mark.parametrize("change", [["--batch-size", "4"], ["--seed", "5"]])
def test_resume_refuses_changes_that_break_exact_resume(prepared, tmp_path, capsys, change):  # noqa: F811
    out = tmp_path / "run"
    assert cli(capsys, *pretrain_args(prepared, out, "--max-steps", "2"))[0] == 0
    before = (out / "run.json").read_text()
    code, _, err = cli(capsys, "pretrain", "--data", prepared / "data", "--out", out, "--max-steps", "4", "--resume",
                       *change)
    assert code == 2 and "cannot change" in err and change[0] in err and len(err.strip().splitlines()) == 1, err
    assert (out / "run.json").read_text() == before, "a refused resume must not rewrite run.json"
    assert [p.name for p in out.glob("step-*")] == ["step-00000002"]


def test_batch_larger_than_the_data_is_refused_before_starting(prepared, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "run"
    code, _, err = cli(capsys, "pretrain", "--data", prepared / "data", "--model", prepared / "tiny.yaml",
                       "--out", out, "--batch-size", "100000")
    assert code == 2 and "larger than the" in err and "training examples" in err, err
    assert not out.exists() or not list(out.glob("step-*"))


# --- signals, exit codes, progress without a terminal ------------------------------------------------

@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupted_pretraining_saves_then_exits_128_plus_signal(prepared, tmp_path, sig, code):  # noqa: F811
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "electra", *pretrain_args(prepared, out, "--max-steps", "100000",
                                                           "--save-every", "100000", "--threads", "1")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_rows(out / "metrics.jsonl", proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert f"stopped by {sig.name}" in err and "Traceback" not in err
    assert len(list(out.glob("step-*"))) == 1


def test_progress_lines_without_a_terminal(prepared, tmp_path):  # noqa: F811
    """Under nohup, CI or SLURM stderr is no terminal: plain lines with step, loss, rate and ETA."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "electra", *pretrain_args(prepared, out, "--max-steps", "6", "--log-every", "1",
                                                           "--threads", "1")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "ELECTRA_PROGRESS_SECONDS": "0"})
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("pretrain: step")]
    assert len(lines) == 6 and "6/6 (100.0%)" in lines[-1], proc.stderr
    assert all(k in lines[-1] for k in ("loss", "tokens/s", "steps/s", "ETA")), lines[-1]
    assert "\r" not in proc.stderr  # no progress bar redraws in a log file


def _finetune_files(tmp_path, n):
    rows = ["sentence\tlabel"] + [f"{s}\t{i % 2}" for i, s in enumerate(sentences(n, 3))]
    (tmp_path / "train.tsv").write_text("\n".join(rows) + "\n")
    (tmp_path / "dev.tsv").write_text("\n".join(rows[:41]) + "\n")


def test_interrupted_finetune_says_so_and_marks_a_partial_epoch(prepared, tmp_path):  # noqa: F811
    _finetune_files(tmp_path, 3000)
    out = tmp_path / "ft"
    cmd = [sys.executable, "-m", "electra", "finetune", "--task", "classification", "--model", "tiny",
           "--tokenizer", str(prepared / "tok"), "--train", str(tmp_path / "train.tsv"), "--dev",
           str(tmp_path / "dev.tsv"), "--out", str(out), "--batch-size", "4", "--epochs", "2", "--threads", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_rows(out / "metrics.jsonl", proc)
    proc.send_signal(signal.SIGINT)
    stdout, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted by SIGINT at epoch 0." in err and "partial epoch" in err and "Traceback" not in err
    best = json.loads((out / "electra.json").read_text())["best"]
    assert best["partial"] is True and best["epoch"] < 1
    assert json.loads(stdout.strip().splitlines()[-1])["partial"] is True


def test_finetune_fp16_on_cpu_is_refused_up_front(prepared, tmp_path, capsys):  # noqa: F811
    _finetune_files(tmp_path, 40)
    code, _, err = cli(capsys, "finetune", "--task", "classification", "--model", "tiny", "--tokenizer",
                       prepared / "tok", "--train", tmp_path / "train.tsv", "--dev", tmp_path / "dev.tsv",
                       "--out", tmp_path / "ft", "--precision", "fp16")
    assert code == 2 and "needs a CUDA GPU" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "ft" / "electra.json").exists()


def test_finetune_default_lr_follows_the_model_size(prepared, tmp_path, capsys):  # noqa: F811
    from electra.config import finetune_lr, get_size
    assert [finetune_lr(get_size(s).discriminator) for s in ("tiny", "small", "base", "large")] == \
        [6e-4, 3e-4, 1e-4, 5e-5]
    _finetune_files(tmp_path, 40)
    (tmp_path / "ft.yaml").write_text("epochs: 1\nbatch_size: 8\n")
    code, _, err = cli(capsys, "finetune", "--task", "classification", "--model", "tiny", "--tokenizer",
                       prepared / "tok", "--train", tmp_path / "train.tsv", "--dev", tmp_path / "dev.tsv",
                       "--out", tmp_path / "ft", "--config", tmp_path / "ft.yaml", "--seed", "3")
    assert code == 0, err
    saved = json.loads((tmp_path / "ft" / "electra.json").read_text())["finetune"]
    assert saved["lr"] == 6e-4 and saved["epochs"] == 1 and saved["batch_size"] == 8 and saved["seed"] == 3
    assert "lr 0.0006" in err


# --- memory, permissions ------------------------------------------------------------------------------

def test_out_of_memory_is_one_line_with_advice(prepared, tmp_path, capsys, monkeypatch):  # noqa: F811
    from electra.train import pretrain as pretrain_module

    def fail(self, batch, step, totals):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 98765432100 bytes. Error code 12 (Cannot allocate memory)")

    monkeypatch.setattr(pretrain_module.PretrainObjective, "loss", fail)
    code, _, err = cli(capsys, *pretrain_args(prepared, tmp_path / "run", "--max-steps", "2"))
    assert code == 2 and len(err.strip().splitlines()) == 2, err  # the run's first line, then the error
    assert "out of memory in step 1" in err and "98765432100 bytes" in err and "--grad-accum" in err


def test_permission_denied_is_one_line(capsys, monkeypatch, tmp_path):
    def denied(*, model: str, out: str) -> None:
        raise PermissionError(13, "Permission denied", str(tmp_path / "locked"))

    monkeypatch.setitem(COMMANDS, "export", denied)
    code = run(COMMANDS, ["export", "--model", str(tmp_path), "--out", str(tmp_path / "locked")])
    err = capsys.readouterr().err
    assert code == 2 and f"permission denied: {tmp_path / 'locked'}" in err and "Traceback" not in err


# --- detect and fill-mask: long text, the wrong kind of model ----------------------------------------

@pytest.fixture(scope="module")
def pretrained_run(prepared, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("pre") / "run"
    assert run(COMMANDS, pretrain_args(prepared, out, "--max-steps", "2")) == 0
    return out


def test_detect_says_when_it_cuts_a_long_text(pretrained_run, capsys):
    long_text = " ".join(["the quick brown fox"] * 200)  # far beyond the tiny model's 64 positions
    code, out, err = cli(capsys, "detect", "--model", pretrained_run, "--json", long_text)
    assert code == 0
    kept = len(json.loads(out)["tokens"])
    assert f"the model reads {kept} at a time" in err and "were not read" in err


def test_fill_mask_beyond_the_model_length_gives_the_real_reason(pretrained_run, capsys):
    text = " ".join(["the quick brown fox"] * 200) + " [MASK]"
    code, _, err = cli(capsys, "fill-mask", "--model", pretrained_run, text)
    assert code == 2 and "beyond the model's" in err and "no [MASK]" not in err, err


def test_a_finetuned_model_given_to_detect_names_the_command_that_fits(prepared, tmp_path, capsys):  # noqa: F811
    _finetune_files(tmp_path, 40)
    assert cli(capsys, "finetune", "--task", "classification", "--model", "tiny", "--tokenizer", prepared / "tok",
               "--train", tmp_path / "train.tsv", "--dev", tmp_path / "dev.tsv", "--out", tmp_path / "ft",
               "--epochs", "1", "--batch-size", "8")[0] == 0
    for command in (["detect", "a text"], ["fill-mask", "a [MASK] text"]):
        code, _, err = cli(capsys, command[0], "--model", tmp_path / "ft", command[1])
        assert code == 2 and "fine-tuned for classification" in err and "electra predict" in err, err
