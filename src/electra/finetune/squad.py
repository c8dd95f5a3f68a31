"""Extractive QA data: SQuAD v1.1/v2.0-format JSON (CMRC 2018 too), and the official scoring.

Scoring follows the official SQuAD evaluation: answers are lower-cased, punctuation and the
articles a/an/the removed, whitespace collapsed; exact match and token-overlap F1 take the best
over the gold answers; both are reported 0-100. Chinese text is compared character by character
(as the CMRC 2018 evaluation does), since it has no spaces between words.
"""

from __future__ import annotations

import json
import re
import string
import sys
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from electra.errors import UserError
from electra.finetune.tables import read_text_file


@dataclass
class QAExample:
    id: str
    question: str
    context: str
    answers: list[str] = field(default_factory=list)  # gold texts (all annotators); [] = unanswerable
    answer_start: int | None = None  # char offset of the first gold answer, for training
    impossible: bool = False


def read_squad(path: Path, training: bool = True) -> tuple[list[QAExample], bool]:
    """-> (examples, is_v2). For training, answers that do not occur at their offset are searched
    for in the context; those not found at all are counted and skipped (reported on stderr).
    Otherwise every question is kept, as the official evaluation scores every question."""
    path = Path(path)
    text = read_text_file(path, "data file")
    try:
        doc = json.loads(text)
        articles = doc["data"]
        if not isinstance(articles, list):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{path} is not SQuAD-format JSON (expected {{\"data\": [{{\"paragraphs\": [...]}}]}})") from None
    examples: list[QAExample] = []
    is_v2 = False
    skipped = 0
    for a, article in enumerate(articles):
        for paragraph in article.get("paragraphs", []) if isinstance(article, dict) else []:
            try:
                context = paragraph["context"]
                qas = paragraph["qas"]
            except (KeyError, TypeError):
                raise UserError(f"{path}: a paragraph of article {a} lacks 'context' or 'qas'") from None
            for qa in qas:
                try:
                    qid, question = str(qa["id"]), qa["question"]
                except (KeyError, TypeError):
                    raise UserError(f"{path}: a question in article {a} lacks 'id' or 'question'") from None
                impossible = bool(qa.get("is_impossible", False))
                is_v2 |= "is_impossible" in qa
                answers = [ans for ans in qa.get("answers", []) if isinstance(ans, dict) and ans.get("text")]
                if impossible or not training:
                    examples.append(QAExample(qid, question, context, [a_["text"] for a_ in answers], None, impossible))
                    continue
                if not answers:
                    skipped += 1
                    continue
                start = _locate(context, answers[0]["text"], answers[0].get("answer_start"))
                if start is None:
                    skipped += 1
                    continue
                examples.append(QAExample(qid, question, context, [a_["text"] for a_ in answers], start))
    if skipped:
        print(f"electra: {path}: skipped {skipped} question(s) whose answer does not occur in its context "
              "or that have no answer", file=sys.stderr)
    if not examples:
        raise UserError(f"{path} holds no usable questions")
    return examples, is_v2


def _locate(context: str, answer: str, start) -> int | None:
    if isinstance(start, int) and context[start:start + len(answer)] == answer:
        return start
    found = context.find(answer)  # some datasets' offsets are off; the text itself decides
    return None if found < 0 else found


# --- official scoring -------------------------------------------------------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def _is_cjk(ch: str) -> bool:
    return "\u4e00" <= ch <= "\u9fff" or "\u3400" <= ch <= "\u4dbf" or "\uf900" <= ch <= "\ufaff"


def normalize_answer(s: str) -> str:
    """The official SQuAD normalisation: lower case, no punctuation, no articles, single spaces."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def answer_tokens(s: str) -> list[str]:
    s = normalize_answer(s)
    if not any(_is_cjk(ch) for ch in s):
        return s.split()
    # Chinese: each CJK character is a token; Chinese punctuation is dropped as English punctuation is
    out: list[str] = []
    for word in s.split():
        buf = ""
        for ch in word:
            if _is_cjk(ch) or unicodedata.category(ch).startswith("P"):
                if buf:
                    out.append(buf)
                    buf = ""
                if _is_cjk(ch):
                    out.append(ch)
            else:
                buf += ch
        if buf:
            out.append(buf)
    return out


def exact_match(prediction: str, gold: str) -> float:
    return float(answer_tokens(prediction) == answer_tokens(gold))


def f1_score(prediction: str, gold: str) -> float:
    p, g = answer_tokens(prediction), answer_tokens(gold)
    if not p or not g:  # SQuAD v2: both empty (unanswerable, predicted so) is a match
        return float(p == g)
    common = sum((Counter(p) & Counter(g)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(g)
    return 2 * precision * recall / (precision + recall)


def squad_scores(examples: list[QAExample], predictions: dict[str, str]) -> dict[str, float]:
    """Exact match and F1 (0-100) of predictions {id: text} against every example's gold answers."""
    em = f1 = 0.0
    for ex in examples:
        golds = ex.answers or [""]
        pred = predictions.get(ex.id, "")
        em += max(exact_match(pred, g) for g in golds)
        f1 += max(f1_score(pred, g) for g in golds)
    n = max(len(examples), 1)
    return {"exact_match": round(100 * em / n, 4), "f1": round(100 * f1 / n, 4), "examples": len(examples)}
