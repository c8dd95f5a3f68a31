"""`electra finetune`: one driver for every task (the task objects of electra.finetune.tasks differ).

The dev set is scored after each epoch; OUT holds the best epoch's model, rewritten only when the dev
metric improves, file by file through atomic renames.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer
from tqdm import tqdm

from electra.checkpoint import ELECTRA_JSON, FORMAT_VERSION, write_model_dir
from electra.config import FinetuneConfig, ModelConfig, finetune_lr
from electra.data.tokenizer import check_vocab, special_ids
from electra.errors import UserError
from electra.finetune.adversarial import EmbeddingPerturbation, adversarial_loss
from electra.finetune.load import DEFAULT_MAX_LEN, load_encoder_source
from electra.finetune.metrics import MAIN_METRIC, SELECTABLE, write_reports
from electra.finetune.model import TASKS, FinetuneModel, layer_decay_scales
from electra.finetune.predict import model_outputs
from electra.finetune.tasks import IGNORE, Task, collate, make_task
from electra.runtime import check_precision, pick_device
from electra.train.distributed import World, full_model_state, joined
from electra.train.logs import training_log
from electra.train.loop import LoopSettings, train_loop
from electra.train.optim import adamw
from electra.train.parallelize import parallelize


def plot_panels(metric: str) -> list[tuple[str, list[str]]]:
    return [("training loss", ["loss"]), (f"dev {metric}", [f"dev_{metric}"]), ("learning rate", ["lr"])]


class FinetuneObjective:
    """The task's loss; with `adversarial` settings, trained on perturbed word embeddings as well."""

    def __init__(self, model: torch.nn.Module, task: Task, settings: FinetuneConfig | None = None):
        self.model = model
        self.task = task
        self.settings = settings
        self.perturb = EmbeddingPerturbation(model) if settings is not None and settings.adversarial else None

    def counts(self, batch, step: int = 0) -> torch.Tensor:
        """Examples, or labelled pieces (NER, prompts): the mean loss is over these."""
        if self.task.token_labels:
            return (batch.labels != IGNORE).sum().float().reshape(1)
        return torch.full((1,), float(len(batch.labels)), device=batch.labels.device)

    def loss(self, batch, step: int, totals: torch.Tensor):
        def task_loss() -> torch.Tensor:
            logits = self.model(batch.input_ids, batch.attention_mask, batch.token_type_ids)
            return self.task.loss(logits, batch.labels) * (self.counts(batch)[0] / totals[0].clamp(min=1))

        if self.perturb is not None:
            return adversarial_loss(task_loss, self.perturb, batch.input_ids, batch.attention_mask, self.settings)
        loss = task_loss()
        return loss, {"loss": loss.detach()}

    def tokens(self, batch) -> torch.Tensor:
        return batch.attention_mask.sum()


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


def trainable(model: FinetuneModel, c: FinetuneConfig) -> torch.nn.Module:
    """Freeze what the settings say; wrap in LoRA adapters (peft) when asked. Returns the model to train."""
    if c.head_only or c.freeze_layers:
        n = model.config.num_hidden_layers if c.head_only else c.freeze_layers
        if n > model.config.num_hidden_layers:
            raise UserError(f"--freeze-layers {n} exceeds the model's {model.config.num_hidden_layers} layers "
                            "(use --head-only to freeze the whole encoder)")
        frozen = [model.encoder.embeddings, *model.encoder.layers[:n]]
        if model.encoder.project is not None:
            frozen.append(model.encoder.project)
        for module in frozen:
            module.requires_grad_(False)
        return model
    if c.lora:
        try:
            from peft import LoraConfig, get_peft_model
        except ImportError:
            raise UserError("--lora needs the peft library: pip install 'electra[peft]' (or pip install peft)") from None
        config = LoraConfig(r=c.lora_rank, lora_alpha=2 * c.lora_rank, lora_dropout=0.1,
                            target_modules=["qkv", "attn.out", "ffn_in", "ffn_out"], modules_to_save=["head"])
        return get_peft_model(model, config)
    return model


def state_to_save(trained: torch.nn.Module) -> dict:
    """The weights to save: LoRA adapters merged into a copy, so the result loads anywhere; whole
    tensors under FSDP (gathering them is collective: every process calls this)."""
    if isinstance(trained, FinetuneModel):
        return full_model_state(trained)
    return copy.deepcopy(trained).merge_and_unload().state_dict()


def write_atomic(out: Path, state: dict, meta: dict, tok: Tokenizer) -> None:
    """Write weights, electra.json and tokenizer into a temporary directory, then rename each file
    into OUT: a crash leaves either the previous best model or the new one, never half a file."""
    tmp = out / f".best.tmp-{os.getpid()}"
    write_model_dir(tmp, state, meta, None, tokenizer=tok)
    for name in sorted(os.listdir(tmp), key=lambda n: n == ELECTRA_JSON):  # the config last
        os.replace(tmp / name, out / name)
    tmp.rmdir()


@dataclass
class Prepared:
    """What a fine-tuning run trains on: the encoder to start from, the task, the encoded data."""

    cfg: ModelConfig
    encoder_state: dict | None
    tok: Tokenizer
    source: str
    task: Task
    max_len: int
    train_examples: list
    dev_examples: list
    train_features: list
    dev_features: list


def finetune(task_name: str, model_src: str, train_path: Path, dev_path: Path, out: Path, config: FinetuneConfig,
             columns: dict, tokenizer: Path | None = None, overwrite: bool = False, progress: bool = True) -> dict:
    """Fine-tune and keep the best dev epoch in OUT; returns its metrics. Under torchrun every process
    runs this and takes an equal slice of each batch (the last partial batch of an epoch is dropped)."""
    with joined() as world:
        if task_name not in TASKS:
            raise UserError(f"unknown task {task_name!r}; choose {', '.join(TASKS)}")
        if config.metric is not None and config.metric not in SELECTABLE[task_name]:
            raise UserError(f"--metric {config.metric} is not one of {task_name}'s: {', '.join(SELECTABLE[task_name])}")
        if config.batch_size % world.size:
            raise UserError(f"--batch-size {config.batch_size} is not divisible by the {world.size} processes")
        device = world.device() if world.distributed else pick_device(config.precision)
        check_precision(config.precision, device)

        def claim_out():
            if out.exists() and (out / ELECTRA_JSON).exists() and not overwrite:
                raise UserError(f"{out} already holds a fine-tuned model; choose another --out or pass --overwrite")
            try:
                out.mkdir(parents=True, exist_ok=True)
            except PermissionError:
                raise UserError(f"cannot create {out} (permission denied); choose another --out") from None
            if not os.access(out, os.W_OK):
                raise UserError(f"cannot write into {out} (permission denied); choose another --out")

        settings = task_settings(task_name, config)  # bad prompt settings are refused before OUT is made
        created = not out.exists()
        world.from_main(claim_out)
        try:
            data = prepare(task_name, model_src, train_path, dev_path, config, columns, tokenizer, world, settings)
        except UserError:
            if created and world.is_main and out.is_dir() and not any(out.iterdir()):
                out.rmdir()  # refused before any work: leave nothing behind
            raise
        if config.lr is None:
            config = dataclasses.replace(config, lr=finetune_lr(data.cfg))
        return _train(world, data, config, out, device, progress)


def task_settings(task_name: str, c: FinetuneConfig) -> dict:
    """What the task object needs of the settings (saved with the model)."""
    from electra.prompt import Prompt

    settings: dict = {}
    if task_name == "qa":
        settings = {"doc_stride": c.doc_stride, "max_answer_len": c.max_answer_len}
    if task_name == "prompt" and (c.template is None or c.verbalizer is None):
        raise UserError("--task prompt needs --template and --verbalizer")
    if task_name != "prompt" and (c.template is not None or c.verbalizer is not None):
        raise UserError("--template and --verbalizer go with --task prompt")
    if task_name == "prompt":
        settings = Prompt.parse(c.template, c.verbalizer).settings()
    if c.shots is not None:
        if task_name not in ("classification", "prompt"):
            raise UserError(f"--shots samples examples per class: it goes with classification or prompt, not {task_name}")
        settings.update(shots=c.shots, seed=c.seed)
    return settings


def prepare(task_name: str, model_src: str, train_path: Path, dev_path: Path, c: FinetuneConfig, columns: dict,
            tokenizer: Path | None, world: World, settings: dict) -> Prepared:
    """Load the encoder and tokenizer, read and encode the data."""
    cfg, encoder_state, tok, source = load_encoder_source(model_src, tokenizer, with_head=task_name == "prompt")
    if c.dropout is not None:
        cfg = dataclasses.replace(cfg, hidden_dropout_prob=c.dropout, attention_probs_dropout_prob=c.dropout)
    special = special_ids(tok)
    check_vocab(tok, cfg.vocab_size, "--tokenizer" if tokenizer else source)
    max_len = c.max_seq_len or min(DEFAULT_MAX_LEN[task_name], cfg.max_position_embeddings)
    if max_len > cfg.max_position_embeddings:
        raise UserError(f"--max-seq-len {max_len} exceeds the model's {cfg.max_position_embeddings} positions")
    task = make_task(task_name, settings=settings)
    train_examples = task.read(train_path, columns, training=True)
    dev_examples = task.read(dev_path, columns, training=False)
    if c.batch_size > len(train_examples):
        raise UserError(f"--batch-size {c.batch_size} is larger than the {len(train_examples):,} training examples "
                        f"in {train_path}; use a smaller batch")
    train_features, truncated = task.encode(train_examples, tok, special, max_len)
    dev_features, dev_truncated = task.encode(dev_examples, tok, special, max_len)
    for what, n, total in (("training", truncated, len(train_examples)), ("dev", dev_truncated, len(dev_examples))):
        if n:
            world.say(f"electra: {n} of {total} {what} examples were longer than --max-seq-len {max_len} "
                      "and were truncated")
    return Prepared(cfg, encoder_state, tok, source, task, max_len, train_examples, dev_examples,
                    train_features, dev_features)


def _train(world: World, d: Prepared, c: FinetuneConfig, out: Path, device: torch.device, progress: bool) -> dict:
    task, special = d.task, special_ids(d.tok)
    main = c.metric or MAIN_METRIC[task.name]
    torch.manual_seed(c.seed)
    model = FinetuneModel(d.cfg, task.name, task.num_labels)
    if d.encoder_state is not None:
        missing, unexpected = model.load_state_dict(d.encoder_state, strict=False)
        if unexpected or any(k.startswith("encoder.") for k in missing):
            raise UserError(f"the encoder weights of {d.source} do not fit its configuration")
    model.to(device)
    trained = trainable(model, c)
    forward = parallelize(trained, world, c.strategy, device)
    n_train = sum(p.numel() for p in trained.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in model.parameters())
    world.say(f"electra: fine-tuning {d.source} for {task.name} on {world.describe(device, c.strategy)} with "
              f"{torch.get_num_threads()} CPU threads: {len(d.train_examples):,} training and "
              f"{len(d.dev_examples):,} dev examples; lr {c.lr:g}; trainable parameters {n_train:,} of {n_all:,} "
              f"({100 * n_train / n_all:.2f}%)")
    optimizer = adamw(trained, c.lr, c.weight_decay, lr_scale=layer_decay_scales(trained, d.cfg.num_hidden_layers,
                                                                                   c.layer_decay))
    steps_per_epoch = (max(1, len(d.train_features) // c.batch_size) if world.distributed
                       else math.ceil(len(d.train_features) / c.batch_size))
    max_steps = c.epochs * steps_per_epoch
    per_process = c.batch_size // world.size
    lengths = np.array([len(f.ids) for f in d.train_features])
    orders: dict[int, np.ndarray] = {}

    def micro_batches(step: int):
        epoch = step // steps_per_epoch
        if epoch not in orders:
            orders.clear()
            orders[epoch] = epoch_order(lengths, c.batch_size, c.seed, epoch, c.length_buckets)
        i = (step % steps_per_epoch) * c.batch_size
        chunk = orders[epoch][i:i + c.batch_size]
        if world.distributed:
            chunk = chunk[world.rank * per_process:(world.rank + 1) * per_process]
        yield collate([d.train_features[j] for j in chunk], special.pad, task.label_dtype)

    meta = {"format_version": FORMAT_VERSION, "kind": "finetuned", "task": task.name, "source": d.source,
            "model": d.cfg.to_dict(), "labels": task.labels, "settings": task.settings, "max_seq_len": d.max_len,
            "finetune": dataclasses.asdict(c), "metric": main}
    best = BestEpoch(world, d, trained, main, steps_per_epoch, out, meta, device, 2 * c.batch_size)
    loop = LoopSettings(max_steps=max_steps, peak_lr=c.lr, warmup_steps=round(c.warmup * max_steps),
                        clip_grad_norm=1.0, precision=c.precision, log_every=max(1, min(50, steps_per_epoch)),
                        save_every=max_steps, eval_every=steps_per_epoch)
    started = time.perf_counter()
    with training_log(out, world.is_main, plot_panels(main), tensorboard=False) as log:
        result = train_loop(FinetuneObjective(forward, task, c), optimizer, micro_batches, loop, device=device,
                            start_step=0, log=log, save=lambda step: out, evaluate=best.evaluate, progress=progress,
                            desc=f"finetune {task.name}", world=world)
    if "scores" not in best.best:  # stopped before the first evaluation: keep the partial model, marked so
        best.evaluate(result.step, partial=True)
    if not world.is_main:
        return {}
    return best.finish(result, time.perf_counter() - started)


class BestEpoch:
    """Scores the dev set after each epoch and keeps the best model in OUT."""

    def __init__(self, world: World, d: Prepared, trained: torch.nn.Module, main: str, steps_per_epoch: int,
                 out: Path, meta: dict, device: torch.device, batch_size: int):
        self.world, self.d, self.trained, self.main = world, d, trained, main
        self.steps_per_epoch, self.out, self.meta, self.device, self.batch_size = steps_per_epoch, out, meta, device, batch_size
        self.best: dict = {"value": -math.inf}

    def evaluate(self, step: int, partial: bool = False) -> dict:
        d = self.d
        outputs = model_outputs(self.trained, d.dev_features, self.batch_size, self.device, special_ids(d.tok).pad)
        preds = d.task.decode(d.dev_examples, d.dev_features, outputs)
        scores = d.task.score(d.dev_examples, preds)
        epoch = round(step / self.steps_per_epoch, 3)
        improved = scores[self.main] > self.best["value"]
        if improved:
            self.best.update(value=scores[self.main], epoch=epoch, scores=scores, preds=preds, partial=partial)
            state = state_to_save(self.trained)
            if self.world.is_main:
                best = {"epoch": epoch, **scores, **({"partial": True} if partial else {})}
                write_atomic(self.out, state, {**self.meta, "best": best}, d.tok)
        if self.world.is_main:
            line = ", ".join(f"{k} {v:.4f}" for k, v in scores.items() if isinstance(v, float))
            tqdm.write(f"epoch {epoch:g}: dev {line}{'  (best so far, saved)' if improved else ''}", file=sys.stderr)
        return {"epoch": epoch, **{f"dev_{k}": v for k, v in scores.items()}}

    def finish(self, result, seconds: float) -> dict:
        """Reports, the closing line, and the summary (with "interrupted": the signal, after one)."""
        d, b = self.d, self.best
        reports = write_reports(d.task.name, self.out, d.task.gold(d.dev_examples), b["preds"], d.task.labels)
        summary = {"best_epoch": b["epoch"], **b["scores"], "minutes": round(seconds / 60, 2)}
        if b.get("partial"):
            summary["partial"] = True
        kept = (f"the model in {self.out} is from a partial epoch ({b['epoch']:g}), marked \"partial\" in "
                f"{ELECTRA_JSON}" if b.get("partial") else f"best dev {self.main} {b['value']:.4f} at epoch "
                f"{b['epoch']:g}; model in {self.out}")
        if result.stopped_by != "max_steps":
            self.world.say(f"electra: interrupted by {result.stopped_by} at epoch "
                           f"{result.step / self.steps_per_epoch:.2f}; {kept}")
            summary["interrupted"] = result.stopped_by
        else:
            self.world.say(f"electra: {kept}" + (f"; reports: {', '.join(p.name for p in reports)}" if reports else ""))
        return summary
