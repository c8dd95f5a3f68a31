"""`electra pretrain`: ELECTRA pretraining on prepared shards, resumable and observable."""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer

from electra.bench import flops
from electra.checkpoint import (ELECTRA_JSON, newest_checkpoint, read_training_state, read_weights,
                                remove_stale_temporaries, save_checkpoint)
from electra.config import (DEFAULT_LR, ElectraConfig, ObjectiveConfig, PretrainConfig, SpecialIds, merge_settings,
                            model_from_spec, read_json)
from electra.data.dataset import Batch, PretrainingData
from electra.data.tokenizer import check_vocab, load_tokenizer, special_ids, tokenizer_hash
from electra.errors import UserError
from electra.model.electra import ElectraForPretraining, MaskedLMForPretraining, pretraining_model
from electra.pretrained import load_pretraining_state, pretraining_state
from electra.runtime import check_precision, pick_device
from electra.train.distributed import World, full_state, joined, load_optimizer_state
from electra.train.logs import training_log
from electra.train.loop import LoopSettings, train_loop
from electra.train.optim import adamw
from electra.train.parallelize import parallelize

RUN_JSON = "run.json"
PLOT_PANELS = [("loss", ["gen_loss", "val_gen_loss", "mlm_loss", "val_mlm_loss"]),
               ("discriminator loss", ["disc_loss", "val_disc_loss"]),
               ("accuracy", ["disc_acc", "gen_acc", "val_disc_acc", "mlm_acc", "val_mlm_acc"]), ("learning rate", ["lr"]),
               ("throughput", ["tokens_per_s"])]
# settings a resumed run cannot change and still continue the same run exactly
FIXED_ON_RESUME = ("batch_size", "seed")


class PretrainObjective:
    """Adapts the pretraining model (ELECTRA or MLM) to the loop: the randomness key is (seed, step, example index)."""

    def __init__(self, model: torch.nn.Module, net: ElectraForPretraining | MaskedLMForPretraining, seed: int):
        self.model = model  # what forward is called on (the DDP wrapper when distributed)
        self.net = net
        self.seed = seed

    def counts(self, batch: Batch, step: int) -> torch.Tensor:
        return self.net.counts(batch.input_ids, batch.attention_mask, batch.example_index, batch.word_start,
                               step=step, seed=self.seed)

    def loss(self, batch: Batch, step: int, totals: torch.Tensor):
        out = self.model(batch.input_ids, batch.attention_mask, batch.token_type_ids, batch.example_index,
                         batch.word_start, step=step, seed=self.seed, totals=totals)
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
    flags = dict(flags)
    dropout = flags.pop("dropout", None)
    kind = flags.pop("objective", None)
    train = dict(yaml_data.get("train", {}))
    if isinstance(train, dict) and "lr" not in train and flags.get("lr") is None:
        train["lr"] = DEFAULT_LR.get(size, 5e-4)
    train_cfg = merge_settings(PretrainConfig, f"{model_spec}: train", train, flags)
    objective = merge_settings(ObjectiveConfig, f"{model_spec}: objective", yaml_data.get("objective", {}),
                               {"kind": kind})
    if objective.kind == "mlm":
        electra_only = [k for k in ("generator_size", "generator") if k in yaml_data]
        if electra_only:
            raise UserError(f"{model_spec}: ELECTRA-only settings given ({', '.join(electra_only)}); the mlm objective "
                            "trains one discriminator-sized masked LM: remove them, or use --objective electra")
        cfg = ElectraConfig(cfg.discriminator, cfg.discriminator)  # the masked LM has the encoder's size
    if dropout is not None:
        if not 0.0 <= dropout < 1.0:
            raise UserError(f"--dropout must be in [0, 1) (got {dropout})")
        cfg = cfg.with_dropout(dropout)
    return Resolved(cfg.with_vocab(vocab_size, pad_id), objective, train_cfg, size)


def saved_run(out: Path) -> dict | None:
    """The description of the run already in OUT: run.json, or (older runs) its newest checkpoint's config."""
    if (out / RUN_JSON).is_file():
        return read_json(out / RUN_JSON, "run description")
    ckpt = newest_checkpoint(out, warn=False) if out.is_dir() else None
    return read_json(ckpt / ELECTRA_JSON, "checkpoint config") if ckpt else None


def resume_config(saved: dict, model_spec: str | None, flags: dict, vocab_size: int, pad_id: int) -> tuple[Resolved, dict]:
    """The saved run's settings, with the flags that were given on top; returns them and what changed.
    A change that would not continue the same run (model, objective, batch size, seed) is refused."""
    res = Resolved(ElectraConfig.from_dict(saved["model"]), ObjectiveConfig(**saved["objective"]),
                   merge_settings(PretrainConfig, "the saved run", saved["train"], {}), saved.get("size", "?"))
    kind = flags.get("objective")
    if kind is not None and kind != res.objective.kind:
        raise UserError(f"the run in this directory trains the {res.objective.kind} objective, not {kind}; resume "
                        "without --objective, or choose another --out")
    if model_spec is not None or flags.get("dropout") is not None:
        given = resolve_config(model_spec or res.size, {**flags, "objective": res.objective.kind}, vocab_size, pad_id)
        for key in ("model", "objective"):
            if given.to_dict()[key] != res.to_dict()[key]:
                raise UserError(f"the run in this directory has another {key} configuration than --model "
                                f"{model_spec or res.size}{' --dropout' if flags.get('dropout') is not None else ''}; "
                                "resume without --model (the saved settings hold), or choose another --out")
    train = merge_settings(PretrainConfig, "--resume", dataclasses.asdict(res.train),
                           {k: v for k, v in flags.items() if k not in ("dropout", "objective")})
    changed = {k: [getattr(res.train, k), getattr(train, k)] for k in dataclasses.asdict(train)
               if getattr(train, k) != getattr(res.train, k)}
    refused = [k for k in FIXED_ON_RESUME if k in changed]
    if refused:
        raise UserError("--resume continues the run exactly, so it cannot change "
                        + ", ".join(f"--{k.replace('_', '-')} ({changed[k][0]} -> {changed[k][1]})" for k in refused)
                        + "; leave them out, or start a new run in another --out")
    return dataclasses.replace(res, train=train), changed


@dataclass
class Init:
    """--init: the networks a run starts from, and where they came from."""

    discriminator: dict[str, torch.Tensor]  # state dicts of the source networks
    generator: dict[str, torch.Tensor] | None  # None: the generator starts fresh
    source: dict  # recorded in run.json


def from_pretrained(res: Resolved, src: str, generator_src: str | None, tokenizer_hash_: str) -> tuple[Resolved, Init]:
    """Continued pretraining: the discriminator (and the generator, when the source has one or
    --init-generator names one) of existing weights; their architectures replace the configured ones
    (a fresh generator keeps the configured width ratio; dropout stays as configured)."""
    from electra.config import generator_config
    from electra.pretrained import load_pretrained

    pre = load_pretrained(src)
    if tokenizer_hash(pre.tokenizer) != tokenizer_hash_:
        raise UserError(f"the data was prepared with another tokenizer than {src}'s; prepare it again with "
                        f"`electra prepare --tokenizer {src} ...` so that the vocabularies agree")
    keep = {k: getattr(res.model.discriminator, k) for k in ("hidden_dropout_prob", "attention_probs_dropout_prob")}
    if res.objective.kind == "mlm":  # the masked LM starts from the source's masked LM, or its encoder
        if generator_src:
            raise UserError("--init-generator is for ELECTRA's generator; the mlm objective starts its masked LM "
                            "from --init alone")
        net = pre.generator if pre.discriminator is None else pre.discriminator
        state = net.state_dict()
        if pre.discriminator is not None:
            state = {k: v for k, v in state.items() if k.startswith("encoder.")}  # a fresh masked-LM head
        cfg = dataclasses.replace(net.config, **keep)
        source = {"masked_lm": str(pre.directory), "head": "source's" if pre.discriminator is None else "fresh"}
        return dataclasses.replace(res, model=ElectraConfig(cfg, cfg)), Init({}, state, source)
    if pre.discriminator is None:
        raise UserError(f"--init {src} has no discriminator (it holds a generator); pass the run, the export, "
                        "or an ELECTRA discriminator, and the generator as --init-generator")
    generator = load_pretrained(generator_src).generator if generator_src else pre.generator
    if generator_src and generator is None:
        raise UserError(f"--init-generator {generator_src} holds no generator (ElectraForMaskedLM)")
    configured = res.model
    disc = dataclasses.replace(pre.discriminator.config, **keep)
    if generator is not None:
        gen = dataclasses.replace(generator.config, **keep)
    else:
        gen = generator_config(disc, configured.generator.hidden_size / configured.discriminator.hidden_size)
    try:
        model = ElectraConfig(disc, gen)
    except UserError as e:
        raise UserError(f"--init: the discriminator and generator do not fit together ({e})") from None
    gen_state = None
    if generator is not None:  # its embeddings: the discriminator's (es, or as build_model sets them)
        gen_state = {k: v for k, v in generator.state_dict().items() if not k.startswith("encoder.embeddings.")}
    source = {"discriminator": str(pre.directory), "generator": str(generator_src or pre.directory)
              if generator is not None else "fresh", "discriminator_head": pre.has_disc_head}
    return dataclasses.replace(res, model=model), Init(pre.discriminator.state_dict(), gen_state, source)


def claim_run_dir(out: Path, resume: bool, identity: dict, changed: dict, history: list) -> Path | None:
    """Refuse to mix runs; write run.json (with its history); return the checkpoint to resume from."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; choose a directory")
    has_run = out.exists() and ((out / RUN_JSON).is_file() or any(out.glob("step-*")))
    if resume and out.exists() and not has_run and any(p for p in out.iterdir() if not p.name.startswith(".")):
        raise UserError(f"{out} holds other files but no run to resume; choose the run's directory or a new --out")
    if out.exists() and not resume:
        if (out / RUN_JSON).is_file() or any(out.glob("step-*")):
            raise UserError(f"{out} already holds a run; pass --resume to continue it, or choose another --out")
        if any(p for p in out.iterdir() if not p.name.startswith(".")):
            raise UserError(f"{out} exists and holds other files; choose an empty or new --out")
    ckpt = None
    if resume and out.exists():
        remove_stale_temporaries(out)
        ckpt = newest_checkpoint(out, for_resume=True)
        if ckpt is None:
            print(f"electra: no intact checkpoint in {out}; starting from step 0", file=sys.stderr)
    try:
        out.mkdir(parents=True, exist_ok=True)
        entry = {"started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                 "from_step": int(ckpt.name.split("-")[1]) if ckpt else 0, "changed": changed}
        text = json.dumps({**identity, "history": [*history, entry]}, indent=2) + "\n"
        tmp = out / f".{RUN_JSON}.tmp"
        tmp.write_text(text)
        tmp.replace(out / RUN_JSON)
    except PermissionError:
        raise UserError(f"cannot write into {out} (permission denied); choose another --out") from None
    return ckpt


def open_data(data: Path, tokenizer: Path | None) -> tuple[PretrainingData, PretrainingData | None, Path, Tokenizer]:
    train_data = PretrainingData(data, "train")
    val_data = PretrainingData(data, "validation") if train_data.manifest["validation"]["examples"] else None
    tok_dir = Path(tokenizer) if tokenizer is not None else Path(data) / "tokenizer"
    if not tok_dir.is_dir():
        raise UserError(f"tokenizer directory not found: {tok_dir}")
    tok = load_tokenizer(tok_dir)
    if tokenizer_hash(tok) != train_data.manifest["tokenizer_hash"]:
        raise UserError(f"the tokenizer in {tok_dir} is not the one {data} was prepared with; "
                        "pass the same tokenizer or prepare the data again")
    return train_data, val_data, tok_dir, tok


def pretrain(data: Path, model_spec: str | None, out: Path, *, resume: bool = False, tokenizer: Path | None = None,
             progress: bool = True, init: str | None = None, init_generator: str | None = None, **flags) -> Path:
    """Train; returns the run directory. `flags` are PretrainConfig fields given on the command line
    (None: not given); `init`/`init_generator` start from existing weights. Under torchrun every process
    runs this; they share the work of each global batch."""
    with joined() as world:
        return _pretrain(world, data, model_spec, out, resume, tokenizer, progress, flags, (init, init_generator))


def _pretrain(world: World, data: Path, model_spec: str | None, out: Path, resume: bool, tokenizer: Path | None,
              progress: bool, flags: dict, init_sources: tuple[str | None, str | None] = (None, None)) -> Path:
    train_data, val_data, tok_dir, tok = open_data(data, tokenizer)
    special = special_ids(tok)
    saved = saved_run(out) if resume else None
    if saved is not None:
        for key, now in (("tokenizer_hash", train_data.manifest["tokenizer_hash"]), ("seq_len", train_data.seq_len),
                         ("data", str(Path(data).resolve()))):
            if saved.get(key) is not None and saved.get(key) != now:
                raise UserError(f"{out} holds a run on other data (its {key.replace('_', ' ')} differs: "
                                f"{saved[key]} -> {now}); resume with the same --data, or choose another --out")
        res, changed = resume_config(saved, model_spec, flags, tok.get_vocab_size(), special.pad)
    else:
        res, changed = resolve_config(model_spec or "small", flags, tok.get_vocab_size(), special.pad), {}
    init = None
    if saved is not None and saved.get("init") and not any(out.glob("step-*")):
        # a run started with --init, stopped before its first checkpoint: start again from those weights
        src = saved["init"]
        if "masked_lm" in src:
            init_sources = (src["masked_lm"], None)
        else:
            init_sources = (src["discriminator"], None if src["generator"] in ("fresh", src["discriminator"])
                            else src["generator"])
        init = from_pretrained(res, init_sources[0], init_sources[1], train_data.manifest["tokenizer_hash"])[1]
    elif init_sources[1] and not init_sources[0]:
        raise UserError("--init-generator goes with --init (the discriminator to start from)")
    if init_sources[0] and saved is None:  # a resumed run continues from its checkpoint instead
        res, init = from_pretrained(res, init_sources[0], init_sources[1], train_data.manifest["tokenizer_hash"])
    t = res.train
    if res.objective.whole_word_mask:
        for split in (train_data, val_data):
            if split is not None:
                split.use_word_starts(tok)
    check_vocab(tok, res.model.discriminator.vocab_size, str(tok_dir))
    if train_data.seq_len > res.model.discriminator.max_position_embeddings:
        raise UserError(f"the data's sequence length {train_data.seq_len} exceeds the model's "
                        f"max_position_embeddings {res.model.discriminator.max_position_embeddings}")
    if t.batch_size > len(train_data):
        raise UserError(f"--batch-size {t.batch_size} is larger than the {len(train_data):,} training examples in "
                        f"{data}; use a smaller batch, or prepare more text")
    if t.batch_size % (world.size * t.grad_accum):
        raise UserError(f"--batch-size {t.batch_size} is not divisible by {world.size} processes x "
                        f"--grad-accum {t.grad_accum}; the global batch is split evenly between them")
    device = world.device() if world.distributed else pick_device(t.precision)
    check_precision(t.precision, device)
    identity = {**res.to_dict(), "tokenizer_hash": train_data.manifest["tokenizer_hash"],
                "seq_len": train_data.seq_len, "data": str(Path(data).resolve()),
                **({"init": init.source} if init else {"init": saved["init"]} if saved and "init" in saved else {})}
    world.check_same({**identity, "out": str(Path(out).resolve()), "resume": resume},
                     "the configuration, the data or the output directory")
    if changed:
        world.say("electra: resuming with changed settings: "
                  + ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changed.items()))
    # one process decides, all resume from the same checkpoint
    ckpt = world.from_main(lambda: claim_run_dir(out, resume, identity, changed, (saved or {}).get("history", [])))
    return _train(world, res, identity, train_data, val_data, tok_dir, special, device, out, ckpt, progress, init)


def build_model(res: Resolved, special: SpecialIds, init: Init | None = None) -> ElectraForPretraining | MaskedLMForPretraining:
    """The initial networks: seeded random weights, or (--init) the source's. Under gdes and nes the
    generator's embeddings start as the source discriminator's (so under gdes the discriminator's equal
    the source's at step 0: the residual starts at zero)."""
    torch.manual_seed(res.train.seed)  # the same initial weights on every process
    model = pretraining_model(res.model, special, res.objective)
    if init is None:
        return model
    embeddings = {k: v for k, v in init.discriminator.items() if k.startswith("encoder.embeddings.")}
    if init.discriminator:
        disc = init.discriminator
        if res.objective.embedding_sharing == "gdes":
            disc = {k: v for k, v in disc.items() if k not in embeddings}
        missing, unexpected = model.discriminator.load_state_dict(disc, strict=False)
        if unexpected or [k for k in missing if not k.startswith(("head.", "encoder.embeddings.delta."))]:
            raise UserError("--init: the discriminator's weights do not fit its configuration")
    if init.generator is not None:
        missing, unexpected = model.generator.load_state_dict(init.generator, strict=False)
        if unexpected or [k for k in missing if not k.startswith(("encoder.embeddings.", "head."))]:
            raise UserError("--init: the generator's weights do not fit its configuration")
    if res.objective.kind == "electra" and res.objective.embedding_sharing != "es":
        model.generator.load_state_dict(embeddings, strict=False)
    return model


def _train(world: World, res: Resolved, identity: dict, train_data: PretrainingData,
           val_data: PretrainingData | None, tok_dir: Path, special: SpecialIds, device: torch.device, out: Path,
           ckpt: Path | None, progress: bool, init: Init | None = None) -> Path:
    t = res.train
    model = build_model(res, special, init if ckpt is None else None).to(device)
    if init is not None and ckpt is None:
        src = init.source
        start = (f"the masked LM from {src['masked_lm']} ({src['head']} head)" if "masked_lm" in src else
                 f"from the weights of {src['discriminator']} (generator: {src['generator']})")
        world.say(f"electra: starting {start}; the optimizer starts fresh")
    if ckpt is not None:  # the whole weights first; sharding (FSDP) splits them afterwards
        load_pretraining_state(model, {k: v.to(device) for k, v in read_weights(ckpt).items()}, ckpt)
    if t.strategy == "fsdp" and not world.distributed:
        world.say("electra: --strategy fsdp shards over processes started by torchrun; with one process the "
                  "model is not sharded")
    trained = parallelize(model, world, t.strategy, device, compile=t.compile)
    optimizer = adamw(model, t.lr, t.weight_decay, eps=t.adam_eps)  # after sharding: it holds the shards
    start = 0
    if ckpt is not None:
        start = int(read_training_state(ckpt, lambda state: load_optimizer_state(model, optimizer, state))["step"])
        world.say(f"electra: resuming from {ckpt} (step {start})")
    if world.distributed:
        torch.manual_seed(t.seed * 1_000_003 + world.rank + 7919 * start)  # different dropout per process
    if start >= t.max_steps:
        world.say(f"electra: {out} already reached step {start} (--max-steps {t.max_steps}); nothing to do")
        return out

    per_process = t.batch_size // world.size
    micro = per_process // t.grad_accum

    def micro_batches(step: int):
        # this process's slice of the global batch: disjoint, and the same examples whatever the world size
        idx = train_data.global_batch(step, t.batch_size, t.seed)[world.rank * per_process:(world.rank + 1) * per_process]
        for i in range(t.grad_accum):
            yield train_data.batch(idx[i * micro:(i + 1) * micro])

    meta = {"kind": "pretraining", **identity, "special_ids": dataclasses.asdict(special)}

    def save(step: int):
        model_state, optimizer_state = full_state(model, optimizer)  # collective under FSDP
        if not world.is_main:
            return None
        return save_checkpoint(out, step, model_state=pretraining_state(model_state, res.objective), meta=meta,
                               tokenizer_dir=tok_dir, optimizer_state=optimizer_state,
                               trainer_state={"data_position": step * t.batch_size, "examples_seen": step * t.batch_size,
                                              "processes": world.size, "strategy": t.strategy},
                               keep_last=t.keep_last)

    evaluate = validation(model, val_data, device, t, micro) if val_data is not None and t.eval_every else None
    settings = LoopSettings(max_steps=t.max_steps, peak_lr=t.lr, warmup_steps=t.resolved_warmup,
                            clip_grad_norm=t.clip_grad_norm, precision=t.precision, log_every=t.log_every,
                            save_every=t.save_every, eval_every=t.eval_every, time_budget_s=t.time_budget_s,
                            memory_hint="use a smaller --batch-size, or --grad-accum N to split each batch into N",
                            flops_per_step=t.batch_size * train_data.seq_len * flops.pretraining_step(
                                res.model, train_data.seq_len, res.objective.mask_prob, res.objective.kind))
    kept = model.discriminator if res.objective.kind == "electra" else model.generator
    n_params = sum(p.numel() for p in kept.parameters())
    what = "ELECTRA, discriminator" if res.objective.kind == "electra" else "masked LM"
    world.say(f"electra: pretraining {res.size} ({what} {n_params / 1e6:.1f}M parameters) on "
              f"{world.describe(device, t.strategy)} with {torch.get_num_threads()} CPU threads, "
              f"{len(train_data):,} examples of {train_data.seq_len} tokens, batch {t.batch_size}, "
              f"steps {start}->{t.max_steps}, lr {t.lr:g}")
    started = time.perf_counter()
    with training_log(out, world.is_main, PLOT_PANELS, resume_step=start if ckpt is not None else None) as log:
        result = train_loop(PretrainObjective(trained, model, t.seed), optimizer, micro_batches, settings,
                            device=device, start_step=start, log=log, save=save, evaluate=evaluate,
                            progress=progress, desc="pretrain", world=world)
    minutes = (time.perf_counter() - started) / 60
    if result.stopped_by == "max_steps":
        world.say(f"electra: done: step {result.step} in {minutes:.1f} min; checkpoint {result.last_checkpoint}; "
                  f"curves {out / 'curves.png'}")
    else:
        world.say(f"electra: stopped by {result.stopped_by} at step {result.step}; checkpoint "
                  f"{result.last_checkpoint} saved; continue with --resume")
        world.barrier()  # rank 0 has said so before any process exits
        result.raise_if_interrupted()
    return out


def validation(model: ElectraForPretraining, val_data: PretrainingData, device: torch.device, t: PretrainConfig,
               micro: int):
    """The validation pass: the mean metrics of the first eval_batches x micro held-out examples, under a
    fixed corruption (step 0) so that numbers are comparable over training."""
    val_idx = np.arange(min(len(val_data), t.eval_batches * micro))

    @torch.no_grad()
    def evaluate(step: int) -> dict:
        model.eval()
        sums: dict[str, float] = {}
        n = 0
        for i in range(0, len(val_idx), micro):
            b = val_data.batch(val_idx[i:i + micro]).to(device)
            out = model(b.input_ids, b.attention_mask, b.token_type_ids, b.example_index, b.word_start,
                        step=0, seed=t.seed)
            for k, v in out.metrics.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            n += 1
        return {f"val_{k}": round(v / n, 6) for k, v in sums.items()}

    return evaluate
