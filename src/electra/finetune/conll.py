"""Tagged sentences for NER: CoNLL column files, one-character-per-line Chinese files, JSON lines.

CoNLL: one word per line, the word first and its tag last, a blank line between sentences,
`-DOCSTART-` lines skipped. JSON lines: {"tokens": [...], "tags": [...]}. Tags in IOB1, IOB2
(BIO), BIOES or BMES are all normalised to BIO, which is what the model learns and predicts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from electra.errors import UserError
from electra.finetune.tables import read_text_file


@dataclass
class TaggedSentence:
    words: list[str]
    tags: list[str] | None  # None when the file has no tags (prediction input)
    line: int  # where the sentence starts, for messages


def split_tag(tag: str) -> tuple[str, str]:
    """'B-PER' -> ('B', 'PER'); 'O' -> ('O', ''); a bare type 'PER' -> ('I', 'PER')."""
    if tag == "O":
        return "O", ""
    prefix, sep, kind = tag.partition("-")
    if sep and prefix.upper() in ("B", "I", "E", "S", "M"):
        return prefix.upper(), kind
    return "I", tag


def to_bio(tags: list[str]) -> list[str]:
    """Normalise IOB1/IOB2/BIOES/BMES to BIO: S- and B- begin an entity; I-, M- and E- continue
    one of the same type, and begin one otherwise (which is what IOB1's I- means)."""
    out: list[str] = []
    prev_kind = ""
    prev_open = False  # the previous tag is inside an entity that may continue
    for tag in tags:
        prefix, kind = split_tag(tag)
        if prefix == "O":
            out.append("O")
            prev_kind, prev_open = "", False
            continue
        begins = prefix in ("B", "S") or not (prev_open and kind == prev_kind)
        out.append(("B-" if begins else "I-") + kind)
        prev_kind, prev_open = kind, prefix not in ("E", "S")
    return out


def read_tagged(path: Path, need_tags: bool = True) -> list[TaggedSentence]:
    path = Path(path)
    text = read_text_file(path, "data file")
    sentences = _read_jsonl(path, text) if path.suffix.lower() in (".jsonl", ".json") else _read_columns(path, text)
    if not sentences:
        raise UserError(f"{path} holds no sentences")
    if need_tags and any(s.tags is None for s in sentences):
        first = next(s for s in sentences if s.tags is None)
        raise UserError(f"{path} has no tags (the sentence at line {first.line} has one column); "
                        "training and evaluation need a tag after each word")
    for s in sentences:
        if s.tags is not None:
            s.tags = to_bio(s.tags)
    return sentences


def _read_columns(path: Path, text: str) -> list[TaggedSentence]:
    sentences: list[TaggedSentence] = []
    words: list[str] = []
    tags: list[str] = []
    start = 1
    columns = None

    def flush():
        if words:
            sentences.append(TaggedSentence(list(words), list(tags) if columns > 1 else None, start))
        words.clear()
        tags.clear()

    for n, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            flush()
            continue
        if parts[0] == "-DOCSTART-":
            flush()
            continue
        if columns is None:
            columns = len(parts)
        elif (len(parts) > 1) != (columns > 1):
            raise UserError(f"{path} line {n} has {len(parts)} column(s) but earlier lines have {columns}; "
                            "every line needs the word first and its tag last")
        if not words:
            start = n
        words.append(parts[0])
        if len(parts) > 1:
            tags.append(parts[-1])
    flush()
    return sentences


def _read_jsonl(path: Path, text: str) -> list[TaggedSentence]:
    sentences = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            words = row.get("tokens", row.get("words"))
        except (ValueError, AttributeError):
            raise UserError(f"{path} line {n} is not a JSON object with a 'tokens' list") from None
        if not isinstance(words, list) or not words:
            raise UserError(f"{path} line {n} lacks a non-empty 'tokens' list")
        tags = row.get("tags", row.get("ner_tags", row.get("labels")))
        if tags is not None and len(tags) != len(words):
            raise UserError(f"{path} line {n} has {len(words)} words but {len(tags)} tags; they must match one to one")
        sentences.append(TaggedSentence([str(w) for w in words], None if tags is None else [str(t) for t in tags], n))
    return sentences
