"""The encoder and networks: padding invariance, save/load, the size registry."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from electra.config import SIZES, get_size
from electra.errors import UserError
from electra.model.electra import ElectraForPretraining
from electra.checkpoint import write_model_dir
from electra.model.cpu import (BlockedVocabProjection, CpuDropout, CpuTrainingAttention, cpu_dropout, random_words,
                               use_cpu_kernels)
from electra.pretrained import load_pretrained, pretraining_state

from conftest import perturb, random_batch, tiny_config


def test_padded_equals_unpadded(special):
    torch.manual_seed(0)
    model = ElectraForPretraining(tiny_config(120), special).eval()
    perturb(model)
    ids, mask, types = random_batch(120, special, B=3, T=20, pad_lengths=[20, 13, 6])
    with torch.no_grad():
        disc = model.discriminator(ids, mask, types)
        gen = model.generator(ids, mask, types)
        for b, n in enumerate([20, 13, 6]):
            alone = model.discriminator(ids[b:b + 1, :n], None, types[b:b + 1, :n])
            assert (alone[0] - disc[b, :n]).abs().max() <= 1e-5
            alone_gen = model.generator(ids[b:b + 1, :n], torch.ones(1, n, dtype=torch.long), types[b:b + 1, :n])
            assert (alone_gen[0] - gen[b, :n]).abs().max() <= 1e-5


def test_mask_and_no_mask_paths_agree(special):
    """With the CPU kernels an all-ones mask skips SDPA's mask (fast path); the plain path always passes
    it (no host sync on GPUs). Both must give the plain masked result."""
    from electra.model.encoder import Encoder

    torch.manual_seed(0)
    encoder = use_cpu_kernels(Encoder(tiny_config(120).discriminator).eval())
    assert encoder.key_mask(torch.ones(2, 16, dtype=torch.long)) is None
    ids, _, types = random_batch(120, special, B=2, T=16, pad_lengths=[16, 16])
    ones = torch.ones_like(ids)
    with torch.no_grad():
        fast = encoder(ids, ones, types)  # the CPU fast path: no mask tensor
        x = encoder.project(encoder.embeddings(ids, types))  # tiny: embeddings 64 -> hidden 128
        plain_mask = ones.bool()[:, None, None, :]
        for layer in encoder.layers:
            x = layer(x, plain_mask)
    torch.testing.assert_close(fast, x, rtol=1e-5, atol=1e-5)


@pytest.fixture
def unpad_calls(monkeypatch) -> list:
    """One entry per batch whose padding the encoder skipped."""
    from electra.model import encoder as encoder_module

    calls, of = [], encoder_module.Unpadded.of
    monkeypatch.setattr(encoder_module.Unpadded, "of", lambda mask: calls.append(1) or of(mask))
    return calls


def assert_same_grads(grads: dict, expected: dict) -> None:
    assert grads.keys() == expected.keys()
    for name, grad in expected.items():
        err = (grads[name] - grad).abs().max() / grad.abs().max().clamp(min=1e-12)
        assert err < 1e-4, f"{name}: relative gradient difference {err:.2e}"


@pytest.mark.parametrize("skip_padding", [True, False])
def test_first_token_only_equals_full_output(special, skip_padding, unpad_calls):
    """Sequence heads read [CLS] alone, so the last layer computes only position 0, and on CPUs the
    layers skip the padding outside attention: the output and every gradient must equal the full
    encoder's, with padding in the batch."""
    from electra.model.encoder import Encoder

    torch.manual_seed(0)
    encoder = Encoder(tiny_config(120).discriminator)
    if skip_padding:
        use_cpu_kernels(encoder)
    perturb(encoder)
    ids, mask, types = random_batch(120, special, B=3, T=18, pad_lengths=[18, 11, 5])
    target = torch.randn(3, encoder.config.hidden_size)

    def outputs_and_grads(first_only: bool):
        encoder.zero_grad()
        h = encoder(ids, mask, types, first_token_only=first_only)[:, 0]  # (B, H)
        ((h - target) ** 2).sum().backward()
        return h.detach(), {n: p.grad.clone() for n, p in encoder.named_parameters() if p.grad is not None}

    encoder.eval()  # dropout off: both passes see the same network
    full, full_grads = outputs_and_grads(False)
    assert not unpad_calls
    first, first_grads = outputs_and_grads(True)
    assert bool(unpad_calls) == skip_padding
    torch.testing.assert_close(first, full, rtol=1e-5, atol=1e-5)
    assert_same_grads(first_grads, full_grads)


@pytest.mark.parametrize("in_length_order", [False, True])
def test_attention_in_length_groups_equals_the_padded_encoder(special, in_length_order, monkeypatch):
    """In inference on CPUs a batch of many lengths runs attention in groups of similar length, each
    padded to its own longest (a server's batches): outputs and gradients equal the padded encoder's,
    whether the batch came in length order (the Python API sorts it) or not."""
    from electra.model.cpu import GroupedUnpadded
    from electra.model.encoder import Encoder

    grouped = []
    of_lengths = GroupedUnpadded.of_lengths
    monkeypatch.setattr(GroupedUnpadded, "of_lengths",
                        lambda u, n: grouped.append(type(of := of_lengths(u, n)) is GroupedUnpadded) or of)
    torch.manual_seed(0)
    plain = Encoder(tiny_config(120).discriminator).eval()
    perturb(plain)
    fast = use_cpu_kernels(Encoder(tiny_config(120).discriminator).eval())
    fast.load_state_dict(plain.state_dict())
    lengths = torch.randint(2, 25, (40,)).tolist()
    if in_length_order:
        lengths.sort()
    ids, mask, types = random_batch(120, special, B=40, T=max(lengths), pad_lengths=lengths)
    real = mask.bool()
    for kw in ({"padding_unread": True}, {"first_token_only": True}):
        outputs = []
        for encoder in (plain, fast):
            encoder.zero_grad()
            out = encoder(ids, mask, types, **kw)
            out = out[real] if "padding_unread" in kw else out[:, 0]
            (out ** 2).sum().backward()
            outputs.append((out.detach(), {n: p.grad.clone() for n, p in encoder.named_parameters()
                                           if p.grad is not None}))
        torch.testing.assert_close(outputs[1][0], outputs[0][0], rtol=1e-5, atol=1e-5)
        assert_same_grads(outputs[1][1], outputs[0][1])
    assert grouped == [True, True]


def test_ner_training_skips_padding_with_the_same_loss_and_gradients(special, unpad_calls):
    """The NER loss ignores padding, so CPU training runs the layers on real tokens only; the loss and
    every gradient must equal the padded encoder's. Evaluation keeps the padded path (HF parity)."""
    import torch.nn.functional as F

    from electra.finetune.model import FinetuneModel

    cfg = tiny_config(120, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0).discriminator
    torch.manual_seed(0)
    model = FinetuneModel(cfg, "ner", 5)
    perturb(model)
    ids, mask, types = random_batch(120, special, B=3, T=18, pad_lengths=[18, 11, 5])
    labels = torch.randint(0, 5, (3, 18)).masked_fill(mask == 0, -100)

    plain = FinetuneModel(cfg, "ner", 5)
    plain.load_state_dict(model.state_dict())
    use_cpu_kernels(model)

    def loss_and_grads(skip_padding: bool):
        model.zero_grad()
        plain.zero_grad()
        net = model if skip_padding else plain
        loss = F.cross_entropy(net(ids, mask, types).flatten(0, 1), labels.flatten(), ignore_index=-100)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}

    model.train()
    plain.train()
    padded, padded_grads = loss_and_grads(False)
    assert not unpad_calls
    skipped, skipped_grads = loss_and_grads(True)
    assert unpad_calls
    torch.testing.assert_close(skipped, padded, rtol=1e-6, atol=1e-6)
    assert_same_grads(skipped_grads, padded_grads)
    unpad_calls.clear()
    model.eval()
    model(ids, mask, types)
    assert not unpad_calls


def test_save_load_round_trip(tmp_path, tokenizer_dir, special):
    cfg = tiny_config(120)
    torch.manual_seed(0)
    model = ElectraForPretraining(cfg, special).eval()
    perturb(model)
    write_model_dir(tmp_path, pretraining_state(model.state_dict()), {"model": cfg.to_dict()}, tokenizer_dir)
    loaded = load_pretrained(tmp_path)
    assert loaded.format == "electra"
    for name, net in (("discriminator", model.discriminator), ("generator", model.generator)):
        theirs = getattr(loaded, name).state_dict()
        for k, v in net.state_dict().items():
            assert torch.equal(v, theirs[k]), (name, k)
    # the generator's embeddings are the discriminator's after loading too
    assert torch.equal(loaded.generator.encoder.embeddings.word.weight,
                       loaded.discriminator.encoder.embeddings.word.weight)


def test_sizes_registry():
    assert set(SIZES) >= {"tiny", "small", "base", "large"}
    widths = {name: (c.discriminator.hidden_size, c.generator.hidden_size) for name, c in SIZES.items()}
    assert widths["small"] == (256, 64)  # 1/4
    assert widths["base"] == (768, 256)  # 1/3
    assert widths["large"] == (1024, 256)  # 1/4
    for c in SIZES.values():
        assert c.generator.num_hidden_layers == c.discriminator.num_hidden_layers
        assert c.generator.embedding_size == c.discriminator.embedding_size
    tiny = ElectraForPretraining(get_size("tiny"), special=None)  # type: ignore[arg-type]
    n_params = sum(p.numel() for p in tiny.parameters())
    assert n_params < 5_000_000, n_params
    small_disc = sum(p.numel() for p in ElectraForPretraining(get_size("small"), None).discriminator.parameters())  # type: ignore[arg-type]
    assert 13_000_000 < small_disc < 14_500_000  # the paper: 14M


def test_bad_configs():
    with pytest.raises(UserError, match="unknown model size or recipe 'huge'"):
        get_size("huge")
    with pytest.raises(UserError, match="not divisible"):
        tiny_config(120, num_attention_heads=5)
    with pytest.raises(UserError, match="hidden_dropout_prob"):
        tiny_config(120, hidden_dropout_prob=1.5)


def test_compiled_layers_equal_eager(special):
    """`--compile` (each layer under torch.compile, the mask always passed): the same pretraining
    loss and gradients as eager, in training and in validation (no grad), with padding and without."""
    from electra.train.parallelize import compile_layers

    cfg = tiny_config(120, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    eager = ElectraForPretraining(cfg, special)
    perturb(eager)
    compiled = ElectraForPretraining(cfg, special)
    compiled.load_state_dict(eager.state_dict())
    compile_layers(compiled.discriminator.encoder, compiled.generator.encoder)
    for pad_lengths in ([16, 16], [16, 9]):
        ids, mask, types = random_batch(120, special, B=2, T=16, pad_lengths=pad_lengths)
        index = torch.arange(2)
        losses = []
        for model in (eager, compiled):
            model.zero_grad()
            out = model(ids, mask, types, index, step=0, seed=3)
            out.loss.backward()
            with torch.no_grad():
                val = model(ids, mask, types, index, step=0, seed=3).loss
            losses.append((out.loss.detach(), val, {n: p.grad for n, p in model.named_parameters()}))
        (loss, val, grads), (c_loss, c_val, c_grads) = losses
        torch.testing.assert_close(c_loss, loss, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(c_val, val, rtol=1e-5, atol=1e-5)
        for name, grad in grads.items():
            torch.testing.assert_close(c_grads[name], grad, rtol=1e-4, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")


def test_cpu_dropout_drops_and_scales_like_nn_dropout():
    torch.manual_seed(0)
    x = (torch.rand(64, 128, 64) + 0.5).requires_grad_()
    drop = CpuDropout(0.1)
    y = drop(x)
    kept = y != 0
    assert abs(1 - kept.float().mean().item() - 0.1) < 0.005  # drop rate p
    scale = 65536 / (65536 - 6554)  # 1 / (1 - p), p rounded to 6554 / 65536
    assert torch.allclose(y[kept], x[kept] * scale)
    y.sum().backward()
    assert torch.allclose(x.grad, kept.float() * scale)  # the same mask in backward
    sizes = [CpuDropout(0.1)(torch.ones(5, 7)).ne(0).sum().item() for _ in range(400)]  # odd sizes: no leftover bits
    assert abs(sum(sizes) / (400 * 35) - 0.9) < 0.01
    assert torch.equal(drop.eval()(x), x) and torch.equal(CpuDropout(0.0)(x), x)


def test_dropout_bits_follow_torchs_seed_and_are_uniform():
    """CPU dropout masks come from numpy's SFC64 seeded by torch's generator: torch.manual_seed (and a
    restored torch RNG state) decides them; every bit is a fair coin."""
    torch.manual_seed(3)
    a = random_words(1000)
    torch.manual_seed(3)
    assert torch.equal(random_words(1000), a)
    assert not torch.equal(random_words(1000), a)
    state = torch.get_rng_state()
    b = random_words(1000)
    torch.set_rng_state(state)
    assert torch.equal(random_words(1000), b)
    words = random_words(100_000)
    bits = (words[:, None] >> torch.arange(64)) & 1  # (n, 64)
    assert (bits.float().mean(0) - 0.5).abs().max() < 0.01


def _attention_by_autograd(qkv, mask, p, n_head, n_query):
    """The plain composition CpuTrainingAttention replaces: (B, T, 3C) -> (B, Q, C)."""
    B, T, C3 = qkv.shape
    q, k, v = qkv.view(B, T, 3, n_head, C3 // 3 // n_head).permute(2, 0, 3, 1, 4)
    q = q[:, :, :n_query]
    if p == 0:
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    else:
        scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        y = cpu_dropout(torch.softmax(scores, -1), p) @ v
    return y.transpose(1, 2).reshape(B, n_query, C3 // 3)


@pytest.mark.parametrize("p", [0.0, 0.1])
def test_cpu_training_attention_equals_autograd_and_sdpa(p):
    """Training on CPU runs attention forward and backward by hand (to use cpu_dropout): the same
    outputs and gradients as SDPA without dropout, and as autograd with the same dropout mask."""
    g = torch.Generator().manual_seed(0)
    B, T, n_head, d = 3, 10, 4, 8
    mask = torch.ones(B, 1, 1, T, dtype=torch.bool)
    mask[1, ..., 7:] = False  # padding
    for m in (None, mask):
        for n_query in (T, 1):
            qkv = torch.randn(B, T, 3 * n_head * d, generator=g)
            grad = torch.randn(B, n_query, n_head * d, generator=g)
            outs = []
            for fn in (CpuTrainingAttention.apply, _attention_by_autograd):
                x = qkv.clone().requires_grad_()
                torch.manual_seed(1)  # the same dropout mask for both
                y = fn(x, m, p, n_head, n_query)
                y.backward(grad)
                outs.append((y, x.grad))
            (y, dx), (y_ref, dx_ref) = outs
            assert torch.allclose(y, y_ref, atol=1e-6)
            assert torch.allclose(dx, dx_ref, atol=1e-6)
            if p > 0:
                assert not torch.allclose(y, _attention_by_autograd(qkv, m, 0.0, n_head, n_query), atol=1e-3)


def test_blocked_vocab_projection_equals_linear():
    """The generator's vocabulary projection in blocks of columns (CPU): F.linear's outputs and gradients,
    a last block shorter than the others included."""
    g = torch.Generator().manual_seed(0)
    V, E = 2 * BlockedVocabProjection.BLOCK + 37, 16
    h, weight, bias = (torch.randn(*shape, generator=g) for shape in ((3, 5, E), (V, E), (V,)))
    grad = torch.randn(3, 5, V, generator=g)
    results = []
    for fn in (BlockedVocabProjection.apply, F.linear):
        inputs = [t.clone().requires_grad_() for t in (h, weight, bias)]
        out = fn(*inputs)
        out.backward(grad)
        results.append([out] + [t.grad for t in inputs])
    for ours, ref in zip(*results):
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_allocator_keeps_freed_memory_unless_the_user_chose(tmp_path):
    import platform
    import subprocess
    import sys
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc only")
    code = "from electra.runtime import keep_freed_memory; print(keep_freed_memory())"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    run = lambda e: subprocess.run([sys.executable, "-c", code], env=e, capture_output=True, text=True).stdout.strip()
    assert run(env) == "True"
    assert run({**env, "MALLOC_MMAP_MAX_": "65536"}) == "False"
    assert run({**env, "MALLOC_ARENA_MAX": "2"}) == "False"  # any MALLOC_* setting, as README says
