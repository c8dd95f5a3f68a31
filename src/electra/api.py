"""The Python API: `electra.load(...)` gives an object to call from Python.

    import electra
    clf = electra.load("ft/sst2")                   # anything --model accepts
    clf.predict(["a gripping film", "dull"])        # [{"prediction": "1", "score": 0.93, "scores": {...}}, ...]
    disc = electra.load("runs/wiki")
    disc.detect("the chef cooked the meal"); disc.fill_mask("the capital of france is [MASK] ."); disc.embed([...])

Batched, length-sorted, plain Python results in the shapes `electra predict` writes, no printing. The
CLI's `predict`, `detect` and `fill-mask` run the same code (electra.finetune.predict, electra.inference),
and so does `electra serve`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch

from electra.errors import UserError


class FinetunedModel:
    """A fine-tuned classifier, regressor, tagger (ner) or reader (qa)."""

    def __init__(self, finetuned, device: torch.device):
        self.finetuned = finetuned
        self.device = device

    @property
    def task(self) -> str:
        return self.finetuned.task.name

    @property
    def labels(self) -> list[str] | None:
        return self.finetuned.task.labels

    @property
    def text_count(self) -> int | None:
        """1 or 2: the texts per input of a classification or regression model (None for other tasks)."""
        columns = self.finetuned.task.settings.get("columns")
        return len(columns["texts"]) if columns else None

    def predict(self, inputs: list, *, batch_size: int = 64, top_k: int | None = None, n_best: int = 1) -> list[dict]:
        """One result per input, in order. Inputs: classification and regression: texts, or pairs as
        2-tuples; ner: texts (split at whitespace) or lists of words; qa: {"question", "context"} dicts.

        Results: classification {"prediction", "score", "scores"} (top_k: only the K most likely labels);
        regression {"prediction": number}; ner {"prediction": tags per word, "scores", "entities"};
        qa {"id", "prediction", "score", "start", "end"} (n_best > 1: also "n_best")."""
        from electra.finetune.predict import describe_examples

        ft = self.finetuned
        examples = ft.task.examples_from(inputs)
        if self.text_count and len(examples[0].texts) != self.text_count:
            raise UserError(f"the model reads {'pairs of texts' if self.text_count == 2 else 'single texts'}; "
                            f"got {'pairs' if len(examples[0].texts) == 2 else 'single texts'}")
        if top_k is not None and (top_k <= 0 or self.task != "classification"):
            raise UserError("top_k keeps the K > 0 most likely labels of a classification model")
        rows, _ = describe_examples(ft, examples, self.device, batch_size, n_best=n_best, top_k=top_k)
        return rows

    def __repr__(self) -> str:
        return f"FinetunedModel({str(self.finetuned.directory)!r}, task={self.task!r})"


class PretrainedModel:
    """A pretrained discriminator and/or generator: replaced-token detection, mask filling, embeddings."""

    def __init__(self, pretrained, device: torch.device):
        self.pretrained = pretrained
        self.device = device

    def detect(self, texts: str | list[str], *, batch_size: int = 32) -> dict | list[dict]:
        """{"tokens", "replaced_prob" (per word piece), "truncated" (pieces past the model's length)} per
        text; one dict for one text (a str)."""
        from electra.inference import detect

        return _one_or_many(texts, lambda t: detect(self.pretrained, t, batch_size))

    def fill_mask(self, texts: str | list[str], *, top_k: int = 5, batch_size: int = 32) -> dict | list[dict]:
        """{"tokens", "masks": [{"position", "candidates": [{"token", "score"}]}], "truncated"} per text."""
        from electra.inference import fill_mask

        if top_k <= 0:
            raise UserError(f"top_k must be positive (got {top_k})")
        return _one_or_many(texts, lambda t: fill_mask(self.pretrained, t, top_k, batch_size))

    def embed(self, texts: str | list[str], *, pooling: Literal["mean", "cls"] = "mean",
              batch_size: int = 32) -> np.ndarray:
        """(n, hidden) float32 vectors from the discriminator's last layer ((hidden,) for one text)."""
        from electra.inference import embed

        vectors = embed(self.pretrained, [texts] if isinstance(texts, str) else _texts(texts), pooling, batch_size)
        return vectors[0] if isinstance(texts, str) else vectors

    def __repr__(self) -> str:
        have = [n for n in ("discriminator", "generator") if getattr(self.pretrained, n) is not None]
        return f"PretrainedModel({str(self.pretrained.directory)!r}, {' + '.join(have)})"


def _texts(texts) -> list[str]:
    if not isinstance(texts, (list, tuple)) or not texts or not all(isinstance(t, str) for t in texts):
        raise UserError("texts must be a string or a non-empty list of strings")
    return list(texts)


def _one_or_many(texts, run):
    if isinstance(texts, str):
        return run([texts])[0]
    return run(_texts(texts))


def load(src: str | Path, *, device: str | None = None) -> FinetunedModel | PretrainedModel:
    """Anything `--model` accepts: a fine-tuned directory (ours or a Hugging Face ElectraFor* task model)
    gives a FinetunedModel; a pretraining run, checkpoint, export, or a Hugging Face ELECTRA
    discriminator/generator directory gives a PretrainedModel; an `electra export --format onnx`
    directory gives either, run by ONNX Runtime. `device`: "cpu", "cuda", ... (default:
    the GPU when there is one)."""
    from electra.finetune.load import is_finetuned_dir, load_finetuned
    from electra.pretrained import load_pretrained, resolve

    from electra.onnx_export import is_onnx_dir, load_onnx

    dev = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    directory = resolve(str(src))
    if is_onnx_dir(directory):  # run by ONNX Runtime on the CPU
        loaded = load_onnx(directory)
        cpu = torch.device("cpu")
        return FinetunedModel(loaded, cpu) if hasattr(loaded, "task") else PretrainedModel(loaded, cpu)
    if is_finetuned_dir(directory):
        ft = load_finetuned(directory)
        ft.model.to(dev).eval()
        return FinetunedModel(ft, dev)
    pre = load_pretrained(src)  # an `electra export` output: both networks
    for net in (pre.discriminator, pre.generator):
        if net is not None:
            net.to(dev).eval()
    return PretrainedModel(pre, dev)
