"""The transformer encoder shared by the generator and the discriminator.

Same architecture and parameters as Hugging Face's `ElectraModel` (post-LayerNorm BERT layers),
with two layout differences that `electra.hf` converts: query/key/value are one fused matrix,
and module names are shorter.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from electra.config import ModelConfig


def activation(name: str):
    if name == "gelu":
        return F.gelu
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        return lambda x: F.gelu(x, approximate="tanh")
    if name == "relu":
        return F.relu
    raise ValueError(f"unsupported activation {name}")


class Embeddings(nn.Module):
    """Word + position + token-type embeddings, LayerNorm, dropout. Shared by both networks."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.word = nn.Embedding(cfg.vocab_size, cfg.embedding_size, padding_idx=cfg.pad_token_id)
        self.position = nn.Embedding(cfg.max_position_embeddings, cfg.embedding_size)
        self.token_type = nn.Embedding(cfg.type_vocab_size, cfg.embedding_size)
        self.norm = nn.LayerNorm(cfg.embedding_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        T = input_ids.shape[1]  # input_ids: (B, T)
        x = self.word(input_ids) + self.position.weight[:T]  # (B, T, E)
        if token_type_ids is None:
            x = x + self.token_type.weight[0]
        else:
            x = x + self.token_type(token_type_ids)
        return self.dropout(self.norm(x))


@dataclass
class Unpadded:
    """Where the real tokens of a padded (B, T) batch are, for layers that skip the padding (MosaicBERT's
    unpadding): projections, LayerNorms and feed-forward run on the N real tokens; attention runs on the
    padded layout, which CPU kernels need."""

    index: torch.Tensor  # (N,) flat positions b * T + t of the real tokens, ascending
    first: torch.Tensor  # (B,) rows of the (N, C) layout that hold each sequence's first token
    source: torch.Tensor  # (B * T,) the row each padded position copies for attention: its own token's,
    #                       or at padding the last real token before it (a finite value the key mask hides)
    batch: int
    length: int

    @classmethod
    def of(cls, attention_mask: torch.Tensor) -> "Unpadded":
        """attention_mask: (B, T), 1 = token; the first position of every row must be a token."""
        lengths = attention_mask.sum(1)  # (B,)
        flat = attention_mask.flatten()
        index = flat.nonzero().squeeze(1)
        return cls(index, lengths.cumsum(0) - lengths, flat.cumsum(0) - 1, *attention_mask.shape)

    def unpad(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> (N, D)"""
        return x.flatten(0, 1).index_select(0, self.index)

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """(N, D) -> (B, T, D), zeros at the padding"""
        padded = x.new_zeros(self.batch * self.length, x.shape[-1]).index_copy(0, self.index, x)
        return padded.view(self.batch, self.length, -1)

    def pad_for_attention(self, x: torch.Tensor) -> torch.Tensor:
        """(N, D) -> (B, T, D) with copies of real rows at the padding: the same attention output at every
        token (masked keys weigh exactly 0, padded queries' outputs are dropped by `unpad`), in one
        gather instead of zero-filling and scattering (which was 12% of a `small` inference batch)."""
        return x.index_select(0, self.source).view(self.batch, self.length, -1)

    def attention(self, qkv: torch.Tensor, attend, mask: torch.Tensor | None, n_query: int | None) -> torch.Tensor:
        """attend(qkv (B, T, 3C), mask, Q) -> (B, Q, C) run on the padded layout: (N, 3C) -> (N, C), or
        (B, C) for n_query = 1 (the [CLS] rows)."""
        y = attend(self.pad_for_attention(qkv), mask, n_query or self.length)
        return self.unpad(y) if n_query is None else y.reshape(self.batch, -1)


class SelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head = cfg.num_attention_heads
        self.qkv = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size)  # fused: one matmul instead of three
        self.out = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.p_drop = cfg.attention_probs_dropout_prob

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, n_query: int | None = None,
                unpadded: Unpadded | None = None) -> torch.Tensor:
        """x: (B, T, C) -> (B, Q, C), Q = T, or n_query when only the first positions' outputs are wanted
        (keys and values still come from every position). Unpadded: x (N, C) -> (N, C), or (B, C) for
        n_query = 1."""
        qkv = self.qkv(x)  # (B, T, 3C), or (N, 3C)
        if unpadded is not None:
            return self.out(unpadded.attention(qkv, self.attend, mask, n_query))
        return self.out(self.attend(qkv, mask, n_query or qkv.shape[1]))  # (B, Q, C)

    def attend(self, qkv: torch.Tensor, mask: torch.Tensor | None, n_query: int) -> torch.Tensor:
        """Scaled dot-product attention of the first n_query positions: (B, T, 3C) -> (B, Q, C)."""
        B, T, C = qkv.shape[0], qkv.shape[1], qkv.shape[2] // 3
        q, k, v = qkv.view(B, T, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4)  # 3x (B, h, T, d)
        y = F.scaled_dot_product_attention(q[:, :, :n_query], k, v, attn_mask=mask,
                                           dropout_p=self.p_drop if self.training else 0.0)
        return y.transpose(1, 2).reshape(B, n_query, C)


class Layer(nn.Module):
    """Post-LayerNorm transformer layer (BERT/ELECTRA): x = LN(x + attn(x)); x = LN(x + ffn(x))."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attn = SelfAttention(cfg)
        self.attn_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.ffn_in = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.ffn_out = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.ffn_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)
        self.act = activation(cfg.hidden_act)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, n_query: int | None = None,
                unpadded: Unpadded | None = None) -> torch.Tensor:
        """(B, T, C) -> (B, T, C), or (B, n_query, C): the first positions only.
        Unpadded: (N, C) -> (N, C), or (B, C) for n_query = 1."""
        if n_query is None:
            residual = x
        else:
            residual = x[:, :n_query] if unpadded is None else x[unpadded.first]
        x = self.attn_norm(residual + self.dropout(self.attn(x, mask, n_query, unpadded)))
        return self.ffn_norm(x + self.dropout(self.ffn_out(self.act(self.ffn_in(x)))))


class Encoder(nn.Module):
    """Embeddings (possibly shared with another encoder) -> optional projection -> layers."""

    def __init__(self, cfg: ModelConfig, embeddings: Embeddings | None = None):
        super().__init__()
        self.config = cfg
        self.embeddings = embeddings if embeddings is not None else Embeddings(cfg)
        self.project = (nn.Linear(cfg.embedding_size, cfg.hidden_size)
                        if cfg.embedding_size != cfg.hidden_size else None)
        self.layers = nn.ModuleList(Layer(cfg) for _ in range(cfg.num_hidden_layers))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, first_token_only: bool = False,
                padding_unread: bool = False) -> torch.Tensor:
        """input_ids, attention_mask (1 = token, 0 = padding), token_type_ids: (B, T) -> (B, T, H).

        first_token_only: a head that reads only [CLS] needs only its output from the last layer, so
        that layer skips the other positions' queries, attention output and feed-forward: (B, 1, H),
        about 1/L less work (the same numbers and gradients as the full output's first position).
        padding_unread: the caller ignores the outputs at padding (they may come back as zeros), which
        lets a fast path skip the padding (`unpadding`)."""
        x = self.embeddings(input_ids, token_type_ids)  # (B, T, E)
        mask = self.key_mask(attention_mask)  # (B, 1, 1, T) or None
        unpadded = self.unpadding(x, mask, attention_mask, padding_read=not (first_token_only or padding_unread))
        if unpadded is not None:
            x = unpadded.unpad(x)  # (N, E)
        if self.project is not None:
            x = self.project(x)  # (B, T, H)
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x, mask, 1 if first_token_only and i == last else None, unpadded)
        if unpadded is None:
            return x
        return x[:, None] if first_token_only else unpadded.pad(x)  # (B, 1, H) or (B, T, H)

    def key_mask(self, attention_mask: torch.Tensor | None) -> torch.Tensor | None:
        """(B, T) 1 = token, 0 = padding -> (B, 1, 1, T) bool: the keys a query may attend to. (CpuEncoder
        leaves out a mask without padding, so that SDPA may take its fastest kernels.)"""
        return None if attention_mask is None else attention_mask.bool()[:, None, None, :]

    def unpadding(self, x: torch.Tensor, mask: torch.Tensor | None, attention_mask: torch.Tensor | None,
                  padding_read: bool) -> Unpadded | None:
        """Where the real tokens are, for layers to skip the padding; the plain path keeps it (None).
        model/cpu.py's CpuEncoder skips it on CPUs."""
        return None


def init_weights(module: nn.Module, std: float) -> None:
    """BERT/ELECTRA initialisation: N(0, std) weights, zero biases, unit LayerNorms."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=std)
            if m.padding_idx is not None:
                with torch.no_grad():
                    m.weight[m.padding_idx].zero_()
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
