"""Tagged sentences for NER: CoNLL column files, one-character-per-line Chinese files, JSON lines,
and (for prediction) plain text.

CoNLL: one word per line, the word first and its tag last, a blank line between sentences,
`-DOCSTART-` lines skipped. JSON lines: {"tokens": [...], "tags": [...]}. Tags in IOB1, IOB2
(BIO), BIOES, BILOU or BMES are all normalised to BIO, which is what the model learns and predicts;
a tag without a scheme prefix is refused rather than guessed into an entity. Plain text, one
sentence per line with its words separated by spaces, is what a file without tabs is when its
lines hold different numbers of words (or, for prediction, when no blank line separates sentences
and its last column is not tags): read as columns, its lines would become the words of one sentence.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from electra.errors import UserError
from electra.finetune.tables import LABEL_NAMES, TEXT_NAMES, read_text_file

SCHEMES = "IOB1, BIO, BIOES, BILOU, BMES"
# BILOU's L- (last) and U- (unit) are BIOES's E- and S-; BMES's M- continues like I-
_PREFIXES = {"B": "B", "I": "I", "M": "M", "E": "E", "S": "S", "L": "E", "U": "S"}


@dataclass
class TaggedSentence:
    words: list[str]
    tags: list[str] | None  # None when the file has no tags (prediction input)
    line: int  # where the sentence starts, for messages


def split_tag(tag: str) -> tuple[str, str]:
    """'B-PER' -> ('B', 'PER'); 'O' -> ('O', ''); 'L-PER' -> ('E', 'PER'); 'U-PER' -> ('S', 'PER').
    A tag without a scheme prefix ('PER', 'B-') raises ValueError: whether it begins an entity
    cannot be known, and guessing invents entities."""
    if tag == "O":
        return "O", ""
    prefix, sep, kind = tag.partition("-")
    if sep and kind and prefix.upper() in _PREFIXES:
        return _PREFIXES[prefix.upper()], kind
    raise ValueError(f"tag {tag!r} has no scheme prefix")


def is_tag(tag: str) -> bool:
    try:
        split_tag(tag)
        return True
    except ValueError:
        return False


def to_bio(tags: list[str]) -> list[str]:
    """Normalise IOB1/IOB2/BIOES/BILOU/BMES to BIO: S-/U- and B- begin an entity; I-, M- and E-/L-
    continue one of the same type, and begin one otherwise (which is what IOB1's I- means)."""
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
    """Sentences with BIO tags; with need_tags False (prediction) any tags in the file are ignored
    (set to None), so a column that is not NER tags (a POS column) does not stop prediction."""
    path = Path(path)
    text = read_text_file(path, "data file")
    one_line_per_word = False
    if path.suffix.lower() in (".jsonl", ".json"):
        sentences = _read_jsonl(path, text)
    else:
        lines = text.splitlines()
        _refuse_table(path, lines)
        plain = _plain_text(lines, tagged=need_tags)
        if plain and need_tags:
            raise UserError(f"{path} reads as plain text, one sentence per line ({plain}), which has no tags; "
                            "training and evaluation need a word and its tag on every line, the same columns on "
                            "each, a blank line between sentences")
        sentences = _read_plain(lines) if plain else _read_columns(path, lines)
        one_line_per_word = not plain
    if not sentences:
        raise UserError(f"{path} holds no sentences")
    if not need_tags:
        for s in sentences:
            s.tags = None
        return sentences
    if any(s.tags is None for s in sentences):
        first = next(s for s in sentences if s.tags is None)
        raise UserError(f"{path} has no tags (the sentence at line {first.line} has one column); "
                        "training and evaluation need a tag after each word")
    for s in sentences:
        for i, tag in enumerate(s.tags):
            if not is_tag(tag):
                line = s.line + i if one_line_per_word else s.line
                raise UserError(f"{path} line {line}: the tag {tag!r} has no scheme prefix, so where its entity "
                                f"begins is unknown; write O, or B-/I-/E-/S-/L-/U-/M- and the type (B-{tag}); "
                                f"schemes supported: {SCHEMES}")
        s.tags = to_bio(s.tags)
    return sentences


def _is_header(cells: list[str]) -> bool:
    names = [c.strip().lower() for c in cells]
    return any(n in LABEL_NAMES for n in names) and any(n in group for group in TEXT_NAMES for n in names)


def _refuse_table(path: Path, lines: list[str]) -> None:
    """A classification TSV read as CoNLL would become one sentence of each row's first word, tagged
    with its label; its tabs with several words in a cell, or its header, give it away."""
    for n, line in enumerate(lines, 1):
        cells = line.split("\t")
        if len(cells) < 2:
            continue
        header = n == 1 and _is_header(cells)
        if header or any(len(c.split()) > 1 for c in cells):
            first = lines[0].split("\t")
            shown = (f"with a header: {', '.join(repr(c.strip()) for c in first)}" if _is_header(first)
                     else f"with several words in a cell on line {n}")
            raise UserError(f"{path} looks like a classification table (tab-separated columns {shown}), not "
                            "CoNLL tagged text; ner reads one word per line with its tag last and a blank line "
                            "between sentences (or use a classification model)")


def _plain_text(lines: list[str], tagged: bool) -> str | None:
    """Why the file is plain text, one sentence per line, rather than CoNLL columns; None if it is not.
    CoNLL lines all hold the same columns, and a file of several sentences separates them by blank
    lines; a file with tabs is columns. Where tags are expected (tagged), lines of equal length are
    columns, so that a bad tag is reported as such, on its line."""
    rows = [(n, line.split()) for n, line in enumerate(lines, 1) if line.strip()]
    rows = [(n, parts) for n, parts in rows if parts[0] != "-DOCSTART-"]
    if any("\t" in line for line in lines) or not rows or max(len(p) for _, p in rows) < 2:
        return None
    first_n, first = rows[0]
    other = next(((n, p) for n, p in rows if len(p) != len(first)), None)
    if other:
        return f"line {first_n} has {len(first)} words, line {other[0]} has {len(other[1])}"
    separated = len(rows) < len([line for line in lines if line.strip()]) or any(
        not line.strip() for line in lines[rows[0][0] - 1:rows[-1][0]])
    untagged = next(((n, p) for n, p in rows if not is_tag(p[-1])), None)
    if not tagged and not separated and untagged:
        return f"no blank line between sentences and line {untagged[0]} ends with {untagged[1][-1]!r}, not a tag"
    return None


def _read_plain(lines: list[str]) -> list[TaggedSentence]:
    return [TaggedSentence(line.split(), None, n) for n, line in enumerate(lines, 1) if line.strip()]


def _read_columns(path: Path, lines: list[str]) -> list[TaggedSentence]:
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

    for n, line in enumerate(lines, 1):
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
