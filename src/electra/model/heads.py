"""The generator (masked LM) and discriminator (replaced-token detection) networks.

Layouts match `ElectraForMaskedLM` and `ElectraForPreTraining` of Hugging Face `transformers`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from electra.config import ModelConfig
from electra.model.encoder import Embeddings, Encoder, activation, init_weights, use_cpu_path


class DiscriminatorHead(nn.Module):
    """dense -> activation -> one logit per token ("was this token replaced?")."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.act = activation(cfg.hidden_act)
        self.prediction = nn.Linear(cfg.hidden_size, 1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.prediction(self.act(self.dense(h))).squeeze(-1)  # (..., H) -> (...)


class GeneratorHead(nn.Module):
    """dense -> GELU -> LayerNorm -> vocabulary projection tied to the word embeddings (+ bias)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.embedding_size)
        self.norm = nn.LayerNorm(cfg.embedding_size, eps=cfg.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))

    def forward(self, h: torch.Tensor, word_embeddings: torch.Tensor) -> torch.Tensor:
        """h: (..., H), word_embeddings: (V, E), the tied output matrix -> (..., V) logits."""
        h = self.norm(F.gelu(self.dense(h)))  # (..., E)
        if use_cpu_path(h) and h.dtype == word_embeddings.dtype and not torch.is_autocast_enabled("cpu"):
            return BlockedVocabProjection.apply(h, word_embeddings, self.bias)
        return F.linear(h, word_embeddings, self.bias)


class BlockedVocabProjection(torch.autograd.Function):
    """F.linear(h, weight, bias) for a vocabulary-wide output on CPUs, the forward computed `BLOCK` output
    columns at a time: MKL runs the single (M, E) x (E, 30522) product of `small`'s generator at about
    70 GFLOP/s on CPU-2, blocks of 512 columns (whose slice of the weight stays in cache) at 110-150
    (BENCHMARKS.md). The backward's two products are as fast whole and stay whole.
    h: (..., E), weight: (V, E), bias: (V,) -> (..., V)."""

    BLOCK = 512

    @staticmethod
    def forward(ctx, h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        V = weight.shape[0]
        flat = h.reshape(-1, h.shape[-1])  # (M, E)
        out = h.new_empty(flat.shape[0], V)
        for j in range(0, V, BlockedVocabProjection.BLOCK):
            k = min(j + BlockedVocabProjection.BLOCK, V)
            torch.addmm(bias[j:k], flat, weight[j:k].t(), out=out[:, j:k])  # BLAS writes into the strided block
        ctx.save_for_backward(flat, weight)
        ctx.h_shape = h.shape
        return out.view(*h.shape[:-1], V)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        flat, weight = ctx.saved_tensors
        grad = grad_out.reshape(-1, weight.shape[0])  # (M, V)
        need_h, need_w, need_b = ctx.needs_input_grad
        return (grad.mm(weight).view(ctx.h_shape) if need_h else None,
                grad.t().mm(flat) if need_w else None,
                grad.sum(0) if need_b else None)


class Discriminator(nn.Module):
    def __init__(self, cfg: ModelConfig, embeddings: Embeddings | None = None):
        super().__init__()
        self.config = cfg
        self.encoder = Encoder(cfg, embeddings)
        self.head = DiscriminatorHead(cfg)
        init_weights(self, cfg.initializer_range)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) ids -> (B, T) logits of "replaced"."""
        return self.head(self.encoder(input_ids, attention_mask, token_type_ids))


class Generator(nn.Module):
    def __init__(self, cfg: ModelConfig, embeddings: Embeddings | None = None):
        super().__init__()
        self.config = cfg
        self.encoder = Encoder(cfg, embeddings)
        self.head = GeneratorHead(cfg)
        init_weights(self, cfg.initializer_range)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None,
                positions: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) ids -> (B, T, V) logits, or (B, N, V) at `positions` (B, N) only.

        Gathering before the vocabulary projection keeps its cost to the N masked positions.
        """
        h = self.encoder(input_ids, attention_mask, token_type_ids)  # (B, T, H)
        if positions is not None:
            h = torch.gather(h, 1, positions[..., None].expand(-1, -1, h.shape[-1]))  # (B, N, H)
        return self.head(h, self.encoder.embeddings.word.weight)
