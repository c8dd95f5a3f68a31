"""The Python API: electra.load -> predict / detect / fill_mask / embed, equal to what the CLI writes."""

from __future__ import annotations

import json

import numpy as np
import pytest

import electra
from electra.cli import run
from electra.commands import COMMANDS
from electra.errors import UserError

from test_finetune import TINY, classification_rows, conll_text, squad_json, write_tsv
from test_pipeline import pretrain_args, prepared  # noqa: F401 - the module-scoped fixture


@pytest.fixture(scope="module")
def models(tmp_path_factory, tokenizer_dir):
    root = tmp_path_factory.mktemp("api")
    rows = classification_rows(60, 1)
    write_tsv(root / "pairs.tsv", rows, ["sentence1", "sentence2", "label"])
    write_tsv(root / "single.tsv", [(a, label) for a, _, label in rows], ["sentence", "label"])
    (root / "ner.txt").write_text(conll_text(60, 2, scheme="bio"))
    (root / "qa.json").write_text(json.dumps(squad_json(20, 3)))
    base = ["--model", "tiny", "--tokenizer", str(tokenizer_dir), *TINY]
    for name, task, data in (("pair", "classification", "pairs.tsv"), ("single", "classification", "single.tsv"),
                             ("ner", "ner", "ner.txt"), ("qa", "qa", "qa.json")):
        assert run(COMMANDS, ["finetune", "--task", task, *base, "--train", str(root / data), "--dev",
                              str(root / data), "--out", str(root / name)]) == 0
    return root


def _cli_rows(tmp_path, model, input_path) -> list[dict]:
    out = tmp_path / "pred.jsonl"
    assert run(COMMANDS, ["predict", "--model", str(model), "--input", str(input_path), "--output", str(out)]) == 0
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_predict_equals_the_cli(models, tmp_path):
    clf = electra.load(models / "pair")
    assert isinstance(clf, electra.FinetunedModel) and clf.task == "classification" and clf.text_count == 2
    rows = classification_rows(60, 1)[:12]
    write_tsv(tmp_path / "in.tsv", rows, ["sentence1", "sentence2", "label"])
    assert clf.predict([(a, b) for a, b, _ in rows]) == _cli_rows(tmp_path, models / "pair", tmp_path / "in.tsv")
    top = clf.predict([(rows[0][0], rows[0][1])], top_k=1)[0]
    assert list(top["scores"]) == [top["prediction"]]
    with pytest.raises(UserError, match="reads pairs of texts"):
        clf.predict(["a single text"])


def test_ner_and_qa_predict(models, tmp_path):
    ner = electra.load(models / "ner")
    words = "the quick fox sat on the mat".split()
    (tmp_path / "plain.txt").write_text(" ".join(words) + "\n")
    assert ner.predict([" ".join(words)]) == ner.predict([words]) == _cli_rows(tmp_path, models / "ner",
                                                                              tmp_path / "plain.txt")
    assert len(ner.predict([words])[0]["prediction"]) == len(words)
    qa = electra.load(models / "qa")
    example = squad_json(1, 9)["data"][0]["paragraphs"][0]
    [row] = qa.predict([{"question": example["qas"][0]["question"], "context": example["context"]}])
    assert example["context"][row["start"]:row["end"]] == row["prediction"] and 0 <= row["score"] <= 1


def test_pretrained_detect_fill_mask_embed(prepared, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "run"
    assert run(COMMANDS, pretrain_args(prepared, out, "--max-steps", "2")) == 0
    disc = electra.load(out)
    assert isinstance(disc, electra.PretrainedModel)
    texts = ["the quick brown fox", "a cat sat on the mat by the river bank"]
    many = disc.detect(texts)
    one = disc.detect(texts[1])
    assert one["tokens"] == many[1]["tokens"]
    np.testing.assert_allclose(one["replaced_prob"], many[1]["replaced_prob"], atol=1e-5)  # batched with padding
    capsys.readouterr()
    assert run(COMMANDS, ["detect", "--model", str(out), "--json", texts[1]]) == 0
    cli = json.loads(capsys.readouterr().out)
    np.testing.assert_allclose(cli["replaced_prob"], one["replaced_prob"], atol=1e-6)
    filled = disc.fill_mask(["the [MASK] fox", "a [MASK] sat on the [MASK]"], top_k=3)
    assert [len(f["masks"]) for f in filled] == [1, 2] and len(filled[1]["masks"][1]["candidates"]) == 3
    vectors = disc.embed(texts)
    assert vectors.shape == (2, 32) and vectors.dtype == np.float32
    np.testing.assert_allclose(disc.embed(texts[0]), vectors[0], atol=1e-5)
    with pytest.raises(UserError, match="no \\[MASK\\]"):
        disc.fill_mask("no mask here")
    with pytest.raises(UserError, match="non-empty list"):
        disc.detect([])
