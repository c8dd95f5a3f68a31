"""Fast CPU kernels for eager training, beside the plain model path (MosaicBERT keeps its kernels apart too).

`use_cpu_kernels(module)` is the one switch: it swaps these in for the encoders and the generator head of
a module, keeping every parameter. Each kernel runs only in eager CPU runs (CUDA and compiled graphs
have fused kernels of their own; dropout and attention by hand only in training, the mask and unpadding
shortcuts and the blocked projection in inference too) and otherwise defers to the plain path; each has
a test that it equals the plain path (tests/test_model.py). Where the time went, and what each bought,
on which CPU: BENCHMARKS.md.

- dropout bits from numpy's SFC64, four elements per 64-bit draw, instead of bernoulli_'s one serial
  Mersenne Twister draw per element (drawing masks was 12% of a `small` CPU step);
- attention forward and backward by hand with that dropout (CPU SDPA with dropout leaves its fused
  kernel for a math path that copies q, k and v several times);
- skipping padding outside attention when no padding output is read (MosaicBERT's unpadding), and in
  inference attention in groups of similar length (a server's batches of random lengths);
- the generator's vocabulary projection computed a block of columns at a time (cache-sized weight slices).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from electra.model.encoder import Encoder, SelfAttention, Unpadded
from electra.model.heads import GeneratorHead


def use_cpu_path(x: torch.Tensor) -> bool:
    """CUDA and compiled graphs have fused dropout (and SDPA kernels that apply it); eager CPU does not."""
    return x.device.type == "cpu" and not torch.compiler.is_compiling()


def use_cpu_kernels(module: nn.Module) -> nn.Module:
    """Swap the fast CPU kernels into every encoder and generator head of `module` (in place; the same
    parameters and state dict). Returns the module."""
    for m in list(module.modules()):
        if type(m) is Encoder or type(m) is CpuEncoder:
            m.__class__ = CpuEncoder
            for name, child in list(m.named_modules()):
                if type(child) is nn.Dropout:
                    parent = m.get_submodule(name.rpartition(".")[0]) if "." in name else m
                    setattr(parent, name.rpartition(".")[2], CpuDropout(child.p).train(child.training))
                elif type(child) is SelfAttention:
                    child.__class__ = CpuSelfAttention
        elif type(m) is GeneratorHead:
            m.__class__ = CpuGeneratorHead
    return module


# --- dropout ---------------------------------------------------------------------------------------

def random_words(n: int) -> torch.Tensor:
    """(n,) int64, every bit uniform, from numpy's SFC64 generator, faster than torch's Mersenne Twister
    (`random_`): inside a `small` pretraining step, 0.42 against 0.56 ms for 131,072 words
    (BENCHMARKS.md). Its seed is one draw from torch's generator, so `torch.manual_seed` and a saved torch
    RNG state still decide every mask (reproducible runs, exact resume)."""
    seed = int(torch.randint(0, 2**63 - 1, (), dtype=torch.int64))
    return torch.from_numpy(np.random.SFC64(seed).random_raw(n).view(np.int64))


def dropout_multiplier(shape: torch.Size, p: float, dtype: torch.dtype) -> torch.Tensor:
    """The dropout mask: 0 where dropped, 1 / (1 - p) elsewhere, from 16 uniform bits per element; p is
    rounded to a multiple of 1/65536 and the kept values scaled by 1 / (1 - that p): the expectation is exact."""
    n, cut = shape.numel(), min(round(p * 65536), 65535)
    r = random_words((n + 3) // 4).view(torch.int16)[:n].view(shape)  # uniform on [-32768, 32767]
    keep = torch.ge(r, cut - 32768, out=torch.empty(shape, dtype=dtype))  # 1.0 where kept, written as floats
    return keep.mul_(65536 / (65536 - cut))  # (5x faster than comparing to bool, then converting)


def cpu_dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """Training-mode dropout from `dropout_multiplier`: 4.6x cheaper than F.dropout's bernoulli_ on CPUs."""
    return x * dropout_multiplier(x.shape, p, x.dtype)


class CpuDropout(nn.Dropout):
    """nn.Dropout, with `cpu_dropout` in eager CPU training."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.p > 0 and use_cpu_path(x):
            return cpu_dropout(x, self.p)
        return super().forward(x)


# --- attention -------------------------------------------------------------------------------------

class CpuSelfAttention(SelfAttention):
    """SelfAttention whose eager CPU training runs `CpuTrainingAttention`."""

    def attend(self, qkv: torch.Tensor, mask: torch.Tensor | None, n_query: int) -> torch.Tensor:
        if self.training and self.p_drop > 0 and use_cpu_path(qkv):
            return CpuTrainingAttention.apply(qkv, mask, self.p_drop, self.n_head, n_query)
        return super().attend(qkv, mask, n_query)


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


# --- skipping padding --------------------------------------------------------------------------------

class CpuEncoder(Encoder):
    """Encoder that, in eager CPU runs, passes no attention mask for a batch without padding (SDPA's
    fastest kernels take no mask; asking whether there is padding would cost a host sync on a GPU), and
    skips the padding of a batch outside attention when no padding position's output is read
    (MosaicBERT's unpadding): 1.11-1.15x per SST-2 fine-tuning step at 20% padding (BENCHMARKS.md). A
    batch whose first position is padding keeps the padded path."""

    def key_mask(self, attention_mask: torch.Tensor | None) -> torch.Tensor | None:
        if attention_mask is not None and use_cpu_path(attention_mask) and bool(attention_mask.all()):
            return None
        return super().key_mask(attention_mask)

    def unpadding(self, x: torch.Tensor, mask: torch.Tensor | None, attention_mask: torch.Tensor | None,
                  padding_read: bool) -> Unpadded | None:
        if padding_read or mask is None or not use_cpu_path(x) or not bool(attention_mask[:, 0].all()):
            return None
        unpadded = Unpadded.of(attention_mask)
        if self.training or torch.jit.is_tracing():  # an exported graph must not keep one batch's groups
            return unpadded
        return GroupedUnpadded.of_lengths(unpadded, attention_mask.sum(1))


@dataclass
class GroupedUnpadded(Unpadded):
    """Unpadded whose attention runs on groups of sequences of similar length, each group padded to its
    own longest: a batch of sentences of random lengths (a server's) pads attention to its longest
    sentence, 2-4x the keys most rows need. Groups of `ROWS` rows in length order; taken only where
    they cut the padded attention's work (rows x length^2) to `WORTH` or less, and in inference only.

    groups: per group, the rows of the (N, 3C) layout that fill its (rows, length) layout (a copy of
    the last real token at the padding, as `pad_for_attention`), its key mask (None: no padding), and
    the flat positions of its real tokens; restore / restore_first put the groups' outputs, which come
    in length order, back in batch order (None: the batch was in length order already)."""

    groups: list = field(default_factory=list)  # (source (rows * length,), mask, keep (tokens,), rows, length)
    restore: torch.Tensor | None = None
    restore_first: torch.Tensor | None = None

    ROWS = 16
    WORTH = 0.7

    @classmethod
    def of_lengths(cls, unpadded: Unpadded, lengths: torch.Tensor) -> Unpadded:
        """The grouped layout of `unpadded`, or `unpadded` itself where grouping would not pay."""
        n = lengths.tolist()
        order = sorted(range(len(n)), key=n.__getitem__)
        rows = [order[i:i + cls.ROWS] for i in range(0, len(order), cls.ROWS)]
        if len(rows) < 2 or sum(len(r) * max(n[b] for b in r) ** 2 for r in rows) > cls.WORTH * len(n) * max(n) ** 2:
            return unpadded
        starts = unpadded.first
        groups = []
        for r in rows:
            index = torch.tensor(r)
            length, span = lengths[index], max(n[b] for b in r)
            t = torch.arange(span)
            source = (starts[index][:, None] + torch.minimum(t, length[:, None] - 1)).flatten()
            real = t < length[:, None]  # (rows, span)
            mask = None if bool(real.all()) else real[:, None, None, :]
            groups.append((source, mask, real.flatten().nonzero().squeeze(1), len(r), span))
        restore = restore_first = None
        if order != sorted(order):
            in_order = torch.tensor(order)
            restore_first = in_order.argsort()  # row b's place among the groups' rows
            placed = lengths[in_order].cumsum(0) - lengths[in_order]  # where each row's tokens start there
            within = torch.arange(len(unpadded.index)) - starts.repeat_interleave(lengths)
            restore = placed[restore_first].repeat_interleave(lengths) + within
        return cls(**vars(unpadded), groups=groups, restore=restore, restore_first=restore_first)

    def attention(self, qkv: torch.Tensor, attend, mask: torch.Tensor | None, n_query: int | None) -> torch.Tensor:
        outputs = []
        for source, group_mask, keep, rows, span in self.groups:
            y = attend(qkv.index_select(0, source).view(rows, span, -1), group_mask, n_query or span)
            outputs.append(y.reshape(rows, -1) if n_query else y.flatten(0, 1).index_select(0, keep))
        y = torch.cat(outputs)  # (N, C) or (B, C), in length order
        restore = self.restore_first if n_query else self.restore
        return y if restore is None else y.index_select(0, restore)


# --- the generator's vocabulary projection ------------------------------------------------------------

class CpuGeneratorHead(GeneratorHead):
    """GeneratorHead whose eager fp32 CPU projection runs `BlockedVocabProjection`."""

    def project(self, h: torch.Tensor, word_embeddings: torch.Tensor) -> torch.Tensor:
        if use_cpu_path(h) and h.dtype == word_embeddings.dtype and not torch.is_autocast_enabled("cpu"):
            return BlockedVocabProjection.apply(h, word_embeddings, self.bias)
        return super().project(h, word_embeddings)


class BlockedVocabProjection(torch.autograd.Function):
    """F.linear(h, weight, bias) for a vocabulary-wide output on CPUs, the forward computed `BLOCK` output
    columns at a time: MKL ran the single (M, E) x (E, 30522) product of `small`'s generator at about
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

