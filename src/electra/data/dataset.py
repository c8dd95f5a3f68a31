"""Reading prepared shards: memory-mapped, deterministic batches addressed by step."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from electra.config import read_json
from electra.data.prepare import FORMAT, MANIFEST
from electra.errors import UserError


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, T)
    attention_mask: torch.Tensor  # (B, T)
    token_type_ids: torch.Tensor  # (B, T)
    example_index: torch.Tensor  # (B,) global example ids: the key of this example's randomness
    word_start: torch.Tensor | None = None  # (B, T) bool: the first piece of each word (whole-word masking)

    def to(self, device, non_blocking: bool = False) -> "Batch":
        return Batch(*(None if t is None else t.to(device, non_blocking=non_blocking) for t in
                       (self.input_ids, self.attention_mask, self.token_type_ids, self.example_index, self.word_start)))


def token_types(ids: np.ndarray, sep: int) -> np.ndarray:
    """Segment ids from [CLS] A [SEP] B [SEP]: 0 up to and including the first [SEP], 1 after."""
    is_sep = ids == sep
    before_or_at_first = (np.cumsum(is_sep, axis=1) - is_sep) == 0
    return (~before_or_at_first).astype(np.int64)


class PretrainingData:
    """One split of a prepared directory: rows (N, seq_len) spread over memory-mapped shards."""

    def __init__(self, directory: Path, split: str = "train"):
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise UserError(f"data directory not found: {directory} (make one with `electra prepare`)")
        self.manifest = read_json(self.directory / MANIFEST, "prepared data manifest")
        if self.manifest.get("format") != FORMAT:
            raise UserError(f"{directory} is not a directory written by `electra prepare`")
        self.seq_len = int(self.manifest["seq_len"])
        self.special = self.manifest["special_ids"]
        dtype = np.dtype(self.manifest["dtype"])
        self.shards = self._open(self.manifest[split]["shards"], dtype, self.seq_len)
        self.offsets = np.cumsum([0] + [len(s) for s in self.shards])
        self.size = int(self.offsets[-1])
        self.split = split
        # set by use_word_starts: a piece-id lookup (words from the vocabulary), or bit-packed stored rows
        self.word_start_of_piece: np.ndarray | None = None
        self.word_start_shards: list[np.memmap] | None = None

    def _open(self, shards: list[dict], dtype: np.dtype, width: int) -> list[np.memmap]:
        opened = []
        for shard in shards:
            path = self.directory / shard["file"]
            expected = shard["examples"] * width * dtype.itemsize
            if not path.is_file() or path.stat().st_size != expected:
                raise UserError(f"shard {path} is missing or has the wrong size; run `electra prepare` again")
            opened.append(np.memmap(path, dtype=dtype, mode="r", shape=(shard["examples"], width)))
        return opened

    def use_word_starts(self, tokenizer) -> None:
        """Batches carry word_start (whole-word masking): from the stored segmentation (--words jieba), or
        from the vocabulary (a piece without the `##` mark starts a word)."""
        words = self.manifest.get("words")
        if words is None:
            raise UserError(f"whole_word_mask needs word boundaries, and {self.directory} was prepared without them "
                            "(by an older version); prepare it again with `electra prepare` (add --words jieba for "
                            "Chinese text, whose words the tokenizer splits into characters)")
        if words == "jieba":
            self.word_start_shards = self._open(self.manifest[self.split]["word_shards"], np.dtype("uint8"),
                                                (self.seq_len + 7) // 8)
        else:
            vocab = tokenizer.get_vocab()
            self.word_start_of_piece = np.ones(len(vocab), dtype=bool)
            self.word_start_of_piece[[i for t, i in vocab.items() if t.startswith("##")]] = False

    def __len__(self) -> int:
        return self.size

    def rows(self, index: np.ndarray, shards: list | None = None) -> np.ndarray:
        """Gather rows by global example index (sorted reads per shard)."""
        shards = self.shards if shards is None else shards
        out = np.empty((len(index), shards[0].shape[1]), dtype=np.int64)
        shard_of = np.searchsorted(self.offsets, index, side="right") - 1
        for s in np.unique(shard_of):
            sel = shard_of == s
            out[sel] = shards[s][index[sel] - self.offsets[s]]
        return out

    def batch(self, index: np.ndarray) -> Batch:
        ids = self.rows(index)
        mask = (ids != self.special["pad"]).astype(np.int64)
        types = token_types(ids, self.special["sep"]) * mask
        starts = None
        if self.word_start_of_piece is not None:
            starts = torch.from_numpy(self.word_start_of_piece[ids])
        elif self.word_start_shards is not None:
            bits = self.rows(index, self.word_start_shards).astype(np.uint8)
            starts = torch.from_numpy(np.unpackbits(bits, axis=1, count=self.seq_len).astype(bool))
        return Batch(torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(types),
                     torch.from_numpy(index.astype(np.int64)), starts)

    def order(self, epoch: int, seed: int) -> np.ndarray:
        """The example order of an epoch: a permutation fixed by (seed, epoch)."""
        return np.random.default_rng([seed, epoch]).permutation(self.size)

    def global_batch(self, step: int, batch_size: int, seed: int) -> np.ndarray:
        """Example indices of optimizer step `step` (0-based): a pure function of (step, seed), so a
        resumed or re-sharded run reads exactly the same examples."""
        start = step * batch_size
        epoch, offset = divmod(start, self.size)
        order = self._order_cached(epoch, seed)
        idx = order[offset: offset + batch_size]
        while len(idx) < batch_size:  # wrap into the next epoch
            epoch += 1
            order = self._order_cached(epoch, seed)
            idx = np.concatenate([idx, order[: batch_size - len(idx)]])
        return idx

    _cache: tuple[int, int, np.ndarray] | None = None

    def _order_cached(self, epoch: int, seed: int) -> np.ndarray:
        if self._cache is None or self._cache[:2] != (epoch, seed):
            self._cache = (epoch, seed, self.order(epoch, seed))
        return self._cache[2]
