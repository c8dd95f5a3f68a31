"""The transformer encoder shared by the generator and the discriminator.

Same architecture and parameters as Hugging Face's `ElectraModel` (post-LayerNorm BERT layers),
with two layout differences that `electra.hf` converts: query/key/value are one fused matrix,
and module names are shorter.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
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


def cpu_dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """Training-mode dropout for CPUs, where drawing the mask was 12% of a training step with F.dropout's
    bernoulli_ (one 32-bit draw of the serial Mersenne Twister per element). Here one 64-bit word gives
    four elements 16 uniform bits each (`random_words`), 4.6x cheaper or more (BENCHMARKS.md); p is rounded
    to a multiple of 1/65536 and the kept values are scaled by 1 / (1 - that p), so the expectation is exact."""
    return x * dropout_multiplier(x.shape, p, x.dtype)


def dropout_multiplier(shape: torch.Size, p: float, dtype: torch.dtype) -> torch.Tensor:
    """`cpu_dropout`'s mask: 0 where dropped, 1 / (1 - p) elsewhere."""
    n, cut = shape.numel(), min(round(p * 65536), 65535)
    r = random_words((n + 3) // 4).view(torch.int16)[:n].view(shape)  # uniform on [-32768, 32767]
    keep = torch.ge(r, cut - 32768, out=torch.empty(shape, dtype=dtype))  # 1.0 where kept, written as floats
    return keep.mul_(65536 / (65536 - cut))  # (5x faster than comparing to bool, then converting)


def random_words(n: int) -> torch.Tensor:
    """(n,) int64, every bit uniform, from numpy's SFC64 generator, faster than torch's Mersenne Twister
    (`random_`): inside a `small` pretraining step on CPU-2, 0.42 against 0.56 ms for 131,072 words
    (BENCHMARKS.md). Its seed is one draw from torch's generator, so `torch.manual_seed` and a saved torch
    RNG state still decide every mask (reproducible runs, exact resume)."""
    seed = int(torch.randint(0, 2**63 - 1, (), dtype=torch.int64))
    return torch.from_numpy(np.random.SFC64(seed).random_raw(n).view(np.int64))


def use_cpu_path(x: torch.Tensor) -> bool:
    """CUDA and compiled graphs have fused dropout (and SDPA kernels that apply it); eager CPU does not."""
    return x.device.type == "cpu" and not torch.compiler.is_compiling()


class Dropout(nn.Dropout):
    """nn.Dropout, with `cpu_dropout` in eager CPU training."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        return cpu_dropout(x, self.p) if use_cpu_path(x) else F.dropout(x, self.p, True)


class CpuTrainingAttention(torch.autograd.Function):
    """Multi-head attention with `cpu_dropout` on its probabilities, forward and backward by hand.

    With dropout, CPU SDPA leaves its flash kernel for the math path and draws the mask with
    bernoulli_; composed from autograd ops that path copies q, k and v once each for the batched
    matmuls and twice more on the way back (unbind's stack, then the head layout). Here the heads
    are laid out once each way, the gradients of q, k and v are written straight into one buffer,
    and 1/sqrt(d) rides in the matmuls' alpha.
    qkv: (B, T, 3C) from the fused projection; mask: (B, 1, 1, T) bool, True = may attend, or None;
    n_query: Q <= T, the first positions' outputs only -> (B, Q, C).
    """

    @staticmethod
    def forward(ctx, qkv: torch.Tensor, mask: torch.Tensor | None, p: float, n_head: int, n_query: int):
        B, T, C3 = qkv.shape
        C, Q = C3 // 3, n_query
        d = C // n_head
        heads = qkv.view(B, T, 3, n_head, d).permute(2, 0, 3, 1, 4).reshape(3, B * n_head, T, d)  # one copy
        q, k, v = heads[0, :, :Q], heads[1], heads[2]  # (B*h, Q, d), (B*h, T, d) x2
        scale = d ** -0.5
        scores = qkv.new_empty(B * n_head, Q, T).baddbmm_(q, k.transpose(1, 2), beta=0, alpha=scale)
        if mask is not None:
            scores.view(B, n_head, Q, T).masked_fill_(~mask, float("-inf"))
        probs = torch.softmax(scores, -1)  # (B*h, Q, T)
        keep = dropout_multiplier(probs.shape, p, probs.dtype)
        dropped = probs * keep
        y = torch.bmm(dropped, v)  # (B*h, Q, d)
        ctx.save_for_backward(heads, probs, keep, dropped)
        ctx.sizes = (B, T, Q, n_head, d, scale)
        return y.view(B, n_head, Q, d).transpose(1, 2).reshape(B, Q, C)

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):
        heads, probs, keep, dropped = ctx.saved_tensors
        B, T, Q, n_head, d, scale = ctx.sizes
        q, k, v = heads[0, :, :Q], heads[1], heads[2]
        grad_y = grad_y.reshape(B, Q, n_head, d).transpose(1, 2).reshape(B * n_head, Q, d)
        grad_heads = torch.empty_like(heads)  # (3, B*h, T, d)
        torch.bmm(dropped.transpose(1, 2), grad_y, out=grad_heads[2])  # dv
        # the gradient of the scores, times 1/sqrt(d) (softmax's backward is linear): (B*h, Q, T), 0 where masked
        grad_probs = torch.empty_like(probs).baddbmm_(grad_y, v.transpose(1, 2), beta=0, alpha=scale).mul_(keep)
        grad_scores = torch._softmax_backward_data(grad_probs, probs, -1, probs.dtype)
        if Q == T:
            torch.bmm(grad_scores, k, out=grad_heads[0])  # dq
        else:
            grad_heads[0].zero_()  # queries that were not asked for
            grad_heads[0, :, :Q] = torch.bmm(grad_scores, k)
        torch.bmm(grad_scores.transpose(1, 2), q, out=grad_heads[1])  # dk
        grad_qkv = grad_heads.view(3, B, n_head, T, d).permute(1, 3, 0, 2, 4).reshape(B, T, 3 * n_head * d)
        return grad_qkv, None, None, None, None


class Embeddings(nn.Module):
    """Word + position + token-type embeddings, LayerNorm, dropout. Shared by both networks."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.word = nn.Embedding(cfg.vocab_size, cfg.embedding_size, padding_idx=cfg.pad_token_id)
        self.position = nn.Embedding(cfg.max_position_embeddings, cfg.embedding_size)
        self.token_type = nn.Embedding(cfg.type_vocab_size, cfg.embedding_size)
        self.norm = nn.LayerNorm(cfg.embedding_size, eps=cfg.layer_norm_eps)
        self.dropout = Dropout(cfg.hidden_dropout_prob)

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
    batch: int
    length: int

    @classmethod
    def of(cls, attention_mask: torch.Tensor) -> "Unpadded":
        lengths = attention_mask.sum(1)  # (B,)
        index = attention_mask.flatten().nonzero().squeeze(1)
        return cls(index, lengths.cumsum(0) - lengths, *attention_mask.shape)

    def unpad(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> (N, D)"""
        return x.flatten(0, 1).index_select(0, self.index)

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """(N, D) -> (B, T, D), zeros at the padding"""
        padded = x.new_zeros(self.batch * self.length, x.shape[-1]).index_copy(0, self.index, x)
        return padded.view(self.batch, self.length, -1)


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
            qkv = unpadded.pad(qkv)
        B, T, C = qkv.shape[0], qkv.shape[1], qkv.shape[2] // 3
        Q = n_query or T
        if self.training and self.p_drop > 0 and use_cpu_path(x):
            y = CpuTrainingAttention.apply(qkv, mask, self.p_drop, self.n_head, Q)  # (B, Q, C)
        else:
            q, k, v = qkv.view(B, T, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4)  # 3x (B, h, T, d)
            y = F.scaled_dot_product_attention(q[:, :, :Q], k, v, attn_mask=mask,
                                               dropout_p=self.p_drop if self.training else 0.0)
            y = y.transpose(1, 2).reshape(B, Q, C)
        if unpadded is not None:
            y = unpadded.unpad(y) if Q == T else y.reshape(B, C)  # n_query = 1: [CLS] rows
        return self.out(y)


class Layer(nn.Module):
    """Post-LayerNorm transformer layer (BERT/ELECTRA): x = LN(x + attn(x)); x = LN(x + ffn(x))."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attn = SelfAttention(cfg)
        self.attn_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.ffn_in = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.ffn_out = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.ffn_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = Dropout(cfg.hidden_dropout_prob)
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
        self.always_mask = False  # True once compiled: see compile_layers
        self.skip_padding = True  # see forward

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, first_token_only: bool = False,
                padding_unread: bool = False) -> torch.Tensor:
        """input_ids, attention_mask (1 = token, 0 = padding), token_type_ids: (B, T) -> (B, T, H).

        first_token_only: a head that reads only [CLS] needs only its output from the last layer, so
        that layer skips the other positions' queries, attention output and feed-forward: (B, 1, H),
        about 1/L less work (the same numbers and gradients as the full output's first position).
        On an eager CPU a padded batch skips its padding outside attention (`Unpadded`) when no padding
        position's output is read: with first_token_only, or padding_unread (the caller ignores those
        positions; they come back as zeros)."""
        x = self.embeddings(input_ids, token_type_ids)
        mask = None
        if attention_mask is not None and (self.always_mask or _mask_needed(attention_mask)):
            mask = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, T): keys a query may attend to
        unpadded = None
        if ((first_token_only or padding_unread) and mask is not None and self.skip_padding
                and not self.always_mask and use_cpu_path(x) and bool(attention_mask[:, 0].all())):
            unpadded = Unpadded.of(attention_mask)
            x = unpadded.unpad(x)  # (N, E)
        if self.project is not None:
            x = self.project(x)
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x, mask, 1 if first_token_only and i == last else None, unpadded)
        if unpadded is None:
            return x
        return x[:, None] if first_token_only else unpadded.pad(x)  # (B, 1, H) or (B, T, H)


def compile_layers(*encoders: "Encoder") -> None:
    """torch.compile each transformer layer: layers of one width share their compiled graphs, so
    compile time stays that of one layer. A compiled encoder always passes the attention mask, so
    batches with and without padding share a graph; the two networks' widths and training vs
    validation (grad mode) still need graphs of their own, and dynamo's limit of 8 per function
    (beyond which it silently runs the layer eagerly) is raised to leave room for them."""
    config = torch._dynamo.config
    limit = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"  # before torch 2.7
    setattr(config, limit, max(getattr(config, limit), 32))
    for encoder in encoders:
        encoder.always_mask = True
        for layer in encoder.layers:
            layer.compile()


def _mask_needed(attention_mask: torch.Tensor) -> bool:
    """Without padding SDPA may take its fastest kernels, but asking whether there is any costs a host
    sync on GPUs and a graph break under torch.compile: ask only in eager CPU runs."""
    if attention_mask.device.type != "cpu" or torch.compiler.is_compiling():
        return True
    return not bool(attention_mask.all())


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
