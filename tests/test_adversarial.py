"""Adversarial fine-tuning (FGM, PGD, FreeLB) on the word-embedding output, inside the one training loop:
the perturbations' sizes, every task, the same result on one process and two, and bad settings."""

from __future__ import annotations

import json

import pytest
import torch

from electra.config import FinetuneConfig
from electra.finetune.adversarial import EmbeddingPerturbation, _project, adversarial_loss

from test_finetune import TINY, classification_rows, cli, conll_text, last_json, squad_json, write_tsv


class Toy(torch.nn.Module):
    """Word embeddings -> a linear score per example: enough to check the perturbation arithmetic."""

    def __init__(self):
        super().__init__()
        self.encoder = torch.nn.Module()
        self.encoder.embeddings = torch.nn.Module()
        self.encoder.embeddings.word = torch.nn.Embedding(50, 6)
        self.out = torch.nn.Linear(6, 1)

    def forward(self, ids, mask):
        return (self.out(self.encoder.embeddings.word(ids)).squeeze(-1) * mask).sum(1)


def _setup():
    torch.manual_seed(0)
    model = Toy()
    ids = torch.randint(0, 50, (4, 7))
    mask = torch.ones(4, 7)
    mask[1, 4:] = 0
    mask[3, 2:] = 0
    return model, EmbeddingPerturbation(model), ids, mask


@pytest.mark.parametrize("method", ["fgm", "pgd", "freelb"])
def test_perturbations_stay_in_the_ball_and_off_the_padding(method):
    model, perturb, ids, mask = _setup()
    seen = []

    def loss_fn():
        if perturb.delta is not None:
            seen.append(perturb.delta.detach().clone())
        return model(ids, mask).sum()

    c = FinetuneConfig(adversarial=method, adv_epsilon=0.5, adv_steps=3, adv_alpha=0.2)
    loss, metrics = adversarial_loss(loss_fn, perturb, ids, mask, c)
    loss.backward()
    assert len(seen) == {"fgm": 1, "pgd": 3, "freelb": 3}[method]
    # sizes are fractions of each example's word-embedding norm (over its real tokens)
    scale = (model.encoder.embeddings.word.weight[ids] * mask[..., None]).flatten(1).norm(dim=1).detach()
    for delta in seen:
        norms = delta.flatten(1).norm(dim=1)
        assert bool((norms <= 0.5 * scale + 1e-5).all())
        assert float(delta[1, 4:].abs().max()) == 0 and float(delta[3, 2:].abs().max()) == 0
    if method == "fgm":  # one full step: every example exactly on its sphere
        torch.testing.assert_close(seen[0].flatten(1).norm(dim=1), 0.5 * scale)
    assert model.encoder.embeddings.word.weight.grad is not None and perturb.delta is None


def test_fgm_raises_the_loss_it_trains_on():
    model, perturb, ids, mask = _setup()
    c = FinetuneConfig(adversarial="fgm", adv_epsilon=0.1)
    loss, metrics = adversarial_loss(lambda: model(ids, mask).sum(), perturb, ids, mask, c)
    assert float(metrics["adv_loss"]) > float(metrics["loss"])  # the perturbation ascends (linear model: exactly)
    torch.testing.assert_close(loss.detach(), metrics["adv_loss"] + metrics["loss"])


def test_projection_only_shrinks():
    d = torch.randn(3, 4, 5)
    radius = torch.tensor([1.0, 100.0, 0.5])
    p = _project(d, radius)
    n = d.flatten(1).norm(dim=1)
    torch.testing.assert_close(p.flatten(1).norm(dim=1), torch.minimum(n, radius))


@pytest.mark.parametrize("method", ["fgm", "pgd", "freelb"])
def test_every_method_fine_tunes_classification(method, tmp_path, tokenizer_dir, capsys):
    header = ["sentence1", "sentence2", "label"]
    train = write_tsv(tmp_path / "train.tsv", classification_rows(48, 1), header)
    code, out, err = cli(capsys, "finetune", "--task", "classification", "--model", "tiny", "--tokenizer", tokenizer_dir,
                         "--train", train, "--dev", train, "--out", tmp_path / "m", *TINY, "--adversarial", method,
                         "--adv-steps", "2")
    assert code == 0, err
    rows = [json.loads(line) for line in (tmp_path / "m" / "metrics.jsonl").read_text().splitlines()]
    assert any("adv_delta_norm" in r for r in rows)
    saved = json.loads((tmp_path / "m" / "electra.json").read_text())
    assert saved["finetune"]["adversarial"] == method and 0 <= last_json(out)["accuracy"] <= 1


def test_ner_and_qa_train_adversarially(tmp_path, tokenizer_dir, capsys):
    (tmp_path / "train.txt").write_text(conll_text(24, 1))
    code, _, err = cli(capsys, "finetune", "--task", "ner", "--model", "tiny", "--tokenizer", tokenizer_dir, "--train",
                       tmp_path / "train.txt", "--dev", tmp_path / "train.txt", "--out", tmp_path / "ner", *TINY,
                       "--adversarial", "fgm")
    assert code == 0, err
    (tmp_path / "train.json").write_text(json.dumps(squad_json(16, 1)))
    code, _, err = cli(capsys, "finetune", "--task", "qa", "--model", "tiny", "--tokenizer", tokenizer_dir, "--train",
                       tmp_path / "train.json", "--dev", tmp_path / "train.json", "--out", tmp_path / "qa", *TINY,
                       "--max-seq-len", "64", "--adversarial", "pgd", "--adv-steps", "2")
    assert code == 0, err


@pytest.mark.parametrize("flags, message", [
    (["--adversarial", "pgd", "--adv-steps", "0"], "--adv-steps must be positive"),
    (["--adversarial", "fgm", "--adv-epsilon", "-1"], "--adv-epsilon must be positive"),
    (["--adversarial", "freelb", "--adv-alpha", "0"], "--adv-alpha must be positive"),
])
def test_bad_adversarial_settings_are_one_line(flags, message, tmp_path, tokenizer_dir, capsys):
    train = write_tsv(tmp_path / "train.tsv", classification_rows(16, 1), ["sentence1", "sentence2", "label"])
    code, _, err = cli(capsys, "finetune", "--task", "classification", "--model", "tiny", "--tokenizer", tokenizer_dir,
                       "--train", train, "--dev", train, "--out", tmp_path / "m", *TINY, *flags)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "m").exists()
