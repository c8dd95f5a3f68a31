"""`electra prepare`: corpus -> token shards + manifest.json, in parallel, with flat memory."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import sys
import time
from collections import deque
from pathlib import Path

from tqdm import tqdm

from electra.data.corpus import (Chunk, ReadStats, ShardWriter, _init_worker, build_chunk, chunks, corpus_files,
                                 read_documents)
from electra.data.tokenizer import (TOKENIZER_FILES, is_lowercase, load_tokenizer, special_ids, tokenizer_hash)
from electra.errors import UserError

MANIFEST = "manifest.json"
FORMAT = "electra-pretraining-shards"


def prepare(corpus: list[str | Path], tokenizer_dir: Path, out: Path, seq_len: int = 128, *, workers: int = 0,
            seed: int = 0, val_every: int = 100, text_field: str = "text", split_sentences: bool = True,
            shard_examples: int = 1 << 16, chunk_chars: int = 1 << 20, overwrite: bool = False,
            progress: bool = True, words: str = "pieces") -> dict:
    """Tokenize and pack a corpus; returns the manifest (also written to OUT/manifest.json).

    words: where whole-word masking finds words: "pieces" (a piece without the `##` mark starts one;
    nothing stored) or "jieba" (Chinese word segmentation; boundaries stored beside the shards)."""
    if seq_len < 8:
        raise UserError(f"--seq-len must be at least 8 (got {seq_len})")
    if words not in ("pieces", "jieba"):
        raise UserError(f"--words must be pieces or jieba (got {words!r})")
    if words == "jieba":
        try:
            import jieba  # noqa: F401
        except ImportError:
            raise UserError("--words jieba needs the jieba segmenter: pip install 'electra[zh]' (or jieba)") from None
    if not Path(tokenizer_dir).is_dir():
        raise UserError(f"tokenizer directory not found: {tokenizer_dir} (make one with `electra tokenizer train`)")
    tok = load_tokenizer(Path(tokenizer_dir))
    special = special_ids(tok, f"the tokenizer in {tokenizer_dir}")
    files = corpus_files(corpus)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise UserError(f"{out} is not empty; choose another --out or pass --overwrite")
        if not (out / MANIFEST).is_file():
            raise UserError(f"{out} is not empty and is not a prepared data directory; refusing to overwrite it")
    workers = workers or max(1, (os.cpu_count() or 1))
    vocab = tok.get_vocab_size()
    dtype = "uint16" if vocab <= 1 << 16 else "int32"

    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    writers = {split: ShardWriter(tmp, split, seq_len, dtype, shard_examples) for split in ("train", "validation")}
    if words == "jieba":
        writers.update({f"{split}-words": ShardWriter(tmp, f"{split}-words", (seq_len + 7) // 8, "uint8", shard_examples)
                        for split in ("train", "validation")})
    stats = ReadStats()
    total_bytes = sum(f.stat().st_size for f in files)
    started = time.perf_counter()
    n_tokens = 0
    args = (seq_len, seed, special.cls, special.sep, special.pad, dtype, split_sentences, words)
    bar = tqdm(total=total_bytes, unit="B", unit_scale=True, desc="prepare", disable=not progress,
               file=sys.stderr, dynamic_ncols=True)
    work = chunks(read_documents(files, stats, text_field), chunk_chars, val_every)
    try:
        if workers == 1:
            _init_worker(tok.to_str())
            results = (build_chunk(c, *args) for c in work)
            n_tokens = _drain(results, writers, bar, stats)
        else:
            # forkserver, not fork: forking a process that already runs threads (PyTorch's, the tokenizer's,
            # a server's) can deadlock the child on a lock some thread held at the fork
            ctx = mp.get_context("forkserver")
            ctx.set_forkserver_preload(["electra.data.prepare"])
            with ctx.Pool(workers, initializer=_init_worker, initargs=(tok.to_str(),)) as pool:
                n_tokens = _drain(_bounded_map(pool, work, args, 2 * workers), writers, bar, stats)
    except BaseException:
        bar.close()
        for w in writers.values():
            w.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    bar.close()
    for w in writers.values():
        w.close()
    if writers["train"].total == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"the corpus gave no examples ({stats.lines:,} lines read, {stats.skipped()}); "
                        "is it UTF-8 text with one paragraph per line?")
    for name in TOKENIZER_FILES:
        if (Path(tokenizer_dir) / name).is_file():
            (tmp / "tokenizer").mkdir(exist_ok=True)
            shutil.copyfile(Path(tokenizer_dir) / name, tmp / "tokenizer" / name)
    seconds = time.perf_counter() - started
    manifest = {
        "format": FORMAT, "format_version": 1, "seq_len": seq_len, "dtype": dtype,
        "tokenizer_hash": tokenizer_hash(tok), "vocab_size": vocab, "lowercase": is_lowercase(tok),
        "special_ids": vars(special),
        "train": {"shards": writers["train"].shards, "examples": writers["train"].total,
                  **({"word_shards": writers["train-words"].shards} if words == "jieba" else {})},
        "validation": {"shards": writers["validation"].shards, "examples": writers["validation"].total,
                       **({"word_shards": writers["validation-words"].shards} if words == "jieba" else {})},
        "words": words,
        "tokens": n_tokens,
        "corpus": {"files": [str(f) for f in files], "bytes": total_bytes, "documents": stats.documents,
                   "lines": stats.lines, "skipped_lines": stats.skipped_lines,
                   "undecodable_lines": stats.undecodable_lines},
        "settings": {"seed": seed, "val_every": val_every, "split_sentences": split_sentences,
                     "text_field": text_field, "workers": workers},
        "seconds": round(seconds, 2), "mb_per_s": round(total_bytes / 1e6 / max(seconds, 1e-9), 2),
    }
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, out)  # readers see no data directory or a complete one
    return manifest


def _bounded_map(pool, work, args, window: int):
    """Like pool.imap, in order, but never more than `window` chunks in flight (flat memory)."""
    pending: deque = deque()
    for chunk in work:
        pending.append(pool.apply_async(build_chunk, (chunk, *args)))
        if len(pending) >= window:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()


def _drain(results, writers, bar, stats: ReadStats) -> int:
    n_tokens = 0
    for train_rows, val_rows, tokens, word_rows in results:
        writers["train"].write(train_rows)
        writers["validation"].write(val_rows)
        if word_rows[0] is not None:
            writers["train-words"].write(word_rows[0])
            writers["validation-words"].write(word_rows[1])
        n_tokens += tokens
        bar.update(stats.bytes - bar.n)
        bar.set_postfix(examples=writers["train"].total, skipped=stats.skipped_lines, refresh=False)
    return n_tokens
