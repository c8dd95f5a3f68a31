"""ONNX export of every head: the discriminator (logits and hidden states) and each fine-tuned task model;
ONNX Runtime's outputs equal PyTorch's within 1e-4 on batches of other shapes than the exported one,
and predictions through it equal PyTorch's."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import electra
from electra.cli import run
from electra.commands import COMMANDS

from conftest import perturb
from test_finetune import TINY, classification_rows, conll_text, squad_json, write_tsv
from test_pipeline import pretrain_args, prepared  # noqa: F401 - the module-scoped fixture

pytest.importorskip("onnxruntime")


def _batch(vocab: int, lengths=(11, 4, 7)):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, vocab, (len(lengths), max(lengths)), generator=g)
    mask = torch.zeros_like(ids)
    for r, n in enumerate(lengths):
        mask[r, :n] = 1
    return ids * mask, mask, (torch.arange(ids.shape[1]) > 3).long().expand_as(ids) * mask


@pytest.mark.parametrize("task", ["classification", "regression", "ner", "qa"])
def test_every_task_head_exports_equal_outputs(task, tmp_path, tokenizer_dir):
    rows = classification_rows(40, 1)
    data = {"classification": ("t.tsv", lambda p: write_tsv(p, [(a, lab) for a, _, lab in rows], ["sentence", "label"])),
            "regression": ("t.tsv", lambda p: write_tsv(p, [(a, i % 5) for i, (a, _, _) in enumerate(rows)],
                                                        ["sentence", "score"])),
            "ner": ("t.txt", lambda p: p.write_text(conll_text(40, 2, scheme="bio"))),
            "qa": ("t.json", lambda p: p.write_text(json.dumps(squad_json(12, 3))))}[task]
    data[1](tmp_path / data[0])
    assert run(COMMANDS, ["finetune", "--task", task, "--model", "tiny", "--tokenizer", str(tokenizer_dir), *TINY,
                          "--train", str(tmp_path / data[0]), "--dev", str(tmp_path / data[0]),
                          "--out", str(tmp_path / "ft")]) == 0
    ours = electra.load(tmp_path / "ft")
    perturb(ours.finetuned.model, seed=3)  # weights far from the initialisation, so differences would show
    ours.finetuned.model.eval()
    from electra.onnx_export import export_onnx
    from electra.finetune.train import write_atomic
    write_atomic(tmp_path / "ft", ours.finetuned.model.state_dict(),
                 json.loads((tmp_path / "ft" / "electra.json").read_text()), ours.finetuned.tokenizer)
    export_onnx(str(tmp_path / "ft"), tmp_path / "onnx")
    onnx = electra.load(tmp_path / "onnx")
    batch = _batch(ours.finetuned.model.config.vocab_size)
    with torch.no_grad():
        want = electra.load(tmp_path / "ft").finetuned.model.eval()(*batch)
    got = onnx.finetuned.model(*batch)
    assert want.shape == got.shape
    assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()
    assert json.loads((tmp_path / "onnx" / "electra.json").read_text())["max_abs_difference_vs_torch"] < 1e-4


def test_discriminator_exports_logits_and_hidden_states(prepared, tmp_path):  # noqa: F811
    out = tmp_path / "run"
    assert run(COMMANDS, pretrain_args(prepared, out, "--max-steps", "2")) == 0
    assert run(COMMANDS, ["export", "--format", "onnx", "--model", str(out), "--out", str(tmp_path / "onnx")]) == 0
    ours, onnx = electra.load(out), electra.load(tmp_path / "onnx")
    texts = ["the quick brown fox", "a cat sat on the mat by the river"]
    for a, b in zip(ours.detect(texts), onnx.detect(texts)):
        assert a["tokens"] == b["tokens"]
        np.testing.assert_allclose(a["replaced_prob"], b["replaced_prob"], atol=1e-5)
    np.testing.assert_allclose(ours.embed(texts), onnx.embed(texts), atol=1e-4)
    assert run(COMMANDS, ["export", "--format", "onnx", "--model", str(out), "--out", str(tmp_path / "onnx")]) == 2
