"""What differs between tasks: reading a file, turning examples into model inputs, the loss, and
turning model outputs back into one prediction per example. Training, evaluation and prediction
(electra.finetune.train, .predict) are the same for all four."""

from __future__ import annotations

import sys
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


class Task:
    """Base: file reading, encoding, loss, decoding, metrics for one kind of task."""

    name: str
    label_dtype = torch.long

    def __init__(self, labels: list[str] | None = None, settings: dict | None = None):
        self.labels = labels
        self.settings = settings or {}

    @property
    def num_labels(self) -> int:
        return len(self.labels) if self.labels else 1


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

    def check_labels(self, path: Path, examples, training: bool, labelled: bool) -> None:
        raise NotImplementedError

    def label_of(self, label: str):
        """The training target of a label as written in the data."""
        raise NotImplementedError

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
        max_answer_len tokens, inside the context; SQuAD 2.0 answers "" when [CLS] scores higher."""
        max_answer = self.settings.get("max_answer_len", 30)
        best: dict[int, list[tuple[float, str]]] = {}
        null: dict[int, float] = {}
        for f, o in zip(features, outputs):
            n, c0 = f.example, f.extra["context_start"]
            k = len(f.extra["offsets"])
            start, end = o[c0:c0 + k, 0], o[c0:c0 + k, 1]
            scores = start[:, None] + end[None, :]  # (k, k): span (i, j)
            i, j = np.indices(scores.shape)
            scores = np.where((j >= i) & (j - i < max_answer), scores, -np.inf)
            top = np.argsort(scores, axis=None)[::-1][:max(n_best, 1)]
            context = examples[n].context
            for flat in top:
                a, b = divmod(int(flat), k)
                if np.isfinite(scores[a, b]):
                    text = context[f.extra["offsets"][a][0]:f.extra["offsets"][b][1]]
                    best.setdefault(n, []).append((float(scores[a, b]), text))
            null[n] = min(null.get(n, np.inf), float(o[0, 0] + o[0, 1]))
        preds = []
        for n in range(len(examples)):
            candidates = sorted(best.get(n, []), key=lambda c: -c[0])
            seen, ranked = set(), []
            for s, t in candidates:
                if t not in seen:
                    seen.add(t)
                    ranked.append((s, t))
            if self.settings.get("version_2") and (not ranked or null[n] > ranked[0][0]):
                ranked.insert(0, (null.get(n, 0.0), ""))
            preds.append(ranked[:max(n_best, 1)] if n_best > 1 else (ranked[0][1] if ranked else ""))
        return preds

    def gold(self, examples) -> list:
        return [ex.answers for ex in examples]

    def score(self, examples, predictions) -> dict:
        return squad.squad_scores(examples, {ex.id: p for ex, p in zip(examples, predictions)})


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


def make_task(name: str, labels: list[str] | None = None, settings: dict | None = None) -> Task:
    if name == "classification":
        return ClassificationTask(labels, settings)
    if name == "regression":
        return RegressionTask(labels, settings)
    if name == "ner":
        return TokenTask(labels, settings)
    if name == "qa":
        return SpanTask(labels, settings)
    raise UserError(f"unknown task {name!r}; choose classification, regression, ner or qa")
