"""AdamW parameter groups and learning-rate schedules."""

from __future__ import annotations


import torch
from torch import nn


def no_decay(name: str, param: torch.Tensor) -> bool:
    """As the official code: no weight decay on LayerNorm parameters and biases."""
    return param.ndim < 2 or "norm" in name.lower() or name.endswith(".bias")


def adamw(model: nn.Module, lr: float, weight_decay: float, betas=(0.9, 0.999), eps: float = 1e-6,
          lr_scale: dict[str, float] | None = None) -> torch.optim.AdamW:
    """AdamW with decay/no-decay groups; `lr_scale` maps parameter names to a learning-rate factor
    (layer-wise decay in fine-tuning). Fused, on CPUs too (there 3x faster than foreach: 8 against 27
    ms a step for `small`)."""
    groups: dict[tuple[bool, float], list[torch.Tensor]] = {}
    seen: set[int] = set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:  # shared parameters appear once
            continue
        seen.add(id(p))
        scale = 1.0 if lr_scale is None else lr_scale[name]
        groups.setdefault((no_decay(name, p), scale), []).append(p)
    param_groups = [{"params": ps, "weight_decay": 0.0 if nd else weight_decay, "lr": lr * scale,
                     "lr_scale": scale} for (nd, scale), ps in sorted(groups.items())]
    return torch.optim.AdamW(param_groups, lr=lr, betas=betas, eps=eps, fused=True)


def linear_warmup_decay(step: int, warmup_steps: int, total_steps: int) -> float:
    """Factor of the peak learning rate: 0 -> 1 over warm-up, then linearly to 0 at total_steps."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


def set_lr(optimizer: torch.optim.Optimizer, peak_lr: float, factor: float) -> float:
    for g in optimizer.param_groups:
        g["lr"] = peak_lr * g.get("lr_scale", 1.0) * factor
    return peak_lr * factor
