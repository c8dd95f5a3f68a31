"""Fine-tuning steps of a sequence classifier (or a token tagger) on real sentences in length-bucketed
batches, with the encoder skipping the padding outside attention and without it, interleaved in one
process.

    .venv/bin/python benchmarks/unpadding.py --tokenizer RUN_OR_EXPORT/discriminator [--task ner]

Batches are built as `electra finetune` builds them by default (windows of 8 batches sorted by
length); prints the padded share, each round's seconds and the speed-up.
"""

from __future__ import annotations

import argparse
import csv
import random
import statistics
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=Path, default=Path("../shared/data/en/glue/SST-2/train.tsv"),
                    help="a TSV with a header and the sentence in its first column")
    ap.add_argument("--lines", type=int, default=4000, help="sentences read from the top of --train")
    ap.add_argument("--tokenizer", type=Path, required=True, help="a directory with tokenizer.json")
    ap.add_argument("--model", default="small")
    ap.add_argument("--task", default="classification", choices=["classification", "ner"],
                    help="ner: a loss on every real token (tag 0), padding ignored")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--batches", type=int, default=40, help="timed batches per round")
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args()

    import torch
    import torch.nn.functional as F
    from tokenizers import Tokenizer

    from electra.runtime import keep_freed_memory
    from electra.config import get_size
    from electra.finetune.model import FinetuneModel
    from electra.model.cpu import CpuEncoder, use_cpu_kernels

    class PaddedCpuEncoder(CpuEncoder):
        """The same CPU kernels, the padding kept."""

        def unpadding(self, *args, **kwargs):
            return None

    keep_freed_memory()  # as the `electra` command does
    tok = Tokenizer.from_file(str(args.tokenizer / "tokenizer.json"))
    with args.train.open(encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[1:args.lines + 1]
    encoded = [e.ids[:128] for e in tok.encode_batch([r[0] for r in rows])]

    random.seed(0)
    order = random.sample(range(len(encoded)), len(encoded))
    window, batches = 8 * args.batch_size, []
    for w in range(0, len(order), window):
        sorted_window = sorted(order[w:w + window], key=lambda i: len(encoded[i]))
        for b in range(0, len(sorted_window), args.batch_size):
            chunk = [encoded[i] for i in sorted_window[b:b + args.batch_size]]
            ids = torch.zeros(len(chunk), max(map(len, chunk)), dtype=torch.long)
            mask = torch.zeros_like(ids)
            for r, c in enumerate(chunk):
                ids[r, :len(c)], mask[r, :len(c)] = torch.tensor(c), 1
            batches.append((ids, mask))
    random.shuffle(batches)
    batches = batches[:args.batches]
    padded = 1 - sum(int(m.sum()) for _, m in batches) / sum(m.numel() for _, m in batches)
    print(f"{len(batches)} batches of up to {args.batch_size}, {padded:.1%} of their tokens padding")

    cfg = get_size(args.model).discriminator
    cfg.vocab_size = tok.get_vocab_size()
    torch.manual_seed(0)
    model = use_cpu_kernels(FinetuneModel(cfg, args.task, 2).train())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

    def seconds(skip_padding: bool) -> float:
        model.encoder.__class__ = CpuEncoder if skip_padding else PaddedCpuEncoder
        t0 = time.perf_counter()
        for ids, mask in batches:
            if args.task == "ner":  # tag 0 on every real token, padding ignored as `electra finetune` does
                labels = torch.zeros_like(ids).masked_fill(mask == 0, -100)
                loss = F.cross_entropy(model(ids, mask).flatten(0, 1), labels.flatten(), ignore_index=-100)
            else:
                loss = F.cross_entropy(model(ids, mask).view(len(ids), -1), torch.zeros(len(ids), dtype=torch.long))
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    seconds(True), seconds(False)  # warm-up
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.rounds):
        for skip in times:
            times[skip].append(seconds(skip))
    for skip, ts in times.items():
        print(f"skip padding {str(skip):5s}: " + " ".join(f"{t:.2f}" for t in ts) + f" s, median {statistics.median(ts):.2f}")
    print(f"speed-up {statistics.median(times[False]) / statistics.median(times[True]):.3f}x")


if __name__ == "__main__":
    main()
