"""The generator (masked LM) and discriminator (replaced-token detection) networks.

Layouts match `ElectraForMaskedLM` and `ElectraForPreTraining` of Hugging Face `transformers`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from electra.config import ModelConfig
from electra.model.encoder import Embeddings, Encoder, activation, init_weights


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
        return self.project(self.norm(F.gelu(self.dense(h))), word_embeddings)  # (..., E) -> (..., V)

    def project(self, h: torch.Tensor, word_embeddings: torch.Tensor) -> torch.Tensor:
        return F.linear(h, word_embeddings, self.bias)


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
