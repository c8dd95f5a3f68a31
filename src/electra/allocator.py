"""Keep freed memory in the process on Linux (glibc), where CPU training is otherwise page-faulting.

glibc serves blocks above 128 KB with mmap and returns them to the OS when freed (and trims the heap
top above 128 KB), so each large temporary of a training step -- activations, the generator's
(masked positions x vocabulary) softmax -- arrives as fresh pages that the kernel zero-fills on first
touch. For `small` on a CPU that was a tenth of the step (BENCHMARKS.md). Served from the heap and
kept there, the same blocks are reused step after step. Memory is then not returned to the OS
before the process ends, which suits a training or inference run.
"""

from __future__ import annotations

import ctypes
import os
import platform

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # mallopt parameters (malloc.h)


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory for reuse; True if it did. The user's own MALLOC_* settings win."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    if any(k.startswith("MALLOC_") for k in os.environ):  # the user tunes glibc: leave it to them
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    # mallopt returns 1 on success
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
