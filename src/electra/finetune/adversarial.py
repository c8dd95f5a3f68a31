"""Adversarial fine-tuning: train on perturbations of the word-embedding output that raise the loss.

- FGM (Miyato et al., ICLR 2017): one step of size epsilon along the gradient; the clean and the
  perturbed losses are trained on together.
- PGD (Madry et al., ICLR 2018): `steps` ascent steps of size alpha, each projected back into the
  epsilon ball; the clean loss and the loss at the last perturbation are trained on.
- FreeLB (Zhu et al., ICLR 2020): `steps` ascent steps from a small random start; the parameters'
  gradient is the average over every step's loss (the "free" large batch).

Perturbations are per example: their L2 norm over the (tokens x embedding) slice of one example, at
real tokens only, is what epsilon bounds, so an example's perturbation does not depend on which other
examples share its batch, process or micro-batch (distributed and accumulated runs stay the same
computation). These are options of the fine-tuning objective: the one training loop runs them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from electra.config import FinetuneConfig


class EmbeddingPerturbation:
    """A forward hook on the word embeddings: keeps their output, and adds `delta` (B, T, E) when set."""

    def __init__(self, model: nn.Module):
        word = [m for name, m in model.named_modules() if name.endswith("encoder.embeddings.word")]
        if len(word) != 1:
            raise RuntimeError("adversarial training needs the model's word embeddings")
        self.delta: torch.Tensor | None = None
        self.output: torch.Tensor | None = None
        self.width = word[0].embedding_dim
        word[0].register_forward_hook(self._hook)

    def _hook(self, module, inputs, output):
        if not output.requires_grad:  # frozen embeddings: the perturbation still needs the loss's gradient here
            output = output.detach().requires_grad_(True)
        self.output = output
        return output if self.delta is None else output + self.delta


def _per_example_unit(g: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """g / ||g|| per example, zero at padding: (B, T, E), (B, T) -> (B, T, E)."""
    g = g * mask[..., None]
    norm = g.flatten(1).norm(dim=1).clamp(min=1e-12)
    return g / norm[:, None, None]


def _project(delta: torch.Tensor, epsilon: float) -> torch.Tensor:
    """Scale each example's perturbation back into the L2 ball of radius epsilon."""
    norm = delta.flatten(1).norm(dim=1).clamp(min=1e-12)
    return delta * (epsilon / norm).clamp(max=1.0)[:, None, None]


def adversarial_loss(loss_fn: Callable[[], torch.Tensor], perturb: EmbeddingPerturbation, mask: torch.Tensor,
                     c: FinetuneConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss to backpropagate for one micro-batch, and metrics. `loss_fn()` runs the model on the
    micro-batch (with the hook's current perturbation) and returns its share of the step's loss."""
    mask = mask.float()
    eps, alpha, steps = c.adv_epsilon, c.adv_alpha, c.adv_steps
    perturb.delta = None
    if c.adversarial == "freelb":
        B, T = mask.shape
        start = torch.rand(B, T, perturb.width, device=mask.device).sub_(0.5) * mask[..., None]
        delta = 0.1 * eps * _per_example_unit(start, mask)  # a random start, a tenth of the ball
        total = torch.zeros((), device=mask.device)
        for _ in range(steps):
            perturb.delta = delta.requires_grad_(True)
            loss = loss_fn() / steps  # every step's loss trains the parameters: their mean
            (g,) = torch.autograd.grad(loss, delta, retain_graph=True)
            total = total + loss
            delta = _project(delta.detach() + alpha * _per_example_unit(g, mask), eps)
        perturb.delta = None
        return total, {"loss": total.detach(), "adv_delta_norm": delta.flatten(1).norm(dim=1).mean()}
    clean = loss_fn()
    (g,) = torch.autograd.grad(clean, perturb.output, retain_graph=True)
    if c.adversarial == "fgm":
        delta = eps * _per_example_unit(g, mask)
    else:  # pgd
        delta = _project(alpha * _per_example_unit(g, mask), eps)
        for _ in range(steps - 1):
            perturb.delta = delta.requires_grad_(True)
            (g,) = torch.autograd.grad(loss_fn(), delta)
            delta = _project(delta.detach() + alpha * _per_example_unit(g, mask), eps)
    perturb.delta = delta.detach()
    adv = loss_fn()
    perturb.delta = None
    return clean + adv, {"loss": clean.detach(), "adv_loss": adv.detach(),
                         "adv_delta_norm": delta.flatten(1).norm(dim=1).mean()}
