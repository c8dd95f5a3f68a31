"""`electra pretrain`: ELECTRA pretraining on prepared shards, resumable and observable."""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from electra.config import DEFAULT_LR, ElectraConfig, PretrainConfig, SpecialIds, model_from_spec, read_json
from electra.data.dataset import Batch, PretrainingData
from electra.data.tokenizer import check_vocab, load_tokenizer, special_ids, tokenizer_hash
from electra.errors import UserError
from electra.model.electra import ElectraForPretraining, ObjectiveConfig
from electra.model.encoder import compile_layers
from electra.pretrained import load_pretraining_state, pretraining_state
from electra.train.checkpoint import (latest_resumable, load_training_state, remove_stale_temporaries,
                                      save_checkpoint)
from electra.train.distributed import World, full_state, join, leave, wrap
from electra.train.logs import MetricsLog, NullLog, plot_curves
from electra.train.loop import LoopSettings, train_loop
from electra.train.optim import adamw

RUN_JSON = "run.json"
PLOT_PANELS = [("loss", ["gen_loss", "val_gen_loss"]), ("discriminator loss", ["disc_loss", "val_disc_loss"]),
               ("accuracy", ["disc_acc", "gen_acc", "val_disc_acc"]), ("learning rate", ["lr"]),
               ("throughput", ["tokens_per_s"])]


class PretrainObjective:
    """Adapts ElectraForPretraining to the loop: the randomness key is (seed, step, example index)."""

    def __init__(self, model: torch.nn.Module, net: ElectraForPretraining, seed: int):
        self.model = model  # what forward is called on (the DDP wrapper when distributed)
        self.net = net
        self.seed = seed

    def counts(self, batch: Batch) -> torch.Tensor:
        return self.net.counts(batch.input_ids, batch.attention_mask)

    def loss(self, batch: Batch, step: int, totals: torch.Tensor):
        out = self.model(batch.input_ids, batch.attention_mask, batch.token_type_ids, batch.example_index,
                         step=step, seed=self.seed, totals=totals)
        return out.loss, out.metrics

    def tokens(self, batch: Batch) -> torch.Tensor:
        return batch.attention_mask.sum()


@dataclass
class Resolved:
    model: ElectraConfig
    objective: ObjectiveConfig
    train: PretrainConfig
    size: str

    def to_dict(self) -> dict:
        return {"model": self.model.to_dict(), "objective": dataclasses.asdict(self.objective),
                "train": dataclasses.asdict(self.train), "size": self.size}


def resolve_config(model_spec: str, flags: dict, vocab_size: int, pad_id: int) -> Resolved:
    """defaults < YAML file < command-line flags (those not None)."""
    cfg, yaml_data, size = model_from_spec(model_spec)
    train = dict(yaml_data.get("train", {}))
    if not isinstance(train, dict):
        raise UserError(f"{model_spec}: 'train' must be a mapping")
    dropout = flags.pop("dropout", None)
    train.update({k: v for k, v in flags.items() if v is not None})
    train.setdefault("lr", DEFAULT_LR.get(size, 5e-4))
    known = {f.name for f in dataclasses.fields(PretrainConfig)}
    unknown = set(train) - known
    if unknown:
        raise UserError(f"{model_spec}: unknown train settings {', '.join(sorted(unknown))}")
    objective = yaml_data.get("objective", {})
    known_obj = {f.name for f in dataclasses.fields(ObjectiveConfig)}
    if not isinstance(objective, dict) or set(objective) - known_obj:
        raise UserError(f"{model_spec}: 'objective' takes only {', '.join(sorted(known_obj))}")
    if dropout is not None:
        if not 0.0 <= dropout < 1.0:
            raise UserError(f"--dropout must be in [0, 1) (got {dropout})")
        cfg = cfg.with_dropout(dropout)
    return Resolved(cfg.with_vocab(vocab_size, pad_id), ObjectiveConfig(**objective), PretrainConfig(**train), size)


def pick_device(precision: str) -> torch.device:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if precision == "fp16" and device.type != "cuda":
        raise UserError("--precision fp16 needs a CUDA GPU; use fp32 (or bf16 on a CPU that has it)")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError("this GPU has no bf16; use --precision fp16 or fp32")
    return device


def check_run_dir(out: Path, resume: bool, identity: dict) -> Path | None:
    """Refuse to mix runs; return the checkpoint to resume from (or None to start fresh)."""
    run_json = out / RUN_JSON
    if not out.exists():
        return None
    has_run = run_json.is_file() or any(out.glob("step-*"))
    if not has_run:
        if any(p for p in out.iterdir() if not p.name.startswith(".")) and not resume:
            raise UserError(f"{out} exists and holds other files; choose an empty or new --out")
        return None
    if not resume:
        raise UserError(f"{out} already holds a run; pass --resume to continue it, or choose another --out")
    if run_json.is_file():
        saved = read_json(run_json, "run description")
        for key in ("model", "objective", "tokenizer_hash", "seq_len"):
            if saved.get(key) != identity.get(key):
                raise UserError(f"{out} holds a different run (its {key.replace('_', ' ')} differs); "
                                "resume with the same --model and --data, or choose another --out")
    remove_stale_temporaries(out)
    ckpt = latest_resumable(out)
    if ckpt is None:
        print(f"electra: no intact checkpoint in {out}; starting from step 0", file=sys.stderr)
    return ckpt


def pretrain(data: Path, model_spec: str, out: Path, *, resume: bool = False, tokenizer: Path | None = None,
             progress: bool = True, **flags) -> Path:
    """Train; returns the run directory. `flags` are PretrainConfig fields given on the command line.
    Under torchrun every process runs this; they share the work of each global batch."""
    world = join()
    try:
        return _pretrain(world, data, model_spec, out, resume=resume, tokenizer=tokenizer, progress=progress, **flags)
    finally:
        leave(world)


def _pretrain(world: World, data: Path, model_spec: str, out: Path, *, resume: bool, tokenizer: Path | None,
              progress: bool, **flags) -> Path:
    say = (lambda msg: print(msg, file=sys.stderr)) if world.is_main else (lambda msg: None)
    train_data = PretrainingData(data, "train")
    val_data = PretrainingData(data, "validation") if train_data.manifest["validation"]["examples"] else None
    tok_dir = Path(tokenizer) if tokenizer is not None else Path(data) / "tokenizer"
    if not tok_dir.is_dir():
        raise UserError(f"tokenizer directory not found: {tok_dir}")
    tok = load_tokenizer(tok_dir)
    if tokenizer_hash(tok) != train_data.manifest["tokenizer_hash"]:
        raise UserError(f"the tokenizer in {tok_dir} is not the one {data} was prepared with; "
                        "pass the same tokenizer or prepare the data again")
    special = special_ids(tok)
    res = resolve_config(model_spec, flags, tok.get_vocab_size(), special.pad)
    t = res.train
    check_vocab(tok, res.model.discriminator.vocab_size, str(tok_dir))
    if train_data.seq_len > res.model.discriminator.max_position_embeddings:
        raise UserError(f"the data's sequence length {train_data.seq_len} exceeds the model's "
                        f"max_position_embeddings {res.model.discriminator.max_position_embeddings}")
    if t.batch_size % (world.size * t.grad_accum):
        raise UserError(f"--batch-size {t.batch_size} is not divisible by {world.size} processes x "
                        f"--grad-accum {t.grad_accum}; the global batch is split evenly between them")
    device = world.device() if world.distributed else pick_device(t.precision)
    if world.distributed:
        pick_device(t.precision)  # the same precision checks

    identity = {**res.to_dict(), "tokenizer_hash": train_data.manifest["tokenizer_hash"],
                "seq_len": train_data.seq_len, "data": str(Path(data).resolve())}
    world.check_same({**identity, "out": str(Path(out).resolve()), "resume": resume},
                     "the configuration, the data or the output directory")

    def claim_run_dir():
        ckpt = check_run_dir(out, resume, identity)
        out.mkdir(parents=True, exist_ok=True)
        (out / RUN_JSON).write_text(json.dumps(identity, indent=2) + "\n")
        return ckpt

    ckpt = world.from_main(claim_run_dir)  # one process decides, all resume from the same checkpoint

    torch.manual_seed(t.seed)  # the same initial weights on every process
    model = ElectraForPretraining(res.model, special, res.objective).to(device)
    if ckpt is not None:  # the whole weights first; sharding (FSDP) splits them afterwards
        from safetensors.torch import load_file
        load_pretraining_state(model, {k: v.to(device) for k, v in load_file(str(ckpt / "model.safetensors")).items()},
                               ckpt)
    layers = [*model.discriminator.encoder.layers, *model.generator.encoder.layers]
    if t.compile:
        compile_layers(model.discriminator.encoder, model.generator.encoder)
    if t.strategy == "fsdp" and not world.distributed:
        say("electra: --strategy fsdp shards over processes started by torchrun; with one process the model "
            "is not sharded")
    trained = wrap(model, world, t.strategy, layers, device)
    optimizer = adamw(model, t.lr, t.weight_decay, eps=t.adam_eps)  # after sharding: it holds the shards
    start = 0
    if ckpt is not None:
        start = int(load_training_state(ckpt, model, optimizer)["step"])
        say(f"electra: resuming from {ckpt} (step {start})")
    if world.distributed:
        torch.manual_seed(t.seed * 1_000_003 + world.rank + 7919 * start)  # different dropout per process

    per_process = t.batch_size // world.size
    micro = per_process // t.grad_accum

    def micro_batches(step: int):
        # this process's slice of the global batch: disjoint, and the same examples whatever the world size
        idx = train_data.global_batch(step, t.batch_size, t.seed)[world.rank * per_process:(world.rank + 1) * per_process]
        for i in range(t.grad_accum):
            yield train_data.batch(idx[i * micro:(i + 1) * micro])

    objective = PretrainObjective(trained, model, t.seed)
    meta = {"kind": "pretraining", **identity, "special_ids": dataclasses.asdict(special)}

    def save(step: int):
        model_state, optimizer_state = full_state(model, optimizer)  # collective under FSDP
        if not world.is_main:
            return None
        return save_checkpoint(out, step, model_state=pretraining_state(model_state), meta=meta,
                               tokenizer_dir=tok_dir, optimizer_state=optimizer_state,
                               trainer_state={"data_position": step * t.batch_size, "examples_seen": step * t.batch_size,
                                              "processes": world.size, "strategy": t.strategy},
                               keep_last=t.keep_last)

    evaluate = None
    if val_data is not None and t.eval_every:
        val_idx = np.arange(min(len(val_data), t.eval_batches * micro))

        @torch.no_grad()
        def evaluate(step: int) -> dict:
            model.eval()
            sums: dict[str, float] = {}
            n = 0
            for i in range(0, len(val_idx), micro):
                b = val_data.batch(val_idx[i:i + micro]).to(device)
                # a fixed corruption (step 0) so validation numbers are comparable over training
                out_ = model(b.input_ids, b.attention_mask, b.token_type_ids, b.example_index, step=0, seed=t.seed)
                for k, v in out_.metrics.items():
                    sums[k] = sums.get(k, 0.0) + float(v)
                n += 1
            return {f"val_{k}": round(v / n, 6) for k, v in sums.items()}

    log = MetricsLog(out, resume_step=start if ckpt is not None else None) if world.is_main else NullLog()
    settings = LoopSettings(max_steps=t.max_steps, peak_lr=t.lr, warmup_steps=t.resolved_warmup,
                            grad_accum=t.grad_accum, clip_grad_norm=t.clip_grad_norm, precision=t.precision,
                            log_every=t.log_every, save_every=t.save_every, eval_every=t.eval_every,
                            time_budget_s=t.time_budget_s)
    if start >= t.max_steps:
        say(f"electra: {out} already reached step {start} (--max-steps {t.max_steps}); nothing to do")
        log.close()
        return out
    n_params = sum(p.numel() for p in model.discriminator.parameters())
    where = f"{world.size} process{'es' if world.size > 1 else ''} ({device.type}, {t.strategy})" if world.distributed else str(device)
    say(f"electra: pretraining {res.size} (discriminator {n_params / 1e6:.1f}M parameters) on {where}, "
        f"{len(train_data):,} examples of {train_data.seq_len} tokens, batch {t.batch_size}, "
        f"steps {start}->{t.max_steps}, lr {t.lr:g}")
    started = time.perf_counter()
    try:
        result = train_loop(objective, optimizer, micro_batches, settings, device=device, start_step=start,
                            log=log, save=save, evaluate=evaluate, progress=progress, desc="pretrain", world=world)
    finally:
        log.close()
        if world.is_main:
            plot_curves(out, PLOT_PANELS)
    minutes = (time.perf_counter() - started) / 60
    if result.stopped_by == "max_steps":
        say(f"electra: done: step {result.step} in {minutes:.1f} min; checkpoint {result.last_checkpoint}; "
            f"curves {out / 'curves.png'}")
    else:
        say(f"electra: stopped by {result.stopped_by} at step {result.step}; checkpoint {result.last_checkpoint} "
            f"saved; continue with --resume")
    return out
