"""Multi-process training through PyTorch's own engine: `torchrun` starts the processes and sets
RANK/WORLD_SIZE/LOCAL_RANK; we join its process group (NCCL on GPUs, gloo on CPU) and wrap the
model in DistributedDataParallel. A plain `electra pretrain` is a world of one and touches none of it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from electra.errors import UserError


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    distributed: bool = False  # started by torchrun: in a process group, even a group of one

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self) -> torch.device:
        if torch.cuda.is_available():
            return torch.device("cuda", self.local_rank)
        return torch.device("cpu")

    # --- collectives; each is a no-op in a world of one ------------------------------------------

    def sum_(self, t: torch.Tensor) -> torch.Tensor:
        if self.distributed:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every rank if it is true on any (stop signals, time budgets, errors)."""
        if not self.distributed:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def from_main(self, fn):
        """Run `fn` on rank 0 only and give its result (or its UserError) to every rank."""
        result, error = None, None
        if self.is_main:
            try:
                result = fn()
            except UserError as e:
                error = str(e)
        if self.distributed:
            box = [(result, error)]
            dist.broadcast_object_list(box, src=0)
            result, error = box[0]
        if error is not None:
            raise UserError(error)
        return result

    def check_same(self, what: dict, description: str) -> None:
        """Every rank must have been started with the same settings and data."""
        if not self.distributed:
            return
        digest = hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()
        gathered: list = [None] * self.size
        dist.all_gather_object(gathered, digest)
        differing = [r for r, d in enumerate(gathered) if d != gathered[0]]
        if differing:
            raise UserError(f"ranks {', '.join(map(str, differing))} disagree with rank 0 on {description}; "
                            "start every process with the same command line and the same files")

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def describe(self, device: torch.device, strategy: str) -> str:
        """Where training runs, for the first line a run prints."""
        if not self.distributed:
            return str(device)
        return f"{self.size} process{'es' if self.size > 1 else ''} ({device.type}, {strategy})"

    def say(self, message: str) -> None:
        """Print to stderr from rank 0 only."""
        if self.is_main:
            print(message, file=sys.stderr)


def join() -> World:
    """Join torchrun's process group when started by it (even with one process, so that one GPU
    runs the same DDP/NCCL path as many); a plain world of one otherwise."""
    size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if size <= 1 and "TORCHELASTIC_RUN_ID" not in os.environ:
        return World()
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_initialized():
        return World(rank, size, local_rank, distributed=True)
    missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(v)]
    if missing:
        raise UserError(f"WORLD_SIZE is {size} but {' and '.join(missing)} not set; start the processes with "
                        "torchrun (--nproc-per-node, and --rdzv-endpoint HOST:PORT across nodes)")
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    try:
        dist.init_process_group(backend, timeout=timedelta(minutes=int(os.environ.get("ELECTRA_DIST_TIMEOUT_MIN", "30"))))
    except Exception as e:  # noqa: BLE001 - rendezvous failures come as several exception types
        raise UserError(f"cannot join the process group ({type(e).__name__}: {e}); check the rendezvous "
                        "endpoint and that every node can reach it") from None
    return World(rank, size, local_rank, distributed=True)


def leave(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def joined():
    """The world of this process (see `join`), left however the work ends."""
    world = join()
    try:
        yield world
        # no process hangs up while another still works (rank 0 writing its plots): gloo aborts a process
        # (SIGABRT, "Connection reset by peer") whose peer closed the connection under it
        world.barrier()
    finally:
        leave(world)


# --- the wrapped model: gradient synchronisation and whole states ---------------------------------

@contextlib.contextmanager
def gradient_sync(module: torch.nn.Module, enabled: bool):
    """Skip the gradient all-reduce (DDP) or reduce-scatter (FSDP) on non-final micro-batches."""
    if enabled:
        yield
    elif hasattr(module, "no_sync"):
        with module.no_sync():
            yield
    elif hasattr(module, "set_requires_gradient_sync"):
        module.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            module.set_requires_gradient_sync(True)
    else:
        yield


def is_sharded(module: torch.nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule
    return isinstance(module, FSDPModule)


def full_model_state(model: torch.nn.Module) -> dict:
    """The whole model state on CPU (collective under FSDP; the result is on rank 0 only)."""
    if is_sharded(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return model.state_dict()


def full_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Whole (unsharded) model and optimizer state, on CPU, keyed by parameter name; under FSDP this is
    collective (every rank calls it) and the result is on rank 0 only. The same format for every
    strategy and world size, so any checkpoint resumes under any other."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True) if is_sharded(model) else None
    return full_model_state(model), get_optimizer_state_dict(model, optimizer, options=options)


def load_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
    if state.get("state") and all(isinstance(k, int) for k in state["state"]):
        optimizer.load_state_dict(state)  # checkpoints written before names were used
        return
    options = StateDictOptions(full_state_dict=True) if is_sharded(model) else None
    set_optimizer_state_dict(model, optimizer, state, options=options)
