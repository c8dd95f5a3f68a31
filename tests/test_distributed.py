"""torchrun: the same run on 1 process and on 2 (gloo, CPU) gives the same losses and weights;
resuming with another number of processes works; bad multi-process settings are one line."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from test_pipeline import pretrain_args, prepared  # noqa: F401 - the module-scoped fixture

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(nproc: int, args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-addr",
           "127.0.0.1", "--master-port", str(free_port()), "-m", "electra", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def losses(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: (r["loss"], r["gen_loss"], r["disc_loss"]) for r in rows if "loss" in r}


def final_weights(run_dir):
    return load_file(str(sorted(run_dir.glob("step-*"))[-1] / "model.safetensors"))


SAME = ["--max-steps", "8", "--dropout", "0", "--seed", "5", "--save-every", "4", "--log-every", "1"]


def test_two_processes_match_one(prepared, tmp_path):  # noqa: F811
    one, two = tmp_path / "one", tmp_path / "two"
    proc = torchrun(1, pretrain_args(prepared, one, *SAME))
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = torchrun(2, pretrain_args(prepared, two, *SAME))
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = losses(one), losses(two)
    assert sorted(a) == sorted(b) == list(range(1, 9))
    for step in a:
        for x, y in zip(a[step], b[step]):
            assert abs(x - y) <= 1e-4 * max(abs(x), 1e-6), (step, a[step], b[step])
    wa, wb = final_weights(one), final_weights(two)
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-4, atol=1e-6, msg=k)
    # even one process under torchrun trains in a process group, through DDP
    assert json.loads((one / "metrics.jsonl").read_text().splitlines()[-1])["processes"] == 1
    row = json.loads((two / "metrics.jsonl").read_text().splitlines()[-1])
    assert row["processes"] == 2 and row["tokens_per_s_per_process"] > 0 and 0 < row["scaling_efficiency"] < 2
    # resume the 2-process run's step-4 checkpoint with 1 process: it continues to the same end
    import shutil
    shutil.rmtree(two / "step-00000008")
    proc = torchrun(1, pretrain_args(prepared, two, *SAME, "--resume"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    for k, v in final_weights(two).items():
        torch.testing.assert_close(v, wa[k], rtol=1e-4, atol=1e-6, msg=k)


def test_fsdp_two_processes_train_and_resume(prepared, tmp_path):  # noqa: F811
    from electra.cli import run
    from electra.commands import COMMANDS

    one, sharded = tmp_path / "one", tmp_path / "fsdp"
    assert run(COMMANDS, pretrain_args(prepared, one, *SAME)) == 0
    proc = torchrun(2, pretrain_args(prepared, sharded, *SAME, "--strategy", "fsdp", "--grad-accum", "2"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 processes (cpu, fsdp)" in proc.stderr
    a, b = losses(one), losses(sharded)
    for step in a:
        for x, y in zip(a[step], b[step]):
            assert abs(x - y) <= 1e-4 * max(abs(x), 1e-6), (step, a[step], b[step])
    reference = final_weights(one)
    for k, v in final_weights(sharded).items():  # checkpoints hold whole tensors, whatever the sharding
        torch.testing.assert_close(v, reference[k], rtol=1e-4, atol=1e-6, msg=k)
    import shutil
    shutil.rmtree(sharded / "step-00000008")
    proc = torchrun(2, pretrain_args(prepared, sharded, *SAME, "--strategy", "fsdp", "--resume"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming from" in proc.stderr
    for k, v in final_weights(sharded).items():
        torch.testing.assert_close(v, reference[k], rtol=1e-4, atol=1e-6, msg=k)


def test_gradient_accumulation_equals_one_big_batch(prepared, tmp_path):  # noqa: F811
    from electra.cli import run
    from electra.commands import COMMANDS

    assert run(COMMANDS, pretrain_args(prepared, tmp_path / "a", *SAME)) == 0
    assert run(COMMANDS, pretrain_args(prepared, tmp_path / "b", *SAME, "--grad-accum", "4")) == 0
    a, b = losses(tmp_path / "a"), losses(tmp_path / "b")
    for step in a:
        for x, y in zip(a[step], b[step]):
            assert abs(x - y) <= 1e-4 * max(abs(x), 1e-6), (step, a[step], b[step])


def test_batch_not_divisible_by_processes_is_one_line_from_rank_0(prepared, tmp_path):  # noqa: F811
    proc = torchrun(2, pretrain_args(prepared, tmp_path / "r", "--max-steps", "2", "--grad-accum", "3",
                                     "--batch-size", "9"))
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("electra: error")]
    assert len(errors) == 1 and "not divisible by 2 processes x --grad-accum 3" in errors[0], proc.stderr[-2000:]
    # torchrun itself reports failed children with its own traceback; none comes from our processes
    assert "electra/" not in "".join(line for line in proc.stderr.splitlines() if line.lstrip().startswith("File "))


def test_missing_rendezvous_is_one_line(prepared, tmp_path, monkeypatch):  # noqa: F811
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT")}
    env.update(WORLD_SIZE="2", RANK="0", LOCAL_RANK="0")
    proc = subprocess.run([sys.executable, "-m", "electra", *pretrain_args(prepared, tmp_path / "r", "--max-steps", "2")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "MASTER_ADDR and MASTER_PORT not set" in proc.stderr


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_finetune_under_torchrun(strategy, tmp_path, tokenizer_dir):
    from test_finetune import classification_rows, write_tsv

    header = ["sentence1", "sentence2", "label"]
    train = write_tsv(tmp_path / "train.tsv", classification_rows(64, 1), header)
    proc = torchrun(2, ["finetune", "--task", "classification", "--model", "tiny", "--tokenizer", str(tokenizer_dir),
                        "--train", str(train), "--dev", str(train), "--out", str(tmp_path / "m"), "--epochs", "1",
                        "--batch-size", "8", "--strategy", strategy])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"2 processes (cpu, {strategy})" in proc.stderr
    from electra.finetune.load import load_finetuned
    load_finetuned(tmp_path / "m")  # whole tensors were saved, whatever the sharding
    assert len([line for line in proc.stdout.splitlines() if line.startswith("{")]) == 1  # rank 0 reports
    assert (tmp_path / "m" / "model.safetensors").is_file() and (tmp_path / "m" / "metrics.jsonl").is_file()


def test_sigterm_on_one_rank_stops_all_with_an_intact_checkpoint(prepared, tmp_path):  # noqa: F811
    import signal
    import time

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(free_port()), "-m", "electra",
           *pretrain_args(prepared, out, "--max-steps", "100000", "--save-every", "100000", "--log-every", "1")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "metrics.jsonl").is_file():
        time.sleep(0.2)
    time.sleep(1.0)
    children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert len(children) == 2, children
    os.kill(int(children[-1]), signal.SIGTERM)  # one worker only
    _, err = proc.communicate(timeout=120)
    # the signalled worker exits 143 after the checkpoint, so torchrun reports the job as not completed
    assert proc.returncode != 0 and "stopped by signal on another process" in err, err[-3000:]
    ckpts = sorted(out.glob("step-*"))
    assert len(ckpts) == 1 and (ckpts[0] / "optimizer.pt").is_file()
    from electra.checkpoint import resumable
    assert resumable(ckpts[0])


def test_adversarial_finetuning_on_two_processes_matches_one(tmp_path, tokenizer_dir):
    """Per-example perturbations make PGD the same computation whatever the processes."""
    from test_finetune import classification_rows, write_tsv

    train = write_tsv(tmp_path / "train.tsv", classification_rows(32, 1), ["sentence1", "sentence2", "label"])
    args = ["finetune", "--task", "classification", "--model", "tiny", "--tokenizer", str(tokenizer_dir), "--train",
            str(train), "--dev", str(train), "--epochs", "1", "--batch-size", "8", "--dropout", "0",
            "--adversarial", "pgd", "--adv-steps", "2", "--no-length-buckets"]
    for n in (1, 2):
        proc = torchrun(n, [*args, "--out", str(tmp_path / f"p{n}")])
        assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [[json.loads(line) for line in (tmp_path / f"p{n}" / "metrics.jsonl").read_text().splitlines()]
            for n in (1, 2)]
    a, b = ([(r["step"], r["loss"], r["adv_loss"]) for r in rs if "adv_loss" in r] for rs in rows)
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        assert x[0] == y[0] and abs(x[1] - y[1]) <= 1e-4 * abs(x[1]) and abs(x[2] - y[2]) <= 1e-4 * abs(x[2]), (x, y)
    wa, wb = (load_file(str(tmp_path / f"p{n}" / "model.safetensors")) for n in (1, 2))
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-4, atol=1e-5, msg=k)


@pytest.mark.parametrize("objective", ["embedding_sharing: gdes", "whole_word_mask: true", "kind: mlm"])
def test_new_objectives_on_two_processes_match_one(objective, prepared, tmp_path):  # noqa: F811
    """GDES (its residual reads the generator's embeddings), whole-word masking (its counts depend on the
    draw) and MLM give one process's losses on two processes that shard the model (FSDP; DDP is the easier case)."""
    spec = tmp_path / "o.yaml"
    text = (prepared / "tiny.yaml").read_text()
    if "mlm" in objective:
        text = text.replace("generator_size: 0.5\n", "")
    spec.write_text(text + f"objective: {{{objective}}}\n")
    runs = {}
    for name, n, extra in (("one", 1, []), ("fsdp", 2, ["--strategy", "fsdp"])):
        args = ["pretrain", "--data", str(prepared / "data"), "--model", str(spec), "--out", str(tmp_path / name),
                "--batch-size", "8", *SAME, *extra]
        proc = torchrun(n, args)
        assert proc.returncode == 0, proc.stderr[-3000:]
        rows = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        runs[name] = {r["step"]: r["loss"] for r in rows if "loss" in r}
    assert runs["fsdp"].keys() == runs["one"].keys()
    for step, x in runs["one"].items():
        assert abs(runs["fsdp"][step] - x) <= 1e-4 * abs(x), (step, runs["fsdp"][step], x)
