"""The command line: help texts, detect/export/fill-mask end to end, and bad input as one clear line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch

from electra.cli import build_parser, run
from electra.commands import COMMANDS
from electra.model.electra import ElectraForPretraining
from electra.checkpoint import write_model_dir
from electra.pretrained import pretraining_state

from conftest import tiny_config


def all_commands(commands=COMMANDS, prefix=()):
    for name, fn in commands.items():
        if isinstance(fn, dict):
            yield from all_commands(fn, prefix + (name,))
        else:
            yield prefix + (name,)


@pytest.mark.parametrize("command", list(all_commands()), ids=" ".join)
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        run(COMMANDS, [*command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "usage: electra " + " ".join(command) in out
    assert len(out.splitlines()) > 4
    summary = build_parser(COMMANDS).format_help()
    assert command[0] in summary


def test_module_entry_point_help():
    out = subprocess.run([sys.executable, "-m", "electra", "--help"], capture_output=True, text=True, check=True)
    assert "pretrain" in out.stdout.lower() and "detect" in out.stdout


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer_dir, special):
    out = tmp_path_factory.mktemp("model")
    cfg = tiny_config(120)
    torch.manual_seed(0)
    model = ElectraForPretraining(cfg, special)
    write_model_dir(out, pretraining_state(model.state_dict()), {"model": cfg.to_dict()}, tokenizer_dir)
    return out


def test_detect_json_and_table(model_dir, capsys):
    assert run(COMMANDS, ["detect", "--model", str(model_dir), "--json", "the quick brown fox"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    tokens = result["tokens"]
    assert " ".join(tokens).replace(" ##", "") == "the quick brown fox"  # no [CLS]/[SEP]
    assert len(result["replaced_prob"]) == len(tokens) and all(0 <= p <= 1 for p in result["replaced_prob"])
    assert run(COMMANDS, ["detect", "--model", str(model_dir), "the cat sat"]) == 0
    assert "cat" in capsys.readouterr().out


def test_export_then_fill_mask_on_export(model_dir, tmp_path, capsys):
    assert run(COMMANDS, ["export", "--model", str(model_dir), "--out", str(tmp_path / "hf")]) == 0
    assert (tmp_path / "hf" / "generator" / "config.json").is_file()
    assert run(COMMANDS, ["fill-mask", "--model", str(tmp_path / "hf"), "the [MASK] sat on the mat"]) == 0
    assert "best fill:" in capsys.readouterr().out
    # a second export into the same place is refused, not silently overwritten
    assert run(COMMANDS, ["export", "--model", str(model_dir), "--out", str(tmp_path / "hf")]) == 2
    assert "already exists" in capsys.readouterr().err


def bad_inputs(tmp_path, model_dir):
    missing = tmp_path / "nope"
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert"}))
    mismatch = tmp_path / "mismatch"
    shutil.copytree(model_dir, mismatch)
    meta = json.loads((mismatch / "electra.json").read_text())
    for net in ("discriminator", "generator"):
        meta["model"][net]["vocab_size"] = 500
    (mismatch / "electra.json").write_text(json.dumps(meta))
    truncated = tmp_path / "truncated"
    shutil.copytree(model_dir, truncated)
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 2])
    return {
        "not found": (missing, "not found"),
        "unreadable config": (broken, "not valid JSON"),
        "not electra": (bert, "not ELECTRA"),
        "tokenizer/vocab mismatch": (mismatch, "the tokenizer has 120 tokens but the model's vocabulary has 500"),
        "truncated weights": (truncated, "cannot be read"),
    }


@pytest.mark.parametrize("case", ["not found", "unreadable config", "not electra", "tokenizer/vocab mismatch",
                                  "truncated weights"])
def test_bad_model_is_one_clear_line(case, tmp_path, model_dir):
    path, message = bad_inputs(tmp_path, model_dir)[case]
    proc = subprocess.run([sys.executable, "-m", "electra", "detect", "--model", str(path), "some text"],
                          capture_output=True, text=True)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert message in lines[0], lines[0]


def test_debug_shows_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "electra", "detect", "--debug", "--model", str(tmp_path / "x"), "t"],
                          capture_output=True, text=True)
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_offline_hub_id_says_pass_a_local_directory(monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert run(COMMANDS, ["detect", "--model", "google/electra-small-discriminator", "hello"]) == 2
    err = capsys.readouterr().err
    assert "pass the local directory" in err or "pass a local directory" in err
