"""The one training loop, for pretraining and fine-tuning alike: an objective owns the loss and
its metrics; the loop owns accumulation, precision, clipping, schedule, logging, evaluation,
checkpoints, time budget and stop signals."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

import torch

from electra.errors import Interrupted, UserError
from electra.runtime import autocast, out_of_memory
from electra.train.distributed import World, gradient_sync, is_sharded
from electra.train.logs import MetricsLog, Progress
from electra.train.optim import linear_warmup_decay, set_lr


class Objective(Protocol):
    model: torch.nn.Module  # what to call forward on: the DistributedDataParallel wrapper when distributed

    def counts(self, batch, step: int) -> torch.Tensor:
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
    clip_grad_norm: float = 1.0
    precision: str = "fp32"
    log_every: int = 10
    save_every: int = 1000
    eval_every: int = 0
    time_budget_s: float | None = None
    max_bad_steps: int = 5
    memory_hint: str = "use a smaller --batch-size"
    flops_per_step: float = 0.0  # model FLOPs of one optimizer step; rows then log the cumulative `flops`


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
    stopped_by: str  # "max_steps", "time_budget", a signal name, or "signal on another process"
    last_checkpoint: object = None

    def raise_if_interrupted(self) -> None:
        """A run stopped by a signal ends the command with 128 + its number (after saving); under torchrun
        the processes that did not get the signal exit as if they had got SIGTERM."""
        if self.stopped_by.startswith("SIG"):
            raise Interrupted(self.stopped_by)
        if self.stopped_by == "signal on another process":
            raise Interrupted("SIGTERM")


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
    totals = objective.counts(micro, step)
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


class Window:
    """Sums of the metrics since the last logged row, kept on the device (no host sync per step)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.reset(time.perf_counter())

    def reset(self, now: float) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.tokens = torch.zeros((), device=self.device)
        self.grad_norm = torch.zeros((), device=self.device)
        self.steps, self.start = 0, now

    def add(self, metrics: dict[str, torch.Tensor], tokens: torch.Tensor) -> None:
        for k, v in metrics.items():
            self.sums[k] = self.sums.get(k, 0.0) + v.float()
        self.tokens += tokens

    def row(self, step: int, lr: float, started: float, world: World, solo_rate: float) -> dict:
        """The metrics row of the window (summed over processes), then a fresh window."""
        now = time.perf_counter()
        keys = sorted(self.sums)
        reduced = world.sum_(torch.stack([self.sums[k] for k in keys] + [self.tokens.float()]))
        row = {"step": step, **{k: round(float(v) / self.steps, 6) for k, v in zip(keys, reduced)}}
        row["grad_norm"] = round(float(self.grad_norm) / self.steps, 6)
        rate = float(reduced[-1]) / max(now - self.start, 1e-9)
        row.update(lr=lr, tokens_per_s=round(rate, 1), elapsed_s=round(now - started, 2))
        if world.distributed:
            row.update(processes=world.size, tokens_per_s_per_process=round(rate / world.size, 1))
            if solo_rate:
                row["scaling_efficiency"] = round(rate / world.size / solo_rate, 3)
        self.reset(now)
        return row


def optimizer_step(optimizer: torch.optim.Optimizer, params: list, scaler, clip: float) -> tuple[torch.Tensor, bool]:
    """Unscale (fp16), clip, and step unless the gradients are not finite; returns the gradient norm and
    whether the gradients were finite (fp16's scaler skips such updates itself and is not asked)."""
    if scaler:
        scaler.unscale_(optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(params, clip)
    if hasattr(grad_norm, "full_tensor"):  # FSDP: a sharded (DTensor) norm
        grad_norm = grad_norm.full_tensor()
    finite = True
    if scaler:
        scaler.step(optimizer)  # skips the update itself when gradients overflowed
        scaler.update()
    elif bool(torch.isfinite(grad_norm)):  # the one host sync per optimizer step
        optimizer.step()
    else:
        finite = False
    optimizer.zero_grad(set_to_none=True)
    return grad_norm, finite


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
    scaler = torch.amp.GradScaler(device.type) if s.precision == "fp16" else None
    started = time.perf_counter()
    window = Window(device)
    last_ckpt, bad_steps, stopped_by = None, 0, "max_steps"
    solo_rate = solo_throughput(objective, micro_batches, start_step, device, world, s.precision)
    bar = Progress(s.max_steps, start_step, desc, enabled=progress and world.is_main)
    step = start_step
    with StopSignal() as stop:
        while step < s.max_steps:
            lr = set_lr(optimizer, s.peak_lr, linear_warmup_decay(step, s.warmup_steps, s.max_steps))
            model.train()
            micros = [m.to(device, non_blocking=True) for m in micro_batches(step)]
            totals = world.sum_(sum(objective.counts(m, step) for m in micros))
            for i, micro in enumerate(micros):
                try:
                    with gradient_sync(model, i == len(micros) - 1):  # communicate on the last one only
                        with autocast(s.precision, device):
                            loss, metrics = objective.loss(micro, step, totals)
                        scaled = loss * world.size  # DDP averages gradients over processes; shares must add up
                        (scaler.scale(scaled) if scaler else scaled).backward()
                except (RuntimeError, MemoryError) as e:
                    what = out_of_memory(e)
                    if what is None:
                        raise
                    bar.close()
                    raise UserError(f"out of memory in step {step + 1}, a micro-batch of "
                                    f"{tuple(micro.input_ids.shape)} tokens ({what}); {s.memory_hint} "
                                    "(checkpoints already saved are kept)") from None
                window.add(metrics, objective.tokens(micro))
            grad_norm, finite = optimizer_step(optimizer, params, scaler, s.clip_grad_norm)
            step += 1
            if not finite:
                bad_steps += 1
                log.write({"step": step, "event": "non_finite_loss", "skipped_update": True})
                world.say(f"electra: warning: non-finite loss or gradients at step {step}; update skipped")
                if bad_steps >= s.max_bad_steps:
                    bar.close()
                    raise UserError(f"the loss was not finite for {bad_steps} steps in a row (up to step {step}); "
                                    "the last good checkpoint is kept; lower --lr, or use --precision fp32")
            else:
                bad_steps = 0
            window.steps += 1
            window.grad_norm = window.grad_norm + grad_norm.detach().float()
            bar.update(step)
            if step % s.log_every == 0 or step == s.max_steps:
                row = window.row(step, lr, started, world, solo_rate)
                if s.flops_per_step:
                    row["flops"] = float(f"{step * s.flops_per_step:.6g}")
                log.write(row)
                bar.show(row)
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
