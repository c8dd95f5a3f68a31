"""The CUDA paths (skipped without a GPU): SDPA with dropout, bf16/fp16 autocast, compiled layers, and
the eager CPU kernels deferring to the plain path on a GPU."""

from __future__ import annotations

import pytest
import torch

from electra.model.cpu import use_cpu_kernels
from electra.model.electra import ElectraForPretraining
from electra.runtime import autocast
from electra.train.parallelize import compile_layers

from conftest import perturb, random_batch, tiny_config

pytestmark = pytest.mark.gpu


def _pair(special, **overrides):
    cfg = tiny_config(120, **overrides)
    torch.manual_seed(0)
    cpu = ElectraForPretraining(cfg, special)
    perturb(cpu)
    gpu = ElectraForPretraining(cfg, special)
    gpu.load_state_dict(cpu.state_dict())
    return cpu, gpu.cuda()


def _batch(special, device="cpu"):
    ids, mask, types = random_batch(120, special, B=4, T=24, pad_lengths=[24, 20, 13, 24])
    return [t.to(device) for t in (ids, mask, types)] + [torch.arange(4, device=device)]


def test_gpu_loss_and_gradients_equal_cpu(special):
    cpu, gpu = _pair(special, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    use_cpu_kernels(gpu)  # on a GPU they must defer to the plain path
    losses = []
    for model, device in ((cpu, "cpu"), (gpu, "cuda")):
        out = model(*_batch(special, device), step=0, seed=1)
        out.loss.backward()
        losses.append(out.loss.detach().cpu())
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-4, atol=1e-4)
    for (name, p), (_, q) in zip(cpu.named_parameters(), gpu.named_parameters()):
        torch.testing.assert_close(q.grad.cpu(), p.grad, rtol=1e-3, atol=1e-4, msg=lambda m, n=name: f"{n}: {m}")


def test_sdpa_dropout_trains(special):
    _, gpu = _pair(special)
    gpu.train()
    a = gpu(*_batch(special, "cuda"), step=0, seed=1).loss
    b = gpu(*_batch(special, "cuda"), step=0, seed=1).loss
    assert torch.isfinite(a) and not torch.equal(a, b)  # dropout masks differ between calls


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_autocast_losses_close_to_fp32(special, precision):
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    _, gpu = _pair(special, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    batch = _batch(special, "cuda")
    full = gpu(*batch, step=0, seed=1).loss
    with autocast(precision, torch.device("cuda")):
        mixed = gpu(*batch, step=0, seed=1).loss
    assert torch.isfinite(mixed) and abs(float(mixed) - float(full)) < 0.05 * float(full)


def test_compiled_layers_equal_eager_on_gpu(special):
    _, eager = _pair(special, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    _, compiled = _pair(special, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    compile_layers(compiled.discriminator.encoder, compiled.generator.encoder)
    batch = _batch(special, "cuda")
    torch.testing.assert_close(compiled(*batch, step=0, seed=1).loss, eager(*batch, step=0, seed=1).loss,
                               rtol=1e-4, atol=1e-4)
