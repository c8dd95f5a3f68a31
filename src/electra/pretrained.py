"""Loading pretrained networks from what --model names: our model/run directories (electra.checkpoint
owns their format; a run gives its newest intact checkpoint), Hugging Face ELECTRA directories, hub
ids; and exporting them in Hugging Face format.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer

from electra import hf
from electra.checkpoint import ELECTRA_JSON, newest_checkpoint, read_weights, step_dirs
from electra.config import ElectraConfig, ModelConfig, ObjectiveConfig, SpecialIds, read_json
from electra.data.tokenizer import check_vocab, is_lowercase, load_tokenizer, save_tokenizer, special_ids
from electra.errors import UserError
from electra.model.electra import ElectraForPretraining, MaskedLMForPretraining, pretraining_model
from electra.model.heads import Discriminator, Generator


@dataclass
class Pretrained:
    """What a --model source gave: either network (or both), the tokenizer and where it came from."""

    discriminator: Discriminator | None
    generator: Generator | None
    tokenizer: Tokenizer
    special: SpecialIds
    directory: Path
    format: str  # "electra" or "huggingface"
    has_disc_head: bool = True
    meta: dict | None = None  # electra.json of our directories

    def require(self, network: str) -> torch.nn.Module:
        net = getattr(self, network)
        if network == "discriminator" and net is not None and not self.has_disc_head:
            raise UserError(f"{self.directory} is an ELECTRA encoder without the discriminator's replaced-token "
                            "head (an ElectraModel); fine-tune it, or embed with it; detection needs "
                            "ElectraForPreTraining weights")
        if net is None:
            have = [n for n in ("discriminator", "generator") if getattr(self, n) is not None]
            raise UserError(f"{self.directory} has no {network} (it has: {', '.join(have) or 'an encoder only'}); "
                            f"pass a model that includes the {network}")
        return net


def shares_embeddings(objective: ObjectiveConfig) -> bool:
    """Whether the generator's embeddings are the discriminator's (es), so stored once, under the discriminator."""
    return objective.kind == "electra" and objective.embedding_sharing == "es"


def pretraining_state(state: dict[str, torch.Tensor], objective: ObjectiveConfig | None = None) -> dict[str, torch.Tensor]:
    """The state to save (shared embeddings once)."""
    if not shares_embeddings(objective or ObjectiveConfig()):
        return state
    return {k: v for k, v in state.items() if not k.startswith("generator.encoder.embeddings.")}


def load_pretraining_state(model: ElectraForPretraining | MaskedLMForPretraining, state: dict[str, torch.Tensor],
                           where: Path) -> None:
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:
        raise UserError(f"the weights in {where} do not fit its configuration ({str(e).splitlines()[-1].strip()})") from None
    if shares_embeddings(model.objective):
        missing = [k for k in missing if not k.startswith("generator.encoder.embeddings.")]
    if missing or unexpected:
        raise UserError(f"the weights in {where} do not match its {model.objective.kind} pretraining model "
                        f"({len(missing)} missing, {len(unexpected)} unexpected tensors)")


def resolve(src: str) -> Path:
    """A --model argument -> a local directory (our model dir, a checkpoint, or an HF directory)."""
    path = Path(src).expanduser()
    if path.is_dir():
        if (path / ELECTRA_JSON).is_file() or (path / "config.json").is_file():
            return path
        if step_dirs(path):
            ckpt = newest_checkpoint(path)
            if ckpt is None:
                raise UserError(f"no intact checkpoint in {path}: every step-* directory is incomplete or corrupt")
            return ckpt
        if (path / "discriminator" / "config.json").is_file():  # an `electra export` output
            return path / "discriminator"
        if (path / "generator" / "config.json").is_file():  # the export of an MLM run: a masked LM only
            return path / "generator"
        raise UserError(f"{path} is not a model directory: it has no electra.json, config.json "
                        "or step-* checkpoints")
    if path.exists():
        raise UserError(f"--model must be a directory, but {path} is a file")
    if re.fullmatch(r"[\w.-]+/[\w.-]+", src) and not src.startswith("."):
        return _from_hub(src)
    raise UserError(f"model directory not found: {src}")


def _from_hub(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise UserError(f"{repo_id} is not a local directory, and fetching it from the Hugging Face hub needs "
                        "`pip install huggingface_hub`; or pass a local directory") from None
    try:
        return Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.txt", "*.safetensors", "*.bin"]))
    except Exception as e:
        raise UserError(f"{repo_id} is not a local directory and could not be fetched from the Hugging Face hub "
                        f"({type(e).__name__}); when offline, download it elsewhere and pass the local directory") from None


def load_pretrained(src: str | Path) -> Pretrained:
    """The networks of a --model source; an `electra export` directory gives both of its networks."""
    directory = resolve(str(src))
    pre = _load_ours(directory) if (directory / ELECTRA_JSON).is_file() else _load_hf(directory)
    export_generator = Path(src) / "generator"
    if pre.generator is None and directory != Path(src) and export_generator.is_dir():
        pre.generator = _load_hf(export_generator).generator
    return pre


def _load_ours(directory: Path) -> Pretrained:
    meta = read_json(directory / ELECTRA_JSON, "model config")
    if meta.get("kind") == "finetuned":
        raise UserError(f"{directory} is a model fine-tuned for {meta.get('task', 'a task')}, not a pretrained "
                        "ELECTRA; use it with `electra predict` or `electra evaluate`, and give `detect`, "
                        "`fill-mask` or `export` of networks a pretraining run or its export")
    try:
        cfg = ElectraConfig.from_dict(meta["model"])
    except (KeyError, TypeError) as e:
        raise UserError(f"{directory / ELECTRA_JSON} lacks a valid 'model' section ({e})") from None
    tok = load_tokenizer(directory)
    check_vocab(tok, cfg.discriminator.vocab_size, str(directory))
    special = special_ids(tok, f"the tokenizer in {directory}")
    try:
        objective = ObjectiveConfig(**meta.get("objective", {}))
    except TypeError as e:
        raise UserError(f"{directory / ELECTRA_JSON} has an objective section this version does not know ({e})") from None
    model = pretraining_model(cfg, special, objective)
    load_pretraining_state(model, read_weights(directory), directory)
    disc = model.plain_discriminator() if objective.kind == "electra" else None  # gdes folded into plain embeddings
    return Pretrained(disc, model.generator, tok, special, directory, "electra", meta=meta)


def _load_hf(directory: Path) -> Pretrained:
    config = hf.read_hf_config(directory)
    cfg = ModelConfig.from_dict(config)
    tok = load_tokenizer(directory)
    check_vocab(tok, cfg.vocab_size, str(directory))
    special = special_ids(tok, f"the tokenizer in {directory}")
    weights = hf.normalize_hf_keys(hf.load_hf_weights(directory))
    disc = gen = None
    has_head = True
    if "generator_predictions.dense.weight" in weights:
        gen = Generator(cfg)
        _load_net(gen, hf.from_hf(weights, cfg, hf.HEADS["generator"]), directory)
    else:
        has_head = "discriminator_predictions.dense.weight" in weights
        disc = Discriminator(cfg)
        _load_net(disc, hf.from_hf(weights, cfg, hf.HEADS["discriminator"]), directory,
                  optional_prefix=None if has_head else "head.")
    return Pretrained(disc, gen, tok, special, directory, "huggingface", has_disc_head=has_head)


def _load_net(net: torch.nn.Module, state: dict[str, torch.Tensor], directory: Path,
              optional_prefix: str | None = None) -> None:
    try:
        missing, _ = net.load_state_dict(state, strict=False)
    except RuntimeError as e:
        raise UserError(f"the weights in {directory} do not fit its config.json "
                        f"({str(e).splitlines()[-1].strip()})") from None
    if optional_prefix:
        missing = [k for k in missing if not k.startswith(optional_prefix)]
    if missing:
        raise UserError(f"the weights in {directory} lack {len(missing)} tensors of an ELECTRA encoder "
                        f"(first: {missing[0]}); is it an ELECTRA checkpoint?")


def export_hf(model: Pretrained, out: Path, overwrite: bool = False) -> list[Path]:
    """Write OUT/discriminator/ and/or OUT/generator/ in Hugging Face format, with tokenizer files."""
    written = []
    for network in ("discriminator", "generator"):
        net = getattr(model, network)
        if net is None or (network == "discriminator" and not model.has_disc_head):
            continue
        target = out / network
        if target.exists() and any(target.iterdir()) and not overwrite:
            raise UserError(f"{target} already exists and is not empty; choose another --out or pass --overwrite")
        tmp = out / f".{network}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        state = hf.to_hf(net.state_dict(), net.config, hf.HEADS[network])
        hf.save_hf_dir(tmp, state, hf.hf_config(net.config, hf.ARCHITECTURE[network]))
        save_tokenizer(model.tokenizer, tmp, lowercase=is_lowercase(model.tokenizer),
                       max_length=net.config.max_position_embeddings)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)  # atomic: a reader sees the old export or the whole new one
        written.append(target)
    if not written:
        raise UserError(f"{model.directory} has neither a discriminator nor a generator to export")
    return written
