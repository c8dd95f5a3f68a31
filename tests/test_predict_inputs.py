"""`predict` (and the NER reader behind `finetune`/`evaluate`) on inputs that used to be read wrongly
or lose work without a word (issue #17): BILOU and bare NER tags, plain text and classification
tables given to a NER model, the probabilities and offsets written next to each prediction, and
outputs that would replace the input or cannot be written. Bad input is one line, exit 2, and
nothing on disk changes."""

from __future__ import annotations

import json
import os
import random

import numpy as np
import pytest

from electra.cli import run
from electra.commands import COMMANDS

from conftest import WORDS, sentences
from test_finetune import TINY, classification_rows, cli, last_json, squad_json, write_tsv


def bilou_text(n: int, seed: int) -> str:
    """CoNLL columns tagged in BILOU: animals are U- (unit) entities, two-word places B- then L-."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(3, 9))]
        tags = ["U-ANIMAL" if w in ("fox", "dog", "cat") else "O" for w in words]
        if len(words) > 4 and rng.random() < 0.5:
            tags[1:3] = ["B-PLACE", "L-PLACE"]
        out += [f"{w} NN {t}" for w, t in zip(words, tags)] + [""]
    return "\n".join(out)


def rows_of(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def one_line_error(code: int, err: str, *parts: str) -> None:
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("electra: error: "), err
    for part in parts:
        assert part in lines[0], err


def finetune(tmp, tokenizer_dir, task, train, dev, *extra) -> object:
    out = tmp / "model"
    code = run(COMMANDS, [str(a) for a in ["finetune", "--task", task, "--model", "tiny", "--tokenizer", tokenizer_dir,
                                           "--train", train, "--dev", dev, "--out", out, *TINY, *extra]])
    assert code == 0
    return out


@pytest.fixture(scope="module")
def ner_model(tmp_path_factory, tokenizer_dir):
    """Fine-tuned on BILOU-tagged data (case 1), and the NER model of the prediction tests."""
    tmp = tmp_path_factory.mktemp("ner")
    (tmp / "train.txt").write_text(bilou_text(80, 1))
    (tmp / "dev.txt").write_text(bilou_text(30, 2))
    return finetune(tmp, tokenizer_dir, "ner", tmp / "train.txt", tmp / "dev.txt", "--epochs", 3, "--lr", 3e-3)


@pytest.fixture(scope="module")
def classification_model(tmp_path_factory, tokenizer_dir):
    tmp = tmp_path_factory.mktemp("cls")
    header = ["sentence1", "sentence2", "label"]
    train = write_tsv(tmp / "train.tsv", classification_rows(64, 1), header)
    dev = write_tsv(tmp / "dev.tsv", classification_rows(24, 2), header)
    return finetune(tmp, tokenizer_dir, "classification", train, dev)


# --- 1. tag schemes ---------------------------------------------------------------------------------

def test_bilou_tags_are_read_as_bioes(ner_model, tmp_path, capsys):
    from electra.finetune.conll import to_bio

    assert to_bio(["U-PER", "B-LOC", "I-LOC", "L-LOC", "U-LOC", "O", "B-ORG", "L-ORG"]) == \
        ["B-PER", "B-LOC", "I-LOC", "I-LOC", "B-LOC", "O", "B-ORG", "I-ORG"]
    meta = json.loads((ner_model / "electra.json").read_text())
    assert meta["labels"] == ["B-ANIMAL", "B-PLACE", "I-PLACE", "O"]  # no 'L-PLACE', 'U-ANIMAL' types
    dev = tmp_path / "dev.txt"
    dev.write_text(bilou_text(20, 3))
    code, stdout, err = cli(capsys, "evaluate", "--model", ner_model, "--data", dev)
    assert code == 0, err
    assert last_json(stdout)["f1"] > 0.3


def test_bare_tags_are_refused_not_guessed(tmp_path, tokenizer_dir, capsys):
    bare = tmp_path / "bare.txt"
    bare.write_text("John NNP B-PER\nlives VBZ O\n\nAnn NNP PER\nsings VBZ O\n")
    code, _, err = cli(capsys, "finetune", "--task", "ner", "--model", "tiny", "--tokenizer", tokenizer_dir,
                       "--train", bare, "--dev", bare, "--out", tmp_path / "m", *TINY)
    one_line_error(code, err, f"{bare} line 4: the tag 'PER' has no scheme prefix",
                   "schemes supported: IOB1, BIO, BIOES, BILOU, BMES")
    assert not (tmp_path / "m" / "electra.json").exists()


# --- 2. plain text ----------------------------------------------------------------------------------

def test_plain_text_is_one_sentence_per_line(ner_model, tmp_path, capsys):
    lines = ["the quick brown fox jumps over the lazy dog .", "a cat sat on the mat", "", "music plays"]
    text = tmp_path / "input.txt"
    text.write_text("\n".join(lines) + "\n")
    code, _, err = cli(capsys, "predict", "--model", ner_model, "--input", text, "--output", tmp_path / "p.jsonl")
    assert code == 0, err
    rows = rows_of(tmp_path / "p.jsonl")
    assert [len(r["prediction"]) for r in rows] == [10, 6, 2]  # a row per non-blank line, a tag per word
    text.write_text("a cat sat on the mat\n")  # one line: no blank line between sentences, no tag column
    assert cli(capsys, "predict", "--model", ner_model, "--input", text, "--output", tmp_path / "p.jsonl")[0] == 0
    assert [len(r["prediction"]) for r in rows_of(tmp_path / "p.jsonl")] == [6]
    # CoNLL columns, one word per line and a blank line between sentences, are still read as such
    conll = tmp_path / "input.conll"
    conll.write_text("the\ncat\nsat\n\na\ndog\n")
    code, _, err = cli(capsys, "predict", "--model", ner_model, "--input", conll, "--output", tmp_path / "c.jsonl")
    assert code == 0, err
    assert [len(r["prediction"]) for r in rows_of(tmp_path / "c.jsonl")] == [3, 2]
    # and so are tagged dev files: the tags are ignored
    dev = tmp_path / "dev.txt"
    dev.write_text(bilou_text(5, 4))
    assert cli(capsys, "predict", "--model", ner_model, "--input", dev, "--output", tmp_path / "d.jsonl")[0] == 0
    assert len(rows_of(tmp_path / "d.jsonl")) == 5


# --- 3. a classification table given to a NER model -------------------------------------------------

def test_classification_table_given_to_ner_model_is_named(ner_model, tmp_path, capsys):
    table = write_tsv(tmp_path / "dev.tsv", [(s, i % 2) for i, s in enumerate(sentences(6, 1))], ["sentence", "label"])
    out = tmp_path / "p.jsonl"
    for argv in (["predict", "--input", table, "--output", out], ["evaluate", "--data", table]):
        code, _, err = cli(capsys, *argv, "--model", ner_model)
        one_line_error(code, err, f"{table} looks like a classification table (tab-separated columns with a header: "
                                  "'sentence', 'label'), not CoNLL tagged text")
    assert not out.exists()


# --- 4. probabilities next to each prediction --------------------------------------------------------

def test_classification_scores_and_top_k(classification_model, tmp_path, capsys):
    from electra.finetune.load import load_finetuned
    from electra.finetune.predict import predict_examples

    header = ["sentence1", "sentence2", "label"]
    data = write_tsv(tmp_path / "in.tsv", classification_rows(12, 5), header)
    assert cli(capsys, "predict", "--model", classification_model, "--input", data,
               "--output", tmp_path / "all.jsonl")[0] == 0
    rows = rows_of(tmp_path / "all.jsonl")
    ft = load_finetuned(classification_model)
    import torch
    expected, _ = predict_examples(ft, ft.task.read(data, {}, False, False), torch.device("cpu"))
    assert [r["prediction"] for r in rows] == expected  # the argmax, as before
    for r in rows:
        probs = list(r["scores"].values())
        assert sorted(r["scores"]) == ["bad", "good", "meh"] and sum(probs) == pytest.approx(1, abs=1e-4)
        assert probs == sorted(probs, reverse=True) and next(iter(r["scores"])) == r["prediction"]
        assert r["score"] == r["scores"][r["prediction"]]
    code, _, err = cli(capsys, "predict", "--model", classification_model, "--input", data,
                       "--output", tmp_path / "top.jsonl", "--top-k", 2)
    assert code == 0, err
    top = rows_of(tmp_path / "top.jsonl")
    assert [r["prediction"] for r in top] == expected
    assert all(list(t["scores"].items()) == list(r["scores"].items())[:2] for t, r in zip(top, rows))


def test_top_k_on_a_model_without_labels_is_refused(ner_model, tmp_path, capsys):
    text = tmp_path / "in.txt"
    text.write_text("a cat\nthe dog sat\n")
    code, _, err = cli(capsys, "predict", "--model", ner_model, "--input", text, "--output", tmp_path / "p.jsonl",
                       "--top-k", 2)
    one_line_error(code, err, "--top-k keeps the most likely labels of a classification model", "does ner")
    assert not (tmp_path / "p.jsonl").exists()


def test_ner_word_scores_and_entities(ner_model, tmp_path, capsys):
    from electra.finetune.conll import read_tagged

    dev = tmp_path / "dev.txt"
    dev.write_text(bilou_text(20, 6))
    code, _, err = cli(capsys, "predict", "--model", ner_model, "--input", dev, "--output", tmp_path / "p.jsonl")
    assert code == 0, err
    rows = rows_of(tmp_path / "p.jsonl")
    words = [s.words for s in read_tagged(dev, need_tags=False)]
    assert sum(len(r["entities"]) for r in rows) > 0  # it learned the animals
    for r, ws in zip(rows, words):
        assert len(r["scores"]) == len(ws) and all(0 < s <= 1 for s in r["scores"])
        tags = ["O"] * len(ws)
        for e in r["entities"]:
            a, b = e["start_word"], e["end_word"]
            assert e["text"] == " ".join(ws[a:b])
            assert e["score"] == pytest.approx(np.mean(r["scores"][a:b]), abs=1e-5)
            tags[a:b] = [f"B-{e['type']}"] + [f"I-{e['type']}"] * (b - a - 1)
        assert tags == r["prediction"]  # the entities are exactly the predicted tags' spans


def test_qa_score_and_character_offsets(tmp_path, tokenizer_dir, capsys):
    train = tmp_path / "train.json"
    train.write_text(json.dumps(squad_json(16, 1)))
    dev_doc = squad_json(8, 2)
    dev = tmp_path / "dev.json"
    dev.write_text(json.dumps(dev_doc))
    model = finetune(tmp_path, tokenizer_dir, "qa", train, dev, "--max-seq-len", 64)
    code, _, err = cli(capsys, "predict", "--model", model, "--input", dev, "--output", tmp_path / "p.jsonl",
                       "--n-best", 2)
    assert code == 0, err
    contexts = {q["id"]: p["context"] for p in dev_doc["data"][0]["paragraphs"] for q in p["qas"]}
    for r in rows_of(tmp_path / "p.jsonl"):
        assert contexts[r["id"]][r["start"]:r["end"]] == r["prediction"]
        assert 0 < r["score"] <= 1 and r["prediction"] == r["n_best"][0]["text"]


def test_regression_rows_stay_a_number(tmp_path, tokenizer_dir, capsys):
    rows = [(a, round(i / 7, 2)) for i, a in enumerate(sentences(24, 3))]
    data = write_tsv(tmp_path / "d.tsv", rows, ["sentence", "score"])
    model = finetune(tmp_path, tokenizer_dir, "regression", data, data)
    assert cli(capsys, "predict", "--model", model, "--input", data, "--output", tmp_path / "p.jsonl")[0] == 0
    out = rows_of(tmp_path / "p.jsonl")
    assert len(out) == 24 and all(list(r) == ["prediction"] and isinstance(r["prediction"], float) for r in out)


# --- 5. outputs that would lose work -----------------------------------------------------------------

def _ok_input(tmp_path):
    return write_tsv(tmp_path / "in.tsv", classification_rows(6, 3), ["sentence1", "sentence2", "label"])


@pytest.mark.parametrize("how", ["same path", "symlink", "hard link"])
def test_output_that_is_the_input_is_refused(how, classification_model, tmp_path, capsys):
    data = _ok_input(tmp_path)
    before = data.read_bytes()
    output = {"same path": tmp_path / "sub" / ".." / "in.tsv", "symlink": tmp_path / "link.tsv",
              "hard link": tmp_path / "hard.tsv"}[how]
    (tmp_path / "sub").mkdir()
    if how == "symlink":
        output.symlink_to(data)
    elif how == "hard link":
        os.link(data, output)
    code, _, err = cli(capsys, "predict", "--model", classification_model, "--input", data, "--output", output)
    one_line_error(code, err, f"--output {output} is the --input file: the predictions would replace the input")
    assert data.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["in.tsv", "sub"] + (
        [output.name] if how != "same path" else []))  # no temporary file left


def test_output_that_is_a_directory_is_refused(classification_model, tmp_path, capsys):
    data = _ok_input(tmp_path)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code, _, err = cli(capsys, "predict", "--model", classification_model, "--input", data, "--output", out_dir)
    one_line_error(code, err, f"--output {out_dir} is a directory; give a file name")
    assert list(out_dir.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["in.tsv", "out"]


def test_output_in_a_missing_directory_is_refused(classification_model, tmp_path, capsys):
    data = _ok_input(tmp_path)
    output = tmp_path / "nope" / "p.jsonl"
    code, _, err = cli(capsys, "predict", "--model", classification_model, "--input", data, "--output", output)
    one_line_error(code, err, f"the directory {tmp_path / 'nope'} does not exist")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tsv"]


def test_output_in_a_read_only_directory_is_refused(classification_model, tmp_path, capsys, monkeypatch):
    """Root may write anywhere, so the directory's refusal is simulated where the check asks for it."""
    data = _ok_input(tmp_path)
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if str(p) == str(locked) else real_access(p, mode, **kw))
    code, _, err = cli(capsys, "predict", "--model", classification_model, "--input", data,
                       "--output", locked / "p.jsonl")
    one_line_error(code, err, f"the directory {locked} is not writable")
    assert list(locked.iterdir()) == []


def test_a_failed_write_leaves_no_temporary_file(tmp_path):
    from electra.finetune.predict import write_jsonl_atomic

    def rows():
        yield {"prediction": 1}
        raise RuntimeError("disk gone")

    (tmp_path / "p.jsonl").write_text("earlier predictions\n")
    with pytest.raises(RuntimeError):
        write_jsonl_atomic(tmp_path / "p.jsonl", rows())
    assert [p.name for p in tmp_path.iterdir()] == ["p.jsonl"]
    assert (tmp_path / "p.jsonl").read_text() == "earlier predictions\n"  # the old file is kept whole
