"""The process the commands run in: CPU threads, the memory allocator, the device and its precision.

Threads. PyTorch starts one intra-op thread per core it can *see*: in a container whose CPU quota is
smaller than the host, or beside another busy job, its OpenMP threads then spin for cores they do not
get, and a training step becomes 4-13x slower (BENCHMARKS.md, "Threads"). The commands instead use the
CPUs this process may run on (its affinity mask), at most the cgroup's CPU quota, shared between the
processes torchrun started on this node; `--threads N` (or OMP_NUM_THREADS) decides otherwise.

Allocator. glibc serves blocks above 128 KB with mmap and returns them to the OS when freed, so each
large temporary of a training step arrives as fresh pages that the kernel zero-fills on first touch:
a tenth of a CPU step for `small` (BENCHMARKS.md). Kept in the heap, the same blocks are reused.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import math
import os
import platform
import sys
from pathlib import Path

from electra.errors import UserError

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # mallopt parameters (malloc.h)


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory for reuse; True if it did. The user's own MALLOC_* settings win."""
    if any(k.startswith("MALLOC_") for k in os.environ):  # the user tunes glibc: leave it to them
        return False
    libc = _glibc()
    # mallopt returns 1 on success
    return libc is not None and bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1))


def release_freed_memory() -> bool:
    """Hand the free pages glibc keeps back to the OS (malloc_trim); True if it released any. With
    `keep_freed_memory` a long-running server otherwise keeps the peak of its largest batches for good
    (session 11's soak, oneDNN still on, grew 448 -> 691 MB untrimmed and +6.6% trimmed; BENCHMARKS.md)."""
    libc = _glibc()
    return libc is not None and bool(libc.malloc_trim(0))


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """glibc, loaded once (a CDLL and its function pointers are objects: not one more per call)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim  # noqa: B018 - a glibc without it is treated as none
        return libc
    except (OSError, AttributeError):
        return None


def cgroup_cpu_limit(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs' worth of time the cgroup quota allows (cgroup v2 cpu.max, or v1 cfs quota/period); None: no quota."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def usable_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by the cgroup quota (rounded up)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cpus = os.cpu_count() or 1
    limit = cgroup_cpu_limit()
    if limit is not None:
        cpus = min(cpus, max(1, math.ceil(limit)))
    return max(1, cpus)


def default_threads() -> int:
    """The usable CPUs shared evenly between the processes torchrun started on this node."""
    try:
        local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        local = 1
    return max(1, usable_cpus() // local)


def set_threads(threads: int | None) -> int:
    """Set PyTorch's intra-op threads: `threads`, else OMP_NUM_THREADS when the user set it, else
    `default_threads()`. Returns the number set."""
    import torch

    if threads is not None and threads <= 0:
        raise UserError(f"--threads must be positive (got {threads})")
    if threads is None:
        env = os.environ.get("OMP_NUM_THREADS", "")
        threads = int(env) if env.isdigit() and int(env) > 0 else default_threads()
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads


def warn_if_busy(threads: int) -> None:
    """One line when other processes already keep the CPUs busy: then fewer threads run faster."""
    try:
        load = os.getloadavg()[0]
    except OSError:
        return
    cpus = usable_cpus()
    if sys.stderr.isatty() and threads > 1 and load > cpus - threads + 0.75:
        print(f"electra: note: the CPUs are busy (load {load:.1f} on {cpus} CPUs) and this job uses {threads} "
              "threads; if it runs slowly, give it its share with --threads", file=sys.stderr)


def out_of_memory(e: BaseException) -> str | None:
    """The first line of an out-of-memory error (GPU or CPU allocator), or None for any other error."""
    import torch

    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if isinstance(e, (torch.OutOfMemoryError, MemoryError)):
        return text
    if isinstance(e, RuntimeError) and any(s in str(e) for s in ("can't allocate memory", "not enough memory",
                                                                 "out of memory")):
        return text
    return None


def pick_device(precision: str = "fp32"):
    """The GPU when there is one, else the CPU; refuses a precision the device lacks."""
    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    check_precision(precision, device)
    return device


def check_precision(precision: str, device) -> None:
    import torch

    if precision == "fp16" and device.type != "cuda":
        raise UserError("--precision fp16 needs a CUDA GPU; use fp32 (or bf16 on a CPU that has it)")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError("this GPU has no bf16; use --precision fp16 or fp32")


def autocast(precision: str, device):
    """Mixed precision for bf16/fp16; nothing for fp32."""
    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)
