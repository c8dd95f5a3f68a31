"""Prompt-based zero-shot and few-shot classification with the discriminator (Xia et al. 2022): templates in
English and Chinese, `electra zero-shot`, `finetune --task prompt --shots K` with evaluate, predict and export,
and the bad inputs."""

from __future__ import annotations

import json
import random

import pytest
import torch

from electra.cli import run
from electra.commands import COMMANDS
from electra.data.tokenizer import load_tokenizer, special_ids
from electra.errors import UserError
from electra.prompt import Prompt, fill

from test_finetune import cli, last_json, write_tsv
from test_pipeline import prepared  # noqa: F401 - the module-scoped fixture

TEMPLATE, VERBALIZER = "{text} it was {label} .", "neg=cat,pos=dog"


@pytest.fixture(scope="module")
def pretrained(prepared, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("prompt") / "run"
    assert run(COMMANDS, ["pretrain", "--data", str(prepared / "data"), "--model", str(prepared / "tiny.yaml"),
                          "--out", str(out), "--batch-size", "8", "--max-steps", "3"]) == 0
    return out


def sentiment_rows(n: int, seed: int) -> list[tuple[str, str]]:
    """Texts whose label a word gives away: enough for a few-shot model to learn."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.choice(["neg", "pos"])
        filler = " ".join(rng.choice(["the", "river", "bank", "money", "tree", "house"]) for _ in range(rng.randint(2, 6)))
        rows.append((f"{'lazy water' if label == 'neg' else 'music sings'} {filler}", label))
    return rows


@pytest.mark.parametrize("template, verbalizer, message", [
    ("{text} it was.", VERBALIZER, "must hold {label} exactly once"),
    ("it was {label}.", VERBALIZER, "must hold {text} exactly once"),
    (TEMPLATE, "neg:cat,pos:dog", "cannot read the verbalizer"),
    (TEMPLATE, "neg=big cat,pos=dog", "not a single word"),
    (TEMPLATE, "neg=cat", "at least two labels"),
])
def test_bad_templates_and_verbalizers(template, verbalizer, message):
    with pytest.raises(UserError, match=message):
        Prompt.parse(template, verbalizer)


def test_label_positions_through_offsets_in_english_and_chinese(prepared, tmp_path):  # noqa: F811
    tok = load_tokenizer(prepared / "tok")
    special = special_ids(tok)
    prompt = Prompt.parse("{text} . it was {label} !", "a=quickly,b=dog")
    filled, cut = fill(tok, special, prompt, "the cat sat on the mat", 32)
    assert not cut and len(filled) == 2
    for f, word in zip(filled, ["quickly", "dog"]):
        pieces = "".join(tok.id_to_token(f.ids[p]).removeprefix("##") for p in f.label_positions)
        assert pieces == word
    # a long text is cut so that the label word still fits
    filled, cut = fill(tok, special, prompt, " ".join(["the river bank"] * 40), 32)
    assert cut and all(len(f.ids) <= 32 and f.label_positions for f in filled)

    (tmp_path / "zh.txt").write_text("这部电影很好看。这部电影很难看。我们喜欢看电影。\n" * 30, encoding="utf-8")
    assert run(COMMANDS, ["tokenizer", "train", "--corpus", str(tmp_path / "zh.txt"), "--vocab-size", "120",
                          "--min-frequency", "1", "--out", str(tmp_path / "ztok")]) == 0
    ztok = load_tokenizer(tmp_path / "ztok")
    zh = Prompt.parse("{text}总之很{label}。", "0=难看,1=好看")
    filled, _ = fill(ztok, special_ids(ztok), zh, "我们喜欢这部电影", 32)
    for f, word in zip(filled, ["难看", "好看"]):
        assert "".join(ztok.id_to_token(f.ids[p]) for p in f.label_positions) == word


def test_zero_shot_prints_metrics_and_the_majority_class(pretrained, tmp_path, capsys):
    data = write_tsv(tmp_path / "dev.tsv", sentiment_rows(30, 1), ["sentence", "label"])
    code, out, err = cli(capsys, "zero-shot", "--model", pretrained, "--data", data, "--template", TEMPLATE,
                         "--verbalizer", VERBALIZER, "--output", tmp_path / "p.jsonl")
    assert code == 0, err
    scores = last_json(out)
    assert 0 <= scores["accuracy"] <= 1 and 0.5 <= scores["majority_accuracy"] <= 1 and scores["examples"] == 30
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert len(rows) == 30 and set(rows[0]["scores"]) == {"neg", "pos"}
    assert abs(sum(rows[0]["scores"].values()) - 1) < 1e-5


@pytest.mark.parametrize("verbalizer, message", [
    ("neg=cat,meh=dog", "no word for label(s) pos"),
    ("neg=cat,pos=dog,meh=fox", "names label(s) meh that"),
])
def test_zero_shot_verbalizer_must_match_the_labels(pretrained, tmp_path, capsys, verbalizer, message):
    data = write_tsv(tmp_path / "dev.tsv", sentiment_rows(10, 1), ["sentence", "label"])
    code, _, err = cli(capsys, "zero-shot", "--model", pretrained, "--data", data, "--template", TEMPLATE,
                       "--verbalizer", verbalizer)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_few_shot_prompt_finetuning_evaluates_predicts_and_exports(pretrained, tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    train = write_tsv(tmp_path / "train.tsv", sentiment_rows(60, 1), ["sentence", "label"])
    dev = write_tsv(tmp_path / "dev.tsv", sentiment_rows(30, 2), ["sentence", "label"])
    code, out, err = cli(capsys, "finetune", "--task", "prompt", "--model", pretrained, "--train", train, "--dev", dev,
                         "--out", tmp_path / "m", "--template", TEMPLATE, "--verbalizer", VERBALIZER, "--shots", "8",
                         "--epochs", "40", "--batch-size", "8", "--lr", "2e-3", "--seed", "3")
    assert code == 0, err
    saved = json.loads((tmp_path / "m" / "electra.json").read_text())
    assert saved["task"] == "prompt" and saved["settings"]["shots"] == 8 and saved["settings"]["words"]["pos"] == "dog"
    rows = [json.loads(line) for line in (tmp_path / "m" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert losses[-1] < losses[0]  # 16 examples x 2 prompts, 4 steps an epoch, 160 steps: it learns
    code, out, _ = cli(capsys, "evaluate", "--model", tmp_path / "m", "--data", dev)
    assert code == 0 and last_json(out)["accuracy"] >= 0.8, out
    assert cli(capsys, "predict", "--model", tmp_path / "m", "--input", dev, "--output", tmp_path / "p.jsonl")[0] == 0
    predicted = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert len(predicted) == 30 and predicted[0]["prediction"] in ("neg", "pos")
    assert cli(capsys, "export", "--model", tmp_path / "m", "--out", tmp_path / "hf")[0] == 0
    hf = transformers.ElectraForPreTraining.from_pretrained(tmp_path / "hf").eval()
    from electra.finetune.load import load_finetuned

    ours = load_finetuned(tmp_path / "m").model.eval()
    ids = torch.tensor([[2, 30, 31, 32, 3]])
    with torch.no_grad():
        torch.testing.assert_close(hf(input_ids=ids).logits, ours(ids), rtol=1e-5, atol=1e-5)
    code, out, _ = cli(capsys, "evaluate", "--model", tmp_path / "hf", "--data", dev)  # the export, template and all
    assert code == 0 and last_json(out)["accuracy"] == pytest.approx(last_json(cli(capsys, "evaluate", "--model",
                                                                                    tmp_path / "m", "--data", dev)[1])["accuracy"])


def test_shots_sample_per_class_for_head_finetuning_too(pretrained, tmp_path, capsys):
    from collections import Counter

    from electra.finetune.tasks import make_task

    train = write_tsv(tmp_path / "train.tsv", sentiment_rows(60, 1), ["sentence", "label"])
    drawn = [make_task("classification", settings={"shots": 4, "seed": s}).read(train, {}, training=True) for s in (0, 0, 1)]
    assert all(Counter(ex.label for ex in d) == {"neg": 4, "pos": 4} for d in drawn)
    assert [ex.texts for ex in drawn[0]] == [ex.texts for ex in drawn[1]] != [ex.texts for ex in drawn[2]]  # seeded
    code, _, err = cli(capsys, "finetune", "--task", "classification", "--model", pretrained, "--train", train, "--dev",
                       train, "--out", tmp_path / "m", "--shots", "4", "--epochs", "1", "--batch-size", "4")
    assert code == 0, err
    assert json.loads((tmp_path / "m" / "electra.json").read_text())["settings"]["shots"] == 4


@pytest.mark.parametrize("flags, message", [
    (["--task", "prompt", "--template", TEMPLATE, "--verbalizer", VERBALIZER, "--shots", "500"], "--shots 500 is more than"),
    (["--task", "classification", "--template", TEMPLATE, "--verbalizer", VERBALIZER], "go with --task prompt"),
    (["--task", "prompt", "--template", TEMPLATE], "needs --template and --verbalizer"),
    (["--task", "regression", "--shots", "4"], "--shots samples examples per class"),
    (["--task", "prompt", "--template", TEMPLATE, "--verbalizer", "neg=cat,pos=dog,meh=fox"], "names label(s) meh"),
])
def test_bad_prompt_settings_are_one_line(pretrained, tmp_path, capsys, flags, message):
    rows = [(t, lab if "regression" not in flags else float(i % 5)) for i, (t, lab) in enumerate(sentiment_rows(40, 1))]
    train = write_tsv(tmp_path / "train.tsv", rows, ["sentence", "label"])
    code, _, err = cli(capsys, "finetune", "--model", pretrained, "--train", train, "--dev", train,
                       "--out", tmp_path / "m", "--epochs", "1", "--batch-size", "4", *flags)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "m").exists()
