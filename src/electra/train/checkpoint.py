"""Checkpoints: `RUN/step-00001000/` with weights, optimizer, RNG states, data position and config.

Written under a temporary name and renamed, so a crash never leaves a half-written checkpoint
under the real name; the last K are kept.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

from electra.errors import UserError
from electra.pretrained import is_intact, step_dirs, write_model_dir

OPTIMIZER = "optimizer.pt"
TRAINER_STATE = "trainer_state.json"
RNG = "rng.pt"


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64))}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_tuples(state["python"]))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), 624, 0, 0.0))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(x):
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


def _fsync_dir(path: Path) -> None:
    for f in path.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())


def save_checkpoint(run: Path, step: int, *, model_state: dict, meta: dict, tokenizer_dir: Path,
                    optimizer_state: dict, trainer_state: dict, keep_last: int) -> Path:
    final = run / f"step-{step:08d}"
    tmp = run / f".step-{step:08d}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    write_model_dir(tmp, model_state, meta, tokenizer_dir)
    torch.save(optimizer_state, tmp / OPTIMIZER)
    torch.save(rng_state(), tmp / RNG)
    (tmp / TRAINER_STATE).write_text(json.dumps({"step": step, **trainer_state}, indent=2) + "\n")
    _fsync_dir(tmp)
    if final.exists():  # the same step saved again (e.g. stopped right after a resume)
        old = run / f".step-{step:08d}.old-{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    for stale in step_dirs(run)[max(1, keep_last):]:
        shutil.rmtree(stale, ignore_errors=True)
    return final


def remove_stale_temporaries(run: Path) -> None:
    """Half-written checkpoints from a crash (ours, never the user's files)."""
    for p in run.glob(".step-*.tmp-*"):
        shutil.rmtree(p, ignore_errors=True)


def resumable(ckpt: Path) -> bool:
    return is_intact(ckpt) and all((ckpt / f).is_file() for f in (OPTIMIZER, TRAINER_STATE, RNG))


def latest_resumable(run: Path) -> Path | None:
    """The newest checkpoint that can be resumed; corrupt newer ones are named and skipped, not deleted."""
    for ckpt in step_dirs(run):
        if resumable(ckpt):
            try:
                json.loads((ckpt / TRAINER_STATE).read_text())
                return ckpt
            except ValueError:
                pass
        print(f"electra: warning: checkpoint {ckpt} is incomplete or corrupt; falling back to an earlier one "
              "(it is left in place)", file=sys.stderr)
    return None


def load_training_state(ckpt: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    from electra.train.distributed import load_optimizer_state

    try:
        load_optimizer_state(model, optimizer, torch.load(ckpt / OPTIMIZER, map_location="cpu", weights_only=True))
        set_rng_state(torch.load(ckpt / RNG, map_location="cpu", weights_only=True))
        return json.loads((ckpt / TRAINER_STATE).read_text())
    except (RuntimeError, ValueError, KeyError, EOFError, OSError, AssertionError) as e:
        raise UserError(f"checkpoint {ckpt} cannot be resumed ({type(e).__name__}: {e}); "
                        "move it aside to resume from an earlier one") from None
