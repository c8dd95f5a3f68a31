"""Pretraining quality on real text: does the exported discriminator, loaded in Hugging Face
`transformers`, tell randomly replaced tokens from original ones in unseen Wikipedia text?

    .venv/bin/python benchmarks/pretrain_quality.py --size tiny --steps 2000 --batch-size 32
    .venv/bin/python benchmarks/pretrain_quality.py --size benchmarks/tiny_hot_sampling.yaml --vocab-size 8192
    .venv/bin/python benchmarks/pretrain_quality.py --size small --time-budget 1h --batch-size 32

Trains a tokenizer and prepares the first --files files of ../shared/data/en/wiki, pretrains,
exports, then measures ROC AUC (scikit-learn) of the transformers discriminator's logits on
--eval-file (a file the model never saw), with 15% of tokens replaced uniformly at random.
Writes OUT/quality.json; the run's curves are in OUT/run/curves.png.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

WIKI = Path(__file__).resolve().parents[2] / "shared" / "data" / "en" / "wiki"


def hf_auc(export_dir: Path, eval_data: Path, n_examples: int, seed: int = 0) -> dict:
    from sklearn.metrics import roc_auc_score
    from transformers import ElectraForPreTraining

    from electra.data.dataset import PretrainingData

    model = ElectraForPreTraining.from_pretrained(export_dir).eval()
    data = PretrainingData(eval_data, "train")
    rng = np.random.default_rng(seed)
    vocab = model.config.vocab_size
    scores, labels = [], []
    with torch.no_grad():
        for start in range(0, min(n_examples, len(data)), 32):
            b = data.batch(np.arange(start, min(start + 32, n_examples, len(data))))
            ids = b.input_ids.numpy().copy()
            regular = (ids >= 5) & (b.attention_mask.numpy() == 1)
            random_ids = rng.integers(5, vocab, size=ids.shape)
            replace = regular & (rng.random(ids.shape) < 0.15) & (random_ids != ids)
            ids[replace] = random_ids[replace]
            logits = model(input_ids=torch.from_numpy(ids), attention_mask=b.attention_mask,
                           token_type_ids=b.token_type_ids).logits.numpy()
            scores.append(logits[regular])
            labels.append(replace[regular])
    y, s = np.concatenate(labels), np.concatenate(scores)
    return {"auc": float(roc_auc_score(y, s)), "tokens": int(len(y)), "replaced": int(y.sum())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="tiny", help="a size or a YAML file of settings "
                    "(e.g. benchmarks/tiny_hot_sampling.yaml)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--files", type=int, default=10)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--time-budget", default=None)
    ap.add_argument("--vocab-size", type=int, default=30522)
    ap.add_argument("--eval-file", default=str(WIKI / "wiki_100.txt"))
    ap.add_argument("--eval-examples", type=int, default=500)
    ap.add_argument("--out", type=Path, default=Path("bench-runs/quality"))
    args = ap.parse_args()
    if not WIKI.is_dir():
        sys.exit(f"needs {WIKI} (the shared Wikipedia text)")

    from electra.cli import run
    from electra.commands import COMMANDS

    out = args.out
    files = [str(p) for p in sorted(WIKI.glob("wiki_*.txt"))[: args.files]]
    if not (out / "tok" / "tokenizer.json").is_file():
        run(COMMANDS, ["tokenizer", "train", "--corpus", *files, "--vocab-size", str(args.vocab_size),
                       "--out", str(out / "tok")])
    if not (out / "data" / "manifest.json").is_file():
        run(COMMANDS, ["prepare", "--corpus", *files, "--tokenizer", str(out / "tok"), "--out", str(out / "data")])
    if not (out / "eval" / "manifest.json").is_file():
        run(COMMANDS, ["prepare", "--corpus", args.eval_file, "--tokenizer", str(out / "tok"),
                       "--out", str(out / "eval"), "--val-every", "0"])
    started = time.time()
    cmd = ["pretrain", "--data", str(out / "data"), "--model", args.size, "--out", str(out / "run"),
           "--max-steps", str(args.steps), "--batch-size", str(args.batch_size), "--save-every", "500",
           "--eval-every", "250", "--seed", str(args.seed), "--resume"]
    if args.time_budget:
        cmd += ["--time-budget", args.time_budget]
    code = run(COMMANDS, cmd)
    if code:
        sys.exit(code)
    minutes = (time.time() - started) / 60
    run(COMMANDS, ["export", "--model", str(out / "run"), "--out", str(out / "export"), "--overwrite"])
    result = hf_auc(out / "export" / "discriminator", out / "eval", args.eval_examples)
    rows = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "disc_loss" in r]
    result.update(size=args.size, seed=args.seed, steps=train_rows[-1]["step"], batch_size=args.batch_size, minutes=round(minutes, 1),
                  disc_loss_first=train_rows[0]["disc_loss"], disc_loss_last=train_rows[-1]["disc_loss"],
                  tokens_per_s_median=float(np.median([r["tokens_per_s"] for r in train_rows])),
                  machine=f"{platform.machine()} {torch.get_num_threads()} threads", date=str(date.today()))
    (out / "quality.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
