"""Fine-tuned model directories, both ways: loading one (ours or a Hugging Face ElectraFor* task
directory) and exporting one in Hugging Face format; and the encoder a fine-tuning run starts from.

Our fine-tuned directory holds `electra.json` (kind "finetuned": task, labels, column settings, encoder
config, the fine-tuning settings), `model.safetensors`, the tokenizer, `metrics.jsonl` (one row per
epoch), curves and reports.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer

from electra import hf
from electra.checkpoint import ELECTRA_JSON, read_weights
from electra.config import SIZES, ModelConfig, SpecialIds, model_from_spec, read_json, recipe_path
from electra.data.tokenizer import check_vocab, is_lowercase, load_tokenizer, save_tokenizer, special_ids
from electra.errors import UserError
from electra.finetune.model import HF_ARCHITECTURE, FinetuneModel
from electra.finetune.tasks import Task, make_task
from electra.pretrained import load_pretrained, resolve

PROMPT_JSON = "prompt.json"
DEFAULT_MAX_LEN = {"prompt": 128, "classification": 128, "regression": 128, "ner": 128, "qa": 384}


@dataclass
class Finetuned:
    """A fine-tuned model ready to use: network, task (labels, settings), tokenizer."""

    model: FinetuneModel
    task: Task
    tokenizer: Tokenizer
    special: SpecialIds
    max_seq_len: int
    directory: Path


def load_encoder_source(src: str, tokenizer: Path | None,
                        with_head: bool = False) -> tuple[ModelConfig, dict | None, Tokenizer, str]:
    """--model of `finetune` -> (encoder config, encoder weights or None for a random start, tokenizer, what).
    with_head: prompt-based fine-tuning also keeps the discriminator's replaced-token head (head.*)."""
    recipe = recipe_path(src) and not Path(src).exists()  # (a run directory may carry a recipe's name)
    if src in SIZES or recipe or (src.endswith((".yaml", ".yml")) and Path(src).is_file()):  # untrained
        if tokenizer is None:
            raise UserError(f"--model {src} starts from random weights and needs --tokenizer DIR "
                            "(e.g. the tokenizer of the pretrained model you compare against)")
        tok = load_tokenizer(tokenizer)
        cfg = model_from_spec(src)[0].with_vocab(tok.get_vocab_size(), special_ids(tok).pad).discriminator
        return cfg, None, tok, f"a randomly initialised {src} encoder"
    directory = resolve(src)
    meta = read_json(directory / ELECTRA_JSON, "model config") if (directory / ELECTRA_JSON).is_file() else {}
    if meta.get("kind") == "finetuned" or _hf_task(directory) is not None:
        ft = load_finetuned(directory)  # fine-tuning further from an earlier task
        keep = ("encoder.", "head.") if with_head and ft.task.name == "prompt" else ("encoder.",)
        state = {k: v for k, v in ft.model.state_dict().items() if k.startswith(keep)}
        return ft.model.config, state, load_tokenizer(tokenizer) if tokenizer else ft.tokenizer, str(directory)
    pre = load_pretrained(directory)
    # an ELECTRA model fine-tunes its discriminator; a masked LM (an mlm run, an ElectraForMaskedLM) its encoder
    net = pre.require("discriminator") if with_head else (
        pre.discriminator if pre.discriminator is not None else pre.generator)
    state = {k: v for k, v in net.state_dict().items() if k.startswith(("encoder.", "head.") if with_head else "encoder.")}
    tok = load_tokenizer(tokenizer) if tokenizer else pre.tokenizer
    what = str(pre.directory) if pre.discriminator is not None else f"the masked LM's encoder in {pre.directory}"
    return net.config, state, tok, what


def _hf_task(directory: Path) -> str | None:
    """The task of a Hugging Face fine-tuned ELECTRA directory, or None."""
    if not (directory / "config.json").is_file():
        return None
    config = read_json(directory / "config.json", "model config")
    arch = (config.get("architectures") or [""])[0]
    if arch == "ElectraForSequenceClassification":
        return "regression" if config.get("problem_type") == "regression" or config.get("num_labels") == 1 \
            else "classification"
    if arch == "ElectraForPreTraining" and (directory / PROMPT_JSON).is_file():
        return "prompt"  # exported by prompt-based fine-tuning: the discriminator and its template
    return {"ElectraForTokenClassification": "ner", "ElectraForQuestionAnswering": "qa"}.get(arch)


def load_finetuned(src: str | Path, task: str | None = None) -> Finetuned:
    """Our fine-tuned directory or a Hugging Face ElectraFor{SequenceClassification,TokenClassification,
    QuestionAnswering} directory; `task`, when given, must match."""
    directory = resolve(str(src))
    tok = load_tokenizer(directory)
    special = special_ids(tok, f"the tokenizer in {directory}")
    if (directory / ELECTRA_JSON).is_file():
        meta = read_json(directory / ELECTRA_JSON, "model config")
        if meta.get("kind") != "finetuned":
            raise UserError(f"{directory} is a pretrained model, not a fine-tuned one; "
                            "fine-tune it first with `electra finetune --model ...`")
        cfg = ModelConfig.from_dict(meta["model"])
        found, labels, settings, max_len = meta["task"], meta.get("labels"), meta.get("settings", {}), meta["max_seq_len"]
        state = read_weights(directory, "the fine-tuned model")
    else:
        found = _hf_task(directory)
        if found is None:
            raise UserError(f"{directory} is not a fine-tuned model: its config.json names no "
                            "ElectraForSequenceClassification/TokenClassification/QuestionAnswering")
        config = hf.read_hf_config(directory)
        cfg = ModelConfig.from_dict(config)
        id2label = config.get("id2label") or {}
        labels = [id2label[k] for k in sorted(id2label, key=int)] if found in ("classification", "ner") else None
        settings, max_len = {}, min(cfg.max_position_embeddings, DEFAULT_MAX_LEN[found])
        if found == "prompt":
            settings = read_json(directory / PROMPT_JSON, "prompt settings")
        state = hf.from_hf(hf.load_hf_weights(directory), cfg, hf.HEADS[found])
    if task is not None and task != found:
        raise UserError(f"{directory} was fine-tuned for {found}, not {task}; use a {task} model or --task {found}")
    check_vocab(tok, cfg.vocab_size, str(directory))
    task_obj = make_task(found, labels, settings)
    model = FinetuneModel(cfg, found, task_obj.num_labels)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # a tensor of the wrong shape
        raise UserError(f"the weights in {directory} do not fit its configuration "
                        f"({str(e).splitlines()[-1].strip()})") from None
    if missing or unexpected:
        raise UserError(f"the weights in {directory} do not match its configuration "
                        f"({len(missing)} missing, {len(unexpected)} unexpected tensors)")
    return Finetuned(model, task_obj, tok, special, max_len, directory)


def is_finetuned(src: str) -> bool:
    path = Path(src)
    if not (path / ELECTRA_JSON).is_file():
        return False
    try:
        return read_json(path / ELECTRA_JSON, "model config").get("kind") == "finetuned"
    except UserError:
        return False


def is_finetuned_dir(directory: Path) -> bool:
    """Ours (electra.json of kind "finetuned") or a Hugging Face ElectraFor{SequenceClassification,...} directory."""
    return is_finetuned(str(directory)) or _hf_task(Path(directory)) is not None


def export_finetuned(src: str, out: Path, overwrite: bool = False) -> Path:
    """A Hugging Face ElectraFor{SequenceClassification,TokenClassification,QuestionAnswering} directory."""
    ft = load_finetuned(src)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UserError(f"{out} already exists and is not empty; choose another --out or pass --overwrite")
    task = ft.task.name
    extra: dict = {}
    if task == "regression":
        extra = {"num_labels": 1, "problem_type": "regression", "id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0}}
    elif task in ("classification", "ner"):
        extra = {"id2label": {str(i): lab for i, lab in enumerate(ft.task.labels)},
                 "label2id": {lab: i for i, lab in enumerate(ft.task.labels)}}
        if task == "classification":
            extra["problem_type"] = "single_label_classification"
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    state = hf.to_hf(ft.model.state_dict(), ft.model.config, hf.HEADS[task])
    hf.save_hf_dir(tmp, state, hf.hf_config(ft.model.config, HF_ARCHITECTURE[task], **extra))
    if task == "prompt":  # an ElectraForPreTraining, plus what turns its scores into labels
        (tmp / PROMPT_JSON).write_text(json.dumps(ft.task.prompt.settings(), ensure_ascii=False, indent=2) + "\n")
    save_tokenizer(ft.tokenizer, tmp, lowercase=is_lowercase(ft.tokenizer), max_length=ft.max_seq_len)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out
