"""The pretraining objectives beside ELECTRA's: the masked-LM baseline (`--objective mlm`), embedding
sharing (es, gdes, nes), whole-word masking, and the FLOPs each run logs."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from electra.bench import flops
from electra.cli import run
from electra.commands import COMMANDS
from electra.config import ElectraConfig, ObjectiveConfig
from electra.data.dataset import PretrainingData
from electra.data.tokenizer import load_tokenizer
from electra.model.electra import ElectraForPretraining, GdesEmbeddings, mask_tokens, pretraining_model
from electra.pretrained import export_hf, load_pretrained

from conftest import random_batch, tiny_config
from test_pipeline import pretrain_args, prepared  # noqa: F401 - the module-scoped fixture


def _batch(vocab, special, B, T, seed=0):
    ids, mask, types = random_batch(vocab, special, B=B, T=T, seed=seed)
    return ids, mask, types, torch.arange(B)


def mlm_args(prepared, tmp_path, out, *extra):  # noqa: F811
    """pretrain_args with the tiny model of tiny.yaml minus its generator (which mlm has not)."""
    spec = tmp_path / "mlm.yaml"
    spec.write_text((prepared / "tiny.yaml").read_text().replace("generator_size: 0.5\n", ""))
    return ["pretrain", "--data", str(prepared / "data"), "--model", str(spec), "--out", str(out), "--batch-size", "8",
            "--objective", "mlm", *extra]


def test_mlm_masking_is_80_10_10(special):
    cfg = ObjectiveConfig(kind="mlm")
    ids, mask, _, index = _batch(500, special, B=400, T=64, seed=1)
    m = mask_tokens(ids, mask, index, seed=0, step=3, special=special, cfg=cfg, vocab_size=500)
    chosen = m.input_ids.gather(1, m.positions)[m.valid]
    targets = m.targets[m.valid]
    masked = (chosen == special.mask).float().mean()
    kept = (chosen == targets).float().mean()
    assert abs(masked - 0.8) < 0.02 and abs(kept - 0.1) < 0.02  # the random 10% rarely hits the original
    assert abs(1 - masked - kept - 0.1) < 0.02
    electra = mask_tokens(ids, mask, index, seed=0, step=3, special=special, cfg=ObjectiveConfig(), vocab_size=500)
    picked = electra.input_ids.gather(1, electra.positions)[electra.valid]
    assert set(picked[picked != special.mask].tolist()) <= set(electra.targets[electra.valid].tolist())
    assert bool(((picked == special.mask) | (picked == electra.targets[electra.valid])).all())  # no random tokens


def test_mlm_refuses_electra_settings():
    with pytest.raises(Exception, match="ELECTRA-only settings"):
        ObjectiveConfig(kind="mlm", disc_weight=50.0)
    assert ObjectiveConfig().disc_weight == 50.0 and ObjectiveConfig(kind="mlm").disc_weight is None


def test_flops_per_token_count_the_generator_and_the_masked_lm():
    cfg = tiny_config(1000)
    d, g = cfg.discriminator, cfg.generator
    electra = flops.pretraining_step(cfg, 32, 0.15)
    mlm = flops.pretraining_step(type(cfg)(d, d), 32, 0.15, "mlm")
    assert electra == pytest.approx(3 * (flops.encoder_forward(d, 32) + 2 * d.hidden_size ** 2 + 2 * d.hidden_size
                                         + flops.encoder_forward(g, 32)
                                         + 0.15 * (2 * g.hidden_size * g.embedding_size + 2 * g.embedding_size * 1000)))
    assert mlm == pytest.approx(3 * (flops.encoder_forward(d, 32)
                                     + 0.15 * (2 * d.hidden_size * d.embedding_size + 2 * d.embedding_size * 1000)))


def test_mlm_pretrains_exports_as_masked_lm_and_fine_tunes(prepared, tmp_path):  # noqa: F811
    transformers = pytest.importorskip("transformers")
    out = tmp_path / "mlm"
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # its curves have no discriminator panel, not an empty one
        assert run(COMMANDS, mlm_args(prepared, tmp_path, out, "--max-steps", "4", "--log-every", "2")) == 0
    assert (out / "curves.png").stat().st_size > 1000
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"mlm_loss"' in line]
    saved = json.loads((out / "run.json").read_text())
    assert saved["objective"]["kind"] == "mlm" and saved["model"]["generator"] == saved["model"]["discriminator"]
    per_step = 8 * 32 * flops.pretraining_step(ElectraConfig.from_dict(saved["model"]), 32, 0.15, "mlm")
    assert [r["step"] for r in rows] == [2, 4] and [r["flops"] for r in rows] == pytest.approx([2 * per_step, 4 * per_step], rel=1e-5)
    pre = load_pretrained(out)
    assert pre.discriminator is None and pre.generator.config.hidden_size == 32
    assert run(COMMANDS, ["export", "--model", str(out), "--out", str(tmp_path / "hf")]) == 0
    hf = transformers.ElectraForMaskedLM.from_pretrained(tmp_path / "hf" / "generator").eval()
    ids = torch.tensor([[2, 40, 41, 42, 3]])
    with torch.no_grad():
        torch.testing.assert_close(hf(input_ids=ids).logits, pre.generator.eval()(ids), rtol=1e-5, atol=1e-5)
        # the export directory itself is a --model source, as an ELECTRA export is (its generator/ only)
        exported = load_pretrained(tmp_path / "hf")
        torch.testing.assert_close(exported.generator.eval()(ids), pre.generator(ids), rtol=1e-5, atol=1e-5)
    assert run(COMMANDS, ["fill-mask", "--model", str(tmp_path / "hf"), "the [MASK] sat"]) == 0
    (tmp_path / "t.tsv").write_text("sentence\tlabel\n" + "".join(f"the cat {i}\t{i % 2}\n" for i in range(16)))
    assert run(COMMANDS, ["finetune", "--task", "classification", "--model", str(out), "--train", str(tmp_path / "t.tsv"),
                          "--dev", str(tmp_path / "t.tsv"), "--out", str(tmp_path / "ft"), "--epochs", "1",
                          "--batch-size", "8"]) == 0


def test_mlm_resume_and_objective_change(prepared, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "mlm"
    assert run(COMMANDS, mlm_args(prepared, tmp_path, out, "--max-steps", "2")) == 0
    capsys.readouterr()
    resume = ["pretrain", "--data", str(prepared / "data"), "--out", str(out), "--resume"]
    assert run(COMMANDS, [*resume, "--max-steps", "4"]) == 0
    assert json.loads((out / "run.json").read_text())["objective"]["kind"] == "mlm"
    capsys.readouterr()
    assert run(COMMANDS, [*resume, "--max-steps", "6", "--objective", "electra"]) == 2
    err = capsys.readouterr().err
    assert "trains the mlm objective" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("yaml_extra, message", [
    ("objective: {disc_weight: 20}\n", "ELECTRA-only settings"),
    ("generator_size: 0.25\n", "ELECTRA-only settings"),
])
def test_mlm_with_electra_settings_is_one_line(prepared, tmp_path, capsys, yaml_extra, message):  # noqa: F811
    spec = tmp_path / "m.yaml"
    spec.write_text((prepared / "tiny.yaml").read_text().replace("generator_size: 0.5\n", "") + yaml_extra)
    code = run(COMMANDS, ["pretrain", "--data", str(prepared / "data"), "--model", str(spec), "--out",
                          str(tmp_path / "r"), "--batch-size", "8", "--max-steps", "1", "--objective", "mlm"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "r").exists()


def _step(model, batch, special):
    ids, mask, types, index = batch
    return model(ids, mask, types, index, step=0, seed=0)


def test_gdes_stops_the_discriminator_gradient_into_the_generator_embeddings(special):
    cfg = tiny_config(120)
    torch.manual_seed(0)
    model = ElectraForPretraining(cfg, special, ObjectiveConfig(embedding_sharing="gdes", gen_weight=0.0))
    emb = model.discriminator.encoder.embeddings
    assert isinstance(emb, GdesEmbeddings) and all(float(p.detach().abs().max()) == 0 for p in emb.delta.values())
    _step(model, _batch(120, special, B=4, T=16), special).loss.backward()
    gen_emb = model.generator.encoder.embeddings
    assert all(p.grad is None or float(p.grad.abs().max()) == 0 for p in gen_emb.parameters())  # only the BCE ran
    assert float(emb.delta["word_weight"].grad.abs().max()) > 0
    names = [n for n, _ in model.named_parameters()]
    assert len(names) == len(set(names)) and not any(n.startswith("discriminator.encoder.embeddings.word") for n in names)


def test_nes_shares_nothing_and_es_shares_everything(special):
    cfg = tiny_config(120)
    es = ElectraForPretraining(cfg, special)
    assert es.generator.encoder.embeddings is es.discriminator.encoder.embeddings
    nes = ElectraForPretraining(cfg, special, ObjectiveConfig(embedding_sharing="nes"))
    a, b = nes.generator.encoder.embeddings, nes.discriminator.encoder.embeddings
    assert a is not b and not set(map(id, a.parameters())) & set(map(id, b.parameters()))


@pytest.mark.parametrize("sharing", ["gdes", "nes"])
def test_gdes_and_nes_runs_export_plain_discriminators_with_transformers_parity(prepared, tmp_path, sharing):  # noqa: F811
    transformers = pytest.importorskip("transformers")
    spec = tmp_path / "s.yaml"
    spec.write_text((prepared / "tiny.yaml").read_text() + f"objective: {{embedding_sharing: {sharing}}}\n")
    out = tmp_path / "run"
    assert run(COMMANDS, ["pretrain", "--data", str(prepared / "data"), "--model", str(spec), "--out", str(out),
                          "--batch-size", "8", "--max-steps", "3"]) == 0
    pre = load_pretrained(out)
    # the run's own discriminator (gdes: generator's embeddings + residual) against the folded export
    from electra.checkpoint import read_weights
    from electra.pretrained import load_pretraining_state
    from electra.train.pretrain import saved_run

    saved = saved_run(out)
    model = pretraining_model(ElectraConfig.from_dict(saved["model"]), pre.special,
                              ObjectiveConfig(**saved["objective"])).eval()
    ckpt = sorted(out.glob("step-*"))[-1]
    load_pretraining_state(model, read_weights(ckpt), ckpt)
    if sharing == "gdes":
        assert float(model.discriminator.encoder.embeddings.delta["word_weight"].detach().abs().max()) > 0  # it trained
    export_hf(pre, tmp_path / "hf")
    hf = transformers.ElectraForPreTraining.from_pretrained(tmp_path / "hf" / "discriminator").eval()
    b = PretrainingData(prepared / "data").batch(np.arange(4))
    with torch.no_grad():
        ours = model.discriminator(b.input_ids, b.attention_mask, b.token_type_ids)
        theirs = hf(input_ids=b.input_ids, attention_mask=b.attention_mask, token_type_ids=b.token_type_ids).logits
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-4)


def test_whole_word_masking_takes_every_piece_of_a_word(special):
    cfg = ObjectiveConfig(whole_word_mask=True, mask_prob=0.3)
    ids, mask, _, index = _batch(500, special, B=64, T=48, seed=2)
    g = torch.Generator().manual_seed(0)
    starts = torch.rand(ids.shape, generator=g) < 0.4  # words of 1-several pieces
    starts[:, 0] = True
    m = mask_tokens(ids, mask, index, seed=0, step=1, special=special, cfg=cfg, word_start=starts, vocab_size=500)
    word = torch.cummax(torch.where(starts, torch.arange(48).expand(64, 48), 0), 1).values
    from electra.model.electra import prediction_counts
    maskable, n_predict = prediction_counts(ids, mask, special, cfg)
    partial = 0
    for b in range(64):
        chosen = set(m.positions[b][m.valid[b]].tolist())
        assert len(chosen) <= int(n_predict[b])
        words = {int(word[b, p]) for p in chosen}
        for w in words:
            pieces = {p for p in range(48) if int(word[b, p]) == w and bool(maskable[b, p])}
            partial += pieces != pieces & chosen
    assert partial <= 2  # only when the first word drawn is longer than the whole budget
    model = ElectraForPretraining(tiny_config(500), special, cfg)
    assert int(model.counts(ids, mask, index, starts, step=1)[0]) == int(m.valid.sum())


def test_whole_word_masking_from_pieces_and_from_jieba(prepared, tmp_path):  # noqa: F811
    pytest.importorskip("jieba")
    data = PretrainingData(prepared / "data")
    tok = load_tokenizer(prepared / "data" / "tokenizer")
    data.use_word_starts(tok)
    b = data.batch(np.arange(4))
    pieces = [tok.id_to_token(int(i)) for i in b.input_ids[0]]
    assert [not p.startswith("##") for p in pieces] == b.word_start[0].tolist()

    text = "我们在北京清华大学学习自然语言处理。\n他们喜欢研究中文分词和预训练模型。\n\n" * 30
    (tmp_path / "zh.txt").write_text(text, encoding="utf-8")
    assert run(COMMANDS, ["tokenizer", "train", "--corpus", str(tmp_path / "zh.txt"), "--vocab-size", "200",
                          "--min-frequency", "1", "--out", str(tmp_path / "tok")]) == 0
    assert run(COMMANDS, ["prepare", "--corpus", str(tmp_path / "zh.txt"), "--tokenizer", str(tmp_path / "tok"),
                          "--out", str(tmp_path / "data"), "--seq-len", "32", "--workers", "1", "--words", "jieba",
                          "--val-every", "0"]) == 0
    zh = PretrainingData(tmp_path / "data")
    zh.use_word_starts(load_tokenizer(tmp_path / "tok"))
    b = zh.batch(np.arange(2))
    ztok = load_tokenizer(tmp_path / "tok")
    row = [ztok.id_to_token(int(i)) for i in b.input_ids[0]]
    starts = b.word_start[0].tolist()
    words, current = [], ""
    for piece, start in zip(row, starts):
        if piece in ("[CLS]", "[SEP]", "[PAD]"):
            continue
        if start and current:
            words.append(current)
            current = ""
        current += piece
    assert "北京" in words or "清华大学" in words or "自然语言" in words or "中文" in words, words
    assert sum(starts) < len([p for p in row if p != "[PAD]"])  # some characters continue a word


def test_whole_word_mask_on_data_without_boundaries_is_one_line(prepared, tmp_path, capsys):  # noqa: F811
    import shutil

    data = tmp_path / "old"
    shutil.copytree(prepared / "data", data)
    manifest = json.loads((data / "manifest.json").read_text())
    del manifest["words"]  # as prepared by an older version
    (data / "manifest.json").write_text(json.dumps(manifest))
    spec = tmp_path / "w.yaml"
    spec.write_text((prepared / "tiny.yaml").read_text() + "objective: {whole_word_mask: true}\n")
    code = run(COMMANDS, ["pretrain", "--data", str(data), "--model", str(spec), "--out", str(tmp_path / "r"),
                          "--batch-size", "8", "--max-steps", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "prepare it again" in err and len(err.strip().splitlines()) == 1, err


def test_finetune_from_a_recipe_file_starts_untrained(prepared, tmp_path):  # noqa: F811
    (tmp_path / "t.tsv").write_text("sentence\tlabel\n" + "".join(f"the cat {i}\t{i % 2}\n" for i in range(16)))
    assert run(COMMANDS, ["finetune", "--task", "classification", "--model", str(prepared / "tiny.yaml"), "--tokenizer",
                          str(prepared / "tok"), "--train", str(tmp_path / "t.tsv"), "--dev", str(tmp_path / "t.tsv"),
                          "--out", str(tmp_path / "ft"), "--epochs", "1", "--batch-size", "8"]) == 0
    saved = json.loads((tmp_path / "ft" / "electra.json").read_text())
    assert saved["model"]["hidden_size"] == 32  # tiny.yaml's encoder, not tiny's 128


def test_packaged_recipes_by_name(prepared, tmp_path, monkeypatch, capsys):  # noqa: F811
    from electra.config import model_from_spec, recipe_names
    from electra.train.pretrain import resolve_config

    assert "demo" in recipe_names()
    for name in recipe_names():  # every shipped recipe resolves: sizes, objective and train settings known
        res = resolve_config(name, {}, 1000, 0)
        assert res.train.max_steps > 0 and res.train.lr > 0, name
    assert resolve_config("demo", {}, 1000, 0).objective.temperature == 2.0
    assert resolve_config("cpu-1h-mlm", {}, 1000, 0).objective.kind == "mlm"  # BERT-style, from the YAML alone
    assert resolve_config("demo", {"lr": 5e-4}, 1000, 0).train.lr == 5e-4  # flags still win
    # a run directory that carries a recipe's name is the run, not the recipe
    monkeypatch.chdir(tmp_path)
    (tmp_path / "t.tsv").write_text("sentence\tlabel\n" + "".join(f"the cat {i}\t{i % 2}\n" for i in range(16)))
    common = ["--task", "classification", "--train", "t.tsv", "--dev", "t.tsv", "--epochs", "1", "--batch-size", "8"]
    assert run(COMMANDS, ["finetune", "--model", "demo", "--tokenizer", str(prepared / "tok"), "--out", "ft",
                          *common]) == 0
    assert json.loads((tmp_path / "ft" / "electra.json").read_text())["model"]["hidden_size"] == 128  # tiny's
    assert run(COMMANDS, ["pretrain", "--data", str(prepared / "data"), "--model", str(prepared / "tiny.yaml"), "--out",
                          "demo", "--batch-size", "8", "--max-steps", "1"]) == 0
    assert run(COMMANDS, ["finetune", "--model", "demo", "--out", "ft2", *common]) == 0
    assert json.loads((tmp_path / "ft2" / "electra.json").read_text())["model"]["hidden_size"] == 32  # the run's
    capsys.readouterr()
    assert run(COMMANDS, ["pretrain", "--data", str(prepared / "data"), "--model", "nonesuch", "--out", "x"]) == 2
    err = capsys.readouterr().err
    assert "recipes: " in err and "demo" in err and len(err.strip().splitlines()) == 1, err
    assert run(COMMANDS, ["demo", "--model", "nonesuch", "--out", "dd"]) == 2  # before anything is made
    assert not (tmp_path / "dd").exists()
    assert model_from_spec("demo")[2] == "tiny"


def test_mlm_init_from_an_electra_discriminator_or_a_masked_lm(prepared, tmp_path):  # noqa: F811
    from electra.data.tokenizer import special_ids, tokenizer_hash
    from electra.train.pretrain import build_model, from_pretrained, resolve_config

    electra_run, mlm_run = tmp_path / "electra", tmp_path / "mlm"
    assert run(COMMANDS, pretrain_args(prepared, electra_run, "--max-steps", "2")) == 0
    assert run(COMMANDS, mlm_args(prepared, tmp_path, mlm_run, "--max-steps", "2")) == 0
    tok = load_tokenizer(prepared / "data" / "tokenizer")
    special = special_ids(tok)
    res = resolve_config(str(tmp_path / "mlm.yaml"), {"objective": "mlm", "dropout": 0.0}, tok.get_vocab_size(),
                         special.pad)
    for src, network, head in ((electra_run, "discriminator", "fresh"), (mlm_run, "generator", "source's")):
        resolved, init = from_pretrained(res, str(src), None, tokenizer_hash(tok))
        model = build_model(resolved, special, init)
        source = getattr(load_pretrained(src), network).state_dict()
        for k, v in model.generator.state_dict().items():
            if k.startswith("encoder.") or head == "source's":
                assert torch.equal(v, source[k]), (src, k)
        assert init.source["head"] == head
    # from the command line too: continued masked-LM pretraining says where it started
    assert run(COMMANDS, ["pretrain", "--data", str(prepared / "data"), "--out", str(tmp_path / "again"), "--max-steps",
                          "2", "--batch-size", "8", "--objective", "mlm", "--init", str(mlm_run)]) == 0
    assert json.loads((tmp_path / "again" / "run.json").read_text())["init"]["masked_lm"].startswith(str(mlm_run))
