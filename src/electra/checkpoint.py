"""The directory format, in one place: a model directory, a run's checkpoints, their training state.

A model directory (an exported model, a fine-tuned model, or a checkpoint) holds `electra.json` (what
it is and its resolved configuration), `model.safetensors` and the tokenizer files. A run directory
holds checkpoints `step-00001000/`: a model directory plus `optimizer.pt`, `rng.pt` and
`trainer_state.json` (step, data position). A checkpoint is written under a temporary name and renamed,
so a crash never leaves a half-written checkpoint under the real name; the last K are kept.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer

from electra.config import read_json
from electra.data.tokenizer import TOKENIZER_FILES, is_lowercase, save_tokenizer
from electra.errors import UserError

ELECTRA_JSON = "electra.json"
WEIGHTS = "model.safetensors"
FORMAT_VERSION = 1
OPTIMIZER = "optimizer.pt"
TRAINER_STATE = "trainer_state.json"
RNG = "rng.pt"

_STEP_DIR = re.compile(r"^step-(\d{8})$")


def write_model_dir(directory: Path, state: dict[str, torch.Tensor], meta: dict, tokenizer_dir: Path | None,
                    tokenizer: Tokenizer | None = None) -> None:
    """Write weights, electra.json and tokenizer files into a fresh directory."""
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().to("cpu").contiguous() for k, v in state.items()}, str(directory / WEIGHTS),
              metadata={"format": "pt"})
    if tokenizer_dir is not None:
        for name in TOKENIZER_FILES:
            if (tokenizer_dir / name).is_file():
                shutil.copyfile(tokenizer_dir / name, directory / name)
    elif tokenizer is not None:
        save_tokenizer(tokenizer, directory, lowercase=is_lowercase(tokenizer))
    (directory / ELECTRA_JSON).write_text(json.dumps({"format_version": FORMAT_VERSION, **meta}, indent=2) + "\n",
                                          encoding="utf-8")


def read_weights(directory: Path, what: str = "the checkpoint") -> dict[str, torch.Tensor]:
    """The tensors of DIRECTORY/model.safetensors, or one clear line when they cannot be read."""
    try:
        return load_file(str(directory / WEIGHTS))
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"the weights {directory / WEIGHTS} cannot be read ({e}); {what} may be "
                        "truncated or corrupt") from None


def step_dirs(run: Path) -> list[Path]:
    """Checkpoint directories of a run, newest first."""
    if not run.is_dir():
        return []
    found = [p for p in run.iterdir() if p.is_dir() and _STEP_DIR.match(p.name)]
    return sorted(found, key=lambda p: p.name, reverse=True)


def is_intact(ckpt: Path) -> bool:
    """Its config parses and every tensor of its weights file lies inside the file (a truncated copy fails)."""
    try:
        read_json(ckpt / ELECTRA_JSON, "checkpoint config")
        with open(ckpt / WEIGHTS, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n))
            size = os.fstat(f.fileno()).st_size
        ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
        return 8 + n + max(ends, default=0) == size
    except (UserError, OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


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
    # the last K intact checkpoints up to this one are kept; newer, corrupt ones (skipped on resume) are
    # the user's to inspect and take no slot
    kept = [d for d in step_dirs(run) if int(d.name[5:]) <= step and is_intact(d)]
    for stale in kept[max(1, keep_last):]:
        shutil.rmtree(stale, ignore_errors=True)
    return final


def remove_stale_temporaries(run: Path) -> None:
    """Half-written checkpoints from a crash (ours, never the user's files)."""
    for p in run.glob(".step-*.tmp-*"):
        shutil.rmtree(p, ignore_errors=True)


def resumable(ckpt: Path) -> bool:
    """Intact, with the optimizer, RNG and trainer state that resuming needs."""
    if not (is_intact(ckpt) and all((ckpt / f).is_file() for f in (OPTIMIZER, TRAINER_STATE, RNG))):
        return False
    try:
        json.loads((ckpt / TRAINER_STATE).read_text())
        return True
    except ValueError:
        return False


def newest_checkpoint(run: Path, *, for_resume: bool = False, warn: bool = True) -> Path | None:
    """The newest intact checkpoint of a run (resumable, with `for_resume`); corrupt newer ones are
    named and skipped, never deleted."""
    for ckpt in step_dirs(run):
        if resumable(ckpt) if for_resume else is_intact(ckpt):
            return ckpt
        if warn:
            print(f"electra: warning: checkpoint {ckpt} is incomplete or corrupt; using an earlier one "
                  "(it is left in place)", file=sys.stderr)
    return None


def read_training_state(ckpt: Path, load_optimizer: Callable[[dict], None]) -> dict:
    """Give the saved optimizer state to `load_optimizer`, restore the RNG states; returns the trainer state."""
    try:
        load_optimizer(torch.load(ckpt / OPTIMIZER, map_location="cpu", weights_only=True))
        set_rng_state(torch.load(ckpt / RNG, map_location="cpu", weights_only=True))
        return json.loads((ckpt / TRAINER_STATE).read_text())
    except (RuntimeError, ValueError, KeyError, EOFError, OSError, AssertionError) as e:
        raise UserError(f"checkpoint {ckpt} cannot be resumed ({type(e).__name__}: {e}); "
                        "move it aside to resume from an earlier one") from None
