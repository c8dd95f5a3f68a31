"""Hugging Face `transformers` ELECTRA interoperability: a state-dict conversion table both ways,
config.json, and reading/writing HF model directories. `transformers` is not needed for this."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import load_file, save_file

from electra.config import ModelConfig, read_json
from electra.errors import UserError

Network = Literal["discriminator", "generator"]

ARCHITECTURE = {"discriminator": "ElectraForPreTraining", "generator": "ElectraForMaskedLM"}

# (ours, Hugging Face) name pairs for the encoder; {i} is the layer index.
_EMBEDDINGS = [
    ("encoder.embeddings.word.weight", "electra.embeddings.word_embeddings.weight"),
    ("encoder.embeddings.position.weight", "electra.embeddings.position_embeddings.weight"),
    ("encoder.embeddings.token_type.weight", "electra.embeddings.token_type_embeddings.weight"),
    ("encoder.embeddings.norm.weight", "electra.embeddings.LayerNorm.weight"),
    ("encoder.embeddings.norm.bias", "electra.embeddings.LayerNorm.bias"),
]
_PROJECT = [("encoder.project.weight", "electra.embeddings_project.weight"),
            ("encoder.project.bias", "electra.embeddings_project.bias")]
_LAYER = [
    ("attn.out.{p}", "attention.output.dense.{p}"),
    ("attn_norm.{p}", "attention.output.LayerNorm.{p}"),
    ("ffn_in.{p}", "intermediate.dense.{p}"),
    ("ffn_out.{p}", "output.dense.{p}"),
    ("ffn_norm.{p}", "output.LayerNorm.{p}"),
]
HEADS = {
    "discriminator": [("head.dense.{p}", "discriminator_predictions.dense.{p}"),
                      ("head.prediction.{p}", "discriminator_predictions.dense_prediction.{p}")],
    "generator": [("head.dense.{p}", "generator_predictions.dense.{p}"),
                  ("head.norm.{p}", "generator_predictions.LayerNorm.{p}")],
    # fine-tuned task heads (electra.finetune.model)
    "classification": [("head.dense.{p}", "classifier.dense.{p}"), ("head.out_proj.{p}", "classifier.out_proj.{p}")],
    "ner": [("head.linear.{p}", "classifier.{p}")],
    "qa": [("head.linear.{p}", "qa_outputs.{p}")],
}
HEADS["regression"] = HEADS["classification"]
HEADS["prompt"] = HEADS["discriminator"]  # prompt-based fine-tuning keeps the replaced-token head


def _pairs(cfg: ModelConfig, heads: list[tuple[str, str]]) -> list[tuple[str, str]]:
    pairs = list(_EMBEDDINGS)
    if cfg.embedding_size != cfg.hidden_size:
        pairs += _PROJECT
    for i in range(cfg.num_hidden_layers):
        for ours, theirs in _LAYER:
            for p in ("weight", "bias"):
                pairs.append((f"encoder.layers.{i}.{ours.format(p=p)}",
                              f"electra.encoder.layer.{i}.{theirs.format(p=p)}"))
    for ours, theirs in heads:
        for p in ("weight", "bias"):
            pairs.append((ours.format(p=p), theirs.format(p=p)))
    return pairs


def _qkv_names(i: int) -> tuple[str, list[str]]:
    return (f"encoder.layers.{i}.attn.qkv",
            [f"electra.encoder.layer.{i}.attention.self.{n}" for n in ("query", "key", "value")])


def to_hf(state: dict[str, torch.Tensor], cfg: ModelConfig, heads: list[tuple[str, str]]) -> dict[str, torch.Tensor]:
    """Our state dict (one network) -> Hugging Face names; fused qkv is split in three."""
    out = {theirs: state[ours] for ours, theirs in _pairs(cfg, heads) if ours in state}
    for i in range(cfg.num_hidden_layers):
        ours, theirs = _qkv_names(i)
        for p in ("weight", "bias"):
            for name, part in zip(theirs, state[f"{ours}.{p}"].chunk(3, dim=0)):
                out[f"{name}.{p}"] = part
    if "head.bias" in state:  # generator: tied output matrix plus its own bias
        out["generator_lm_head.weight"] = state["encoder.embeddings.word.weight"]
        out["generator_lm_head.bias"] = state["head.bias"]
    return out


def from_hf(hf: dict[str, torch.Tensor], cfg: ModelConfig, heads: list[tuple[str, str]]) -> dict[str, torch.Tensor]:
    """Hugging Face names -> our state dict (only the keys present; the caller checks completeness)."""
    hf = normalize_hf_keys(hf)
    out = {ours: hf[theirs] for ours, theirs in _pairs(cfg, heads) if theirs in hf}
    for i in range(cfg.num_hidden_layers):
        ours, theirs = _qkv_names(i)
        for p in ("weight", "bias"):
            parts = [hf.get(f"{n}.{p}") for n in theirs]
            if all(t is not None for t in parts):
                out[f"{ours}.{p}"] = torch.cat(parts, dim=0)
    if "generator_lm_head.bias" in hf:
        out["head.bias"] = hf["generator_lm_head.bias"]
    return out


def normalize_hf_keys(hf: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Accept ElectraModel checkpoints saved without the `electra.` prefix and old gamma/beta names."""
    out = {}
    for k, v in hf.items():
        k = k.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
        if k.startswith(("embeddings.", "embeddings_project.", "encoder.")):
            k = "electra." + k
        out[k] = v
    return out


def hf_config(cfg: ModelConfig, architecture: str, **extra) -> dict:
    return {"architectures": [architecture], "model_type": "electra", **cfg.to_dict(),
            "classifier_dropout": None, "summary_type": "first", "summary_use_proj": True,
            "summary_activation": "gelu", "summary_last_dropout": 0.1, "dtype": "float32",
            "tie_word_embeddings": True, **extra}


def save_hf_dir(out: Path, state: dict[str, torch.Tensor], config: dict) -> None:
    """config.json + model.safetensors (tensors made contiguous and unshared, as safetensors requires)."""
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def read_hf_config(directory: Path) -> dict:
    config = read_json(directory / "config.json", "model config")
    model_type = config.get("model_type")
    if model_type != "electra":
        raise UserError(f"{directory} holds a {model_type or 'model of unknown type'!s} model, not ELECTRA "
                        "(config.json model_type must be 'electra')")
    return config


def load_hf_weights(directory: Path) -> dict[str, torch.Tensor]:
    """model.safetensors (or a sharded index), else pytorch_model.bin read with weights_only=True."""
    try:
        if (directory / "model.safetensors").is_file():
            return load_file(str(directory / "model.safetensors"))
        index = directory / "model.safetensors.index.json"
        if index.is_file():
            files = sorted(set(read_json(index, "weights index")["weight_map"].values()))
            state = {}
            for f in files:
                state.update(load_file(str(directory / f)))
            return state
        if (directory / "pytorch_model.bin").is_file():
            return torch.load(directory / "pytorch_model.bin", map_location="cpu", weights_only=True)
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"the weights in {directory} cannot be read ({type(e).__name__}: {e}); "
                        "the file may be truncated or corrupt") from None
    raise UserError(f"no weights in {directory}: expected model.safetensors or pytorch_model.bin")
