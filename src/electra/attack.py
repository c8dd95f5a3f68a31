"""`electra attack`: how robust is a fine-tuned classifier, and can the discriminator tell when it is attacked?

Attacks (the last text of a pair is attacked, as TextFooler attacks the hypothesis):
- typos: character swaps, deletions, insertions and keyboard neighbours in words, at `rate`;
- words: word drops and swaps with the next word, at `rate`;
- generator: an ELECTRA generator proposes in-context substitutes for the most important words
  (importance: how much deleting the word lowers the gold label's probability), taken greedily until
  the prediction flips, within a budget of queries and of words changed (BAE / BERT-Attack style,
  with our own generator). As in BAE, stop words are neither replaced nor put in: a small generator
  proposes "the", "in", "and" (or 的, 年) for almost every mask, which deletes a word's meaning rather
  than substituting for it (BENCHMARKS.md).

Only examples the model classifies correctly are attacked (the success rate's denominator); the metric
under attack scores every example (the unattacked keep their text). With a discriminator (`detect`),
each clean and each changed input gets its largest replaced-token probability, and the ROC AUC of
telling them apart is reported.
"""

from __future__ import annotations

import functools
import random
import re
from dataclasses import dataclass, field

import numpy as np

from electra.errors import UserError

KEYBOARD = ["qwertyuiop", "asdfghjkl", "zxcvbnm"]
_HAN = "\u3400-\u9fff\uf900-\ufaff"
_CJK = re.compile(f"[{_HAN}]")
_WIDE = f"\u3000-\u303f{_HAN}\uff00-\uffef"  # CJK characters, punctuation and full-width forms
_CJK_UNITS = re.compile(rf"[{_WIDE}]|\s+|[^\s{_WIDE}]+")


def split_words(text: str) -> tuple[list[str], str]:
    """Words and the separator that joins them. Chinese text (any CJK character) has no spaces between
    words: each character (and full-width punctuation mark) is a word, and so is each run of other
    characters ("LED", "2007") and of spaces, joined by "" back into the very text (spaces are never
    edited)."""
    if _CJK.search(text):
        return _CJK_UNITS.findall(text), ""
    return text.split(), " "


@functools.cache
def stop_words(chinese: bool) -> frozenset[str]:
    """The stop words an attack leaves alone and never puts in: scikit-learn's English list (318 words),
    or for Chinese, whose words here are characters, stopwords-iso's (794 words and characters)."""
    if not chinese:
        from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

        return ENGLISH_STOP_WORDS
    import stopwordsiso

    return frozenset(stopwordsiso.stopwords("zh"))


def _neighbours() -> dict[str, str]:
    near: dict[str, str] = {}
    for r, row in enumerate(KEYBOARD):
        for c, ch in enumerate(row):
            around = [row[c - 1] if c else "", row[c + 1] if c + 1 < len(row) else ""]
            for rr in (r - 1, r + 1):
                if 0 <= rr < len(KEYBOARD):
                    around += [KEYBOARD[rr][cc] for cc in (c - 1, c, c + 1) if 0 <= cc < len(KEYBOARD[rr])]
            near[ch] = "".join(a for a in around if a)
    return near


NEAR = _neighbours()


def typo(word: str, rng: random.Random) -> str:
    """One character-level edit of a word: swap, delete, insert or a keyboard neighbour."""
    if len(word) < 2 or not word.isalpha():
        return word
    i = rng.randrange(len(word) - 1)
    op = rng.choice(["swap", "delete", "insert", "neighbour"])
    if op == "swap":
        return word[:i] + word[i + 1] + word[i] + word[i + 2:]
    if op == "delete":
        return word[:i] + word[i + 1:]
    c = word[i].lower()
    if op == "insert":
        return word[:i] + rng.choice(NEAR.get(c, "e")) + word[i:]
    return word[:i] + rng.choice(NEAR.get(c, c)) + word[i + 1:]


def perturb_typos(text: str, rate: float, rng: random.Random) -> tuple[str, list]:
    words, sep = split_words(text)
    if not sep:
        return _character_typos(words, rate, rng)
    changed = []
    for i, w in enumerate(words):
        if rng.random() < rate:
            new = typo(w, rng)
            if new != w:
                changed.append([w, new])
                words[i] = new
    return sep.join(words), changed


def _character_typos(chars: list[str], rate: float, rng: random.Random) -> tuple[str, list]:
    """Chinese without spaces, where each character is a word: swap a character with the next, delete it
    or repeat it, each at `rate` per character (keyboard neighbours have no meaning here)."""
    out, changed, i = [], [], 0
    while i < len(chars):
        c = chars[i]
        if _CJK.match(c) and rng.random() < rate:
            op = rng.choice(["swap", "delete", "repeat"])
            if op == "swap" and i + 1 < len(chars) and _CJK.match(chars[i + 1]):
                out += [chars[i + 1], c]
                changed.append([c + chars[i + 1], chars[i + 1] + c])
                i += 2
                continue
            if op == "delete" and any(not w.isspace() for w in out + chars[i + 1:]):  # never the whole text
                changed.append([c, ""])
                i += 1
                continue
            out.append(c)
            changed.append([c, c + c])
        out.append(c)
        i += 1
    return "".join(out), changed


def perturb_words(text: str, rate: float, rng: random.Random) -> tuple[str, list]:
    words, sep = split_words(text)
    out, changed, i = [], [], 0
    while i < len(words):
        if words[i].isspace():  # Chinese text's spaces are kept as they are
            out.append(words[i])
            i += 1
            continue
        if rng.random() < rate and len(words) > 1:
            can_swap = i + 1 < len(words) and not words[i + 1].isspace()
            can_drop = any(not w.isspace() for w in out) or can_swap  # never every word: an empty text cannot be scored
            if can_drop and (rng.random() < 0.5 or not can_swap):
                changed.append([words[i], ""])  # dropped
                i += 1
                continue
            if can_swap:
                changed.append([f"{words[i]} {words[i + 1]}", f"{words[i + 1]} {words[i]}"])  # swapped
                out += [words[i + 1], words[i]]
                i += 2
                continue
        out.append(words[i])
        i += 1
    return sep.join(out), changed


@dataclass
class Query:
    """Asks the fine-tuned model for label probabilities, counting the questions."""

    ft: object
    device: object
    others: tuple[str, ...] = ()  # the texts of a pair that are not attacked (before the attacked one)
    count: int = 0

    def __call__(self, texts: list[str]) -> list[dict]:
        from electra.finetune.predict import describe_examples
        from electra.finetune.tables import TextExample

        self.count += len(texts)
        examples = [TextExample((*self.others, t), None) for t in texts]
        return [r["scores"] for r in describe_examples(self.ft, examples, self.device, batch_size=64)[0]]


@dataclass
class Outcome:
    text: str
    changed: list = field(default_factory=list)
    queries: int = 0


def generator_attack(text: str, gold: str, query: Query, gen, max_queries: int, max_change: float,
                     candidates: int = 12) -> Outcome:
    """Greedy in-context substitution: the most important words first, the generator's candidates for
    each, until the prediction flips or a budget runs out."""
    from electra.inference import fill_mask

    words, sep = split_words(text)
    start = query.count
    if len(words) < 2:
        return Outcome(text, [], 0)
    base = query([text])[0][gold]
    units = [i for i, w in enumerate(words) if not w.isspace()]  # Chinese text's spaces are no words
    dropped = query([sep.join(words[:i] + words[i + 1:]) for i in units])
    order = [units[j] for j in np.argsort([d[gold] - base for d in dropped])]  # the largest drop first
    budget = max(1, int(round(max_change * len(units))))
    changed: list = []
    current, current_p = list(words), base
    stop = stop_words(chinese=not sep)
    for i in order:
        if len(changed) >= budget or query.count - start >= max_queries:
            break
        original = words[i]
        if not any(ch.isalnum() for ch in original) or original.lower() in stop:
            continue
        masked = sep.join(current[:i] + [gen.tokenizer.id_to_token(gen.special.mask)] + current[i + 1:])
        try:
            cands = fill_mask(gen, [masked], top_k=candidates)[0]["masks"][0]["candidates"]
        except UserError:
            continue  # the mask fell beyond the model's positions
        options = [c["token"] for c in cands if not c["token"].startswith("##") and c["token"] != original
                   and c["token"].lower() != original.lower() and any(ch.isalnum() for ch in c["token"])
                   and not (c["token"].startswith("[") and c["token"].endswith("]"))
                   and c["token"].lower() not in stop]
        options = options[:max(0, max_queries - (query.count - start))]
        if not options:
            continue
        trials = [sep.join(current[:i] + [o] + current[i + 1:]) for o in options]
        scores = query(trials)
        for o, t, s in zip(options, trials, scores):
            if max(s, key=s.get) != gold:  # flipped
                return Outcome(t, changed + [[original, o]], query.count - start)
        best = int(np.argmin([s[gold] for s in scores]))
        if scores[best][gold] < current_p:
            current[i], current_p = options[best], scores[best][gold]
            changed.append([original, options[best]])
    return Outcome(sep.join(current), changed, query.count - start)


def detection_auc(detector, clean: list[str], attacked: list[str]) -> float | None:
    """ROC AUC of the discriminator's largest replaced-token probability: attacked (1) against clean (0)."""
    from sklearn.metrics import roc_auc_score

    from electra.inference import detect

    if not attacked:
        return None
    score = lambda texts: [max(r["replaced_prob"], default=0.0) for r in detect(detector, texts)]
    y = [0] * len(clean) + [1] * len(attacked)
    return float(roc_auc_score(y, score(clean) + score(attacked)))


def generator_for(ft, generator: str | None):
    """The generator of the substitution attack: --generator, or the one of the model the classifier was
    fine-tuned from (an export's discriminator/ has it beside, in generator/); same vocabulary as the model."""
    from pathlib import Path

    from electra.config import read_json
    from electra.data.tokenizer import tokenizer_hash
    from electra.pretrained import load_pretrained

    source = generator
    meta = Path(ft.directory) / "electra.json"
    if source is None and meta.is_file():
        recorded = read_json(meta, "model config").get("source")
        source = recorded if recorded and Path(recorded).exists() else None
    if source is None:
        raise UserError("the generator attack needs --generator SRC (the model does not record what it was "
                        "fine-tuned from)")
    gen = load_pretrained(source)
    beside = Path(source).parent / "generator"
    if gen.generator is None and generator is None and beside.is_dir():
        gen = load_pretrained(beside)
    gen.require("generator")
    if tokenizer_hash(gen.tokenizer) != tokenizer_hash(ft.tokenizer):
        raise UserError(f"the generator in {source} has another vocabulary than {ft.directory}; pass a --generator "
                        "pretrained with the model's tokenizer")
    return gen


def attack_examples(ft, device, examples: list, clean: list[str], method: str, *, rng: random.Random, rate: float,
                    generator, max_queries: int, max_change: float, detector=None) -> tuple[list[dict], dict]:
    """One attack on every example the model gets right (`clean`: its predictions): a readable row per
    example, and the results: the metric under attack, success rate, words changed, queries, detection AUC."""
    from electra.finetune.tables import TextExample

    rows, attacked_texts, clean_texts = [], [], []
    for n, (ex, pred) in enumerate(zip(examples, clean)):
        others, text = ex.texts[:-1], ex.texts[-1]
        query = Query(ft, device, others)
        row = {"index": n, "label": ex.label, "clean": text, "clean_prediction": pred, "attacked": text,
               "prediction": pred, "success": False, "changed": [], "queries": 0}
        if pred == ex.label:
            if method == "generator":
                outcome = generator_attack(text, ex.label, query, generator, max_queries, max_change)
                new, changed, queries = outcome.text, outcome.changed, outcome.queries
            else:
                new, changed = (perturb_typos if method == "typos" else perturb_words)(text, rate, rng)
                queries = 1
            if changed:
                scores = query([new])[0]
                row.update(attacked=new, prediction=max(scores, key=scores.get), changed=changed, queries=queries)
                row["success"] = row["prediction"] != ex.label
                clean_texts.append(text)
                attacked_texts.append(new)
        rows.append(row)
    attacked = [TextExample((*ex.texts[:-1], r["attacked"]), ex.label) for ex, r in zip(examples, rows)]
    tried = [r for r in rows if r["clean_prediction"] == r["label"]]
    wins = [r for r in tried if r["success"]]
    result = {"metrics": ft.task.score(attacked, [r["prediction"] for r in rows]), "attacked": len(tried),
              "success_rate": len(wins) / max(1, len(tried)),
              "words_changed_per_success": float(np.mean([len(r["changed"]) for r in wins])) if wins else None,
              "queries_per_example": float(np.mean([r["queries"] for r in tried])) if tried else 0.0}
    if detector is not None:
        result["detection_auc"] = detection_auc(detector, clean_texts, attacked_texts)
    return rows, result
