"""Fine-tuning, evaluation and prediction end to end on small files made here: metrics agree with
scikit-learn / scipy / seqeval / an independent SQuAD implementation on what `predict` writes,
exports load in transformers with the same outputs, layer-wise rates are exact, bad input is one line."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from electra.cli import run
from electra.commands import COMMANDS
from electra.finetune.conll import to_bio
from electra.finetune.model import FinetuneModel, layer_decay_scales
from electra.finetune.load import load_finetuned
from electra.train.optim import adamw

from conftest import WORDS, perturb, sentences, tiny_config

TINY = ["--epochs", "1", "--batch-size", "8", "--lr", "1e-3"]


def cli(capsys, *argv) -> tuple[int, str, str]:
    code = run(COMMANDS, [str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def write_tsv(path, rows, header=None):
    lines = (["\t".join(header)] if header else []) + ["\t".join(map(str, r)) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def classification_rows(n, seed):
    rng = random.Random(seed)
    rows = []
    for s in sentences(n, seed):
        label = rng.choice(["good", "bad", "meh"])
        rows.append((f"{label} {s}" if rng.random() < 0.8 else s, sentences(1, rng.randint(0, 999))[0], label))
    return rows


def conll_text(n, seed, scheme="bioes"):
    rng = random.Random(seed)
    out = ["-DOCSTART- -X- -X- O", ""]
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(3, 9))]
        tags = ["O"] * len(words)
        for i, w in enumerate(words):
            if w in ("fox", "dog", "cat"):
                tags[i] = "S-ANIMAL" if scheme == "bioes" else "B-ANIMAL"
        if len(words) > 4 and rng.random() < 0.5:  # a two-word place
            tags[1:3] = ["B-PLACE", "E-PLACE"] if scheme == "bioes" else ["B-PLACE", "I-PLACE"]
        out += [f"{w} NN O {t}" for w, t in zip(words, tags)] + [""]
    return "\n".join(out)


def squad_json(n, seed, long_context=False):
    rng = random.Random(seed)
    paragraphs = []
    for i in range(n):
        context = " ".join(sentences(8 if long_context else 3, seed * 1000 + i))
        words = context.split()
        j = rng.randrange(len(words) - 2)
        answer = " ".join(words[j:j + 2])
        start = len(" ".join(words[:j])) + (1 if j else 0)
        paragraphs.append({"context": context, "qas": [
            {"id": f"q{i}", "question": f"what follows {words[j - 1] if j else 'the start'}?",
             "answers": [{"text": answer, "answer_start": start}, {"text": words[j], "answer_start": start}]}]})
    return {"version": "1.1", "data": [{"title": "t", "paragraphs": paragraphs}]}


# --- layer-wise learning rates -------------------------------------------------------------------

def test_layer_decay_rates_are_exact(tokenizer):
    cfg = tiny_config(tokenizer.get_vocab_size(), num_hidden_layers=3).discriminator
    model = FinetuneModel(cfg, "classification", 2)
    scales = layer_decay_scales(model, 3, 0.8)
    assert scales["head.out_proj.weight"] == 1.0 and scales["head.dense.bias"] == 1.0
    assert scales["encoder.layers.2.attn.qkv.weight"] == pytest.approx(1.0)  # the top layer: the base rate
    assert scales["encoder.layers.1.ffn_in.weight"] == pytest.approx(0.8)
    assert scales["encoder.layers.0.attn_norm.bias"] == pytest.approx(0.64)
    assert scales["encoder.embeddings.word.weight"] == pytest.approx(0.512)  # one step below layer 0
    assert scales["encoder.project.weight"] == pytest.approx(0.512)
    opt = adamw(model, 1e-4, 0.0, lr_scale=scales)
    lrs = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    assert lrs[id(model.encoder.layers[0].ffn_out.weight)] == pytest.approx(1e-4 * 0.64)
    assert lrs[id(model.encoder.embeddings.position.weight)] == pytest.approx(1e-4 * 0.512)
    assert lrs[id(model.head.out_proj.weight)] == pytest.approx(1e-4)


def test_length_buckets_keep_a_random_order_with_little_padding():
    import numpy as np

    from electra.finetune.train import epoch_order

    lengths = np.random.default_rng(0).integers(3, 120, size=1000)
    plain = epoch_order(lengths, 32, seed=1, epoch=0, buckets=False)
    bucketed = epoch_order(lengths, 32, seed=1, epoch=0, buckets=True, window_batches=8)
    assert sorted(bucketed.tolist()) == list(range(1000))  # every example once
    # a function of (seed, epoch) alone, so resuming sees the same batches; another epoch differs
    np.testing.assert_array_equal(bucketed, epoch_order(lengths, 32, 1, 0, True, window_batches=8))
    assert not np.array_equal(bucketed, epoch_order(lengths, 32, 1, 1, True, window_batches=8))

    batches = lambda order: np.split(order, range(32, len(order), 32))
    padded = lambda order: sum(len(b) * lengths[b].max() for b in batches(order))
    assert padded(bucketed) < 0.7 * padded(plain)  # uniform lengths 3-119: about 0.6
    maxima = [lengths[b].max() for b in batches(bucketed)[:-1]]
    assert maxima != sorted(maxima)  # the batches themselves come in random order
    # the partial batch that distributed runs drop is random examples, not the longest of a window
    tails = np.concatenate([epoch_order(lengths, 32, 1, e, True, window_batches=8)[992:] for e in range(20)])
    assert abs(lengths[tails].mean() - lengths.mean()) < 10


@pytest.mark.parametrize("tags,bio", [
    (["B-PER", "I-PER", "O", "B-LOC"], ["B-PER", "I-PER", "O", "B-LOC"]),  # BIO
    (["I-PER", "I-PER", "B-PER", "O", "I-LOC"], ["B-PER", "I-PER", "B-PER", "O", "B-LOC"]),  # IOB1
    (["B-PER", "E-PER", "S-LOC", "S-LOC", "B-ORG", "I-ORG", "E-ORG"],
     ["B-PER", "I-PER", "B-LOC", "B-LOC", "B-ORG", "I-ORG", "I-ORG"]),  # BIOES
    (["B-GPE.NAM", "M-GPE.NAM", "E-GPE.NAM", "S-PER.NOM"],
     ["B-GPE.NAM", "I-GPE.NAM", "I-GPE.NAM", "B-PER.NOM"]),  # BMES
])
def test_tag_schemes_normalise_to_bio(tags, bio):
    assert to_bio(tags) == bio


# --- end to end per task: metrics from evaluate == library metrics on predict's output ------------

def test_classification_end_to_end(tmp_path, tokenizer_dir, capsys):
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    header = ["id", "sentence1", "sentence2", "label"]
    train = write_tsv(tmp_path / "train.tsv", [(i, *r) for i, r in enumerate(classification_rows(96, 1))], header)
    dev_rows = classification_rows(40, 2)
    dev = write_tsv(tmp_path / "dev.tsv", [(i, *r) for i, r in enumerate(dev_rows)], header)
    out = tmp_path / "model"
    code, stdout, err = cli(capsys, "finetune", "--task", "classification", "--model", "tiny", "--tokenizer",
                            tokenizer_dir, "--train", train, "--dev", dev, "--out", out, *TINY, "--epochs", 2)
    assert code == 0, err
    assert "trainable parameters" in err
    assert (out / "classification_report.txt").is_file() and (out / "confusion_matrix.png").is_file()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows if "epoch" in r] == [1.0, 2.0]
    meta = json.loads((out / "electra.json").read_text())
    assert meta["labels"] == ["bad", "good", "meh"] and meta["settings"]["columns"]["texts"] == ["sentence1", "sentence2"]

    code, stdout, _ = cli(capsys, "evaluate", "--model", out, "--data", dev)  # no column flags needed
    scores = last_json(stdout)
    code, _, _ = cli(capsys, "predict", "--model", out, "--input", dev, "--output", tmp_path / "p.jsonl")
    preds = [json.loads(line)["prediction"] for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    gold = [r[2] for r in dev_rows]
    assert len(preds) == len(gold) and set(preds) <= {"good", "bad", "meh"}
    assert scores["accuracy"] == pytest.approx(accuracy_score(gold, preds), abs=1e-6)
    assert scores["mcc"] == pytest.approx(matthews_corrcoef(gold, preds), abs=1e-6)
    assert scores["f1"] == pytest.approx(f1_score(gold, preds, average="macro"), abs=1e-6)


def test_regression_end_to_end(tmp_path, tokenizer_dir, capsys):
    from scipy.stats import pearsonr, spearmanr

    rng = random.Random(0)
    make = lambda n, s: [(a, b, round(rng.uniform(0, 5), 2)) for a, b in zip(sentences(n, s), sentences(n, s + 1))]
    train = write_tsv(tmp_path / "train.tsv", make(64, 3), ["sentence1", "sentence2", "score"])
    dev_rows = make(30, 5)
    dev = write_tsv(tmp_path / "dev.tsv", dev_rows, ["sentence1", "sentence2", "score"])
    out = tmp_path / "model"
    code, _, err = cli(capsys, "finetune", "--task", "regression", "--model", "tiny", "--tokenizer", tokenizer_dir,
                       "--train", train, "--dev", dev, "--out", out, *TINY)
    assert code == 0, err
    code, stdout, _ = cli(capsys, "evaluate", "--model", out, "--data", dev, "--task", "regression")
    scores = last_json(stdout)
    cli(capsys, "predict", "--model", out, "--input", dev, "--output", tmp_path / "p.jsonl")
    preds = [json.loads(line)["prediction"] for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    gold = [r[2] for r in dev_rows]
    assert all(isinstance(p, float) for p in preds)
    assert scores["pearson"] == pytest.approx(pearsonr(gold, preds)[0], abs=1e-5)
    assert scores["spearman"] == pytest.approx(spearmanr(gold, preds)[0], abs=1e-5)
    # the compiled fast path (weights frozen into the graph) predicts the same numbers
    code, _, err = cli(capsys, "predict", "--model", out, "--input", dev, "--output", tmp_path / "c.jsonl", "--compile")
    assert code == 0, err
    compiled = [json.loads(line)["prediction"] for line in (tmp_path / "c.jsonl").read_text().splitlines()]
    assert compiled == pytest.approx(preds, abs=1e-5)


def test_ner_end_to_end(tmp_path, tokenizer_dir, capsys):
    from seqeval.metrics import f1_score, precision_score, recall_score

    train = tmp_path / "train.txt"
    train.write_text(conll_text(80, 1))
    dev = tmp_path / "dev.txt"
    dev.write_text(conll_text(30, 2))
    out = tmp_path / "model"
    code, _, err = cli(capsys, "finetune", "--task", "ner", "--model", "tiny", "--tokenizer", tokenizer_dir,
                       "--train", train, "--dev", dev, "--out", out, *TINY, "--epochs", 3, "--lr", 3e-3)
    assert code == 0, err
    assert (out / "ner_report.txt").is_file()
    code, stdout, _ = cli(capsys, "evaluate", "--model", out, "--data", dev)
    scores = last_json(stdout)
    cli(capsys, "predict", "--model", out, "--input", dev, "--output", tmp_path / "p.jsonl")
    preds = [json.loads(line)["prediction"] for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    from electra.finetune.conll import read_tagged
    gold = [s.tags for s in read_tagged(dev)]
    assert [len(p) for p in preds] == [len(g) for g in gold]  # one tag per input word
    assert scores["precision"] == pytest.approx(precision_score(gold, preds), abs=1e-6)
    assert scores["recall"] == pytest.approx(recall_score(gold, preds), abs=1e-6)
    assert scores["f1"] == pytest.approx(f1_score(gold, preds), abs=1e-6)
    assert scores["f1"] > 0.3  # the animals are easy: it learned something


def test_qa_end_to_end_with_windows(tmp_path, tokenizer_dir, capsys):
    torchmetrics = pytest.importorskip("torchmetrics")  # an independent port of the official SQuAD script
    from torchmetrics.functional.text import squad as reference_squad

    train = tmp_path / "train.json"
    train.write_text(json.dumps(squad_json(40, 1, long_context=True)))
    dev_doc = squad_json(20, 2, long_context=True)
    dev = tmp_path / "dev.json"
    dev.write_text(json.dumps(dev_doc))
    out = tmp_path / "model"
    code, _, err = cli(capsys, "finetune", "--task", "qa", "--model", "tiny", "--tokenizer", tokenizer_dir,
                       "--train", train, "--dev", dev, "--out", out, *TINY, "--max-seq-len", 48, "--doc-stride", 16)
    assert code == 0, err
    assert "split into windows" in err  # contexts of ~60-90 pieces do not fit 48
    code, stdout, _ = cli(capsys, "evaluate", "--model", out, "--data", dev)
    scores = last_json(stdout)
    cli(capsys, "predict", "--model", out, "--input", dev, "--output", tmp_path / "p.jsonl", "--n-best", 3)
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [f"q{i}" for i in range(20)]
    assert all(len(r["n_best"]) <= 3 and r["prediction"] == r["n_best"][0]["text"] for r in rows)
    target = [{"id": q["id"], "answers": {"text": [a["text"] for a in q["answers"]],
                                          "answer_start": [a["answer_start"] for a in q["answers"]]}}
              for p in dev_doc["data"][0]["paragraphs"] for q in p["qas"]]
    ref = reference_squad([{"id": r["id"], "prediction_text": r["prediction"]} for r in rows], target)
    assert scores["exact_match"] == pytest.approx(float(ref["exact_match"]), abs=1e-3)
    assert scores["f1"] == pytest.approx(float(ref["f1"]), abs=1e-3)


def test_squad_scoring_matches_reference_on_tricky_answers():
    pytest.importorskip("torchmetrics")
    from torchmetrics.functional.text import squad as reference_squad

    from electra.finetune.squad import QAExample, squad_scores

    golds = [["The Denver Broncos"], ["1,000 (approx.)", "a thousand"], ["Saint-Étienne"], ["an apple"]]
    preds = ["denver broncos!", "about 1000", "saint étienne", "the apple pie"]
    examples = [QAExample(str(i), "q", "c", g) for i, g in enumerate(golds)]
    ours = squad_scores(examples, {str(i): p for i, p in enumerate(preds)})
    ref = reference_squad([{"id": str(i), "prediction_text": p} for i, p in enumerate(preds)],
                          [{"id": str(i), "answers": {"text": g, "answer_start": [0] * len(g)}} for i, g in enumerate(golds)])
    assert ours["exact_match"] == pytest.approx(float(ref["exact_match"]), abs=1e-3)
    assert ours["f1"] == pytest.approx(float(ref["f1"]), abs=1e-3)


# --- Hugging Face: exported fine-tuned models load in transformers with the same outputs ----------

@pytest.mark.parametrize("task,auto,labels", [
    ("classification", "AutoModelForSequenceClassification", ["neg", "pos", "neutral"]),
    ("regression", "AutoModelForSequenceClassification", None),
    ("ner", "AutoModelForTokenClassification", ["B-X", "I-X", "O"]),
    ("qa", "AutoModelForQuestionAnswering", None),
])
def test_export_loads_in_transformers_with_same_outputs(task, auto, labels, tmp_path, tokenizer, tokenizer_dir,
                                                        special, capsys):
    transformers = pytest.importorskip("transformers")
    from electra.finetune.train import write_atomic
    from electra.finetune.tasks import make_task

    cfg = tiny_config(tokenizer.get_vocab_size()).discriminator
    n = len(labels) if labels else 1
    model = FinetuneModel(cfg, task, n)
    perturb(model, seed=3)
    src = tmp_path / "ft"
    src.mkdir()
    meta = {"kind": "finetuned", "task": task, "model": cfg.to_dict(), "labels": labels,
            "settings": make_task(task, labels).settings, "max_seq_len": 32}
    write_atomic(src, model.state_dict(), meta, tokenizer)
    code, _, err = cli(capsys, "export", "--model", src, "--out", tmp_path / "hf")
    assert code == 0, err
    theirs = getattr(transformers, auto).from_pretrained(tmp_path / "hf").eval()
    model.eval()
    enc = tokenizer.encode("the quick fox", "sat on the mat")
    ids, types = torch.tensor([enc.ids]), torch.tensor([enc.type_ids])
    with torch.no_grad():
        ours = model(ids, torch.ones_like(ids), types)
        out = theirs(input_ids=ids, attention_mask=torch.ones_like(ids), token_type_ids=types)
    if task == "qa":
        ref = torch.stack([out.start_logits, out.end_logits], dim=-1)
    else:
        ref = out.logits
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    if labels:
        assert theirs.config.id2label == dict(enumerate(labels))
    back = load_finetuned(tmp_path / "hf", task)  # and the HF directory loads back for evaluate/predict
    with torch.no_grad():
        torch.testing.assert_close(back.model.eval()(ids, torch.ones_like(ids), types), ours, atol=1e-6, rtol=1e-6)


# --- parameter-efficient fine-tuning ----------------------------------------------------------------

@pytest.mark.parametrize("flag", [["--head-only"], ["--freeze-layers", "1"], ["--lora", "--lora-rank", "2"]])
def test_parameter_efficient_modes(flag, tmp_path, tokenizer_dir, capsys):
    if "--lora" in flag:
        pytest.importorskip("peft")
    rows = [(s, "a" if "cat" in s else "b") for s in sentences(48, 7)]
    train = write_tsv(tmp_path / "train.tsv", rows, ["sentence", "label"])
    out = tmp_path / "model"
    code, _, err = cli(capsys, "finetune", "--task", "classification", "--model", "tiny", "--tokenizer",
                       tokenizer_dir, "--train", train, "--dev", train, "--out", out, *TINY, *flag)
    assert code == 0, err
    trainable, total = [int(x.replace(",", "")) for x in
                        err.split("trainable parameters ")[1].split(" (")[0].split(" of ")]
    assert 0 < trainable < total / 2 if flag != ["--freeze-layers", "1"] else trainable < total
    ft = load_finetuned(out)  # LoRA merged: a plain model whose weights load without peft
    assert isinstance(ft.model, FinetuneModel)
    code, stdout, _ = cli(capsys, "evaluate", "--model", out, "--data", train)
    assert code == 0 and "accuracy" in last_json(stdout)


# --- bad input -------------------------------------------------------------------------------------

def bad_cases(tmp_path):
    ok = write_tsv(tmp_path / "ok.tsv", [(s, "x" if i % 2 else "y") for i, s in enumerate(sentences(20, 1))],
                   ["sentence", "label"])
    cases = {
        "unseen label": (write_tsv(tmp_path / "unseen.tsv", [("a cat", "x"), ("a dog", "z")], ["sentence", "label"]),
                         "labels that training never saw: 'z'"),
        "wrong column count": (tmp_path / "cols.tsv", "line 3 has 3 columns, expected 2"),
        "empty": (tmp_path / "empty.tsv", "is empty"),
        "not utf-8": (tmp_path / "latin.tsv", "not UTF-8 text (undecodable bytes on line 2)"),
        "missing": (tmp_path / "nope.tsv", "not found"),
    }
    (tmp_path / "cols.tsv").write_text("sentence\tlabel\na cat\tx\na dog\tx\textra\n")
    (tmp_path / "empty.tsv").write_text("")
    (tmp_path / "latin.tsv").write_bytes("sentence\tlabel\ncaf\xe9\tx\n".encode("latin-1"))
    return ok, cases


@pytest.mark.parametrize("case", ["unseen label", "wrong column count", "empty", "not utf-8", "missing"])
def test_bad_classification_data_is_one_clear_line(case, tmp_path, tokenizer_dir, capsys):
    ok, cases = bad_cases(tmp_path)
    dev, message = cases[case]
    code, _, err = cli(capsys, "finetune", "--task", "classification", "--model", "tiny", "--tokenizer",
                       tokenizer_dir, "--train", ok, "--dev", dev, "--out", tmp_path / "m", *TINY)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and message in err, err
    assert not (tmp_path / "m" / "electra.json").exists()


def test_unknown_column_lists_the_columns(tmp_path, tokenizer_dir, capsys):
    ok, _ = bad_cases(tmp_path)
    code, _, err = cli(capsys, "finetune", "--task", "classification", "--model", "tiny", "--tokenizer", tokenizer_dir,
                       "--train", ok, "--dev", ok, "--out", tmp_path / "m", "--text-columns", "review")
    assert code == 2 and "has no column 'review' (--text-columns); its columns are: 'sentence', 'label'" in err


def test_ner_words_and_tags_must_match(tmp_path, tokenizer_dir, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"tokens": ["a", "cat"], "tags": ["O", "B-X"]}) + "\n"
                   + json.dumps({"tokens": ["a", "dog", "sat"], "tags": ["O", "B-X"]}) + "\n")
    code, _, err = cli(capsys, "finetune", "--task", "ner", "--model", "tiny", "--tokenizer", tokenizer_dir,
                       "--train", bad, "--dev", bad, "--out", tmp_path / "m")
    assert code == 2 and "line 2 has 3 words but 2 tags" in err


def test_qa_answers_not_in_context_are_counted_and_skipped(tmp_path, tokenizer_dir, capsys):
    doc = squad_json(12, 4)
    doc["data"][0]["paragraphs"][0]["qas"][0]["answers"] = [{"text": "zebra crossing", "answer_start": 3}]
    doc["data"][0]["paragraphs"][1]["qas"][0]["answers"] = [{"text": "unicorn", "answer_start": 0}]
    path = tmp_path / "train.json"
    path.write_text(json.dumps(doc))
    code, _, err = cli(capsys, "finetune", "--task", "qa", "--model", "tiny", "--tokenizer", tokenizer_dir,
                       "--train", path, "--dev", path, "--out", tmp_path / "m", *TINY, "--max-seq-len", 64)
    assert code == 0, err
    assert "skipped 2 question(s) whose answer does not occur in its context" in err


def test_wrong_task_and_pretrained_model_are_refused(tmp_path, tokenizer_dir, capsys):
    ok, _ = bad_cases(tmp_path)
    out = tmp_path / "m"
    assert cli(capsys, "finetune", "--task", "classification", "--model", "tiny", "--tokenizer", tokenizer_dir,
               "--train", ok, "--dev", ok, "--out", out, *TINY)[0] == 0
    code, _, err = cli(capsys, "evaluate", "--model", out, "--data", ok, "--task", "ner")
    assert code == 2 and "was fine-tuned for classification, not ner" in err
    code, _, err = cli(capsys, "finetune", "--task", "classification", "--model", "tiny", "--tokenizer", tokenizer_dir,
                       "--train", ok, "--dev", ok, "--out", out, *TINY)
    assert code == 2 and "already holds a fine-tuned model" in err


def test_long_inputs_are_truncated_and_counted(tmp_path, tokenizer_dir, capsys):
    rows = [(" ".join(sentences(6, i)), "x" if i % 2 else "y") for i in range(10)]
    path = write_tsv(tmp_path / "long.tsv", rows, ["text", "label"])
    code, _, err = cli(capsys, "finetune", "--task", "classification", "--model", "tiny", "--tokenizer", tokenizer_dir,
                       "--train", path, "--dev", path, "--out", tmp_path / "m", *TINY, "--max-seq-len", 16)
    assert code == 0, err
    assert "10 of 10 training examples were longer than --max-seq-len 16" in err


# --- the real files in ../shared/data are read as they are ------------------------------------------

@pytest.mark.parametrize("rel,texts,label,n", [
    ("en/glue/SST-2/dev.tsv", ["sentence"], "label", 872),
    ("en/glue/MRPC/dev.tsv", ["#1 String", "#2 String"], "Quality", 408),
    ("en/glue/STS-B/dev.tsv", ["sentence1", "sentence2"], "score", 1500),
    ("zh/chnsenticorp/dev.tsv", ["text_a"], "label", 1200),
    ("zh/afqmc/dev.txt", [0, 1], 2, 4316),
    ("zh/tnews/dev.tsv", [0], 1, 10000),
])
def test_reads_glue_and_clue_tables_unedited(rel, texts, label, n):
    from conftest import SHARED_DATA

    from electra.finetune.tables import read_table

    path = SHARED_DATA / rel
    if not path.is_file():
        pytest.skip(f"{path} is not on this machine")
    examples, columns = read_table(path)
    assert columns.texts == texts and columns.label == label and len(examples) == n
    assert all(ex.label for ex in examples) and all(ex.texts[0] for ex in examples)


@pytest.mark.parametrize("rel,n,types", [("en/conll2003/dev.txt", 3250, {"PER", "ORG", "LOC", "MISC"}),
                                         ("zh/weibo_ner/dev.all.bmes", 270, None),
                                         ("zh/msra_ner/dev.ner", 4636, {"NR", "NS", "NT"})])
def test_reads_ner_files_unedited(rel, n, types):
    from conftest import SHARED_DATA

    from electra.finetune.conll import read_tagged

    path = SHARED_DATA / rel
    if not path.is_file():
        pytest.skip(f"{path} is not on this machine")
    sents = read_tagged(path)
    assert len(sents) == n and all(len(s.words) == len(s.tags) for s in sents)
    found = {t[2:] for s in sents for t in s.tags if t != "O"}
    assert types is None or found == types
    assert all(not t.startswith(("E-", "S-", "M-")) for s in sents for t in s.tags)
