"""The one training loop, for pretraining and fine-tuning alike: an objective owns the loss and
its metrics; the loop owns accumulation, precision, clipping, schedule, logging, evaluation,
checkpoints, time budget and stop signals."""

from __future__ import annotations

import contextlib
import signal
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

import torch
from tqdm import tqdm

from electra.errors import UserError
from electra.train.distributed import World, gradient_sync, is_sharded
from electra.train.logs import MetricsLog
from electra.train.optim import linear_warmup_decay, set_lr


class Objective(Protocol):
    model: torch.nn.Module  # what to call forward on: the DistributedDataParallel wrapper when distributed

    def counts(self, batch) -> torch.Tensor:
        """Additive counts of a micro-batch (e.g. tokens, predictions): the loss denominators."""

    def loss(self, batch, step: int, totals: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """A micro-batch -> (its share of the step's mean loss, detached metrics shares on device).
        `totals` is `counts` summed over every micro-batch of the step on every process, so the
        shares add up to the global-batch value whatever the accumulation or the number of processes."""

    def tokens(self, batch) -> torch.Tensor:
        """Number of real (non-padding) tokens in the micro-batch, for throughput."""


@dataclass
class LoopSettings:
    max_steps: int
    peak_lr: float
    warmup_steps: int
    grad_accum: int = 1
    clip_grad_norm: float = 1.0
    precision: str = "fp32"
    log_every: int = 10
    save_every: int = 1000
    eval_every: int = 0
    time_budget_s: float | None = None
    max_bad_steps: int = 5


class StopSignal:
    """SIGTERM/SIGINT ask the loop to save and stop after the current step (a second SIGINT aborts)."""

    def __init__(self):
        self.received: str | None = None
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.received and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


@dataclass
class LoopResult:
    step: int
    stopped_by: str  # "max_steps", "time_budget" or a signal name
    last_checkpoint: object = None


def autocast(precision: str, device: torch.device):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def solo_throughput(objective: Objective, micro_batches, step: int, device: torch.device, world: World,
                    precision: str) -> float:
    """Tokens/s of one process's forward and backward passes without gradient communication, timed
    on one micro-batch before training (averaged over processes): `scaling_efficiency` is the
    distributed throughput per process over this. Gradients are discarded; no state changes.
    Not under FSDP, which cannot skip its communication (parameters are gathered in the forward)
    and keeps unsynchronised gradients where zero_grad does not reach them."""
    if not world.distributed or is_sharded(objective.model):
        return 0.0
    micro = next(iter(micro_batches(step))).to(device)
    totals = objective.counts(micro)
    objective.model.train()
    seconds = []
    for _ in range(3):  # the first pass warms up
        started = time.perf_counter()
        with gradient_sync(objective.model, False):
            with autocast(precision, device):
                loss, _ = objective.loss(micro, step, totals)
            loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds.append(time.perf_counter() - started)
    objective.model.zero_grad(set_to_none=True)
    rate = torch.tensor([float(objective.tokens(micro)) / min(seconds[1:])], device=device)
    return float(world.sum_(rate)) / world.size


def train_loop(objective: Objective, optimizer: torch.optim.Optimizer,
               micro_batches: Callable[[int], Iterable], settings: LoopSettings, *, device: torch.device,
               start_step: int, log: MetricsLog, save: Callable[[int], object],
               evaluate: Callable[[int], dict] | None = None, progress: bool = True,
               desc: str = "train", world: World = World()) -> LoopResult:
    """Run optimizer steps start_step .. max_steps-1. `micro_batches(step)` yields this process's
    micro-batches of the step; `save(step)` writes a checkpoint after `step` completed steps.
    Distributed, every process evaluates and calls save; only rank 0 logs, writes and shows progress."""
    s = settings
    model = objective.model
    params = [p for g in optimizer.param_groups for p in g["params"]]
    progress = progress and world.is_main
    scaler = torch.amp.GradScaler(device.type) if s.precision == "fp16" else None
    started = time.perf_counter()
    window_start, window_tokens, window_steps = started, 0.0, 0
    sums: dict[str, torch.Tensor] = {}
    token_count = torch.zeros((), device=device)
    grad_norm_sum = torch.zeros((), device=device)
    last_ckpt = None
    bad_steps = 0
    stopped_by = "max_steps"
    solo_rate = solo_throughput(objective, micro_batches, start_step, device, world, s.precision)
    bar = tqdm(total=s.max_steps, initial=start_step, desc=desc, unit="step",
               disable=not progress, file=sys.stderr, dynamic_ncols=True)
    step = start_step
    with StopSignal() as stop:
        while step < s.max_steps:
            lr = set_lr(optimizer, s.peak_lr, linear_warmup_decay(step, s.warmup_steps, s.max_steps))
            model.train()
            micros = [m.to(device, non_blocking=True) for m in micro_batches(step)]
            totals = world.sum_(sum(objective.counts(m) for m in micros))
            for i, micro in enumerate(micros):
                with gradient_sync(model, i == len(micros) - 1):  # communicate on the last one only
                    with autocast(s.precision, device):
                        loss, metrics = objective.loss(micro, step, totals)
                    scaled = loss * world.size  # DDP averages gradients over processes; shares must add up
                    (scaler.scale(scaled) if scaler else scaled).backward()
                for k, v in metrics.items():
                    sums[k] = sums.get(k, 0.0) + v.float()
                token_count += objective.tokens(micro)
            if scaler:
                scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(params, s.clip_grad_norm)
            if hasattr(grad_norm, "full_tensor"):  # FSDP: a sharded (DTensor) norm
                grad_norm = grad_norm.full_tensor()
            if scaler:
                scaler.step(optimizer)  # skips the update itself when gradients overflowed
                scaler.update()
            elif bool(torch.isfinite(grad_norm)):  # the one host sync per optimizer step
                optimizer.step()
                bad_steps = 0
            else:
                bad_steps += 1
                log.write({"step": step + 1, "event": "non_finite_loss", "skipped_update": True})
                if world.is_main:
                    print(f"electra: warning: non-finite loss or gradients at step {step + 1}; update skipped",
                          file=sys.stderr)
                if bad_steps >= s.max_bad_steps:
                    bar.close()
                    raise UserError(f"the loss was not finite for {bad_steps} steps in a row (up to step {step + 1}); "
                                    "the last good checkpoint is kept; lower --lr, or use --precision fp32")
            optimizer.zero_grad(set_to_none=True)
            step += 1
            window_steps += 1
            grad_norm_sum = grad_norm_sum + grad_norm.detach().float()
            bar.update(1)

            if step % s.log_every == 0 or step == s.max_steps:
                now = time.perf_counter()
                keys = sorted(sums)
                reduced = world.sum_(torch.stack([sums[k] for k in keys] + [token_count.float()]))
                row = {"step": step, **{k: round(float(v) / window_steps, 6) for k, v in zip(keys, reduced)}}
                row["grad_norm"] = round(float(grad_norm_sum) / window_steps, 6)
                rate = float(reduced[-1]) / max(now - window_start, 1e-9)
                row.update(lr=lr, tokens_per_s=round(rate, 1), elapsed_s=round(now - started, 2))
                if world.distributed:
                    row.update(processes=world.size, tokens_per_s_per_process=round(rate / world.size, 1))
                    if solo_rate:
                        row["scaling_efficiency"] = round(rate / world.size / solo_rate, 3)
                log.write(row)
                shown = {k: f"{row[k]:.3f}" for k in ("loss", "disc_acc") if k in row}
                bar.set_postfix(**shown, tok_s=f"{row['tokens_per_s']:.0f}", refresh=False)
                sums, window_steps, window_start = {}, 0, now
                grad_norm_sum = torch.zeros((), device=device)
                token_count.zero_()
            if evaluate is not None and s.eval_every and (step % s.eval_every == 0 or step == s.max_steps):
                log.write({"step": step, **evaluate(step)})  # on every process: sharded forwards are collective
            over_budget = s.time_budget_s is not None and time.perf_counter() - started >= s.time_budget_s
            # every process must stop at the same step, whichever one got the signal
            stopping = world.any(bool(stop.received) or over_budget, device)
            if stopping or step % s.save_every == 0 or step == s.max_steps:
                last_ckpt = save(step)  # every process (gathering sharded state is collective); rank 0 writes
                world.barrier()  # nobody runs ahead (or exits) before the checkpoint is complete
            if stopping:
                stopped_by = stop.received or ("time_budget" if over_budget else "signal on another process")
                break
    bar.close()
    return LoopResult(step, stopped_by, last_ckpt)
