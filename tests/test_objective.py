"""The pretraining objective: masking statistics, sampling, labels, gradients, loss weights, randomness."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from electra.config import ObjectiveConfig
from electra.model.electra import ElectraForPretraining, GeneratorLoss, mask_tokens, sample_from_probs, sample_tokens

from conftest import random_batch, tiny_config


def masked_batch(special, B=256, T=128, **cfg):
    ids, mask, _ = random_batch(120, special, B=B, T=T, pad_lengths=[T - (b % 40) for b in range(B)])
    ids[:, 5] = special.mask  # specials inside the text must never be chosen either
    ids[:, 9] = special.sep
    cfg = ObjectiveConfig(**cfg)
    m = mask_tokens(ids, mask, torch.arange(B), seed=0, step=0, special=special, cfg=cfg)
    return ids, mask, m, cfg


def test_masking_rate_cap_and_specials(special):
    ids, mask, m, cfg = masked_batch(special)
    T = ids.shape[1]
    assert m.positions.shape[1] == int((0.15 + 0.005) * T) == cfg.max_predictions(T)
    specials = torch.tensor([special.pad, special.cls, special.sep, special.mask])
    maskable = mask.bool() & ~torch.isin(ids, specials)
    expected = torch.round(maskable.sum(1) * 0.15).clamp(1, cfg.max_predictions(T))
    assert torch.equal(m.valid.sum(1), expected.long())
    chosen = torch.zeros_like(maskable)
    for b in range(ids.shape[0]):
        p = m.positions[b][m.valid[b]]
        assert len(set(p.tolist())) == len(p), "a position chosen twice"
        chosen[b, p] = True
    assert not (chosen & ~maskable).any(), "special or padding token chosen"
    # every chosen slot holds its original token as the target
    assert torch.equal(torch.gather(ids, 1, m.positions)[m.valid], m.targets[m.valid])


def test_masking_85_15_split_and_uniform_positions(special):
    ids, mask, m, _ = masked_batch(special, B=512)
    at = torch.gather(m.input_ids, 1, m.positions)[m.valid]
    frac_mask = (at == special.mask).float().mean().item()
    assert abs(frac_mask - 0.85) < 0.02, frac_mask
    kept = at != special.mask
    assert torch.equal(at[kept], m.targets[m.valid][kept]), "kept tokens must be the original (no random swap)"
    # outside the chosen positions nothing changes
    changed = (m.input_ids != ids).sum().item()
    assert changed == (at == special.mask).sum().item()
    counts = torch.zeros(ids.shape[1])
    for b in range(ids.shape[0]):
        counts[m.positions[b][m.valid[b]]] += 1
    inner = counts[10:80]  # positions maskable in every row
    assert inner.max() / inner.min() < 1.6, "positions are not chosen uniformly"


def test_masking_cap_binds(special):
    ids, mask, _ = random_batch(120, special, B=4, T=40)
    cfg = ObjectiveConfig(mask_prob=0.5)
    m = mask_tokens(ids, mask, torch.arange(4), seed=1, step=3, special=special, cfg=cfg)
    assert m.positions.shape[1] == int(0.505 * 40) == 20
    assert (m.valid.sum(1) <= 20).all() and (m.valid.sum(1) == 19).all()  # round(0.5 * 38)


def test_sampling_follows_the_softmax():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.2, 0.0]))[None, None, :].expand(1, 20000, 4)
    u = torch.rand(1, 20000, generator=torch.Generator().manual_seed(0))
    s = sample_tokens(logits, u, temperature=1.0)
    freq = torch.bincount(s.flatten(), minlength=4).float() / s.numel()
    assert torch.allclose(freq, torch.tensor([0.5, 0.3, 0.2, 0.0]), atol=0.015), freq
    assert sample_tokens(logits, torch.full((1, 20000), 0.999999), 1.0).max() <= 2


@pytest.mark.parametrize("V", [4, 128, 1000, 30522])
def test_block_sampling_matches_one_cumulative_sum(V):
    """Two-level sampling sums in another order than one cumulative sum, so where the target u x total
    lies within rounding of a CDF boundary the two may pick neighbouring tokens. What the maths
    guarantees, and what is asserted: the same token wherever the target is clear of a boundary,
    otherwise the plain pick or the nearest token of positive probability beside it, never a token of
    probability 0; and (test below) the same distribution over many draws."""
    g = torch.Generator().manual_seed(V)
    probs = torch.softmax(torch.randn(400, V, generator=g) * 3, -1)
    probs[:200, V // 3:] = 0.0  # whole blocks, and the short last block, without probability
    u = torch.rand(400, generator=g)
    u[:4] = torch.tensor([0.0, 0.5, 1 - 2**-24, 1 - 2**-24])
    cdf = probs.double().cumsum(-1)  # exact enough to say how far the target is from a boundary
    target = u.double()[:, None] * cdf[:, -1:]
    plain = torch.searchsorted(cdf, target, right=True).squeeze(-1).clamp(max=V - 1)
    sampled = sample_from_probs(probs, u)
    assert (probs.gather(-1, sampled[:, None]) > 0).all(), "sampled a token of probability 0"
    # fp32 sums of V entries err by at most about V ulps of the total, in either summation order: a target
    # within that of an edge of the plain pick's interval may land in the neighbouring interval
    slack = 4 * V * torch.finfo(torch.float32).eps * cdf[:, -1]
    lo = torch.where(plain > 0, cdf.gather(-1, (plain - 1).clamp(min=0)[:, None]).squeeze(-1), 0.0)
    hi = cdf.gather(-1, plain[:, None]).squeeze(-1)
    t = target.squeeze(-1)
    near = torch.minimum(t - lo, hi - t) <= slack
    assert torch.equal(sampled[~near], plain[~near])
    for row in near.nonzero().flatten().tolist():
        positive = probs[row].nonzero().flatten()
        i = int(torch.searchsorted(positive, plain[row]))
        neighbours = {int(positive[j]) for j in (i - 1, i, i + 1) if 0 <= j < len(positive)}
        assert int(sampled[row]) in neighbours | {int(plain[row])}, (row, int(sampled[row]), int(plain[row]))
    assert (sampled == plain).float().mean() > 0.95


def test_block_sampling_distribution():
    """Over many draws, block sampling picks each token with its probability (a chi-square test)."""
    from scipy.stats import chisquare

    V, n = 1000, 200_000
    g = torch.Generator().manual_seed(1)
    p = torch.softmax(torch.randn(V, generator=g), -1)
    p[500:600] = 0.0
    p = p / p.sum()
    drawn = sample_from_probs(p.expand(n, V), torch.rand(n, generator=g))
    counts = torch.bincount(drawn, minlength=V)
    assert counts[500:600].sum() == 0
    keep = p > 0
    expected = p[keep].double() / p[keep].double().sum() * n
    assert chisquare(counts[keep].double().numpy(), expected.numpy()).pvalue > 1e-4


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_generator_loss_equals_cross_entropy(dtype):
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(50, 300, generator=g) * 4).to(dtype).requires_grad_()
    targets = torch.randint(0, 300, (50,), generator=g)
    targets[:10] = logits.detach().argmax(-1)[:10]  # some the generator gets right
    weights = (torch.rand(50, generator=g) > 0.3).float() / 35
    loss, probs, hit = GeneratorLoss.apply(logits, targets, weights)
    assert torch.allclose(probs, torch.softmax(logits.float(), -1), rtol=1e-5, atol=1e-7)
    assert torch.equal(hit, logits.argmax(-1) == targets) and hit.any()
    u = torch.rand(50, generator=g)
    assert torch.equal(sample_from_probs(probs, u), sample_tokens(logits.detach(), u, 1.0))
    loss.backward()
    fused_grad, logits.grad = logits.grad, None
    plain = (F.cross_entropy(logits.float(), targets, reduction="none") * weights).sum()
    plain.backward()
    assert torch.allclose(loss, plain, rtol=1e-6)
    assert fused_grad.dtype == dtype
    assert torch.allclose(fused_grad.float(), logits.grad.float(), rtol=1e-5, atol=1e-7 if dtype == torch.float32 else 1e-3)


def _run(model, ids, mask, types, idx, step=0):
    return model(ids, mask, types, idx, step=step, seed=7)


def _forced_generator(model, choose):
    """Make the generator put all probability on choose(targets) at the masked positions."""
    real = model.generator.__class__.forward.__get__(model.generator)

    def forward(ids, mask=None, types=None, positions=None):
        logits = real(ids, mask, types, positions)
        targets_like = choose(torch.gather(model._last_original, 1, positions))
        return logits + 1e4 * torch.nn.functional.one_hot(targets_like, logits.shape[-1])

    model.generator.forward = forward


def test_label_is_original_when_sample_equals_original(special):
    cfg = tiny_config(120)
    model = ElectraForPretraining(cfg, special).eval()
    ids, mask, types = random_batch(120, special, B=4, T=32, pad_lengths=[32, 30, 20, 12])
    model._last_original = ids
    _forced_generator(model, lambda t: t)  # always re-creates the original
    out = _run(model, ids, mask, types, torch.arange(4))
    assert torch.equal(out.corrupted_ids, ids)
    assert out.labels.sum() == 0 and out.metrics["replaced_frac"] == 0

    _forced_generator(model, lambda t: (t + 1 - 5) % 115 + 5)  # always a different word
    out = _run(model, ids, mask, types, torch.arange(4))
    m = mask_tokens(ids, mask, torch.arange(4), seed=7, step=0, special=special, cfg=model.objective)
    expected = torch.zeros_like(ids, dtype=torch.float)
    for b in range(4):
        expected[b, m.positions[b][m.valid[b]]] = 1
    assert torch.equal(out.labels, expected)


def test_gradients_no_flow_through_sampling_and_shared_embeddings_get_both(special):
    cfg = tiny_config(120)
    ids, mask, types = random_batch(120, special, B=4, T=32, pad_lengths=[32, 30, 20, 12])
    grads = {}
    for name, weights in {"gen": (1.0, 0.0), "disc": (0.0, 50.0)}.items():
        torch.manual_seed(0)
        model = ElectraForPretraining(cfg, special, ObjectiveConfig(gen_weight=weights[0], disc_weight=weights[1]))
        _run(model, ids, mask, types, torch.arange(4)).loss.backward()
        grads[name] = {k: (p.grad.abs().sum().item() if p.grad is not None else 0.0)
                       for k, p in model.named_parameters()}
    gen_only = [k for k in grads["gen"] if k.startswith("generator.")]
    disc_only = [k for k in grads["gen"] if k.startswith("discriminator.") and ".embeddings." not in k]
    assert all(grads["disc"][k] == 0.0 for k in gen_only), "discriminator loss reached the generator"
    assert all(grads["gen"][k] == 0.0 for k in disc_only), "generator loss reached the discriminator"
    assert any(grads["disc"][k] > 0 for k in disc_only) and any(grads["gen"][k] > 0 for k in gen_only)
    emb = "discriminator.encoder.embeddings.word.weight"
    assert grads["gen"][emb] > 0 and grads["disc"][emb] > 0, "shared embeddings must get both losses"
    assert not any(k.startswith("generator.encoder.embeddings") for k in grads["gen"]), "embeddings not shared"


def test_loss_weighting(special):
    cfg = tiny_config(120)
    ids, mask, types = random_batch(120, special, B=4, T=32)
    for gw, dw in ((1.0, 50.0), (2.0, 3.0)):
        torch.manual_seed(0)
        model = ElectraForPretraining(cfg, special, ObjectiveConfig(gen_weight=gw, disc_weight=dw)).eval()
        out = _run(model, ids, mask, types, torch.arange(4))
        m = out.metrics
        assert torch.allclose(out.loss, gw * m["gen_loss"] + dw * m["disc_loss"])
        assert 0 < m["disc_loss"] < 2 and 0 < m["gen_loss"]


def test_randomness_does_not_depend_on_batch_layout(special):
    cfg = tiny_config(120, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    model = ElectraForPretraining(cfg, special).eval()
    ids, mask, types = random_batch(120, special, B=6, T=32, pad_lengths=[32, 31, 25, 20, 32, 9])
    idx = torch.arange(100, 106)
    special_cfg = dict(seed=0, step=5, special=special, cfg=ObjectiveConfig())
    whole_mask = mask_tokens(ids, mask, idx, **special_cfg)
    halves_mask = [mask_tokens(ids[s], mask[s], idx[s], **special_cfg) for s in (slice(0, 3), slice(3, 6))]
    # masking is integer hashing: exactly the same whatever the layout
    assert torch.equal(whole_mask.input_ids, torch.cat([h.input_ids for h in halves_mask]))
    whole = _run(model, ids, mask, types, idx, step=5)
    halves = [_run(model, ids[s], mask[s], types[s], idx[s], step=5) for s in (slice(0, 3), slice(3, 6))]
    rev = torch.arange(5, -1, -1)
    reversed_ = _run(model, ids[rev], mask[rev], types[rev], idx[rev], step=5)
    other_step = _run(model, ids, mask, types, idx, step=6)
    # sampling uses the same uniforms; the generator's logits of another batch shape may differ in the
    # last bits (other matmul blocking), which can move a sample across a CDF boundary now and then
    replaced = whole.corrupted_ids != ids

    def agreement(other):
        return (other == whole.corrupted_ids)[replaced | (other != ids)].float().mean().item()

    assert agreement(torch.cat([h.corrupted_ids for h in halves])) > 0.95
    assert agreement(reversed_.corrupted_ids[rev]) > 0.95
    assert agreement(other_step.corrupted_ids) < 0.5


def test_counter_based_randomness_is_pinned():
    """Checkpoints resume with the same corruption only if these numbers never change between
    versions (they were computed when the hash's key moved from a device tensor to a host int)."""
    from electra.model.rng import uniform

    got = uniform(3, 17, torch.tensor([0, 12345, 2**40 + 1]), 2, 4)
    want = torch.tensor([[0.3713698387145996, 0.44717711210250854, 0.2147464156150818, 0.4318917989730835],
                         [0.3163548707962036, 0.5310919880867004, 0.23358744382858276, 0.7049204111099243],
                         [0.9821430444717407, 0.29290610551834106, 0.08144992589950562, 0.8357636332511902]])
    assert torch.equal(got, want)
