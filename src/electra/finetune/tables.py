"""Labelled text tables for classification and regression: TSV, CSV or JSON lines.

Columns are chosen by header name or 0-based index. A header is recognised when the first row
holds a column name that was asked for or one of the usual names (GLUE's `sentence`, `label`,
`#1 String`, ..., CLUE's `text_a`); otherwise the file is read as headerless, as GLUE's CoLA and
the CLUE TSVs are. GLUE TSVs are read without quote processing (their sentences contain quotes).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from electra.errors import UserError

LABEL_NAMES = ("label", "labels", "score", "quality", "gold_label", "target", "class", "y")
TEXT_NAMES = [("sentence1", "sentence2"), ("#1 string", "#2 string"), ("text_a", "text_b"),
              ("question", "sentence"), ("question1", "question2"), ("premise", "hypothesis"),
              ("sentence",), ("text",), ("text_a",), ("content",), ("review",)]


@dataclass
class Columns:
    """Which columns hold the texts and the label; names, or indices when the file has no header."""

    texts: list[str | int]
    label: str | int | None
    header: bool

    def to_dict(self) -> dict:
        return {"texts": self.texts, "label": self.label, "header": self.header}

    @classmethod
    def from_dict(cls, d: dict) -> Columns:
        return cls(list(d["texts"]), d.get("label"), bool(d["header"]))


@dataclass
class TextExample:
    texts: tuple[str, ...]  # one text or a pair
    label: str | None  # as written in the file; None when the file has no labels


def read_text_file(path: Path, what: str) -> str:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} not found: {path}" if not path.exists() else f"{what} {path} is not a file")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        from electra.data.corpus import encoding_hint

        line = data[:e.start].count(b"\n") + 1
        start = data.rfind(b"\n", 0, e.start) + 1  # the encoding is guessed from that line on
        raise UserError(f"{path} is not UTF-8 text (undecodable bytes on line {line}); "
                        f"{encoding_hint(data[start:])}") from None
    if not text.strip():
        raise UserError(f"{what} {path} is empty")
    return text


def parse_columns(text_columns: str | None, label_column: str | None) -> tuple[list[str | int] | None, str | int | None]:
    """'0,1' -> [0, 1]; 'sentence1,sentence2' -> names; a digit string is an index."""
    def one(c: str) -> str | int:
        c = c.strip()
        return int(c) if c.isdigit() else c
    texts = [one(c) for c in text_columns.split(",")] if text_columns else None
    if texts is not None and not 1 <= len(texts) <= 2:
        raise UserError(f"--text-columns takes one column or two separated by a comma (got {text_columns!r})")
    return texts, (one(label_column) if label_column else None)


def _rows(path: Path, text: str) -> list[list[str]] | list[dict]:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                raise UserError(f"{path} line {n} is not a JSON object (expected one object per line)") from None
            if not isinstance(row, dict):
                raise UserError(f"{path} line {n} is not a JSON object (expected one object per line)")
            rows.append(row)
        return rows
    if suffix == ".csv":
        return list(csv.reader(text.splitlines()))
    return [line.split("\t") for line in text.splitlines()]  # TSV as GLUE writes it: no quoting


def _find(header: list[str], name: str | int, path: Path, flag: str) -> int:
    if isinstance(name, int):
        if name >= len(header):
            raise UserError(f"{flag} {name} is out of range: {path} has {len(header)} columns (0-{len(header) - 1})")
        return name
    lowered = [h.strip().lower() for h in header]
    if name.lower() in lowered:
        return lowered.index(name.lower())
    raise UserError(f"{path} has no column {name!r} ({flag}); its columns are: "
                    + ", ".join(repr(h.strip()) for h in header))


def _default_texts(names: list[str]) -> list[str] | None:
    lowered = [n.strip().lower() for n in names]
    for candidate in TEXT_NAMES:
        if all(c in lowered for c in candidate):
            return [names[lowered.index(c)] for c in candidate]
    return None


def _default_label(names: list[str]) -> str | None:
    lowered = [n.strip().lower() for n in names]
    return next((names[lowered.index(c)] for c in LABEL_NAMES if c in lowered), None)


def resolve_columns(path: Path, first_row: list[str], texts: list | None, label, no_header: bool,
                    need_label: bool) -> Columns:
    """Decide header or not, and the text/label columns, from the first row and the flags."""
    names = [c.strip() for c in first_row]
    lowered = {n.lower() for n in names}
    asked = [c for c in (texts or []) + [label] if isinstance(c, str)]
    if no_header:
        if asked:
            raise UserError(f"with --no-header, columns are given by 0-based index (got {', '.join(asked)})")
        header = False
    else:
        header = bool(asked) or _default_texts(names) is not None or _default_label(names) is not None
        if asked and not all(a.lower() in lowered for a in asked):
            missing = next(a for a in asked if a.lower() not in lowered)
            _find(names, missing, path, "--text-columns" if missing in (texts or []) else "--label-column")
    if header:
        texts = texts or _default_texts(names)
        label = label if label is not None else (_default_label(names) if need_label else None)
        if texts is None:
            raise UserError(f"cannot tell which columns of {path} hold the text; pass --text-columns "
                            f"(its columns are: {', '.join(repr(n) for n in names)})")
        if need_label and label is None:
            raise UserError(f"cannot tell which column of {path} holds the label; pass --label-column "
                            f"(its columns are: {', '.join(repr(n) for n in names)})")
        return Columns([names[_find(names, t, path, "--text-columns")] for t in texts],
                       None if label is None else names[_find(names, label, path, "--label-column")], True)
    # headerless: the label is the last column, the texts the ones before it (one or two)
    n = len(first_row)
    if label is None and need_label:
        label = n - 1
    if texts is None:
        rest = [i for i in range(n) if i != label]
        if not 1 <= len(rest) <= 2:
            raise UserError(f"{path} has {n} columns and no header; pass --text-columns and --label-column "
                            "(0-based indices)")
        texts = rest
    for t in texts + ([label] if label is not None else []):
        _find(first_row, t, path, "--text-columns" if t in texts else "--label-column")
    return Columns(list(texts), label, False)


def read_table(path: Path, columns: Columns | None = None, *, texts: list | None = None, label=None,
               no_header: bool = False, need_label: bool = True) -> tuple[list[TextExample], Columns]:
    """Read every row; `columns` (remembered from training) wins over the flags.

    need_label=False reads files for prediction: the label column is used only if present.
    """
    path = Path(path)
    text = read_text_file(path, "data file")
    rows = _rows(path, text)
    if not rows:
        raise UserError(f"data file {path} is empty")
    if isinstance(rows[0], dict):
        return _read_json_rows(path, rows, columns, texts, label, need_label)
    text_flag, label_flag = "--text-columns", "--label-column"
    if columns is None:
        columns = resolve_columns(path, rows[0], texts, label, no_header, need_label)
    else:  # remembered from fine-tuning: say so when this file differs
        text_flag, label_flag = "the model's text column; choose others with --text-columns", \
            "the model's label column; choose another with --label-column"
    body = rows[1:] if columns.header else rows
    header = [c.strip() for c in rows[0]] if columns.header else None
    idx_texts = [_find(header, t, path, text_flag) if header else t for t in columns.texts]
    label_col = columns.label
    if label_col is not None and header is not None and label_col.lower() not in {h.lower() for h in header}:
        if need_label:
            _find(header, label_col, path, label_flag)
        label_col = None
    idx_label = None if label_col is None else (_find(header, label_col, path, label_flag) if header else label_col)
    width = len(rows[0])
    needed = max(idx_texts + ([idx_label] if idx_label is not None else [])) + 1
    if not columns.header and idx_label is not None and width < needed and not need_label:
        idx_label = None  # an unlabelled file for prediction: the label column is simply absent
        needed = max(idx_texts) + 1
    examples = []
    first_line = 2 if columns.header else 1
    for n, row in enumerate(body, first_line):
        if len(row) == 1 and not row[0].strip():
            continue  # blank line
        if len(row) < needed or (header is not None and len(row) != width):
            raise UserError(f"{path} line {n} has {len(row)} columns, expected "
                            f"{width if header is not None else f'at least {needed}'}; "
                            "is a tab or comma missing or extra on that line?")
        lab = None
        if idx_label is not None:
            lab = row[idx_label].strip()
            if not lab:
                raise UserError(f"{path} line {n} has an empty label")
        examples.append(TextExample(tuple(row[i].strip() for i in idx_texts), lab))
    if not examples:
        raise UserError(f"data file {path} has a header but no rows")
    return examples, columns


def _read_json_rows(path: Path, rows: list[dict], columns: Columns | None, texts, label,
                    need_label: bool) -> tuple[list[TextExample], Columns]:
    keys = list(rows[0])
    if columns is None:
        if any(isinstance(c, int) for c in (texts or []) + [label]):
            raise UserError(f"{path} is JSON lines: name its fields in --text-columns/--label-column, not indices")
        columns = resolve_columns(path, keys, texts, label, False, need_label)
        if not columns.header:
            raise UserError(f"cannot tell which fields of {path} hold the text and the label; pass "
                            f"--text-columns and --label-column (its fields are: {', '.join(map(repr, keys))})")
    examples = []
    for n, row in enumerate(rows, 1):
        try:
            parts = tuple(str(row[c]).strip() for c in columns.texts)
        except KeyError as e:
            raise UserError(f"{path} line {n} lacks the field {e.args[0]!r}; its fields are: "
                            + ", ".join(repr(k) for k in row)) from None
        lab = row.get(columns.label) if columns.label is not None else None
        if lab is None and need_label:
            raise UserError(f"{path} line {n} lacks the label field {columns.label!r}")
        examples.append(TextExample(parts, None if lab is None else str(lab).strip()))
    return examples, Columns(columns.texts, columns.label, True)
