"""Numbers match Hugging Face `transformers` both ways, for discriminator and generator, fp32."""

from __future__ import annotations

import shutil

import pytest
import torch

transformers = pytest.importorskip("transformers")

from electra.data.tokenizer import TOKENIZER_FILES  # noqa: E402
from electra.model.electra import ElectraForPretraining  # noqa: E402
from electra.checkpoint import WEIGHTS, write_model_dir  # noqa: E402
from electra.pretrained import export_hf, load_pretrained, pretraining_state  # noqa: E402

from conftest import perturb, random_batch, tiny_config  # noqa: E402

TOL = 1e-5
PAD_LENGTHS = [16, 11, 5]


def hf_config(cfg):
    return transformers.ElectraConfig(**cfg.to_dict(), attn_implementation="eager")


def save_hf(model, directory, tokenizer_dir, as_bin=False):
    model.save_pretrained(directory)
    if as_bin:  # the older format: a pickled state dict, read with weights_only=True
        (directory / "model.safetensors").unlink()
        torch.save(model.state_dict(), directory / "pytorch_model.bin")
    for name in TOKENIZER_FILES:
        shutil.copyfile(tokenizer_dir / name, directory / name)


def assert_close_on_tokens(a, b, mask):
    keep = mask.bool()
    diff = (a[keep] - b[keep]).abs().max().item()
    assert diff <= TOL, f"max |diff| {diff:.2e}"


@pytest.mark.parametrize("as_bin", [False, True])
def test_hf_discriminator_loads_with_same_logits(tmp_path, tokenizer, tokenizer_dir, special, as_bin):
    cfg = tiny_config(tokenizer.get_vocab_size()).discriminator
    torch.manual_seed(0)
    theirs = transformers.ElectraForPreTraining(hf_config(cfg)).eval()
    perturb(theirs)
    save_hf(theirs, tmp_path, tokenizer_dir, as_bin)
    ours = load_pretrained(tmp_path).discriminator.eval()
    for pads in (None, PAD_LENGTHS):
        ids, mask, types = random_batch(cfg.vocab_size, special, pad_lengths=pads)
        with torch.no_grad():
            expected = theirs(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
            got = ours(ids, mask, types)
        assert_close_on_tokens(got, expected, mask)


def test_hf_generator_loads_with_same_logits(tmp_path, tokenizer, tokenizer_dir, special):
    cfg = tiny_config(tokenizer.get_vocab_size()).generator
    torch.manual_seed(1)
    theirs = transformers.ElectraForMaskedLM(hf_config(cfg)).eval()
    perturb(theirs)
    save_hf(theirs, tmp_path, tokenizer_dir)
    ours = load_pretrained(tmp_path).generator.eval()
    for pads in (None, PAD_LENGTHS):
        ids, mask, types = random_batch(cfg.vocab_size, special, pad_lengths=pads)
        with torch.no_grad():
            expected = theirs(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
            got = ours(ids, mask, types)
            positions = torch.tensor([[1, 3], [2, 4], [1, 2]])
            got_at = ours(ids, mask, types, positions=positions)
        assert_close_on_tokens(got, expected, mask)
        assert torch.allclose(got_at, torch.gather(expected, 1, positions[..., None].expand(-1, -1, expected.shape[-1])),
                              atol=TOL, rtol=0)


def test_export_loads_in_transformers_with_same_logits(tmp_path, tokenizer, tokenizer_dir, special):
    cfg = tiny_config(tokenizer.get_vocab_size())
    torch.manual_seed(2)
    model = ElectraForPretraining(cfg, special).eval()
    perturb(model)
    write_model_dir(tmp_path / "ours", pretraining_state(model.state_dict()), {"model": cfg.to_dict()}, tokenizer_dir)
    assert (tmp_path / "ours" / WEIGHTS).is_file()
    written = export_hf(load_pretrained(tmp_path / "ours"), tmp_path / "hf")
    assert [p.name for p in written] == ["discriminator", "generator"]

    disc = transformers.ElectraForPreTraining.from_pretrained(tmp_path / "hf" / "discriminator").eval()
    gen = transformers.ElectraForMaskedLM.from_pretrained(tmp_path / "hf" / "generator").eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf" / "discriminator")
    assert hf_tok("the quick fox")["input_ids"][0] == special.cls
    assert hf_tok.convert_tokens_to_ids("[MASK]") == special.mask

    for pads in (None, PAD_LENGTHS):
        ids, mask, types = random_batch(cfg.discriminator.vocab_size, special, pad_lengths=pads)
        with torch.no_grad():
            assert_close_on_tokens(disc(input_ids=ids, attention_mask=mask, token_type_ids=types).logits,
                                   model.discriminator(ids, mask, types), mask)
            assert_close_on_tokens(gen(input_ids=ids, attention_mask=mask, token_type_ids=types).logits,
                                   model.generator(ids, mask, types), mask)
    # shared embeddings: the exported generator carries the discriminator's tables
    assert torch.equal(gen.electra.embeddings.word_embeddings.weight, disc.electra.embeddings.word_embeddings.weight)


def test_hf_encoder_only_has_no_discriminator_head(tmp_path, tokenizer, tokenizer_dir):
    from electra.errors import UserError

    cfg = tiny_config(tokenizer.get_vocab_size()).discriminator
    transformers.ElectraModel(hf_config(cfg)).save_pretrained(tmp_path)
    for name in TOKENIZER_FILES:
        shutil.copyfile(tokenizer_dir / name, tmp_path / name)
    pre = load_pretrained(tmp_path)
    assert pre.discriminator is not None and not pre.has_disc_head
    with pytest.raises(UserError, match="without the discriminator.s replaced-token head"):
        pre.require("discriminator")


def test_hf_reference_pretraining_shares_embeddings_and_trains(special):
    from electra.bench.reference import HFReferencePretraining

    from conftest import random_batch as batch

    cfg = tiny_config(120)
    ref = HFReferencePretraining(cfg, special)
    emb = ref.discriminator.electra.embeddings
    assert ref.generator.electra.embeddings is emb
    assert ref.generator.generator_lm_head.weight is emb.word_embeddings.weight
    ids, mask, types = batch(120, special, B=4, T=32, pad_lengths=[32, 30, 20, 12])
    loss, metrics = ref(ids, mask, types, torch.arange(4), step=0, seed=0)
    loss.backward()
    assert torch.isfinite(loss) and emb.word_embeddings.weight.grad.abs().sum() > 0
    assert torch.allclose(loss, metrics["gen_loss"] + 50 * metrics["disc_loss"])
