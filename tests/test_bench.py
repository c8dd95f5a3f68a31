"""`electra bench`: FLOP counting from the architecture, and the command's JSON contract (timings
themselves belong in benchmarks/, not here)."""

from __future__ import annotations

import json

import pytest

from electra.bench import flops
from electra.cli import run
from electra.commands import COMMANDS
from electra.config import get_size


def test_small_pretraining_step_costs_about_70_mflop_per_token():
    per_token = flops.pretraining_step(get_size("small"), 128, mask_fraction=19 / 128)
    assert 68e6 < per_token < 72e6
    # without the masked-positions-only projection it would cost far more
    assert flops.pretraining_step(get_size("small"), 128, mask_fraction=1.0) > per_token + 15e6


def test_encoder_flops_match_a_hand_count():
    cfg = get_size("tiny").discriminator  # E 64, H 128, I 512, 2 layers
    T = 32
    per_layer = 2 * (4 * 128 * 128 + 2 * 128 * 512) + 4 * T * 128
    assert flops.encoder_forward(cfg, T) == 2 * 64 * 128 + 2 * per_layer


def test_classifier_flops_count_the_cls_only_last_layer():
    cfg = get_size("tiny").discriminator
    T = 32
    full_layer = 2 * (4 * 128 * 128 + 2 * 128 * 512) + 4 * T * 128
    # last layer: keys and values for all T tokens; query, attention, output, FFN for [CLS]; the head once
    last = T * 2 * 2 * 128 * 128 + 2 * (2 * 128 * 128 + 2 * 128 * 512) + 4 * T * 128
    head = 2 * 128 * 128 + 2 * 128 * 2
    per_sequence = T * (2 * 64 * 128 + full_layer) + last + head
    assert flops.classifier_forward(cfg, T) * T == pytest.approx(per_sequence)


@pytest.mark.parametrize("mode", ["pretrain", "finetune", "infer"])
def test_bench_json_contract(mode, capsys):
    pytest.importorskip("transformers")
    args = ["bench", mode, "--model", "tiny", "--batch-size", "2", "--rounds", "1", "--compare", "hf", "--json"]
    if mode != "infer":
        args += ["--seq-len", "32", "--steps", "1", "--warmup", "0"]
    assert run(COMMANDS, args) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rate = "sequences_per_s" if mode == "infer" else "tokens_per_s"
    for key in (rate, "flops_per_token", "peak_flops", "mfu", "ratio_vs_hf"):
        assert result[key] > 0, key
    if mode == "infer":
        assert result["max_abs_logit_diff"] < 1e-4  # the same outputs as the reference
