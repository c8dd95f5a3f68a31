"""Running pretrained networks on text: replaced-token detection, mask filling and embeddings.

Batched and length-sorted, results as plain Python objects, no printing: the CLI's `detect` and
`fill-mask`, the demo and the Python API (electra.api) call these.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from electra.errors import UserError
from electra.pretrained import Pretrained


@dataclass
class Encoded:
    ids: list[int]  # [CLS] pieces [SEP], cut to the model's positions
    tokens: list[str]  # the word pieces kept
    n_pieces: int  # how many pieces the whole text has

    @property
    def truncated(self) -> int:
        """Pieces past the model's positions, not read."""
        return self.n_pieces - len(self.tokens)


def encode(pre: Pretrained, texts: list[str], max_len: int) -> list[Encoded]:
    """[CLS] word pieces [SEP] of each text, cut to `max_len` positions."""
    if isinstance(texts, str):
        raise TypeError("pass a list of texts")
    out = []
    for n, enc in enumerate(pre.tokenizer.encode_batch(list(texts), add_special_tokens=False)):
        if not enc.ids:
            raise UserError(f"text {n + 1} is empty after tokenization; pass some words")
        ids, tokens = enc.ids[: max_len - 2], enc.tokens[: max_len - 2]
        out.append(Encoded([pre.special.cls, *ids, pre.special.sep], tokens, len(enc.ids)))
    return out


def _device(net: torch.nn.Module) -> torch.device:
    """Where a network's weights are (the CPU for an ONNX Runtime network, which has none here)."""
    return next(net.parameters(), torch.empty(0)).device


def batches(encoded: list[Encoded], batch_size: int, pad_id: int):
    """Length-sorted batches: (indices into `encoded`, ids (B, T), attention mask (B, T))."""
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].ids))
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        T = max(len(encoded[i].ids) for i in chunk)
        ids = torch.full((len(chunk), T), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), T), dtype=torch.long)
        for r, i in enumerate(chunk):
            ids[r, :len(encoded[i].ids)] = torch.tensor(encoded[i].ids)
            mask[r, :len(encoded[i].ids)] = 1
        yield chunk, ids, mask


@torch.no_grad()
def detect(pre: Pretrained, texts: list[str], batch_size: int = 32) -> list[dict]:
    """Per text: its word pieces, the discriminator's probability that each was replaced, and how many
    pieces past the model's length were not read: {"tokens", "replaced_prob", "truncated"}."""
    disc = pre.require("discriminator").eval()
    encoded = encode(pre, texts, disc.config.max_position_embeddings)
    out: list[dict] = [{}] * len(encoded)
    device = _device(disc)
    for chunk, ids, mask in batches(encoded, batch_size, pre.special.pad):
        probs = torch.sigmoid(disc(ids.to(device), mask.to(device)).float()).cpu()  # (B, T)
        for row, i in zip(probs, chunk):
            e = encoded[i]
            out[i] = {"tokens": e.tokens, "replaced_prob": row[1:len(e.ids) - 1].tolist(), "truncated": e.truncated}
    return out


@torch.no_grad()
def fill_mask(pre: Pretrained, texts: list[str], top_k: int = 5, batch_size: int = 32) -> list[dict]:
    """Per text: its word pieces, and for each [MASK] (its index among the pieces) the generator's top_k
    candidates: {"tokens", "masks": [{"position", "candidates": [{"token", "score"}]}], "truncated"}."""
    gen = pre.require("generator").eval()
    encoded = encode(pre, texts, gen.config.max_position_embeddings)
    for n, e in enumerate(encoded):
        if pre.special.mask not in e.ids:
            where = f"text {n + 1}" if len(encoded) > 1 else "the text"
            if e.truncated and pre.special.mask in pre.tokenizer.encode(texts[n], add_special_tokens=False).ids:
                raise UserError(f"every [MASK] of {where} lies beyond the model's {len(e.tokens)} word pieces (it "
                                f"has {e.n_pieces}); shorten the text before the mask")
            raise UserError(f"{where} has no [MASK] token; write [MASK] where a word should be predicted")
    out: list[dict] = [{}] * len(encoded)
    device = _device(gen)
    for chunk, ids, mask in batches(encoded, batch_size, pre.special.pad):
        positions = [[j for j, t in enumerate(encoded[i].ids) if t == pre.special.mask] for i in chunk]
        width = max(len(p) for p in positions)
        pos = torch.tensor([p + [0] * (width - len(p)) for p in positions])  # (B, N)
        logits = gen(ids.to(device), mask.to(device), positions=pos.to(device))
        probs = torch.softmax(logits.float(), dim=-1).cpu()  # (B, N, V)
        top = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
        for r, i in enumerate(chunk):
            masks = []
            for k, p in enumerate(positions[r]):
                cands = [{"token": pre.tokenizer.id_to_token(t), "score": float(s)}
                         for t, s in zip(top.indices[r, k].tolist(), top.values[r, k].tolist())]
                masks.append({"position": p - 1, "candidates": cands})
            out[i] = {"tokens": encoded[i].tokens, "masks": masks, "truncated": encoded[i].truncated}
    return out


@torch.no_grad()
def embed(pre: Pretrained, texts: list[str], pooling: Literal["mean", "cls"] = "mean",
          batch_size: int = 32) -> np.ndarray:
    """(len(texts), hidden) float32 sentence vectors from the discriminator's encoder: the mean of the
    last layer over the text's tokens ([CLS] and [SEP] included), or the [CLS] vector."""
    if pooling not in ("mean", "cls"):
        raise UserError(f"pooling must be mean or cls (got {pooling!r})")
    disc = pre.discriminator
    if disc is None:
        raise UserError(f"{pre.directory} has no discriminator to embed with; pass the run or the export's "
                        "discriminator/")
    disc.eval()
    encoded = encode(pre, texts, disc.config.max_position_embeddings)
    out = np.zeros((len(encoded), disc.config.hidden_size), dtype=np.float32)
    device = _device(disc)
    for chunk, ids, mask in batches(encoded, batch_size, pre.special.pad):
        h = disc.encoder(ids.to(device), mask.to(device)).float().cpu()  # (B, T, H)
        if pooling == "cls":
            vectors = h[:, 0]
        else:
            m = mask[..., None].float()
            vectors = (h * m).sum(1) / m.sum(1)
        out[chunk] = vectors.numpy()
    return out
