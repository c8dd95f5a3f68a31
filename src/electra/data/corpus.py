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
import logging
import os
import random
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from electra.errors import UserError

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9])|(?<=[。！？；])")


def corpus_files(paths: list[str | Path]) -> list[Path]:
    """Expand directories (recursively, sorted), and check every file exists and reads as text."""
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


# Compressed formats we do not read, by their first bytes: named, so that a `.bz2` renamed `.gz`
# gets "decompress it" rather than "looks binary".
_OTHER_FORMATS = {b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"\x28\xb5\x2f\xfd": "zstd", b"PK\x03\x04": "zip",
                  b"7z\xbc\xaf\x27\x1c": "7z"}
# Errors of a gzip stream cut short or damaged (gzip.BadGzipFile is an OSError).
_GZIP_ERRORS = (EOFError, zlib.error, gzip.BadGzipFile)


def _check_text_file(path: Path) -> None:
    """Fail early, with what to do, on what reading would otherwise skip line by line or crash on."""
    if path.stat().st_size == 0:
        raise UserError(f"corpus file {path} is empty")
    raw, stream = _open_binary(path)
    head = b""  # the first 8 KiB, read by lines to tell where a cut gzip stream ends
    with raw, stream:
        try:
            while len(head) < 8192 and (line := stream.readline(8192 - len(head))):
                head += line
        except _GZIP_ERRORS:
            raise _truncated(path, head.count(b"\n") + 1) from None
    whole = len(head) < 8192
    fmt = next((name for magic, name in _OTHER_FORMATS.items() if head.startswith(magic)), None)
    if fmt:
        raise UserError(f"corpus file {path} is {fmt}-compressed, not gzip or text; decompress it first "
                        "(or compress it with gzip)")
    if b"\x00" in head or head.startswith((b"\xff\xfe", b"\xfe\xff")):
        guess = guess_encoding(head)
        if guess and guess[0].startswith("UTF-16"):
            raise UserError(f"corpus file {path} is not UTF-8 text; {encoding_hint(head)}")
        raise UserError(f"corpus file {path} looks binary (it contains NUL bytes); pass UTF-8 text or .jsonl")
    if whole and not head.strip():
        raise UserError(f"corpus file {path} has no text (only blank lines)")
    lines = head.split(b"\n") if whole else head.split(b"\n")[:-1]  # the last may be cut mid-character
    lines = [line for line in lines if line.strip()]
    bad = [line for line in lines if not _decodes_as(line)]
    if len(bad) * 2 > len(lines):
        raise _not_utf8(path, len(bad), len(lines), b"\n".join(bad), first=not whole)


def _decodes_as(data: bytes, encoding: str = "utf-8") -> bool:
    try:
        data.decode(encoding)
        return True
    except UnicodeDecodeError:
        return False


def _truncated(path: Path, line: int) -> UserError:
    return UserError(f"corpus file {path} is truncated or corrupt (gzip stream ended at line {line:,}); "
                     "download or compress it again, or leave it out of --corpus")


def _not_utf8(path: Path, bad: int, lines: int, sample: bytes, first: bool = False) -> UserError:
    which = f"first {lines:,}" if first else f"{lines:,}"
    return UserError(f"corpus file {path} is not UTF-8 text ({bad:,} of its {which} non-empty lines cannot be "
                     f"decoded); {encoding_hint(sample)}")


def guess_encoding(data: bytes) -> tuple[str, str] | None:
    """What undecodable bytes look like: (a name for people, iconv's name), or None when unsure.

    Told apart by the shape of the bytes only (no dependency, no statistics over languages), for the
    encodings text is commonly found in: UTF-16 (a byte-order mark, or a NUL beside most ASCII
    characters), Windows-1252/Latin-1 (printable text, mostly ASCII, its few high bytes mostly alone:
    accented letters, curly quotes), GBK/GB18030 (high bytes in pairs that decode, strictly, to mostly
    Chinese, and not as Shift-JIS, whose kana GBK would read as Chinese too). Naming no encoding is
    better than naming a wrong one: converting from it would garble the text.
    """
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "UTF-16", "UTF-16"
    sample = data[:1 << 16]
    if len(data) > len(sample):
        sample = sample[:sample.rfind(b"\n") + 1] or sample  # whole lines, not cut mid-character
    half = max(1, len(sample) // 2)
    zeros = sample[0::2].count(0) / half, sample[1::2].count(0) / half
    if max(zeros) > 0.5 and min(zeros) < 0.05:  # ASCII in UTF-16: a NUL in every other byte, only there
        return ("UTF-16LE", "UTF-16LE") if zeros[1] > zeros[0] else ("UTF-16BE", "UTF-16BE")
    runs = [len(m) for m in re.findall(rb"[\x80-\xff]+", sample)]
    if not runs:
        return None
    printable = not re.search(rb"[\x00-\x08\x0b\x0e-\x1f]", sample)
    if printable and sum(runs) * 3 < len(sample) and sum(n == 1 for n in runs) * 2 > len(runs):
        return "Windows-1252 or Latin-1", "CP1252"
    try:
        text = sample.decode("gb18030")
    except UnicodeDecodeError:
        return None
    if _decodes_as(sample, "shift_jis"):
        return None
    wide = [c for c in text if ord(c) > 0x7f]
    chinese = sum("\u4e00" <= c <= "\u9fff" or "\u3400" <= c <= "\u4dbf" or "\u3000" <= c <= "\u303f"
                  or "\uff00" <= c <= "\uffef" or "\u2000" <= c <= "\u206f" for c in wide)
    return ("GBK/GB18030", "GB18030") if chinese * 10 >= len(wide) * 9 else None


def encoding_hint(data: bytes) -> str:
    """How to convert bytes that are not UTF-8, naming their encoding only when the bytes show it."""
    guess = guess_encoding(data)
    if guess is None:
        return "convert it to UTF-8 (e.g. with iconv -f ITS-ENCODING -t UTF-8)"
    return f"it looks like {guess[0]}: convert it with iconv -f {guess[1]} -t UTF-8"


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
    undecodable_lines: int = 0  # of which not UTF-8
    skipped_examples: dict = field(default_factory=dict)

    def skipped(self) -> str:
        """What was skipped, for the commands' last line: skipping is never silent."""
        other = self.skipped_lines - self.undecodable_lines
        return (f"{self.undecodable_lines:,} undecodable lines skipped"
                + (f", and {other:,} JSON lines without the text field" if other else ""))


def read_documents(files: list[Path], stats: ReadStats, text_field: str = "text") -> Iterator[list[str]]:
    """Yield documents as lists of non-empty lines. Undecodable lines are counted and skipped; a file
    mostly undecodable stops everything (one skipped line is noise, a whole file lost is a mistake)."""
    for path in files:
        stats.files += 1
        raw, stream = _open_binary(path)
        jsonl = _is_jsonl(path)
        doc: list[str] = []
        done = 0
        lines = nonempty = bad = 0
        bad_sample = bytearray()  # some undecodable lines, to tell what encoding they look like
        with raw, stream:
            try:
                for bline in stream:
                    stats.lines += 1
                    lines += 1
                    if bline.strip():
                        nonempty += 1
                    try:
                        line = bline.decode("utf-8")
                    except UnicodeDecodeError:
                        stats.skipped_lines += 1
                        stats.undecodable_lines += 1
                        bad += 1
                        if len(bad_sample) < 1 << 16:
                            bad_sample += bline
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
            except _GZIP_ERRORS:  # a gzip stream cut short or damaged
                raise _truncated(path, lines + 1) from None
        if bad * 2 > nonempty:
            raise _not_utf8(path, bad, nonempty, bytes(bad_sample))
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


class Lines:
    """Every non-empty line of every document (for tokenizer training), as often as iterated:
    training reads the corpus twice (see tokenizer.train_tokenizer). `stats` counts the last pass."""

    def __init__(self, files: list[Path], text_field: str = "text"):
        self.files, self.text_field = files, text_field
        self.stats = ReadStats()

    def __iter__(self) -> Iterator[str]:
        self.stats = ReadStats()
        for doc in read_documents(self.files, self.stats, self.text_field):
            yield from doc


def iter_lines(files: list[Path], text_field: str = "text") -> Lines:
    return Lines(files, text_field)


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
                dtype: str, split: bool, words: str = "pieces") -> tuple[np.ndarray, np.ndarray, int, list]:
    """Tokenize a chunk's documents and build examples: (train rows, validation rows, tokens, word rows).

    words="jieba": the word boundaries of Chinese word segmentation, as (n, ceil(seq_len / 8)) bit rows
    per split (bit set: the token starts a word); else the word rows are None (pieces without the `##`
    continuation mark start words, so nothing needs storing)."""
    tok = _worker_tokenizer
    rng = random.Random(f"{seed}-{chunk.index}")
    sentences, doc_ends = [], []
    for doc in chunk.docs:
        for para in doc:
            sentences.extend(split_sentences(para) if split else [para])
        doc_ends.append(len(sentences))
    encodings = tok.encode_batch(sentences, add_special_tokens=False) if sentences else []
    # with word boundaries, the builder carries id * 2 + starts-a-word: the same packing, one list
    sequences = ([_with_word_starts(enc, s) for enc, s in zip(encodings, sentences)] if words == "jieba"
                 else [enc.ids for enc in encodings])
    marks = (cls * 2 + 1, sep * 2 + 1) if words == "jieba" else (cls, sep)
    out: dict[bool, list[list[int]]] = {False: [], True: []}
    builder = ExampleBuilder(seq_len, rng, *marks)
    start = 0
    n_tokens = 0
    for end, held_out in zip(doc_ends, chunk.validation):
        for ids in sequences[start:end]:
            ex = builder.add_sentence(ids)
            if ex is not None:
                out[held_out].append(ex)
        ex = builder.end_document()
        if ex is not None:
            out[held_out].append(ex)
        start = end
    arrays, word_arrays = [], []
    for held_out in (False, True):
        rows = np.full((len(out[held_out]), seq_len), pad, dtype=dtype)
        starts = np.ones((len(out[held_out]), seq_len), dtype=bool)
        for i, ex in enumerate(out[held_out]):
            if words == "jieba":
                packed = np.asarray(ex, dtype=np.int64)
                rows[i, : len(ex)] = packed >> 1
                starts[i, : len(ex)] = (packed & 1).astype(bool)
            else:
                rows[i, : len(ex)] = ex
            n_tokens += len(ex)
        arrays.append(rows)
        word_arrays.append(np.packbits(starts, axis=1) if words == "jieba" else None)
    return arrays[0], arrays[1], n_tokens, word_arrays


def _with_word_starts(encoding, sentence: str) -> list[int]:
    """Token ids packed as id * 2 + (1 if the token starts a segmented word)."""
    import jieba

    jieba.setLogLevel(logging.WARNING)  # not its "Building prefix dict" lines

    boundaries, at = set(), 0
    for word in jieba.lcut(sentence):
        boundaries.add(at)
        at += len(word)
    return [i * 2 + int(s in boundaries and not t.startswith("##"))
            for i, (s, _), t in zip(encoding.ids, encoding.offsets, encoding.tokens)]


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
