"""Adversarial fine-tuning: train on perturbations of the word-embedding output that raise the loss.

- FGM (Miyato et al., ICLR 2017): one step of size epsilon along the gradient; the clean and the
  perturbed losses are trained on together.
- PGD (Madry et al., ICLR 2018): `steps` ascent steps of size alpha, each projected back into the
  epsilon ball; the clean loss and the loss at the last perturbation are trained on.
- FreeLB (Zhu et al., ICLR 2020): `steps` ascent steps from a small random start; the parameters'
  gradient is the average over every step's loss (the "free" large batch).

Perturbations are per example and relative: epsilon and alpha are fractions of the L2 norm of the
example's own word embeddings (over its real tokens), so one setting fits models of any width and
initialisation. The default epsilon 0.02 is about the per-token size of the usual FGM setting (epsilon 1
over the whole embedding tensor of a BERT batch); an absolute 1.0, or a relative 0.1, kept `tiny` from
learning SST-2 at all (BENCHMARKS.md). An example's perturbation does not depend on which other
examples share its batch, process or micro-batch, so distributed and accumulated runs stay the same
computation. These are options of the fine-tuning objective: the one training loop runs them.
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
        self.word = word[0]
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


def _project(delta: torch.Tensor, radius: torch.Tensor | float) -> torch.Tensor:
    """Scale each example's perturbation back into its L2 ball: radius (B,) or a number."""
    norm = delta.flatten(1).norm(dim=1).clamp(min=1e-12)
    return delta * (radius / norm).clamp(max=1.0)[:, None, None]


def adversarial_loss(loss_fn: Callable[[], torch.Tensor], perturb: EmbeddingPerturbation, input_ids: torch.Tensor,
                     mask: torch.Tensor, c: FinetuneConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss to backpropagate for one micro-batch (input_ids, mask: (B, T)), and metrics. `loss_fn()` runs
    the model on the micro-batch (with the hook's current perturbation) and returns its share of the step's loss."""
    mask = mask.float()
    steps = c.adv_steps
    perturb.delta = None
    if c.adversarial == "freelb":
        with torch.no_grad():  # the sizes: fractions of each example's word-embedding norm
            e = perturb.word.weight[input_ids]
            scale = (e * mask[..., None]).flatten(1).norm(dim=1)[:, None, None]
        eps, alpha = c.adv_epsilon * scale, c.adv_alpha * scale
        start = torch.rand_like(e).sub_(0.5) * mask[..., None]
        delta = 0.1 * eps * _per_example_unit(start, mask)  # a random start, a tenth of the ball
        total = torch.zeros((), device=mask.device)
        for _ in range(steps):
            perturb.delta = delta.requires_grad_(True)
            loss = loss_fn() / steps  # every step's loss trains the parameters: their mean
            (g,) = torch.autograd.grad(loss, delta, retain_graph=True)
            total = total + loss
            delta = _project(delta.detach() + alpha * _per_example_unit(g, mask), eps.flatten())
        perturb.delta = None
        return total, {"loss": total.detach(), "adv_delta_norm": delta.flatten(1).norm(dim=1).mean()}
    clean = loss_fn()
    (g,) = torch.autograd.grad(clean, perturb.output, retain_graph=True)
    scale = (perturb.output.detach() * mask[..., None]).flatten(1).norm(dim=1)[:, None, None]
    eps, alpha = c.adv_epsilon * scale, c.adv_alpha * scale
    if c.adversarial == "fgm":
        delta = eps * _per_example_unit(g, mask)
    else:  # pgd
        delta = _project(alpha * _per_example_unit(g, mask), eps.flatten())
        for _ in range(steps - 1):
            perturb.delta = delta.requires_grad_(True)
            (g,) = torch.autograd.grad(loss_fn(), delta)
            delta = _project(delta.detach() + alpha * _per_example_unit(g, mask), eps.flatten())
    perturb.delta = delta.detach()
    adv = loss_fn()
    perturb.delta = None
    return clean + adv, {"loss": clean.detach(), "adv_loss": adv.detach(),
                         "adv_delta_norm": delta.flatten(1).norm(dim=1).mean()}
