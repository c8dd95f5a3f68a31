"""Running pretrained networks on text: replaced-token detection and mask filling."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from electra.errors import UserError
from electra.pretrained import Pretrained


def encode(pre: Pretrained, text: str, max_len: int) -> tuple[list[int], list[str]]:
    """[CLS] word pieces [SEP], truncated to the model's length; returns ids and the pieces."""
    enc = pre.tokenizer.encode(text, add_special_tokens=False)
    ids, tokens = enc.ids[: max_len - 2], enc.tokens[: max_len - 2]
    if not ids:
        raise UserError("the text is empty after tokenization; pass some words")
    return [pre.special.cls, *ids, pre.special.sep], tokens


@torch.no_grad()
def detect_replaced(pre: Pretrained, text: str) -> tuple[list[str], list[float]]:
    """Word pieces (without [CLS]/[SEP]) and the discriminator's probability that each was replaced."""
    disc = pre.require("discriminator").eval()
    ids, tokens = encode(pre, text, disc.config.max_position_embeddings)
    logits = disc(torch.tensor([ids]))[0, 1:-1]  # drop [CLS], [SEP]
    return tokens, torch.sigmoid(logits).tolist()


@dataclass
class MaskPrediction:
    position: int  # index among the word pieces
    candidates: list[tuple[str, float]]  # (token, probability), best first


@torch.no_grad()
def fill_mask(pre: Pretrained, text: str, top_k: int = 5) -> tuple[list[str], list[MaskPrediction]]:
    gen = pre.require("generator").eval()
    ids, tokens = encode(pre, text, gen.config.max_position_embeddings)
    masked = [i for i, t in enumerate(ids) if t == pre.special.mask]
    if not masked:
        raise UserError("the text has no [MASK] token; write [MASK] where a word should be predicted")
    positions = torch.tensor([masked])
    probs = torch.softmax(gen(torch.tensor([ids]), positions=positions)[0].float(), dim=-1)  # (N, V)
    top = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
    out = []
    for pos, p, i in zip(masked, top.values.tolist(), top.indices.tolist()):
        out.append(MaskPrediction(pos - 1, [(pre.tokenizer.id_to_token(t), float(q)) for t, q in zip(i, p)]))
    return tokens, out
