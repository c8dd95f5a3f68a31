"""The serving backend alone (no HTTP) on random batches of 1-64 sentences, as `electra serve` runs them
(freed memory kept, trimmed every 10 s), printing every 10 s the resident memory and glibc's own counters
(`mallinfo2`: memory in use, and the heap taken from the OS): where a soak's growth lives.
BENCHMARKS.md, "Where the soak's memory went".

    .venv/bin/python benchmarks/serve_memory.py --model ft/sst2 --seconds 300 --threads 1 [--onednn] [--same-batch]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import random
import time

from serve_load import DEFAULT_DATA, rss_mb, sentences


class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a fine-tuned model directory")
    ap.add_argument("--seconds", type=float, default=300)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--onednn", action="store_true", help="leave oneDNN on (as `electra serve` did before session 12)")
    ap.add_argument("--same-batch", action="store_true", help="the same 32 sentences every batch (one shape)")
    args = ap.parse_args()
    import torch

    from electra.runtime import _glibc, keep_freed_memory
    from electra.serve.backends import load_backend

    keep_freed_memory()  # as the electra command does
    torch.set_num_threads(args.threads)
    torch.backends.mkldnn.enabled = args.onednn
    backend = load_backend(args.model, "torch")
    libc = _glibc()
    if libc is not None:
        libc.mallinfo2.restype = MallInfo2
    texts, rng = sentences(DEFAULT_DATA), random.Random(0)
    start = last = time.time()
    batches = 0
    while time.time() - start < args.seconds:
        backend.run("predict", texts[:32] if args.same_batch else rng.sample(texts, rng.randint(1, 64)), {})
        batches += 1
        if time.time() - last >= 10:
            last = time.time()
            row = {"s": round(last - start), "batches": batches, "rss_mb": round(rss_mb(os.getpid()), 1)}
            if libc is not None:
                info = libc.mallinfo2()
                row.update(in_use_mb=info.uordblks >> 20, heap_mb=info.arena >> 20, free_in_heap_mb=info.fordblks >> 20)
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
