"""The pretraining objectives: ELECTRA (Clark et al., ICLR 2020) and BERT's masked LM, its baseline.

ELECTRA: mask 15% of tokens -> generator (small masked LM) predicts them -> replacements are *sampled*
from its softmax (no gradient through sampling: not a GAN) -> the discriminator labels every
token original/replaced -> loss = gen_weight * MLM + disc_weight * BCE. Embeddings are shared (es),
shared through a stop-gradient plus a residual (gdes, DeBERTa-V3), or not shared (nes).

MLM: the same masking (80% [MASK], 10% random, 10% kept), a discriminator-sized masked LM, its loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from electra.config import ElectraConfig, ObjectiveConfig, SpecialIds
from electra.errors import UserError
from electra.model.encoder import Embeddings
from electra.model.heads import Discriminator, Generator
from electra.model.rng import uniform

STREAM_POSITIONS, STREAM_KEEP, STREAM_SAMPLE, STREAM_RANDOM = 0, 1, 2, 3


@dataclass
class Masked:
    input_ids: torch.Tensor  # (B, T) with [MASK] where chosen
    positions: torch.Tensor  # (B, N) positions to predict (0 in unused slots)
    valid: torch.Tensor  # (B, N) bool: slot is used
    targets: torch.Tensor  # (B, N) original tokens at positions


def prediction_counts(input_ids: torch.Tensor, attention_mask: torch.Tensor, special: SpecialIds,
                      cfg: ObjectiveConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) maskable positions and (B,) how many of them each example predicts:
    round(mask_prob x maskable), at least 1, at most the official cap."""
    maskable = attention_mask.bool()  # (B, T)
    for token in (special.pad, special.cls, special.sep, special.mask):  # scalars: no host-device copy
        maskable = maskable & (input_ids != token)
    n_maskable = maskable.sum(1)
    n_predict = torch.round(n_maskable.float() * cfg.mask_prob).long().clamp(min=1, max=cfg.max_predictions(input_ids.shape[1]))
    return maskable, torch.minimum(n_predict, n_maskable)


def mask_tokens(input_ids: torch.Tensor, attention_mask: torch.Tensor, example_index: torch.Tensor,
                *, seed: int, step: int, special: SpecialIds, cfg: ObjectiveConfig,
                word_start: torch.Tensor | None = None, vocab_size: int = 0) -> Masked:
    """Choose round(mask_prob x maskable tokens) positions (at least 1, at most the cap) uniformly
    at random among the non-special, non-padding tokens; put [MASK] in mask_token_prob of them and a
    random token (of `vocab_size`) in random_token_prob; the rest keep theirs.

    Whole-word masking (word_start (B, T) bool: the first piece of each word): each piece takes its
    word's random key, so a word's pieces sort together; words are taken in that order while they fit
    in the token budget (BERT's whole-word masking), at least one piece."""
    B, T = input_ids.shape
    N = cfg.max_predictions(T)
    maskable, n_predict = prediction_counts(input_ids, attention_mask, special, cfg)

    keys = uniform(seed, step, example_index, STREAM_POSITIONS, T)
    arange = torch.arange(T, device=input_ids.device).expand(B, T)
    if word_start is not None:
        start = torch.cummax(torch.where(word_start, arange, 0), dim=1).values  # (B, T) each piece's word start
        keys = keys.gather(1, start)
    keys = torch.where(maskable, keys, 2.0)  # non-maskable sort last
    order = torch.argsort(keys, dim=1, stable=True)  # (B, T): a uniform random order (of words)
    if word_start is not None:
        word = start.gather(1, order)  # (B, T) the word of each sorted slot; a word's slots are adjacent
        new = torch.ones_like(word, dtype=torch.bool)
        new[:, 1:] = word[:, 1:] != word[:, :-1]
        run = new.long().cumsum(1) - 1
        last = torch.zeros_like(run).scatter_reduce(1, run, arange, "amax").gather(1, run)  # last slot of its word
        fits = (last < n_predict[:, None]).sum(1)  # whole words within the budget (a prefix of the order)
        n_predict = torch.where(fits > 0, fits, n_predict)
    positions = order[:, :N]  # (B, N): a uniform random subset
    valid = torch.arange(N, device=input_ids.device)[None, :] < n_predict[:, None]
    positions = torch.where(valid, positions, 0)
    targets = torch.gather(input_ids, 1, positions)

    u = uniform(seed, step, example_index, STREAM_KEEP, N)
    values = torch.where(valid & (u < cfg.mask_token_prob), special.mask, targets)
    if cfg.random_token_prob > 0:
        random_ids = (uniform(seed, step, example_index, STREAM_RANDOM, N) * vocab_size).long().clamp(max=vocab_size - 1)
        use_random = valid & (u >= cfg.mask_token_prob) & (u < cfg.mask_token_prob + cfg.random_token_prob)
        values = torch.where(use_random, random_ids, values)
    return Masked(input_ids.scatter(1, positions, values), positions, valid, targets)


def sample_tokens(logits: torch.Tensor, u: torch.Tensor, temperature: float) -> torch.Tensor:
    """Inverse-CDF sampling from softmax(logits / temperature) in fp32: (B, N, V), (B, N) -> (B, N).

    One uniform per slot (not per vocabulary entry) keeps counter-based randomness cheap.
    """
    return sample_from_probs(torch.softmax(logits.float() / temperature, dim=-1), u)


def sample_from_probs(probs: torch.Tensor, u: torch.Tensor, block: int = 128) -> torch.Tensor:
    """Inverse-CDF sampling: (..., V) probabilities (need not sum to 1), (...) uniforms -> (...) ids.

    In two levels, since a cumulative sum over the whole vocabulary is sequential per row (1% of a
    CPU pretraining step for `small`): the sums of blocks of `block` entries choose a block, then
    the cumulative sum of that block alone chooses the entry. Each level scales its target by its
    own total, so rounding never lands past the end or on an entry of probability 0.
    """
    V = probs.shape[-1]
    n_full = V // block
    block_sums = probs[..., :n_full * block].unflatten(-1, (n_full, block)).sum(-1)  # (..., n_full)
    if n_full * block < V:
        block_sums = torch.cat([block_sums, probs[..., n_full * block:].sum(-1, keepdim=True)], -1)
    cdf = block_sums.cumsum(-1)  # (..., n_blocks)
    target = u[..., None] * cdf[..., -1:]  # (..., 1)
    chosen = torch.searchsorted(cdf, target, right=True).clamp(max=cdf.shape[-1] - 1)  # (..., 1)
    below = torch.where(chosen > 0, cdf.gather(-1, (chosen - 1).clamp(min=0)), 0.0)
    within = ((target - below) / block_sums.gather(-1, chosen)).clamp(0.0, 1.0)  # uniform in the block

    ids = chosen * block + torch.arange(block, device=probs.device)  # (..., block)
    inner = probs.gather(-1, ids.clamp(max=V - 1)) * (ids < V)  # the last block may be short
    inner_cdf = inner.cumsum(-1)
    j = torch.searchsorted(inner_cdf, within * inner_cdf[..., -1:], right=True).clamp(max=block - 1)
    return (chosen * block + j).squeeze(-1).clamp(max=V - 1)


class GeneratorLoss(torch.autograd.Function):
    """Weighted sum of the cross-entropy of (M, V) logits; also returns the softmax (M, V) and whether
    each target is the generator's top prediction (M,).

    Sampling needs the softmax that the loss computes anyway, and the gradient is (softmax - one-hot)
    x weight: written in place over the kept softmax, it costs one pass instead of log-softmax's
    backward (a CPU step spent 4% there). The returned softmax is overwritten by backward: read it
    (sample) before calling backward.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor):
        probs = torch.softmax(logits, -1, dtype=torch.float32)  # (M, V): one fused pass, fp32
        # log-sum-exp without another pass over exp: the largest probability is exp(top - top) / sum
        top = logits.amax(-1).float()  # (M,)
        log_total = -probs.amax(-1).log()
        target_logit = logits.gather(-1, targets[:, None]).squeeze(-1).float()  # (M,)
        nll = top + log_total - target_logit
        # the generator's accuracy: in fp32 a tie for the top logit is vanishingly rare, so comparing
        # with `top` saves argmax's pass over (M, V); 16-bit logits tie often enough to need argmax
        hit = target_logit == top if logits.dtype == torch.float32 else logits.argmax(-1) == targets
        ctx.save_for_backward(probs, targets, weights)
        ctx.mark_non_differentiable(probs, hit)
        ctx.set_materialize_grads(False)  # else autograd fills an (M, V) zero gradient for probs
        ctx.dtype = logits.dtype
        return (nll * weights).sum(), probs, hit

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor, _grad_probs, _grad_hit):
        probs, targets, weights = ctx.saved_tensors
        scale = (weights * grad_loss)[:, None]  # (M, 1)
        grad = probs.mul_(scale).scatter_add_(1, targets[:, None], -scale)
        return grad.to(ctx.dtype), None, None


@dataclass
class PretrainOutput:
    loss: torch.Tensor  # scalar, differentiable
    metrics: dict[str, torch.Tensor]  # detached scalars, still on device (no host sync per step)
    corrupted_ids: torch.Tensor  # (B, T) what the discriminator (or the masked LM) saw
    labels: torch.Tensor | None  # (B, T) 1 = replaced; None for the masked LM


class GdesEmbeddings(nn.Module):
    """The discriminator's embeddings under gradient-disentangled sharing (DeBERTa-V3): every table is
    stop-gradient(the generator's) + a zero-initialised residual that only the discriminator trains."""

    def __init__(self, base: Embeddings):
        super().__init__()
        self._base = [base]  # a plain list: the generator owns (and saves) these parameters
        self.delta = nn.ParameterDict({_key(n): nn.Parameter(torch.zeros_like(p)) for n, p in base.named_parameters()})

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        base = self._base[0]
        params = {n: p.detach() + self.delta[_key(n)] for n, p in base.named_parameters()}
        return torch.func.functional_call(base, params, (input_ids, token_type_ids))

    def folded(self) -> dict[str, torch.Tensor]:
        """Plain embedding weights (generator's + residual): what an export and fine-tuning see."""
        return {n: (p + self.delta[_key(n)]).detach() for n, p in self._base[0].named_parameters()}


def _key(name: str) -> str:
    return name.replace(".", "_")


class _MaskedPretraining(nn.Module):
    """What both objectives share: the masking, its counts, and the masked-LM loss of a network."""

    objective: ObjectiveConfig
    special: SpecialIds

    def masked(self, input_ids, attention_mask, example_index, word_start, *, step: int, seed: int) -> Masked:
        if self.objective.whole_word_mask and word_start is None:
            raise UserError("whole_word_mask needs word boundaries, and this data has none; prepare it again with "
                            "this version of `electra prepare` (it stores them)")
        return mask_tokens(input_ids, attention_mask, example_index, seed=seed, step=step, special=self.special,
                           cfg=self.objective, word_start=word_start if self.objective.whole_word_mask else None,
                           vocab_size=self.config.generator.vocab_size)

    def counts(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, example_index: torch.Tensor | None = None,
               word_start: torch.Tensor | None = None, *, step: int = 0, seed: int = 0) -> torch.Tensor:
        """(2,): predicted positions and real tokens of a micro-batch. Summed over all micro-batches
        of an optimizer step (on every process), they are the loss denominators (`totals`).
        Whole words make the number of predictions depend on the draw, so then the masking runs."""
        if self.objective.whole_word_mask:
            n = self.masked(input_ids, attention_mask, example_index, word_start, step=step, seed=seed).valid.sum()
        else:
            n = prediction_counts(input_ids, attention_mask, self.special, self.objective)[1].sum()
        return torch.stack([n, attention_mask.sum()]).float()

    def masked_lm_loss(self, net: Generator, m: Masked, attention_mask, token_type_ids, totals):
        logits = net(m.input_ids, attention_mask, token_type_ids, m.positions)  # (B, N, V)
        if totals is None:
            totals = torch.stack([m.valid.sum().float(), attention_mask.sum().float()])
        n_valid = totals[0].clamp(min=1)
        loss, probs, hit = GeneratorLoss.apply(logits.flatten(0, 1), m.targets.flatten(), m.valid.flatten() / n_valid)
        acc = (hit.view_as(m.valid) & m.valid).sum() / n_valid
        return loss, probs, acc, logits, totals


class ElectraForPretraining(_MaskedPretraining):
    """Generator + discriminator with shared embeddings (es, gdes or nes), and the joint loss."""

    def __init__(self, cfg: ElectraConfig, special: SpecialIds, objective: ObjectiveConfig | None = None):
        super().__init__()
        self.config = cfg
        self.special = special
        self.objective = objective or ObjectiveConfig()
        sharing = self.objective.embedding_sharing
        if sharing == "es":
            self.discriminator = Discriminator(cfg.discriminator)
            self.generator = Generator(cfg.generator, embeddings=self.discriminator.encoder.embeddings)
        else:
            self.generator = Generator(cfg.generator)
            shared = GdesEmbeddings(self.generator.encoder.embeddings) if sharing == "gdes" else None
            self.discriminator = Discriminator(cfg.discriminator, embeddings=shared)

    def plain_discriminator(self) -> Discriminator:
        """The discriminator with plain embeddings (gdes folded in): what exports and fine-tuning use."""
        embeddings = self.discriminator.encoder.embeddings
        if not isinstance(embeddings, GdesEmbeddings):
            return self.discriminator
        plain = Discriminator(self.config.discriminator)
        state = {k: v for k, v in self.discriminator.state_dict().items() if ".delta." not in k}
        state.update({f"encoder.embeddings.{n}": w for n, w in embeddings.folded().items()})
        plain.load_state_dict(state)
        return plain

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor,
                example_index: torch.Tensor, word_start: torch.Tensor | None = None, *, step: int, seed: int,
                totals: torch.Tensor | None = None) -> PretrainOutput:
        """input_ids, attention_mask, token_type_ids: (B, T); example_index: (B,) global indices;
        word_start: (B, T) bool, the first piece of each word (for whole-word masking).

        `totals` (from `counts`, summed over the whole step) makes each loss a share of the mean over
        the global batch, so micro-batches and processes add up to exactly the one-batch loss.
        """
        obj = self.objective
        m = self.masked(input_ids, attention_mask, example_index, word_start, step=step, seed=seed)
        local_tokens = attention_mask.sum().float().clamp(min=1)
        gen_loss, probs, gen_acc, gen_logits, totals = self.masked_lm_loss(self.generator, m, attention_mask,
                                                                           token_type_ids, totals)

        with torch.no_grad():
            u = uniform(seed, step, example_index, STREAM_SAMPLE, m.positions.shape[1])
            if obj.temperature == 1.0:
                sampled = sample_from_probs(probs.view_as(gen_logits), u)
            else:
                sampled = sample_tokens(gen_logits.detach(), u, obj.temperature)
            corrupted = input_ids.scatter(1, m.positions, torch.where(m.valid, sampled, m.targets))
            labels = (corrupted != input_ids).float()  # a sample equal to the original is "original"

        disc_logits = self.discriminator(corrupted, attention_mask, token_type_ids)  # (B, T)
        weights = attention_mask.float()
        bce = F.binary_cross_entropy_with_logits(disc_logits.float(), labels, reduction="none")
        n_tokens = totals[1].clamp(min=1)
        disc_loss = (bce * weights).sum() / n_tokens
        loss = obj.gen_weight * gen_loss + obj.disc_weight * disc_loss

        with torch.no_grad():
            pred = (disc_logits > 0).float() * weights
            tp = (pred * labels).sum()
            metrics = {
                "loss": loss.detach(),
                "gen_loss": gen_loss.detach(),
                "gen_acc": gen_acc,
                "disc_loss": disc_loss.detach(),
                "disc_acc": ((pred == labels).float() * weights).sum() / n_tokens,
                # ratios of this micro-batch, weighted by its share of the step's tokens
                "disc_precision": tp / pred.sum().clamp(min=1) * local_tokens / n_tokens,
                "disc_recall": tp / labels.sum().clamp(min=1) * local_tokens / n_tokens,
                "replaced_frac": labels.sum() / n_tokens,
            }
        return PretrainOutput(loss, metrics, corrupted, labels)


class MaskedLMForPretraining(_MaskedPretraining):
    """BERT-style masked-LM pretraining of the discriminator-sized encoder (config.generator has the
    discriminator's size): the baseline of ELECTRA's equal-compute claim. Its network is an
    ElectraForMaskedLM, kept under the name `generator` as in an ELECTRA run's layout."""

    def __init__(self, cfg: ElectraConfig, special: SpecialIds, objective: ObjectiveConfig):
        super().__init__()
        self.config = cfg
        self.special = special
        self.objective = objective
        self.generator = Generator(cfg.generator)
        self.discriminator = None

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor,
                example_index: torch.Tensor, word_start: torch.Tensor | None = None, *, step: int, seed: int,
                totals: torch.Tensor | None = None) -> PretrainOutput:
        m = self.masked(input_ids, attention_mask, example_index, word_start, step=step, seed=seed)
        loss, _, acc, _, _ = self.masked_lm_loss(self.generator, m, attention_mask, token_type_ids, totals)
        return PretrainOutput(loss, {"loss": loss.detach(), "mlm_loss": loss.detach(), "mlm_acc": acc},
                              m.input_ids, None)


def pretraining_model(cfg: ElectraConfig, special: SpecialIds,
                      objective: ObjectiveConfig | None = None) -> ElectraForPretraining | MaskedLMForPretraining:
    objective = objective or ObjectiveConfig()
    cls = MaskedLMForPretraining if objective.kind == "mlm" else ElectraForPretraining
    return cls(cfg, special, objective)
