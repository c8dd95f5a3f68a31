"""Raw text -> tokenizer -> shards -> pretraining -> checkpoints/resume -> export, end to end on tiny data."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from electra.cli import run
from electra.commands import COMMANDS
from electra.data.dataset import PretrainingData

from conftest import sentences

TINY_YAML = """\
model: tiny
discriminator: {embedding_size: 16, hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 2,
                intermediate_size: 64, max_position_embeddings: 64}
generator_size: 0.5
train: {log_every: 2, eval_every: 0, warmup_steps: 2}
"""


def write_corpus(directory: Path) -> Path:
    """Three formats: plain text (documents split by blank lines), gzip text, JSON lines."""
    directory.mkdir(parents=True, exist_ok=True)
    docs = ["\n".join(sentences(6, seed=d)) for d in range(60)]
    (directory / "a.txt").write_text("\n\n".join(docs[:30]) + "\n", encoding="utf-8")
    with gzip.open(directory / "b.txt.gz", "wt", encoding="utf-8") as f:
        f.write("\n\n".join(docs[30:50]) + "\n")
    with open(directory / "c.jsonl", "w", encoding="utf-8") as f:
        for d in docs[50:]:
            f.write(json.dumps({"text": d, "id": 1}) + "\n")
    return directory


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    corpus = write_corpus(root / "corpus")
    assert run(COMMANDS, ["tokenizer", "train", "--corpus", str(corpus), "--vocab-size", "150",
                          "--min-frequency", "1", "--out", str(root / "tok")]) == 0
    assert run(COMMANDS, ["prepare", "--corpus", str(corpus), "--tokenizer", str(root / "tok"), "--out",
                          str(root / "data"), "--seq-len", "32", "--workers", "1", "--val-every", "10"]) == 0
    (root / "tiny.yaml").write_text(TINY_YAML)
    return root


def test_tokenizer_loads_in_transformers_and_splits_cjk(prepared, tmp_path):
    transformers = pytest.importorskip("transformers")
    tok = transformers.AutoTokenizer.from_pretrained(prepared / "tok")
    ids = tok("The quick fox")["input_ids"]
    assert tok.convert_ids_to_tokens(ids)[0] == "[CLS]" and tok.convert_ids_to_tokens(ids)[-1] == "[SEP]"
    (tmp_path / "zh.txt").write_text("中文维基百科是一个自由的百科全书。\n他们在北京工作。\n" * 20, encoding="utf-8")
    assert run(COMMANDS, ["tokenizer", "train", "--corpus", str(tmp_path / "zh.txt"), "--vocab-size", "200",
                          "--out", str(tmp_path / "ztok"), "--min-frequency", "1"]) == 0
    zh = transformers.AutoTokenizer.from_pretrained(tmp_path / "ztok")
    assert zh.tokenize("北京工作") == ["北", "京", "工", "作"]


def test_prepare_manifest_and_example_layout(prepared):
    m = json.loads((prepared / "data" / "manifest.json").read_text())
    assert m["corpus"]["documents"] == 60 and m["seq_len"] == 32
    assert m["train"]["examples"] > 0 and m["validation"]["examples"] > 0
    data = PretrainingData(prepared / "data")
    b = data.batch(np.arange(len(data)))
    sp = m["special_ids"]
    assert (b.input_ids[:, 0] == sp["cls"]).all()
    n_sep = (b.input_ids == sp["sep"]).sum(1)
    assert ((n_sep == 1) | (n_sep == 2)).all() and (n_sep == 2).any()
    last = b.attention_mask.sum(1) - 1
    assert (b.input_ids[torch.arange(len(b.input_ids)), last] == sp["sep"]).all()
    # segment B (type 1) starts right after the first [SEP]
    for ids, types in zip(b.input_ids[:20], b.token_type_ids[:20]):
        first_sep = int((ids == sp["sep"]).nonzero()[0])
        assert (types[: first_sep + 1] == 0).all()


def test_prepare_keeps_documents_apart_and_is_worker_independent(tmp_path):
    """Each document uses its own words, so an example mixing two documents would show it."""
    from electra.data.prepare import prepare
    from electra.data.tokenizer import save_tokenizer, train_tokenizer

    docs = [" ".join([f"w{d}x"] * 5) + ".\n" + " ".join([f"w{d}y"] * 7) + "." for d in range(40)]
    (tmp_path / "c.txt").write_text("\n\n".join(docs), encoding="utf-8")
    tok = train_tokenizer(docs, 400, min_frequency=1, show_progress=False)
    save_tokenizer(tok, tmp_path / "tok", lowercase=True)
    outs = []
    for workers in (1, 2):
        prepare([tmp_path / "c.txt"], tmp_path / "tok", tmp_path / f"d{workers}", 16, workers=workers,
                chunk_chars=200, val_every=0, progress=False)
        outs.append(PretrainingData(tmp_path / f"d{workers}").rows(np.arange(40)))
    assert np.array_equal(outs[0], outs[1]), "output depends on --workers"
    for row in outs[0]:
        words = {tok.id_to_token(int(i))[:-1].lstrip("w#") for i in row if int(i) > 4}
        docs_in_row = {w for w in words if w.isdigit()}
        assert len(docs_in_row) <= 1, f"example mixes documents {docs_in_row}"


def test_prepare_skips_undecodable_lines(tmp_path, prepared):
    good = "\n".join(sentences(30)).encode()
    (tmp_path / "mixed.txt").write_bytes(good + b"\nbad \xff\xfe line\n" + good)
    assert run(COMMANDS, ["prepare", "--corpus", str(tmp_path / "mixed.txt"), "--tokenizer", str(prepared / "tok"),
                          "--out", str(tmp_path / "d"), "--seq-len", "32", "--workers", "1"]) == 0
    assert json.loads((tmp_path / "d" / "manifest.json").read_text())["corpus"]["skipped_lines"] == 1


@pytest.mark.parametrize("case", ["missing", "empty", "binary", "no tokenizer", "out not empty"])
def test_prepare_bad_input(case, tmp_path, prepared, capsys):
    corpus, tok, out = tmp_path / "c.txt", prepared / "tok", tmp_path / "out"
    corpus.write_text("\n".join(sentences(10)))
    expected = {"missing": "corpus not found", "empty": "is empty", "binary": "looks binary",
                "no tokenizer": "tokenizer directory not found", "out not empty": "is not empty"}[case]
    if case == "missing":
        corpus = tmp_path / "nope.txt"
    elif case == "empty":
        corpus.write_text("")
    elif case == "binary":
        corpus.write_bytes(bytes(range(256)) * 10)
    elif case == "no tokenizer":
        tok = tmp_path / "notok"
    else:
        out.mkdir()
        (out / "mine.txt").write_text("user file")
    code = run(COMMANDS, ["prepare", "--corpus", str(corpus), "--tokenizer", str(tok), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and expected in err and len(err.strip().splitlines()) == 1, err
    if case == "out not empty":
        assert (out / "mine.txt").read_text() == "user file"


def pretrain_args(prepared, out, *extra):
    return ["pretrain", "--data", str(prepared / "data"), "--model", str(prepared / "tiny.yaml"), "--out", str(out),
            "--batch-size", "8", *extra]


def test_pretrain_writes_metrics_plots_checkpoints_and_exports(prepared, tmp_path, capsys):
    out = tmp_path / "run"
    assert run(COMMANDS, pretrain_args(prepared, out, "--max-steps", "12", "--save-every", "4", "--keep-last", "2",
                                       "--eval-every", "6")) == 0
    assert sorted(p.name for p in out.glob("step-*")) == ["step-00000008", "step-00000012"]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train_rows] == [2, 4, 6, 8, 10, 12]
    for key in ("loss", "gen_loss", "disc_loss", "disc_acc", "gen_acc", "lr", "tokens_per_s"):
        assert all(isinstance(r[key], float) for r in train_rows), key
    assert any("val_disc_loss" in r for r in rows)
    assert (out / "curves.png").stat().st_size > 1000
    saved = json.loads((out / "step-00000012" / "electra.json").read_text())
    assert saved["train"]["batch_size"] == 8 and saved["train"]["log_every"] == 2  # flags and YAML resolved
    assert run(COMMANDS, ["export", "--model", str(out), "--out", str(tmp_path / "hf")]) == 0
    transformers = pytest.importorskip("transformers")
    transformers.ElectraForPreTraining.from_pretrained(tmp_path / "hf" / "discriminator")
    assert run(COMMANDS, ["fill-mask", "--model", str(out), "[MASK] cat sat"]) == 0


def _final_weights(run_dir: Path) -> dict:
    return load_file(str(sorted(run_dir.glob("step-*"))[-1] / "model.safetensors"))


def test_resume_after_kill_9_is_bit_identical(prepared, tmp_path):
    args = ["--max-steps", "150", "--save-every", "10", "--seed", "3"]
    straight = tmp_path / "straight"
    assert run(COMMANDS, pretrain_args(prepared, straight, *args)) == 0

    crashed = tmp_path / "crashed"
    cmd = [sys.executable, "-m", "electra", *pretrain_args(prepared, crashed, *args)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list(crashed.glob("step-0000003*")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (crashed / "step-00000150").exists()
    assert run(COMMANDS, pretrain_args(prepared, crashed, *args, "--resume")) == 0
    a, b = _final_weights(straight), _final_weights(crashed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    steps = [json.loads(line)["step"] for line in (crashed / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and len(steps) == len(set(steps)), "metrics rows duplicated after resume"


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(prepared, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "electra", *pretrain_args(prepared, out, "--max-steps", "100000",
                                                           "--save-every", "100000")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / "metrics.jsonl").exists() or not (out / "metrics.jsonl").read_text().strip():
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err  # 128 + SIGTERM, as shells expect, after saving
    assert "stopped by SIGTERM" in err and "Traceback" not in err
    ckpts = list(out.glob("step-*"))
    assert len(ckpts) == 1 and (ckpts[0] / "optimizer.pt").is_file()


def test_corrupt_newest_checkpoint_falls_back_with_warning(prepared, tmp_path, capsys):
    out = tmp_path / "run"
    assert run(COMMANDS, pretrain_args(prepared, out, "--max-steps", "6", "--save-every", "3")) == 0
    newest = out / "step-00000006" / "model.safetensors"
    newest.write_bytes(newest.read_bytes()[:100])
    assert run(COMMANDS, pretrain_args(prepared, out, "--max-steps", "9", "--save-every", "3", "--resume")) == 0
    err = capsys.readouterr().err
    assert "step-00000006 is incomplete or corrupt" in err and "resuming from" in err and "(step 3)" in err
    assert (out / "step-00000006").exists(), "the user's (corrupt) checkpoint must not be deleted"


@pytest.mark.parametrize("case", ["unknown size", "zero batch", "negative steps", "zero lr", "other run",
                                  "no resume", "tokenizer mismatch", "bad duration", "fp16 on cpu"])
def test_pretrain_bad_input(case, prepared, tmp_path, capsys):
    out = tmp_path / "run"
    args = {"unknown size": ["--model", "gigantic"], "zero batch": ["--batch-size", "0"],
            "negative steps": ["--max-steps", "-3"], "zero lr": ["--lr", "0"], "bad duration": ["--time-budget", "soon"],
            "fp16 on cpu": ["--precision", "fp16"]}.get(case, [])
    expected = {"unknown size": "unknown model size or recipe 'gigantic'", "zero batch": "batch-size must be positive",
                "negative steps": "max-steps must be positive", "zero lr": "lr must be positive and below 1",
                "other run": "another model configuration", "no resume": "already holds a run",
                "tokenizer mismatch": "is not the one", "bad duration": "cannot read the duration",
                "fp16 on cpu": "needs a CUDA GPU"}[case]
    base = pretrain_args(prepared, out, "--max-steps", "2")
    if case in ("other run", "no resume"):
        assert run(COMMANDS, base) == 0
        if case == "other run":
            args = ["--model", "tiny", "--resume"]
    if case == "tokenizer mismatch":
        args = ["--tokenizer", str(prepared / "other_tok")]
        run(COMMANDS, ["tokenizer", "train", "--corpus", str(prepared / "corpus"), "--vocab-size", "140",
                       "--min-frequency", "1", "--out", str(prepared / "other_tok")])
    capsys.readouterr()
    code = run(COMMANDS, base + args)
    err = capsys.readouterr().err
    assert code == 2 and expected in err, err
    assert "Traceback" not in err


def test_non_finite_loss_skips_the_update_then_stops(tmp_path):
    from electra.errors import UserError
    from electra.train.logs import MetricsLog
    from electra.train.loop import LoopSettings, train_loop

    class Batch:
        def to(self, device, non_blocking=False):
            return self

    class NaNAfterTwo:
        def __init__(self):
            self.model = torch.nn.Linear(2, 1)

        def counts(self, batch, step):
            return torch.ones(1)

        def loss(self, batch, step, totals):
            loss = self.model(torch.ones(1, 2)).sum() * (float("nan") if step >= 2 else 1.0)
            return loss, {"loss": loss.detach()}

        def tokens(self, batch):
            return torch.tensor(1.0)

    objective = NaNAfterTwo()
    opt = torch.optim.AdamW(objective.model.parameters(), lr=0.1)
    saved = []
    log = MetricsLog(tmp_path, tensorboard=False)
    with pytest.raises(UserError, match="not finite for 5 steps in a row"):
        train_loop(objective, opt, lambda step: [Batch()], LoopSettings(max_steps=50, peak_lr=0.1, warmup_steps=0),
                   device=torch.device("cpu"), start_step=0, log=log, save=saved.append, progress=False)
    log.close()
    weights_after_step_2 = objective.model.weight.detach().clone()
    events = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if e.get("event") == "non_finite_loss"] == [3, 4, 5, 6, 7]
    assert torch.isfinite(weights_after_step_2).all(), "a non-finite update was applied"


def test_demo_runs_end_to_end(tmp_path, capsys):
    from electra.demo import run_demo

    result = run_demo(tmp_path / "demo", steps=6, batch_size=4, lr=1e-3, progress=False)
    out = capsys.readouterr().out
    assert "ROC AUC" in out
    # 6 steps teach the generator no context: the demo says so instead of printing noise
    assert not result["fill_mask_shown"] and "left out" in out and "->" not in out
    assert 0.0 <= result["auc"] <= 1.0
    assert (tmp_path / "demo" / "export" / "discriminator" / "config.json").is_file()
    assert (tmp_path / "demo" / "run" / "curves.png").is_file()


def test_frequency_matched_replacements_hide_rarity_from_the_discriminator(prepared):
    """A 'discriminator' that only knows how rare each piece is finds uniform replacements (mostly rare
    pieces) but not replacements drawn as often as pieces occur: the second AUC measures the context."""
    from electra.evaluation import replaced_token_auc, token_frequencies

    data = PretrainingData(prepared / "data")
    freq = token_frequencies(data)
    assert freq.shape == (data.manifest["vocab_size"],) and abs(freq.sum() - 1) < 1e-9 and (freq[:5] == 0).all()
    ids = data.batch(np.arange(len(data))).input_ids.numpy().ravel()
    top = int(np.bincount(ids[ids >= 5]).argmax())
    assert freq.argmax() == top

    class Rarity(torch.nn.Module):
        config = type("Config", (), {"vocab_size": len(freq)})

        def forward(self, input_ids, attention_mask, token_type_ids):
            return -torch.log(torch.from_numpy(freq).float().clamp_min(1e-9))[input_ids]

    uniform = replaced_token_auc(Rarity(), data, n_examples=64)["auc"]
    matched = replaced_token_auc(Rarity(), data, n_examples=64, frequencies=freq)["auc"]
    assert uniform > 0.8 and abs(matched - 0.5) < 0.1, (uniform, matched)


def test_fill_mask_candidates_that_change_with_context_are_shown():
    from electra.demo import shows_context

    def cands(words, top=0.3):
        return [{"token": t, "score": top if i == 0 else 0.01} for i, t in enumerate(words)]

    same = [cands(("the", ",", ".", "of", "and"))] * 3
    varied = [cands(w) for w in (("paris", "rome", "the", "london", "berlin"), ("died", "retired", "married", "was",
                                                                                  "left"), ("banks", "edge", "side", "east", "north"))]
    noise = [cands(w, top=0.001) for w in (("tw", "z"), ("decision", "them"), ("jewish", "signific"))]
    assert not shows_context(same) and shows_context(varied) and not shows_context(noise)


def test_chinese_text_end_to_end(tmp_path, capsys):
    """Tokenizer, prepare, pretrain and detect on Chinese (characters become single tokens)."""
    lines = ["北京是中国的首都，也是政治和文化中心。", "上海位于长江入海口，是重要的经济城市。",
             "他们在大学里学习历史和音乐。", "这条河流经城市，最后流入大海。"]
    docs = ["\n".join(lines[i % 4:] + lines[: i % 4]) for i in range(30)]
    (tmp_path / "zh.txt").write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    assert run(COMMANDS, ["tokenizer", "train", "--corpus", str(tmp_path / "zh.txt"), "--vocab-size", "200",
                          "--min-frequency", "1", "--out", str(tmp_path / "tok")]) == 0
    assert run(COMMANDS, ["prepare", "--corpus", str(tmp_path / "zh.txt"), "--tokenizer", str(tmp_path / "tok"),
                          "--out", str(tmp_path / "data"), "--seq-len", "32", "--workers", "1"]) == 0
    (tmp_path / "tiny.yaml").write_text(TINY_YAML)
    assert run(COMMANDS, ["pretrain", "--data", str(tmp_path / "data"), "--model", str(tmp_path / "tiny.yaml"),
                          "--out", str(tmp_path / "run"), "--max-steps", "4", "--batch-size", "4"]) == 0
    capsys.readouterr()
    assert run(COMMANDS, ["detect", "--json", "--model", str(tmp_path / "run"), "北京是中国的首都"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["tokens"] == list("北京是中国的首都")


def test_pruning_keeps_intact_checkpoints_and_ignores_newer_corrupt_ones(tmp_path, tokenizer_dir):
    from electra.checkpoint import save_checkpoint, step_dirs

    run_dir = tmp_path / "run"
    args = dict(model_state={"w": torch.zeros(2)}, meta={"model": {}}, tokenizer_dir=tokenizer_dir,
                optimizer_state={}, trainer_state={})
    save_checkpoint(run_dir, 1000, keep_last=2, **args)
    (run_dir / "step-00002000").mkdir()  # a corrupt, newer one (a crash); resume skips it
    (run_dir / "step-00002000" / "model.safetensors").write_bytes(b"broken")
    ckpt = save_checkpoint(run_dir, 1500, keep_last=1, **args)
    assert ckpt.is_dir(), "the checkpoint just written must survive pruning"
    assert [d.name for d in step_dirs(run_dir)] == ["step-00002000", "step-00001500"]
