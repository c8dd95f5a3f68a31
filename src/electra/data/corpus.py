"""Raw text -> pretraining examples in memory-mappable token shards.

Input: plain text (one paragraph or sentence per line, a blank line between documents) or JSON
lines with a text field, either possibly gzip-compressed; directories expand to their files.
Examples are built as the official ELECTRA code builds them (segments from one document only,
`[CLS] A [SEP] B [SEP]`, 10% single-segment, 5% shorter target lengths). Work is streamed in
bounded chunks to worker processes, so memory stays flat whatever the corpus size.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from electra.errors import UserError

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9])|(?<=[。！？；])")


def corpus_files(paths: list[str | Path]) -> list[Path]:
    """Expand directories (recursively, sorted), and check every file exists and is not binary."""
    files: list[Path] = []
    for raw in paths:
        p = Path(raw).expanduser()
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith("."))
            if not found:
                raise UserError(f"corpus directory {p} has no files")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise UserError(f"corpus not found: {p}")
    for f in files:
        _check_text_file(f)
    return files


def _check_text_file(path: Path) -> None:
    if path.stat().st_size == 0:
        raise UserError(f"corpus file {path} is empty")
    raw, stream = _open_binary(path)
    with raw, stream:
        try:
            head = stream.read(8192)
        except (OSError, EOFError) as e:
            raise UserError(f"corpus file {path} cannot be read ({e}); is the gzip file complete?") from None
    if b"\x00" in head:
        raise UserError(f"corpus file {path} looks binary (it contains NUL bytes); pass UTF-8 text or .jsonl")


def _open_binary(path: Path):
    """(the file, a stream of its bytes): gunzipped when it starts with the gzip magic, whatever its name."""
    raw = open(path, "rb")
    is_gzip = raw.read(2) == b"\x1f\x8b"
    raw.seek(0)
    return raw, (gzip.GzipFile(fileobj=raw) if is_gzip else raw)


def _is_jsonl(path: Path) -> bool:
    name = path.name[:-3] if path.name.endswith(".gz") else path.name
    return name.endswith((".jsonl", ".json"))


@dataclass
class ReadStats:
    files: int = 0
    bytes: int = 0  # on-disk bytes consumed (compressed for .gz)
    lines: int = 0
    documents: int = 0
    skipped_lines: int = 0  # not UTF-8 or not a JSON object with the text field
    skipped_examples: dict = field(default_factory=dict)


def read_documents(files: list[Path], stats: ReadStats, text_field: str = "text") -> Iterator[list[str]]:
    """Yield documents as lists of non-empty lines. Undecodable lines are counted and skipped."""
    for path in files:
        stats.files += 1
        raw, stream = _open_binary(path)
        jsonl = _is_jsonl(path)
        doc: list[str] = []
        done = 0
        with raw, stream:
            for bline in stream:
                stats.lines += 1
                try:
                    line = bline.decode("utf-8")
                except UnicodeDecodeError:
                    stats.skipped_lines += 1
                    continue
                if jsonl:
                    text = _json_text(line, text_field)
                    if text is None:
                        stats.skipped_lines += 1 if line.strip() else 0
                        continue
                    paragraphs = [s.strip() for s in text.split("\n") if s.strip()]
                    if paragraphs:
                        stats.documents += 1
                        yield paragraphs
                else:
                    line = line.strip()
                    if line:
                        doc.append(line)
                    elif doc:
                        stats.documents += 1
                        yield doc
                        doc = []
                pos = raw.tell()
                stats.bytes += pos - done
                done = pos
        if doc:
            stats.documents += 1
            yield doc


def _json_text(line: str, text_field: str) -> str | None:
    if not line.strip():
        return None
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    text = obj.get(text_field) if isinstance(obj, dict) else None
    return text if isinstance(text, str) else None


def iter_lines(files: list[Path], text_field: str = "text") -> Iterator[str]:
    """Every non-empty line of every document (for tokenizer training)."""
    stats = ReadStats()
    for doc in read_documents(files, stats, text_field):
        yield from doc


def split_sentences(paragraph: str) -> list[str]:
    """A light rule-based splitter (sentence-final punctuation, then a capital or a digit; CJK stops).

    Paragraph-per-line corpora would otherwise give single-segment examples that drop most text.
    """
    return [s for s in _SENTENCE_END.split(paragraph) if s and not s.isspace()]


class ExampleBuilder:
    """The official ELECTRA example builder (build_pretraining_dataset.py), per document."""

    def __init__(self, max_length: int, rng: random.Random, cls: int, sep: int):
        self.max_length = max_length
        self.target_length = max_length
        self.rng = rng
        self.cls, self.sep = cls, sep
        self.sentences: list[list[int]] = []
        self.length = 0

    def add_sentence(self, ids: list[int]) -> list[int] | None:
        if not ids:
            return None
        self.sentences.append(ids)
        self.length += len(ids)
        return self.flush() if self.length >= self.target_length else None

    def end_document(self) -> list[int] | None:
        """Documents never share an example: what is pending becomes one."""
        return self.flush() if self.length else None

    def flush(self) -> list[int]:
        rng = self.rng
        # a small chance of one segment only, as in classification tasks; -3 for [CLS] [SEP] [SEP]
        first_target = 100000 if rng.random() < 0.1 else (self.target_length - 3) // 2
        first: list[int] = []
        second: list[int] = []
        for s in self.sentences:
            # first segment if it is empty, if s fits, or (50%) if s overflows an unfinished first segment
            if (not first or len(first) + len(s) < first_target
                    or (not second and len(first) < first_target and rng.random() < 0.5)):
                first += s
            else:
                second += s
        first = first[: self.max_length - 2]
        second = second[: max(0, self.max_length - len(first) - 3)]
        self.sentences, self.length = [], 0
        # a small chance of a random shorter target for the next example
        self.target_length = rng.randint(5, self.max_length) if rng.random() < 0.05 else self.max_length
        example = [self.cls, *first, self.sep]
        if second:
            example += [*second, self.sep]
        return example


# ---- worker side: one chunk of documents -> a (n, seq_len) array of examples ----

_worker_tokenizer = None


def _init_worker(tokenizer_json: str) -> None:
    global _worker_tokenizer
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one process per core already
    from tokenizers import Tokenizer
    _worker_tokenizer = Tokenizer.from_str(tokenizer_json)


@dataclass
class Chunk:
    index: int  # chunk number: seeds its randomness, so output does not depend on --workers
    docs: list[list[str]]
    validation: list[bool]  # per document: held out?


def build_chunk(chunk: Chunk, seq_len: int, seed: int, cls: int, sep: int, pad: int,
                dtype: str, split: bool) -> tuple[np.ndarray, np.ndarray, int]:
    """Tokenize a chunk's documents and build examples: (train rows, validation rows, tokens)."""
    tok = _worker_tokenizer
    rng = random.Random(f"{seed}-{chunk.index}")
    sentences, doc_ends = [], []
    for doc in chunk.docs:
        for para in doc:
            sentences.extend(split_sentences(para) if split else [para])
        doc_ends.append(len(sentences))
    encodings = tok.encode_batch(sentences, add_special_tokens=False) if sentences else []
    out: dict[bool, list[list[int]]] = {False: [], True: []}
    builder = ExampleBuilder(seq_len, rng, cls, sep)
    start = 0
    n_tokens = 0
    for end, held_out in zip(doc_ends, chunk.validation):
        for enc in encodings[start:end]:
            ex = builder.add_sentence(enc.ids)
            if ex is not None:
                out[held_out].append(ex)
        ex = builder.end_document()
        if ex is not None:
            out[held_out].append(ex)
        start = end
    arrays = []
    for held_out in (False, True):
        rows = np.full((len(out[held_out]), seq_len), pad, dtype=dtype)
        for i, ex in enumerate(out[held_out]):
            rows[i, : len(ex)] = ex
            n_tokens += len(ex)
        arrays.append(rows)
    return arrays[0], arrays[1], n_tokens


def chunks(docs: Iterator[list[str]], chunk_chars: int, val_every: int) -> Iterator[Chunk]:
    """Group documents into chunks of about chunk_chars characters; every val_every-th document
    (by global index) is held out for validation."""
    index, doc_index, size = 0, 0, 0
    batch: list[list[str]] = []
    held: list[bool] = []
    for doc in docs:
        batch.append(doc)
        held.append(val_every > 0 and doc_index % val_every == val_every - 1)
        doc_index += 1
        size += sum(len(line) for line in doc)
        if size >= chunk_chars:
            yield Chunk(index, batch, held)
            index, size, batch, held = index + 1, 0, [], []
    if batch:
        yield Chunk(index, batch, held)


class ShardWriter:
    """Appends (n, seq_len) rows to `PREFIX-00000.bin`, `-00001.bin`, ... of at most shard_rows rows."""

    def __init__(self, out: Path, prefix: str, seq_len: int, dtype: str, shard_rows: int):
        self.out, self.prefix, self.seq_len, self.dtype, self.shard_rows = out, prefix, seq_len, dtype, shard_rows
        self.shards: list[dict] = []
        self.file: io.BufferedWriter | None = None
        self.rows_in_file = 0
        self.total = 0

    def write(self, rows: np.ndarray) -> None:
        while len(rows):
            if self.file is None or self.rows_in_file == self.shard_rows:
                self._next()
            take = min(len(rows), self.shard_rows - self.rows_in_file)
            self.file.write(np.ascontiguousarray(rows[:take]).tobytes())
            self.rows_in_file += take
            self.shards[-1]["examples"] += take
            self.total += take
            rows = rows[take:]

    def _next(self) -> None:
        self.close()
        name = f"{self.prefix}-{len(self.shards):05d}.bin"
        self.file = open(self.out / name, "wb")
        self.shards.append({"file": name, "examples": 0})
        self.rows_in_file = 0

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
