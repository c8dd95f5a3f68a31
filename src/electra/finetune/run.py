"""`electra finetune`, `evaluate` and `predict`: one driver for all tasks (see electra.finetune.tasks).

A fine-tuned directory holds `electra.json` (kind "finetuned": task, labels, column settings,
encoder config), `model.safetensors`, the tokenizer, `metrics.jsonl` (one row per epoch), curves and
reports. It is rewritten only when the dev metric improves, file by file through atomic renames.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from tokenizers import Tokenizer
from tqdm import tqdm

from electra import hf
from electra.config import SIZES, ModelConfig, SpecialIds, get_size, read_json
from electra.data.tokenizer import check_vocab, is_lowercase, load_tokenizer, save_tokenizer, special_ids
from electra.errors import UserError
from electra.finetune.metrics import MAIN_METRIC, SELECTABLE, write_reports
from electra.finetune.model import HF_ARCHITECTURE, TASKS, FinetuneModel, layer_decay_scales
from electra.finetune.tasks import IGNORE, Task, collate, make_task
from electra.pretrained import ELECTRA_JSON, FORMAT_VERSION, WEIGHTS, load_pretrained, resolve, write_model_dir
from electra.train.distributed import World, full_model_state, join, leave, wrap
from electra.train.logs import MetricsLog, NullLog, plot_curves
from electra.train.loop import LoopSettings, train_loop
from electra.train.optim import adamw

PLOT_PANELS = [("training loss", ["loss"]), ("dev", ["dev_main"]), ("learning rate", ["lr"])]
DEFAULT_MAX_LEN = {"classification": 128, "regression": 128, "ner": 128, "qa": 384}


@dataclass
class Finetuned:
    """A fine-tuned model ready to use: network, task (labels, settings), tokenizer."""

    model: FinetuneModel
    task: Task
    tokenizer: Tokenizer
    special: SpecialIds
    max_seq_len: int
    directory: Path


@dataclass
class FinetuneSettings:
    epochs: int = 3
    batch_size: int = 32
    lr: float = 1e-4
    layer_decay: float = 0.8
    warmup: float = 0.1
    weight_decay: float = 0.0
    max_seq_len: int | None = None
    seed: int = 0
    dropout: float | None = None
    freeze_layers: int = 0
    head_only: bool = False
    lora: bool = False
    lora_rank: int = 8
    doc_stride: int = 128
    max_answer_len: int = 30
    precision: str = "fp32"
    strategy: str = "ddp"
    length_buckets: bool = True

    def check(self) -> None:
        problems = []
        for name in ("epochs", "batch_size", "lora_rank", "doc_stride", "max_answer_len"):
            if getattr(self, name) <= 0:
                problems.append(f"--{name.replace('_', '-')} must be positive (got {getattr(self, name)})")
        if not self.lr > 0:
            problems.append(f"--lr must be positive (got {self.lr})")
        if not 0 < self.layer_decay <= 1:
            problems.append(f"--layer-decay must be in (0, 1] (got {self.layer_decay}); 1 turns it off")
        if not 0 <= self.warmup < 1:
            problems.append(f"--warmup is a fraction of the steps in [0, 1) (got {self.warmup})")
        if self.freeze_layers < 0:
            problems.append(f"--freeze-layers must be >= 0 (got {self.freeze_layers})")
        if self.max_seq_len is not None and self.max_seq_len < 8:
            problems.append(f"--max-seq-len must be at least 8 (got {self.max_seq_len})")
        if self.dropout is not None and not 0 <= self.dropout < 1:
            problems.append(f"--dropout must be in [0, 1) (got {self.dropout})")
        if sum([self.head_only, self.lora, self.freeze_layers > 0]) > 1:
            problems.append("choose one of --head-only, --lora and --freeze-layers")
        if self.strategy == "fsdp" and (self.lora or self.head_only or self.freeze_layers):
            problems.append("--strategy fsdp trains every parameter; use the default ddp with --lora, "
                            "--head-only or --freeze-layers")
        if problems:
            raise UserError("; ".join(problems))


# --- loading -----------------------------------------------------------------------------------

def load_encoder_source(src: str, tokenizer: Path | None) -> tuple[ModelConfig, dict | None, Tokenizer, str]:
    """--model of `finetune` -> (encoder config, encoder weights or None for a random start, tokenizer, what)."""
    if src in SIZES:
        if tokenizer is None:
            raise UserError(f"--model {src} starts from random weights and needs --tokenizer DIR "
                            "(e.g. the tokenizer of the pretrained model you compare against)")
        tok = load_tokenizer(tokenizer)
        cfg = get_size(src).with_vocab(tok.get_vocab_size(), special_ids(tok).pad).discriminator
        return cfg, None, tok, f"a randomly initialised {src} encoder"
    directory = resolve(src)
    meta = read_json(directory / ELECTRA_JSON, "model config") if (directory / ELECTRA_JSON).is_file() else {}
    if meta.get("kind") == "finetuned" or _hf_task(directory) is not None:
        ft = load_finetuned(directory)  # fine-tuning further from an earlier task
        state = {k: v for k, v in ft.model.state_dict().items() if k.startswith("encoder.")}
        return ft.model.config, state, load_tokenizer(tokenizer) if tokenizer else ft.tokenizer, str(directory)
    pre = load_pretrained(directory)
    if pre.discriminator is None:
        raise UserError(f"{directory} holds only a generator; fine-tuning starts from the discriminator "
                        "(pass the run directory or the export's discriminator/)")
    state = {k: v for k, v in pre.discriminator.state_dict().items() if k.startswith("encoder.")}
    tok = load_tokenizer(tokenizer) if tokenizer else pre.tokenizer
    return pre.discriminator.config, state, tok, str(pre.directory)


def _hf_task(directory: Path) -> str | None:
    """The task of a Hugging Face fine-tuned ELECTRA directory, or None."""
    if not (directory / "config.json").is_file():
        return None
    config = read_json(directory / "config.json", "model config")
    arch = (config.get("architectures") or [""])[0]
    if arch == "ElectraForSequenceClassification":
        return "regression" if config.get("problem_type") == "regression" or config.get("num_labels") == 1 \
            else "classification"
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
        try:
            state = load_file(str(directory / WEIGHTS))
        except (SafetensorError, OSError, ValueError) as e:
            raise UserError(f"the weights {directory / WEIGHTS} cannot be read ({e}); the file may be "
                            "truncated or corrupt; fine-tune again") from None
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


# --- running the model --------------------------------------------------------------------------

class CompiledForInference(torch.nn.Module):
    """The network under torch.compile with its weights frozen into the graph (inductor's `freezing`):
    on CPU the linear layers then run oneDNN kernels on pre-packed weights with bias and GELU fused,
    and the LayerNorms fuse with their residual adds (+10-20% for small on CPU-2). Batch shapes
    vary, so shapes are dynamic: one compilation (15-40 s for small on 2 cores) serves all batches
    (but a batch of a single example, which dynamo specialises, compiles once more).
    Only for weights that no longer change: the frozen graph keeps the values it was compiled with."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.compiled = torch.compile(model.eval(), dynamic=True)

    def forward(self, *args):
        import torch._inductor.config as inductor

        # set per call, not process-wide, so training graphs compiled elsewhere keep live weights;
        # torch.compile(options=...) does not reach this setting
        with inductor.patch(freezing=True):
            return self.compiled(*args)


@torch.no_grad()
def model_outputs(model: torch.nn.Module, features, batch_size: int, device: torch.device, pad_id: int,
                  progress: bool = False) -> list[np.ndarray]:
    """Outputs per feature (logits without padding), computed in length-sorted batches."""
    model.eval()
    order = sorted(range(len(features)), key=lambda i: len(features[i].ids))
    outputs: list[np.ndarray | None] = [None] * len(features)
    for start in tqdm(range(0, len(order), batch_size), desc="predict", unit="batch", disable=not progress,
                      file=sys.stderr, leave=False):
        chunk = order[start:start + batch_size]
        b = collate([dataclasses.replace(features[i], label=None) for i in chunk], pad_id).to(device)
        logits = model(b.input_ids, b.attention_mask, b.token_type_ids).float().cpu().numpy()
        for row, i in zip(logits, chunk):
            outputs[i] = row[:len(features[i].ids)] if row.ndim == 2 else row
    return outputs


def predict_examples(ft: Finetuned, examples, device: torch.device, batch_size: int = 64, n_best: int = 1,
                     progress: bool = False, compile_: bool = False) -> list:
    features, truncated = ft.task.encode(examples, ft.tokenizer, ft.special, ft.max_seq_len)
    if truncated:
        print(f"electra: {truncated} of {len(examples)} inputs were longer than --max-seq-len {ft.max_seq_len} "
              "and were truncated", file=sys.stderr)
    model = CompiledForInference(ft.model) if compile_ else ft.model
    outputs = model_outputs(model, features, batch_size, device, ft.special.pad, progress)
    if ft.task.name == "qa":
        return ft.task.decode(examples, features, outputs, n_best=n_best)
    return ft.task.decode(examples, features, outputs)


def epoch_order(lengths: np.ndarray, batch_size: int, seed: int, epoch: int, buckets: bool,
                window_batches: int = 8) -> np.ndarray:
    """The order of the training examples in one epoch, a function of (seed, epoch) alone so a
    resumed run sees the same batches: a random permutation; with length buckets, each window of
    `window_batches` batches of it is sorted by length and cut into batches, and the full batches are
    shuffled, so a batch pads to similar lengths (less wasted compute) while the data order stays
    random. A last, partial batch of random examples stays last (distributed runs drop it, so it
    must not be the longest). Windows of 8 batches keep SST-2's dev accuracy of random batches over
    three seeds; windows of 64 (3.7% padding instead of 22%) cost about half a point: batches of
    nearly equal length are less varied."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    if not buckets:
        return order
    n_full = len(order) // batch_size
    order, tail = order[:n_full * batch_size], order[n_full * batch_size:]
    window = window_batches * batch_size
    order = np.concatenate([chunk[np.argsort(lengths[chunk], kind="stable")]
                            for chunk in np.split(order, range(window, len(order), window))])
    batches = order.reshape(n_full, batch_size)[rng.permutation(n_full)]
    return np.concatenate([batches.reshape(-1), tail])


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# --- fine-tuning --------------------------------------------------------------------------------

class FinetuneObjective:
    def __init__(self, model: torch.nn.Module, task: Task):
        self.model = model
        self.task = task

    def counts(self, batch) -> torch.Tensor:
        """Examples, or labelled tokens for NER: the mean loss is over these."""
        if self.task.name == "ner":
            return (batch.labels != IGNORE).sum().float().reshape(1)
        return torch.full((1,), float(len(batch.labels)), device=batch.labels.device)

    def loss(self, batch, step: int, totals: torch.Tensor):
        logits = self.model(batch.input_ids, batch.attention_mask, batch.token_type_ids)
        loss = self.task.loss(logits, batch.labels) * (self.counts(batch)[0] / totals[0].clamp(min=1))
        return loss, {"loss": loss.detach()}

    def tokens(self, batch) -> torch.Tensor:
        return batch.attention_mask.sum()


def _trainable(model: FinetuneModel, s: FinetuneSettings) -> torch.nn.Module:
    """Freeze what the flags say; wrap in LoRA adapters (peft) when asked. Returns the model to train."""
    if s.head_only or s.freeze_layers:
        n = model.config.num_hidden_layers if s.head_only else s.freeze_layers
        if n > model.config.num_hidden_layers:
            raise UserError(f"--freeze-layers {n} exceeds the model's {model.config.num_hidden_layers} layers "
                            "(use --head-only to freeze the whole encoder)")
        frozen = [model.encoder.embeddings, *model.encoder.layers[:n]]
        if model.encoder.project is not None:
            frozen.append(model.encoder.project)
        for module in frozen:
            module.requires_grad_(False)
        return model
    if s.lora:
        try:
            from peft import LoraConfig, get_peft_model
        except ImportError:
            raise UserError("--lora needs the peft library: pip install 'electra[peft]' (or pip install peft)") from None
        config = LoraConfig(r=s.lora_rank, lora_alpha=2 * s.lora_rank, lora_dropout=0.1,
                            target_modules=["qkv", "attn.out", "ffn_in", "ffn_out"], modules_to_save=["head"])
        return get_peft_model(model, config)
    return model


def _state_to_save(trained: torch.nn.Module) -> dict:
    """The weights to save: LoRA adapters merged into a copy, so the result loads anywhere; whole
    tensors under FSDP (gathering them is collective: every process calls this)."""
    if isinstance(trained, FinetuneModel):
        return full_model_state(trained)
    return copy.deepcopy(trained).merge_and_unload().state_dict()


def _write_atomic(out: Path, state: dict, meta: dict, tok: Tokenizer) -> None:
    """Write weights, electra.json and tokenizer into a temporary directory, then rename each file
    into OUT: a crash leaves either the previous best model or the new one, never half a file."""
    tmp = out / f".best.tmp-{os.getpid()}"
    write_model_dir(tmp, state, meta, None, tokenizer=tok)
    for name in sorted(os.listdir(tmp), key=lambda n: n == ELECTRA_JSON):  # the config last
        os.replace(tmp / name, out / name)
    tmp.rmdir()


def finetune(task_name: str, model_src: str, train_path: Path, dev_path: Path, out: Path, settings: FinetuneSettings,
             columns: dict, tokenizer: Path | None = None, overwrite: bool = False, progress: bool = True,
             metric: str | None = None) -> dict:
    """Fine-tune and keep the best dev epoch in OUT; returns its metrics. Under torchrun every process
    runs this and takes an equal slice of each batch (the last partial batch of an epoch is dropped)."""
    world = join()
    try:
        return _finetune(world, task_name, model_src, train_path, dev_path, out, settings, columns, tokenizer,
                         overwrite, progress, metric)
    finally:
        leave(world)


def _finetune(world: World, task_name: str, model_src: str, train_path: Path, dev_path: Path, out: Path,
              s: FinetuneSettings, columns: dict, tokenizer: Path | None, overwrite: bool, progress: bool,
              metric: str | None) -> dict:
    say = (lambda msg: print(msg, file=sys.stderr)) if world.is_main else (lambda msg: None)
    s.check()
    if task_name not in TASKS:
        raise UserError(f"unknown task {task_name!r}; choose {', '.join(TASKS)}")
    if metric is not None and metric not in SELECTABLE[task_name]:
        raise UserError(f"--metric {metric} is not one of {task_name}'s: {', '.join(SELECTABLE[task_name])}")
    if s.batch_size % world.size:
        raise UserError(f"--batch-size {s.batch_size} is not divisible by the {world.size} processes")

    def claim_out():
        if out.exists() and (out / ELECTRA_JSON).exists() and not overwrite:
            raise UserError(f"{out} already holds a fine-tuned model; choose another --out or pass --overwrite")
        out.mkdir(parents=True, exist_ok=True)

    world.from_main(claim_out)
    cfg, encoder_state, tok, source = load_encoder_source(model_src, tokenizer)
    if s.dropout is not None:
        cfg = dataclasses.replace(cfg, hidden_dropout_prob=s.dropout, attention_probs_dropout_prob=s.dropout)
    special = special_ids(tok)
    check_vocab(tok, cfg.vocab_size, "--tokenizer" if tokenizer else source)
    max_len = s.max_seq_len or min(DEFAULT_MAX_LEN[task_name], cfg.max_position_embeddings)
    if max_len > cfg.max_position_embeddings:
        raise UserError(f"--max-seq-len {max_len} exceeds the model's {cfg.max_position_embeddings} positions")

    task = make_task(task_name, settings={"doc_stride": s.doc_stride, "max_answer_len": s.max_answer_len}
                     if task_name == "qa" else {})
    train_examples = task.read(train_path, columns, training=True)
    dev_examples = task.read(dev_path, columns, training=False)
    train_features, truncated = task.encode(train_examples, tok, special, max_len)
    dev_features, dev_truncated = task.encode(dev_examples, tok, special, max_len)
    for what, n, total in (("training", truncated, len(train_examples)), ("dev", dev_truncated, len(dev_examples))):
        if n:
            say(f"electra: {n} of {total} {what} examples were longer than --max-seq-len {max_len} "
                "and were truncated")
    main = metric or MAIN_METRIC[task_name]

    torch.manual_seed(s.seed)
    model = FinetuneModel(cfg, task_name, task.num_labels)
    if encoder_state is not None:
        missing, unexpected = model.load_state_dict(encoder_state, strict=False)
        if unexpected or any(k.startswith("encoder.") for k in missing):
            raise UserError(f"the encoder weights of {source} do not fit its configuration")
    device = world.device() if world.distributed else pick_device()
    model.to(device)
    trained = _trainable(model, s)
    forward = wrap(trained, world, s.strategy, list(model.encoder.layers), device)
    n_train = sum(p.numel() for p in trained.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in model.parameters())
    where = f"{world.size} process{'es' if world.size > 1 else ''} ({device.type}, {s.strategy})" if world.distributed else str(device)
    say(f"electra: fine-tuning {source} for {task_name} on {where}: {len(train_examples):,} training and "
        f"{len(dev_examples):,} dev examples; trainable parameters {n_train:,} of {n_all:,} "
        f"({100 * n_train / n_all:.2f}%)")

    scales = layer_decay_scales(trained, cfg.num_hidden_layers, s.layer_decay)
    optimizer = adamw(trained, s.lr, s.weight_decay, lr_scale=scales)
    steps_per_epoch = (max(1, len(train_features) // s.batch_size) if world.distributed
                       else math.ceil(len(train_features) / s.batch_size))
    per_process = s.batch_size // world.size
    max_steps = s.epochs * steps_per_epoch
    rng_cache: dict[int, np.ndarray] = {}
    lengths = np.array([len(f.ids) for f in train_features])

    def micro_batches(step: int):
        epoch = step // steps_per_epoch
        if epoch not in rng_cache:
            rng_cache.clear()
            rng_cache[epoch] = epoch_order(lengths, s.batch_size, s.seed, epoch, s.length_buckets)
        i = (step % steps_per_epoch) * s.batch_size
        chunk = rng_cache[epoch][i:i + s.batch_size]
        if world.distributed:
            chunk = chunk[world.rank * per_process:(world.rank + 1) * per_process]
        yield collate([train_features[j] for j in chunk], special.pad, task.label_dtype)

    meta = {"format_version": FORMAT_VERSION, "kind": "finetuned", "task": task_name, "source": source,
            "model": cfg.to_dict(), "labels": task.labels, "settings": task.settings, "max_seq_len": max_len,
            "finetune": dataclasses.asdict(s), "metric": main}
    best: dict = {"value": -math.inf}

    def evaluate(step: int) -> dict:
        outputs = model_outputs(trained, dev_features, 2 * s.batch_size, device, special.pad)
        preds = task.decode(dev_examples, dev_features, outputs)
        scores = task.score(dev_examples, preds)
        epoch = round(step / steps_per_epoch, 3)
        improved = scores[main] > best["value"]
        if improved:
            best.update(value=scores[main], epoch=epoch, scores=scores, preds=preds)
            state = _state_to_save(trained)
            if world.is_main:
                _write_atomic(out, state, {**meta, "best": {"epoch": epoch, **scores}}, tok)
        if world.is_main:
            line = ", ".join(f"{k} {v:.4f}" for k, v in scores.items() if isinstance(v, float))
            tqdm.write(f"epoch {epoch:g}: dev {line}{'  (best so far, saved)' if improved else ''}", file=sys.stderr)
        return {"epoch": epoch, "dev_main": scores[main], **{f"dev_{k}": v for k, v in scores.items()}}

    log = MetricsLog(out, tensorboard=False) if world.is_main else NullLog()
    loop = LoopSettings(max_steps=max_steps, peak_lr=s.lr, warmup_steps=round(s.warmup * max_steps),
                        clip_grad_norm=1.0, precision=s.precision, log_every=max(1, min(50, steps_per_epoch)),
                        save_every=max_steps, eval_every=steps_per_epoch)
    started = time.perf_counter()
    try:
        result = train_loop(FinetuneObjective(forward, task), optimizer, micro_batches, loop, device=device,
                            start_step=0, log=log, save=lambda step: out, evaluate=evaluate, progress=progress,
                            desc=f"finetune {task_name}", world=world)
    finally:
        log.close()
        if world.is_main:
            plot_curves(out, PLOT_PANELS)
    if "scores" not in best:  # stopped before the first evaluation
        evaluate(result.step)
    if not world.is_main:
        return {}
    reports = write_reports(task_name, out, task.gold(dev_examples), best["preds"], task.labels)
    summary = {"best_epoch": best["epoch"], **best["scores"], "minutes": round((time.perf_counter() - started) / 60, 2)}
    say(f"electra: best dev {main} {best['value']:.4f} at epoch {best['epoch']:g}; model in {out}"
        + (f"; reports: {', '.join(p.name for p in reports)}" if reports else ""))
    return summary


def write_jsonl_atomic(path: Path, rows) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def is_finetuned(src: str) -> bool:
    path = Path(src)
    if not (path / ELECTRA_JSON).is_file():
        return False
    try:
        return read_json(path / ELECTRA_JSON, "model config").get("kind") == "finetuned"
    except UserError:
        return False


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
    save_tokenizer(ft.tokenizer, tmp, lowercase=is_lowercase(ft.tokenizer), max_length=ft.max_seq_len)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out
