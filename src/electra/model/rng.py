"""Counter-based randomness: uniform numbers as a pure function of (seed, step, example, stream, slot).

Pretraining draws which tokens to mask and which replacements to sample from these, not from a
stateful generator, so a run gives the same corruption whatever the batch layout, the number of
processes or an interruption and resume: an example's randomness depends only on its global
index and the step. The hash is Chris Wellons' "lowbias32", computed on int64 tensors holding
32-bit values, so it runs the same on any device.
"""

from __future__ import annotations

import torch

_M32 = 0xFFFFFFFF


def _mul32(x, c: int):
    """(x * c) mod 2^32 for 0 <= x, c < 2^32 without overflowing int64 (split c into 16-bit halves)."""
    lo = x * (c & 0xFFFF)
    hi = ((x * (c >> 16)) & 0xFFFF) << 16
    return (lo + hi) & _M32


def _mix(x):
    """The lowbias32 hash of a tensor or a Python int (the same bits either way)."""
    x = x & _M32
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def uniform(seed: int, step: int, example_index: torch.Tensor, stream: int, n: int) -> torch.Tensor:
    """(B,) int64 global example indices -> (B, n) float32 uniforms in [0, 1).

    `stream` separates independent uses (mask positions, mask-or-keep, sampling).
    """
    key = _mix(_mix((seed * 0x9E3779B9 + 0x632BE5AB) & _M32) ^ (step & _M32))  # a Python int: no host-device copy
    ex = example_index.to(torch.int64)
    h = _mix(_mix(key ^ (ex & _M32)) ^ (ex >> 32))  # (B,)
    h = _mix(h ^ stream)[:, None]  # (B, 1)
    slot = torch.arange(n, device=example_index.device, dtype=torch.int64)[None, :]
    h = _mix(_mix(h ^ slot) + 0x27D4EB2F)  # (B, n); two rounds so neighbouring slots decorrelate
    return (h >> 8).to(torch.float32) * (1.0 / (1 << 24))
