"""Golden values (torchtitan's practice): a fixed-seed `tiny` pretraining run of a few steps whose
losses are pinned in tests/golden/pretrain_tiny.json, so a change that alters the numerics fails
loudly. The run exercises the training path as `electra pretrain` runs it on a CPU (dropout and the
fast CPU kernels on, padding in the batches). Tolerances allow other CPUs' rounding, not other maths.
Regenerate, after a change that is meant to alter the numbers, with ELECTRA_REGEN_GOLDEN=1."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from electra.config import SpecialIds
from electra.model.cpu import use_cpu_kernels
from electra.model.electra import ElectraForPretraining
from electra.train.optim import adamw

from conftest import random_batch, tiny_config

GOLDEN = Path(__file__).parent / "golden" / "pretrain_tiny.json"
SPECIAL = SpecialIds(pad=0, cls=2, sep=3, mask=4)
KEYS = ("loss", "gen_loss", "disc_loss", "gen_acc", "disc_acc", "replaced_frac")


def golden_run(steps: int = 8) -> dict[str, list[float]]:
    torch.manual_seed(0)
    model = use_cpu_kernels(ElectraForPretraining(tiny_config(120), SPECIAL))
    optimizer = adamw(model, 2e-3, 0.01)
    rows: dict[str, list[float]] = {k: [] for k in KEYS}
    for step in range(steps):
        ids, mask, types = random_batch(120, SPECIAL, B=8, T=32, seed=step,
                                        pad_lengths=[32, 30, 25, 32, 17, 32, 9, 28])
        out = model.train()(ids, mask, types, torch.arange(8) + 8 * step, step=step, seed=0)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        for k in KEYS:
            rows[k].append(round(float(out.metrics[k]), 6))
    return rows


def test_golden_pretraining_losses():
    got = golden_run()
    if os.environ.get("ELECTRA_REGEN_GOLDEN") == "1":
        GOLDEN.write_text(json.dumps(got, indent=1) + "\n")
    want = json.loads(GOLDEN.read_text())
    for k in KEYS:
        torch.testing.assert_close(torch.tensor(got[k]), torch.tensor(want[k]), rtol=2e-3, atol=2e-3,
                                   msg=lambda m, k=k: f"{k} left its golden values: {m}")
