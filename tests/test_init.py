"""Continued pretraining (`electra pretrain --init`): the run starts from the source's weights, and
its step-0 loss equals one computed with transformers on the same batch."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from electra.cli import run
from electra.commands import COMMANDS
from electra.data.dataset import PretrainingData
from electra.data.tokenizer import load_tokenizer, special_ids, tokenizer_hash
from electra.model.electra import mask_tokens
from electra.pretrained import export_hf, load_pretrained
from electra.train.pretrain import build_model, from_pretrained, resolve_config

from test_pipeline import pretrain_args, prepared  # noqa: F401 - the module-scoped fixture


@pytest.fixture(scope="module")
def source(prepared, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("init") / "run"
    assert run(COMMANDS, pretrain_args(prepared, out, "--max-steps", "3")) == 0
    return out


def _resolved(prepared, init, generator=None, dropout=0.0):  # noqa: F811
    tok = load_tokenizer(prepared / "data" / "tokenizer")
    special = special_ids(tok)
    res = resolve_config(str(prepared / "tiny.yaml"), {"dropout": dropout}, tok.get_vocab_size(), special.pad)
    return (*from_pretrained(res, str(init), generator, tokenizer_hash(tok)), special)


def test_weights_at_step_0_equal_the_source(prepared, source):  # noqa: F811
    res, init, special = _resolved(prepared, source)
    model = build_model(res, special, init)
    src = load_pretrained(source)
    for ours, theirs in ((model.discriminator, src.discriminator), (model.generator, src.generator)):
        want = theirs.state_dict()
        for k, v in ours.state_dict().items():
            assert torch.equal(v, want[k]), k
    assert init.source["generator"] == init.source["discriminator"]


def test_step_0_loss_equals_transformers_on_the_same_batch(prepared, source, tmp_path):  # noqa: F811
    transformers = pytest.importorskip("transformers")
    res, init, special = _resolved(prepared, source)
    model = build_model(res, special, init).eval()
    b = PretrainingData(prepared / "data").batch(torch.arange(6).numpy())
    with torch.no_grad():
        out = model(b.input_ids, b.attention_mask, b.token_type_ids, b.example_index, step=0, seed=0)
    export_hf(load_pretrained(source), tmp_path / "hf")
    gen = transformers.ElectraForMaskedLM.from_pretrained(tmp_path / "hf" / "generator").eval()
    disc = transformers.ElectraForPreTraining.from_pretrained(tmp_path / "hf" / "discriminator").eval()
    m = mask_tokens(b.input_ids, b.attention_mask, b.example_index, seed=0, step=0, special=special,
                    cfg=res.objective)
    with torch.no_grad():
        logits = gen(input_ids=m.input_ids, attention_mask=b.attention_mask, token_type_ids=b.token_type_ids).logits
        picked = torch.gather(logits, 1, m.positions[..., None].expand(-1, -1, logits.shape[-1]))
        gen_loss = F.cross_entropy(picked[m.valid], m.targets[m.valid])
        d = disc(input_ids=out.corrupted_ids, attention_mask=b.attention_mask, token_type_ids=b.token_type_ids).logits
        w = b.attention_mask.float()
        disc_loss = (F.binary_cross_entropy_with_logits(d, out.labels, reduction="none") * w).sum() / w.sum()
    torch.testing.assert_close(out.loss, gen_loss + 50 * disc_loss, rtol=1e-5, atol=1e-4)


def test_init_from_the_cli_records_the_source(prepared, source, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "continued"
    assert run(COMMANDS, ["pretrain", "--data", str(prepared / "data"), "--out", str(out), "--max-steps", "2",
                          "--batch-size", "8", "--init", str(source)]) == 0
    assert "starting from the weights of" in capsys.readouterr().err
    saved = json.loads((out / "run.json").read_text())
    assert saved["init"]["generator"] != "fresh" and saved["model"]["discriminator"]["hidden_size"] == 32


def test_a_discriminator_alone_gets_a_fresh_generator(prepared, source, tmp_path):  # noqa: F811
    export_hf(load_pretrained(source), tmp_path / "hf")
    res, init, _ = _resolved(prepared, tmp_path / "hf" / "discriminator")
    assert init.generator is None and init.source["generator"] == "fresh"
    assert res.model.generator.hidden_size == res.model.discriminator.hidden_size // 2  # tiny.yaml: 0.5


def test_init_with_another_tokenizer_is_refused(prepared, source, tmp_path, capsys):  # noqa: F811
    run(COMMANDS, ["tokenizer", "train", "--corpus", str(prepared / "corpus"), "--vocab-size", "140",
                   "--min-frequency", "1", "--out", str(tmp_path / "tok")])
    run(COMMANDS, ["prepare", "--corpus", str(prepared / "corpus"), "--tokenizer", str(tmp_path / "tok"), "--out",
                   str(tmp_path / "data"), "--seq-len", "32", "--workers", "1"])
    capsys.readouterr()
    code = run(COMMANDS, ["pretrain", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "r"),
                          "--init", str(source), "--batch-size", "8"])
    err = capsys.readouterr().err
    assert code == 2 and "another tokenizer" in err and len(err.strip().splitlines()) == 1, err
