"""`electra attack`: the typos and words perturbations, the generator's greedy substitution, the report and
the readable examples it writes, detection AUC, and the bad inputs."""

from __future__ import annotations

import json
import random

import pytest

from electra.attack import Query, generator_attack, perturb_typos, perturb_words, split_words, typo
from electra.cli import run
from electra.commands import COMMANDS
from electra.pretrained import load_pretrained

from test_finetune import cli, conll_text, last_json, write_tsv
from test_pipeline import prepared  # noqa: F401 - the module-scoped fixture
from test_prompt import pretrained, sentiment_rows  # noqa: F401 - the module-scoped fixture


def _distance(a: str, b: str) -> int:
    d = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, d[0] = d[0], i
        for j, cb in enumerate(b, 1):
            prev, d[j] = d[j], min(d[j] + 1, d[j - 1] + 1, prev + (ca != cb))
    return d[-1]


def test_typos_are_one_edit_and_seeded():
    rng = random.Random(0)
    for word in ["keyboard", "attack", "ok", "robustness"]:
        for _ in range(20):
            assert _distance(word, typo(word, rng)) <= 2  # a swap counts 2 here
    text = "the quick brown fox jumps over the lazy dog"
    a = perturb_typos(text, 0.5, random.Random(3))
    assert a == perturb_typos(text, 0.5, random.Random(3)) and a[0] != text and a[1]
    assert perturb_typos(text, 0.5, random.Random(3))[0].count(" ") == text.count(" ")


def test_word_drops_and_swaps_keep_the_other_words():
    text = "the quick brown fox jumps over the lazy dog"
    new, changed = perturb_words(text, 0.4, random.Random(1))
    assert changed and new != text
    dropped = [old for old, n in changed if n == ""]
    assert sorted(new.split() + dropped) == sorted(text.split())
    assert split_words("我们喜欢电影") == (list("我们喜欢电影"), "")
    for seed in range(50):  # a drop may take any word, never all of them (an empty text cannot be scored)
        assert perturb_words("great film", 1.0, random.Random(seed))[0].strip()
        assert perturb_words("好看", 1.0, random.Random(seed))[0]


def test_chinese_typos_edit_characters():
    text = "这部电影很好看，演员也不错"
    new, changed = perturb_typos(text, 0.3, random.Random(0))
    assert changed and new != text and new == perturb_typos(text, 0.3, random.Random(0))[0]
    for old, edit in changed:  # a swap with the next character, a deletion or a repeat
        assert edit in (old[::-1], "", old + old)
    for seed in range(50):
        assert perturb_typos("好", 1.0, random.Random(seed))[0]


class StubModel(Query):
    """Label a unless the word 'cat' is gone: the generator must replace 'cat' to flip it."""

    def __init__(self):
        super().__init__(ft=None, device=None)

    def __call__(self, texts):
        self.count += len(texts)
        return [{"a": 0.9, "b": 0.1} if "cat" in t.split() else {"a": 0.2, "b": 0.8} for t in texts]


def test_generator_attack_replaces_the_important_word_in_budget(pretrained):
    gen = load_pretrained(pretrained)
    outcome = generator_attack("the cat sat on the mat", "a", StubModel(), gen, max_queries=40, max_change=0.5)
    assert outcome.changed and outcome.changed[0][0] == "cat" and "cat" not in outcome.text.split()
    assert outcome.queries <= 40 and len(outcome.changed) == 1
    tight = generator_attack("the cat sat on the mat", "a", StubModel(), gen, max_queries=7, max_change=0.5)
    assert tight.queries <= 7 + 0  # the importance pass (7 queries) uses the whole budget: no substitution
    assert tight.changed == []


def test_generator_attack_neither_replaces_nor_puts_in_stop_words(pretrained, monkeypatch):
    """As BAE: a small generator proposes "the", "in", "and" for any mask, which would delete a word's
    meaning rather than substitute for it; those are never put in, and stop words are never replaced."""
    import electra.inference

    proposed = [{"token": t} for t in ("the", "in", "dog", "And")]
    monkeypatch.setattr(electra.inference, "fill_mask", lambda gen, texts, top_k: [{"masks": [{"candidates": proposed}]}])
    gen = load_pretrained(pretrained)
    outcome = generator_attack("the cat sat on the mat", "a", StubModel(), gen, max_queries=40, max_change=0.5)
    assert outcome.changed == [["cat", "dog"]]

    class NeedsThe(StubModel):
        def __call__(self, texts):
            self.count += len(texts)
            return [{"a": 0.9, "b": 0.1} if "the" in t.split() else {"a": 0.2, "b": 0.8} for t in texts]

    assert generator_attack("the cat sat on a mat", "a", NeedsThe(), gen, max_queries=40, max_change=0.5).changed == []


def test_chinese_text_with_spaces_is_attacked_a_character_at_a_time(pretrained, monkeypatch):
    """A space in a Chinese review must not make its clauses the 'words' (the generator then put one
    character in for a whole clause): characters are the words, spaces are kept and never edited."""
    import electra.inference

    text = "房间很贵 服务也好，LED屏 不错"
    words, sep = split_words(text)
    assert sep.join(words) == text and "LED" in words and all(len(w) == 1 for w in words if w not in ("LED", " "))
    for seed in range(30):
        new, changed = perturb_words(text, 0.5, random.Random(seed))
        assert new.count(" ") == 2 and all(" " not in old.replace(" ", "", 1) for old, _ in changed)
        new, changed = perturb_typos(text, 0.5, random.Random(seed))
        assert new.count(" ") == 2 and all(len(old) <= 2 for old, _ in changed)

    class NeedsDear(StubModel):
        def __call__(self, texts):
            self.count += len(texts)
            return [{"a": 0.9, "b": 0.1} if "贵" in t else {"a": 0.2, "b": 0.8} for t in texts]

    proposed = [{"token": t} for t in ("的", "旧")]  # a stop word, never put in, and a substitute
    monkeypatch.setattr(electra.inference, "fill_mask", lambda gen, texts, top_k: [{"masks": [{"candidates": proposed}]}])
    outcome = generator_attack(text, "a", NeedsDear(), load_pretrained(pretrained), max_queries=60, max_change=0.3)
    assert outcome.changed == [["贵", "旧"]] and outcome.text == text.replace("贵", "旧")


@pytest.fixture(scope="module")
def classifier(pretrained, tmp_path_factory):
    root = tmp_path_factory.mktemp("attack")
    train = write_tsv(root / "train.tsv", sentiment_rows(60, 1), ["sentence", "label"])
    assert run(COMMANDS, ["finetune", "--task", "classification", "--model", str(pretrained), "--train", str(train),
                          "--dev", str(train), "--out", str(root / "m"), "--epochs", "10", "--batch-size", "8",
                          "--lr", "2e-3"]) == 0
    return root


def test_attack_reports_every_method_and_writes_readable_examples(classifier, pretrained, tmp_path, capsys):
    dev = write_tsv(tmp_path / "dev.tsv", sentiment_rows(20, 2), ["sentence", "label"])
    code, out, err = cli(capsys, "attack", "--model", classifier / "m", "--data", dev, "--out", tmp_path / "a",
                         "--detect", pretrained, "--max-queries", "30", "--rate", "0.3")
    assert code == 0, err
    report = last_json(out)
    assert report == json.loads((tmp_path / "a" / "report.json").read_text())
    for method in ("typos", "words", "generator"):
        r = report[method]
        assert 0 <= r["success_rate"] <= 1 and 0 <= r["metrics"]["accuracy"] <= 1
        assert r["detection_auc"] is None or 0 <= r["detection_auc"] <= 1
        rows = [json.loads(line) for line in (tmp_path / "a" / f"{method}.jsonl").read_text().splitlines()]
        assert len(rows) == 20 and {"clean", "attacked", "label", "prediction", "changed", "queries"} <= rows[0].keys()
        assert all(r["queries"] <= 30 for r in rows)
        assert all((r["attacked"] != r["clean"]) == bool(r["changed"]) for r in rows if r["changed"] or r["success"])
    assert report["clean"]["accuracy"] >= report["generator"]["metrics"]["accuracy"]
    assert "generator:" in err and "success rate" in err


def test_attack_bad_inputs_are_one_line(classifier, prepared, tmp_path, tokenizer_dir, capsys):  # noqa: F811
    dev = write_tsv(tmp_path / "dev.tsv", sentiment_rows(10, 2), ["sentence", "label"])
    (tmp_path / "ner.txt").write_text(conll_text(12, 1))
    assert run(COMMANDS, ["finetune", "--task", "ner", "--model", "tiny", "--tokenizer", str(tokenizer_dir), "--train",
                          str(tmp_path / "ner.txt"), "--dev", str(tmp_path / "ner.txt"), "--out", str(tmp_path / "ner"),
                          "--epochs", "1", "--batch-size", "4"]) == 0
    capsys.readouterr()
    run(COMMANDS, ["tokenizer", "train", "--corpus", str(prepared / "corpus"), "--vocab-size", "140",
                   "--min-frequency", "1", "--out", str(tmp_path / "tok")])
    run(COMMANDS, ["prepare", "--corpus", str(prepared / "corpus"), "--tokenizer", str(tmp_path / "tok"), "--out",
                   str(tmp_path / "data"), "--seq-len", "32", "--workers", "1"])
    run(COMMANDS, ["pretrain", "--data", str(tmp_path / "data"), "--model", str(prepared / "tiny.yaml"), "--out",
                   str(tmp_path / "other"), "--batch-size", "8", "--max-steps", "1"])
    cases = [
        (["--model", tmp_path / "ner", "--methods", "typos"], "attack needs a classification model"),
        (["--model", classifier / "m", "--generator", tmp_path / "other"], "another vocabulary"),
        (["--model", tmp_path / "other"], "not a fine-tuned one"),
        (["--model", classifier / "m", "--rate", "0"], "--rate is out of range"),
        (["--model", classifier / "m", "--methods", "typo"], "unknown attack typo"),
    ]
    for flags, message in cases:
        capsys.readouterr()
        code, _, err = cli(capsys, "attack", "--data", dev, "--out", tmp_path / "out", *flags)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (flags, err)
