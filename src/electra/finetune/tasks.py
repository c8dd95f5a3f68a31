"""What differs between tasks: reading a file, turning examples into model inputs, the loss, and
turning model outputs back into one prediction per example (`decode`, what evaluation scores) or
one JSON-ready row with the prediction's probabilities too (`describe`, what `predict` writes and
a Python API returns). Training, evaluation and prediction (electra.finetune.train, .predict) are
the same for all four."""

from __future__ import annotations

import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from electra.config import SpecialIds
from electra.errors import UserError
from electra.finetune import conll, metrics, squad, tables

IGNORE = -100  # label of positions that carry no loss (padding, non-first word pieces)


@dataclass
class Feature:
    """One model input: [CLS] ... [SEP] ids, segment ids, its label, and which example it came from."""

    ids: list[int]
    types: list[int]
    label: object = None  # int / float / list[int] (one per piece) / (start, end)
    example: int = 0
    extra: dict = field(default_factory=dict)  # task-specific: word starts, token offsets, ...


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, T)
    attention_mask: torch.Tensor  # (B, T)
    token_type_ids: torch.Tensor  # (B, T)
    labels: torch.Tensor | None  # (B,), (B, T) or (B, 2)

    def to(self, device, non_blocking: bool = False) -> Batch:
        return Batch(*(None if t is None else t.to(device, non_blocking=non_blocking)
                       for t in (self.input_ids, self.attention_mask, self.token_type_ids, self.labels)))


def collate(features: list[Feature], pad_id: int, label_dtype=torch.long) -> Batch:
    T = max(len(f.ids) for f in features)
    B = len(features)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    types = torch.zeros((B, T), dtype=torch.long)
    mask = torch.zeros((B, T), dtype=torch.long)
    for i, f in enumerate(features):
        ids[i, :len(f.ids)] = torch.tensor(f.ids)
        types[i, :len(f.types)] = torch.tensor(f.types)
        mask[i, :len(f.ids)] = 1
    labels = None
    if features[0].label is not None:
        if isinstance(features[0].label, list):  # per-token labels, padded with IGNORE
            labels = torch.full((B, T), IGNORE, dtype=torch.long)
            for i, f in enumerate(features):
                labels[i, :len(f.label)] = torch.tensor(f.label)
        else:
            labels = torch.tensor([f.label for f in features], dtype=label_dtype)
    return Batch(ids, mask, types, labels)


def _pieces(tok: Tokenizer, texts: list[str]) -> list[list[int]]:
    return [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]


def _truncate_pair(a: list[int], b: list[int] | None, budget: int) -> bool:
    """Trim the longer text first until both fit (BERT's rule); True if anything was cut."""
    cut = False
    while len(a) + (len(b) if b is not None else 0) > budget:
        cut = True
        if b is not None and len(b) > len(a):
            b.pop()
        else:
            a.pop()
    return cut


class Task(ABC):
    """Base: file reading, encoding, loss, decoding, metrics for one kind of task."""

    name: str
    label_dtype = torch.long
    token_labels = False  # labels per word piece (IGNORE where none): the mean loss is over labelled pieces

    def __init__(self, labels: list[str] | None = None, settings: dict | None = None):
        self.labels = labels
        self.settings = settings or {}

    @property
    def num_labels(self) -> int:
        return len(self.labels) if self.labels else 1

    @abstractmethod
    def examples_from(self, inputs: list) -> list:
        """Examples from Python objects (the Python API and the server): what `read` makes from a file."""

    def describe(self, examples, features, outputs: list[np.ndarray], n_best: int = 1,
                 top_k: int | None = None) -> list[dict]:
        """One row per example: {"prediction": decode's prediction}, and per task what users of
        transformers pipelines expect next to it (probabilities, entities, answer offsets)."""
        return [{"prediction": p} for p in self.decode(examples, features, outputs)]


def _as_list(inputs) -> list:
    if not isinstance(inputs, (list, tuple)) or not inputs:
        raise UserError("inputs must be a non-empty list")
    return list(inputs)


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _prob(p) -> float:
    """Probabilities as written: six decimals are plenty to rank and threshold, and keep rows short."""
    return round(float(p), 6)


class SequenceTask(Task):
    """A text or a pair of texts -> one output; read from tables (TSV, CSV, JSONL)."""

    def read(self, path: Path, flags: dict, training: bool, labelled: bool = True):
        remembered = self.settings.get("columns")
        columns = tables.Columns.from_dict(remembered) if remembered and not _has_column_flags(flags) else None
        texts, label = tables.parse_columns(flags.get("text_columns"), flags.get("label_column"))
        examples, columns = tables.read_table(path, columns, texts=texts, label=label,
                                              no_header=flags.get("no_header", False), need_label=labelled)
        if training:
            self.settings["columns"] = columns.to_dict()
        self.check_labels(path, examples, training, labelled)
        return examples

    def examples_from(self, inputs: list) -> list[tables.TextExample]:
        """A text (str) or a pair of texts (a 2-tuple or 2-list of str) per input."""
        examples = []
        for n, item in enumerate(_as_list(inputs)):
            texts = (item,) if isinstance(item, str) else tuple(item) if isinstance(item, (tuple, list)) else None
            if texts is None or not 1 <= len(texts) <= 2 or not all(isinstance(t, str) for t in texts):
                raise UserError(f"input {n + 1} must be a text or a pair of texts (2 strings), not "
                                f"{type(item).__name__}")
            if not any(t.strip() for t in texts):
                raise UserError(f"input {n + 1} is empty")
            examples.append(tables.TextExample(texts, None))
        if len({len(ex.texts) for ex in examples}) > 1:
            raise UserError("mix of single texts and pairs; give all inputs the same shape")
        return examples

    @abstractmethod
    def check_labels(self, path: Path, examples, training: bool, labelled: bool) -> None:
        """Refuse labels that do not fit the task (and learn the label set when training)."""

    @abstractmethod
    def label_of(self, label: str):
        """The training target of a label as written in the data."""

    def encode(self, examples, tok: Tokenizer, special: SpecialIds, max_len: int) -> tuple[list[Feature], int]:
        columns = list(zip(*[ex.texts for ex in examples]))
        a_all = _pieces(tok, list(columns[0]))
        b_all = _pieces(tok, list(columns[1])) if len(columns) > 1 else [None] * len(examples)
        features, truncated = [], 0
        for n, (ex, a, b) in enumerate(zip(examples, a_all, b_all)):
            truncated += _truncate_pair(a, b, max_len - (3 if b is not None else 2))
            ids = [special.cls, *a, special.sep]
            types = [0] * len(ids)
            if b is not None:
                ids += [*b, special.sep]
                types += [1] * (len(b) + 1)
            features.append(Feature(ids, types, None if ex.label is None else self.label_of(ex.label), n))
        return features, truncated


class ClassificationTask(SequenceTask):
    """Labels as written in the data; cross-entropy; accuracy, F1, MCC."""

    name = "classification"

    def read(self, path: Path, flags: dict, training: bool, labelled: bool = True):
        examples = super().read(path, flags, training, labelled)
        shots = self.settings.get("shots")
        return self._sample(path, examples, shots) if training and shots else examples

    def _sample(self, path: Path, examples: list, shots: int) -> list:
        """`shots` examples of each class, drawn with the seed, in a shuffled order."""
        rng = np.random.default_rng(self.settings.get("seed", 0))
        chosen = []
        for label in self.labels:
            idx = [i for i, ex in enumerate(examples) if ex.label == label]
            if len(idx) < shots:
                raise UserError(f"--shots {shots} is more than the {len(idx)} examples of label {label!r} in {path}")
            chosen += list(rng.choice(idx, size=shots, replace=False))
        return [examples[i] for i in rng.permutation(chosen)]

    def check_labels(self, path: Path, examples, training: bool, labelled: bool) -> None:
        if training and self.labels is None:
            self.labels = sort_labels({ex.label for ex in examples})
            if len(self.labels) < 2:
                raise UserError(f"{path} has only one label ({self.labels[0]!r}); classification needs two or more")
        elif labelled and self.labels is not None:
            unseen = sorted({ex.label for ex in examples if ex.label is not None} - set(self.labels))
            if unseen:
                raise UserError(f"{path} has labels that training never saw: {', '.join(map(repr, unseen[:10]))}"
                                f"{' ...' if len(unseen) > 10 else ''}; the model knows {', '.join(map(repr, self.labels))}")

    def label_of(self, label: str) -> int:
        return self.labels.index(label)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), labels)

    def decode(self, examples, features, outputs: list[np.ndarray]) -> list:
        return [self.labels[int(np.argmax(o))] for o in outputs]

    def describe(self, examples, features, outputs: list[np.ndarray], n_best: int = 1,
                 top_k: int | None = None) -> list[dict]:
        """The label with its probability ("score") and every label's probability (softmax), most
        likely first ("scores"); top_k keeps the k most likely."""
        rows = []
        for o in outputs:
            best = int(np.argmax(o))  # decode's choice, from the logits themselves
            p = _softmax(o)
            order = sorted(range(len(p)), key=lambda i: (i != best, -p[i]))[:top_k]
            rows.append({"prediction": self.labels[best], "score": _prob(p[best]),
                         "scores": {self.labels[i]: _prob(p[i]) for i in order}})
        return rows

    def gold(self, examples) -> list:
        return [ex.label for ex in examples]

    def score(self, examples, predictions) -> dict:
        return metrics.classification_metrics(self.gold(examples), predictions, self.labels)


class RegressionTask(SequenceTask):
    """One number per example; mean squared error; Pearson and Spearman."""

    name = "regression"
    label_dtype = torch.float

    def check_labels(self, path: Path, examples, training: bool, labelled: bool) -> None:
        for n, ex in enumerate(examples):
            if ex.label is not None:
                try:
                    float(ex.label)
                except ValueError:
                    raise UserError(f"{path}: example {n + 1} has the label {ex.label!r}, not a number; "
                                    "regression needs numeric labels (or use --task classification)") from None

    def label_of(self, label: str) -> float:
        return float(label)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(logits.squeeze(-1).float(), labels.float())

    def decode(self, examples, features, outputs: list[np.ndarray]) -> list:
        return [float(o[0]) for o in outputs]

    def gold(self, examples) -> list:
        return [float(ex.label) for ex in examples]

    def score(self, examples, predictions) -> dict:
        return metrics.regression_metrics(self.gold(examples), predictions)


class TokenTask(Task):
    """NER: the label of a word sits on its first word piece; the other pieces carry no loss."""

    name = "ner"
    token_labels = True

    def read(self, path: Path, flags: dict, training: bool, labelled: bool = True):
        sentences = conll.read_tagged(path, need_tags=labelled)
        if training and self.labels is None:
            tags = {t for s in sentences for t in s.tags}
            self.labels = sorted(tags - {"O"}, key=lambda t: (t[2:], t[0])) + ["O"]
        elif labelled:
            unseen = sorted({t for s in sentences if s.tags for t in s.tags} - set(self.labels))
            if unseen:
                raise UserError(f"{path} has tags that training never saw: {', '.join(unseen[:10])}; "
                                f"the model knows {', '.join(self.labels)}")
        return sentences

    def examples_from(self, inputs: list) -> list[conll.TaggedSentence]:
        """A sentence per input: a text (split at whitespace into words) or a list of words."""
        sentences = []
        for n, item in enumerate(_as_list(inputs)):
            words = item.split() if isinstance(item, str) else list(item) if isinstance(item, (list, tuple)) else None
            if words is None or not all(isinstance(w, str) and w.strip() for w in words):
                raise UserError(f"input {n + 1} must be a text or a list of words (non-empty strings)")
            if not words:
                raise UserError(f"input {n + 1} is empty")
            sentences.append(conll.TaggedSentence(words, None, n + 1))
        return sentences

    def encode(self, sentences, tok: Tokenizer, special: SpecialIds, max_len: int) -> tuple[list[Feature], int]:
        index = {t: i for i, t in enumerate(self.labels)}
        unk = tok.token_to_id("[UNK]")
        encodings = tok.encode_batch([s.words for s in sentences], is_pretokenized=True, add_special_tokens=False)
        features, truncated = [], 0
        for n, (s, enc) in enumerate(zip(sentences, encodings)):
            per_word: list[list[int]] = [[] for _ in s.words]
            for piece, w in zip(enc.ids, enc.word_ids):
                if w is not None:
                    per_word[w].append(piece)
            ids, starts, labels = [special.cls], [], [IGNORE]
            for w, pieces in enumerate(per_word):
                pieces = pieces or [unk]  # a word the tokenizer drops (a control character) still gets a slot
                if len(ids) + len(pieces) > max_len - 1:
                    truncated += 1
                    break
                starts.append(len(ids))
                labels += [index[s.tags[w]] if s.tags else IGNORE] + [IGNORE] * (len(pieces) - 1)
                ids += pieces
            ids.append(special.sep)
            labels.append(IGNORE)
            features.append(Feature(ids, [0] * len(ids), labels if s.tags else None, n, {"starts": starts}))
        return features, truncated

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE)

    def decode(self, sentences, features, outputs: list[np.ndarray]) -> list[list[str]]:
        preds = []
        for s, f, o in zip(sentences, features, outputs):
            tags = [self.labels[int(i)] for i in o[f.extra["starts"]].argmax(-1)]
            tags += ["O"] * (len(s.words) - len(tags))  # words cut off by --max-seq-len
            preds.append(conll.to_bio(tags))  # a stray I- after O becomes B-, as seqeval would read it
        return preds

    def describe(self, sentences, features, outputs: list[np.ndarray], n_best: int = 1,
                 top_k: int | None = None) -> list[dict]:
        """decode's tags, each word's probability of the tag the model chose ("scores"; null for words
        cut off by --max-seq-len, which were not seen and are tagged O), and the entities those tags
        make: type, words [start_word, end_word), text, and the mean probability of its words."""
        rows = []
        for s, f, o, tags in zip(sentences, features, outputs, self.decode(sentences, features, outputs)):
            logits = o[f.extra["starts"]]
            p = _softmax(logits)
            scores: list[float | None] = [_prob(p[w, i]) for w, i in enumerate(logits.argmax(-1))]
            scores += [None] * (len(s.words) - len(scores))
            rows.append({"prediction": tags, "scores": scores, "entities": _entities(s.words, tags, scores)})
        return rows

    def gold(self, sentences) -> list:
        return [s.tags for s in sentences]

    def score(self, sentences, predictions) -> dict:
        return metrics.ner_metrics(self.gold(sentences), predictions)


class SpanTask(Task):
    """Extractive QA: [CLS] question [SEP] context window [SEP]; long contexts are covered by
    overlapping windows `doc_stride` tokens apart; the best span over all windows wins."""

    name = "qa"
    MAX_QUERY = 64

    def read(self, path: Path, flags: dict, training: bool, labelled: bool = True):
        examples, is_v2 = squad.read_squad(path, training=training)
        if training:
            self.settings["version_2"] = is_v2 or any(ex.impossible for ex in examples)
        return examples

    def examples_from(self, inputs: list) -> list[squad.QAExample]:
        """{"question": str, "context": str} per input, optionally with an "id"."""
        examples = []
        for n, item in enumerate(_as_list(inputs)):
            if not isinstance(item, dict) or not all(isinstance(item.get(k), str) and item[k].strip()
                                                     for k in ("question", "context")):
                raise UserError(f"input {n + 1} must be an object with a non-empty \"question\" and \"context\"")
            examples.append(squad.QAExample(str(item.get("id", n)), item["question"], item["context"]))
        return examples

    def encode(self, examples, tok: Tokenizer, special: SpecialIds, max_len: int) -> tuple[list[Feature], int]:
        stride = self.settings.get("doc_stride", 128)
        questions = tok.encode_batch([ex.question for ex in examples], add_special_tokens=False)
        contexts = tok.encode_batch([ex.context for ex in examples], add_special_tokens=False)
        features, windowed = [], 0
        for n, (ex, q, c) in enumerate(zip(examples, questions, contexts)):
            q_ids = q.ids[:self.MAX_QUERY]
            room = max_len - len(q_ids) - 3
            if room < 16:
                raise UserError(f"--max-seq-len {max_len} leaves no room for the context after a question "
                                f"of {len(q_ids)} tokens; use at least {len(q_ids) + 3 + 64}")
            answer = self._answer_tokens(ex, c.offsets)
            starts = [0]
            while starts[-1] + room < len(c.ids):
                starts.append(starts[-1] + min(stride, room))  # windows overlap, never leave a gap
            windowed += len(starts) > 1
            for s in starts:
                window = c.ids[s:s + room]
                offset = len(q_ids) + 2  # where the context starts in the sequence
                ids = [special.cls, *q_ids, special.sep, *window, special.sep]
                types = [0] * offset + [1] * (len(window) + 1)
                label = None
                if answer is not None:
                    a, b = answer
                    label = (a - s + offset, b - s + offset) if a >= s and b < s + len(window) else (0, 0)
                features.append(Feature(ids, types, label, n, {"offsets": c.offsets[s:s + len(window)],
                                                               "context_start": offset}))
        if windowed:
            print(f"electra: {windowed} context(s) longer than --max-seq-len were split into windows "
                  f"{stride} tokens apart", file=sys.stderr)
        return features, 0

    @staticmethod
    def _answer_tokens(ex: squad.QAExample, offsets) -> tuple[int, int] | None:
        """The answer's first and last context token, (0, 0)-labelled later if outside a window."""
        if ex.impossible:
            return (-1, -1)  # never inside a window: every window is labelled [CLS]
        if ex.answer_start is None:
            return None
        a_start, a_end = ex.answer_start, ex.answer_start + len(ex.answers[0])
        first = next((i for i, (s, e) in enumerate(offsets) if e > a_start), None)
        last = next((i for i in range(len(offsets) - 1, -1, -1) if offsets[i][0] < a_end), None)
        if first is None or last is None or last < first:
            return (-1, -1)
        return first, last

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        start, end = logits.float().unbind(-1)  # (B, T) each
        return (F.cross_entropy(start, labels[:, 0]) + F.cross_entropy(end, labels[:, 1])) / 2

    def decode(self, examples, features, outputs: list[np.ndarray], n_best: int = 1) -> list:
        """Best span per example over its windows: start+end logit, start <= end, at most
        max_answer_len tokens, inside the context; SQuAD 2.0 answers "" when [CLS] scores higher.
        With n_best > 1, the n best (score, text) pairs instead of the text."""
        preds = []
        for ranked in self._rank(examples, features, outputs, n_best):
            pairs = [(c.score, c.text) for c in ranked]
            preds.append(pairs if n_best > 1 else (ranked[0].text if ranked else ""))
        return preds

    def describe(self, examples, features, outputs: list[np.ndarray], n_best: int = 1,
                 top_k: int | None = None) -> list[dict]:
        """decode's answer with the question's "id", its probability ("score": softmax of the start
        times softmax of the end, over its window's context and [CLS], as transformers' QA pipeline
        gives it) and its characters [start, end) in the context (0, 0 for the empty answer); with
        n_best > 1, "n_best" lists the best answers with their start+end logits."""
        rows = []
        for ex, ranked in zip(examples, self._rank(examples, features, outputs, n_best)):
            best = ranked[0] if ranked else _Span(float("nan"), "", 0, 0, None)
            row = {"id": ex.id, "prediction": best.text, "score": best.probability,
                   "start": best.start, "end": best.end}
            if n_best > 1:
                row["n_best"] = [{"text": c.text, "score": round(c.score, 4)} for c in ranked]
            rows.append(row)
        return rows

    def _rank(self, examples, features, outputs: list[np.ndarray], n_best: int) -> list[list[_Span]]:
        """The n best distinct answers per example, best first (see decode)."""
        max_answer = self.settings.get("max_answer_len", 30)
        best: dict[int, list[_Span]] = {}
        null: dict[int, _Span] = {}
        for f, o in zip(features, outputs):
            n, c0 = f.example, f.extra["context_start"]
            k = len(f.extra["offsets"])
            start, end = o[c0:c0 + k, 0], o[c0:c0 + k, 1]
            scores = start[:, None] + end[None, :]  # (k, k): span (i, j)
            i, j = np.indices(scores.shape)
            scores = np.where((j >= i) & (j - i < max_answer), scores, -np.inf)
            top = np.argsort(scores, axis=None)[::-1][:max(n_best, 1)]
            # probabilities over what an answer may be in this window: [CLS] (no answer) or the context
            p_start = _softmax(np.concatenate([o[:1, 0], start]))
            p_end = _softmax(np.concatenate([o[:1, 1], end]))
            context = examples[n].context
            for flat in top:
                a, b = divmod(int(flat), k)
                if np.isfinite(scores[a, b]):
                    first, last = f.extra["offsets"][a][0], f.extra["offsets"][b][1]
                    best.setdefault(n, []).append(_Span(float(scores[a, b]), context[first:last], first, last,
                                                        _prob(p_start[a + 1] * p_end[b + 1])))
            null_score = float(o[0, 0] + o[0, 1])
            if n not in null or null_score < null[n].score:
                null[n] = _Span(null_score, "", 0, 0, _prob(p_start[0] * p_end[0]))
        out = []
        for n in range(len(examples)):
            candidates = sorted(best.get(n, []), key=lambda c: -c.score)
            seen, ranked = set(), []
            for c in candidates:
                if c.text not in seen:
                    seen.add(c.text)
                    ranked.append(c)
            if self.settings.get("version_2") and (not ranked or null[n].score > ranked[0].score):
                ranked.insert(0, null.get(n, _Span(0.0, "", 0, 0, None)))
            out.append(ranked[:max(n_best, 1)])
        return out

    def gold(self, examples) -> list:
        return [ex.answers for ex in examples]

    def score(self, examples, predictions) -> dict:
        return squad.squad_scores(examples, {ex.id: p for ex, p in zip(examples, predictions)})


@dataclass
class _Span:
    """A candidate answer: start+end logit, text, characters [start, end) in the context, probability."""

    score: float
    text: str
    start: int
    end: int
    probability: float | None


def _entities(words: list[str], tags: list[str], scores: list[float | None]) -> list[dict]:
    """The entities of BIO tags: a B- and the I- of its type that follow it. Text is the words joined
    by spaces, or without them for Chinese characters (which are written without spaces)."""
    spans: list[list] = []
    for w, tag in enumerate(tags):
        if tag.startswith("I-") and spans and spans[-1][2] == w and spans[-1][0] == tag[2:]:
            spans[-1][2] = w + 1
        elif tag != "O":
            spans.append([tag[2:], w, w + 1])
    out = []
    for kind, a, b in spans:
        chosen = words[a:b]
        cjk = all(squad._is_cjk(ch) for word in chosen for ch in word)
        seen = [s for s in scores[a:b] if s is not None]
        out.append({"type": kind, "start_word": a, "end_word": b, "text": ("" if cjk else " ").join(chosen),
                    "score": _prob(sum(seen) / len(seen)) if seen else None})
    return out


def _has_column_flags(flags: dict) -> bool:
    return bool(flags.get("text_columns") or flags.get("label_column") or flags.get("no_header"))


def sort_labels(labels: set[str]) -> list[str]:
    """Numbers in numeric order ('2' before '10'), other labels alphabetically."""
    def key(label: str):
        try:
            return (0, float(label), label)
        except ValueError:
            return (1, 0.0, label)
    return sorted(labels, key=key)


class PromptTask(ClassificationTask):
    """Prompt-based classification through the discriminator's replaced-token head ("Prompting ELECTRA",
    Xia et al. 2022): one input per example and label, the template filled with the label's word
    (electra.prompt). Training teaches the head that the gold label's word is original and the other
    words replaced (binary cross-entropy on their pieces); the prediction is the most original word."""

    name = "prompt"
    token_labels = True

    def __init__(self, labels: list[str] | None = None, settings: dict | None = None):
        from electra.prompt import Prompt

        super().__init__(labels, settings)
        if "words" not in self.settings:
            raise UserError("--task prompt needs --template and --verbalizer")
        self.prompt = Prompt(self.settings["template"], dict(self.settings["words"]))
        self.labels = self.prompt.labels

    def read(self, path: Path, flags: dict, training: bool, labelled: bool = True):
        examples = super().read(path, flags, training, labelled)
        if any(len(ex.texts) != 1 for ex in examples):
            raise UserError(f"{path} holds text pairs; prompts read one text per example: pass --text-columns NAME")
        return examples

    def check_labels(self, path: Path, examples, training: bool, labelled: bool) -> None:
        present = {ex.label for ex in examples if ex.label is not None}
        if training:
            self.prompt.check_labels(present, str(path))
        elif labelled and present - set(self.labels):
            raise UserError(f"{path} has labels the verbalizer does not name: {', '.join(sorted(present - set(self.labels)))}")

    def encode(self, examples, tok: Tokenizer, special: SpecialIds, max_len: int) -> tuple[list[Feature], int]:
        from electra.prompt import fill

        features, truncated = [], 0
        for n, ex in enumerate(examples):
            filled, cut = fill(tok, special, self.prompt, ex.texts[0], max_len)
            truncated += cut
            gold = None if ex.label is None else self.labels.index(ex.label)
            for j, f in enumerate(filled):
                label = None
                if gold is not None:  # the gold word is original (0), the others replaced (1)
                    label = [IGNORE] * len(f.ids)
                    for p in f.label_positions:
                        label[p] = int(j != gold)
                features.append(Feature(f.ids, [0] * len(f.ids), label, n,
                                        {"positions": f.label_positions, "choice": j}))
        return features, truncated

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        keep = (labels != IGNORE).float()  # the label words' pieces; a weight, not an index (no host sync)
        bce = F.binary_cross_entropy_with_logits(logits.float(), labels.clamp(min=0).float(), reduction="none")
        return (bce * keep).sum() / keep.sum().clamp(min=1)

    def _scores(self, examples, features, outputs) -> np.ndarray:
        from electra.prompt import choice_scores

        scores = np.zeros((len(examples), len(self.labels)))
        for f, o in zip(features, outputs):
            scores[f.example, f.extra["choice"]] = choice_scores(o, f.extra["positions"])
        return scores

    def decode(self, examples, features, outputs: list[np.ndarray]) -> list:
        return super().decode(examples, features, list(self._scores(examples, features, outputs)))

    def describe(self, examples, features, outputs: list[np.ndarray], n_best: int = 1,
                 top_k: int | None = None) -> list[dict]:
        """A classifier's rows, the label scores in place of logits (a softmax over them)."""
        return super().describe(examples, features, list(self._scores(examples, features, outputs)), top_k=top_k)


def make_task(name: str, labels: list[str] | None = None, settings: dict | None = None) -> Task:
    if name == "classification":
        return ClassificationTask(labels, settings)
    if name == "regression":
        return RegressionTask(labels, settings)
    if name == "ner":
        return TokenTask(labels, settings)
    if name == "qa":
        return SpanTask(labels, settings)
    if name == "prompt":
        return PromptTask(labels, settings)
    raise UserError(f"unknown task {name!r}; choose classification, regression, ner, qa or prompt")
