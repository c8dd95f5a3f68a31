"""Task-adaptive pretraining (Gururangan et al. 2020) with `electra pretrain --init`: continue pretraining a
model on the unlabeled text of a task's training set, then fine-tune; compare with fine-tuning the same
model without that step (same seeds and settings).

    .venv/bin/python benchmarks/tapt.py --model RUN_OR_EXPORT --out bench-runs/tapt --steps 3000 \\
        --tasks SST-2 CoNLL-2003 --seeds 0 1 2 --data-root ../shared/data

Per task: the training texts (SST-2's first --max-train sentences; CoNLL's sentences, words joined) become
a corpus, prepared with the model's tokenizer; the model is pretrained further on it for --steps (3,000
steps of 32 are about 15 minutes of one thread for `tiny`; a full warm-up and decay schedule, a fresh
optimizer, the model's objective (--objective: ELECTRA's, with the generator too when the model has
one, or the masked LM's), and fine-tuned by benchmarks/finetune_suite.py next to the model as it was. Finished steps are kept.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from pretrain_study import electra  # benchmarks/ is on the path when run as a script

HERE = Path(__file__).resolve().parent
TEXTS = {"SST-2": "en/glue/SST-2/train.tsv", "CoNLL-2003": "en/conll2003/train.txt"}


def corpus(task: str, source: Path, out: Path, max_train: int) -> Path:
    """The task's training texts, one per line, each its own document (a blank line between)."""
    lines = source.read_text(encoding="utf-8").splitlines()
    if task == "SST-2":
        texts = [line.split("\t")[0] for line in lines[1:max_train + 1]]
    else:  # CoNLL: a sentence per blank-line-separated block, its words joined
        texts, words = [], []
        for line in lines + [""]:
            if not line.strip() or line.startswith("-DOCSTART-"):
                if words:
                    texts.append(" ".join(words))
                words = []
            else:
                words.append(line.split()[0])
    out.write_text("\n\n".join(t for t in texts if t.strip()) + "\n", encoding="utf-8")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="the pretrained run or export to adapt")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--tasks", nargs="+", default=list(TEXTS), choices=list(TEXTS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--max-train", type=int, default=20000)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=5e-4, help="the continued pretraining's peak rate")
    ap.add_argument("--spec", help="a YAML whose objective section the continued pretraining keeps (e.g. the "
                    "study's electra-t2.yaml: the generator sampled at temperature 2); the architecture is --model's")
    ap.add_argument("--objective", choices=["electra", "mlm"], default="electra",
                    help="the continued pretraining's objective: the one the model was pretrained with")
    ap.add_argument("--data-root", type=Path, default=HERE.parents[1] / "shared" / "data")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    from electra.pretrained import resolve

    tokenizer = resolve(args.model)
    summary = {}
    for task in args.tasks:
        root = args.out / task
        root.mkdir(exist_ok=True)
        done = root / "run" / "done"
        if not done.is_file():
            text = corpus(task, args.data_root / TEXTS[task], root / "corpus.txt", args.max_train)
            if not (root / "data" / "manifest.json").is_file():
                cmd = [sys.executable, "-m", "electra", "prepare", "--corpus", str(text), "--tokenizer", str(tokenizer),
                       "--out", str(root / "data"), "--workers", "1", "--overwrite"]  # (prepare has --workers, not --threads)
                if subprocess.run(cmd, capture_output=True).returncode:
                    raise SystemExit(f"failed: {' '.join(cmd)}")
            resume = ["--resume"] if (root / "run" / "run.json").is_file() else ["--init", args.model]
            electra("pretrain", "--data", root / "data", "--out", root / "run", "--max-steps", args.steps, "--batch-size", args.batch_size, "--lr", args.lr, "--eval-every", "0",
                    "--save-every", "500", "--objective", args.objective, *resume,
                    *(["--model", args.spec] if args.spec else []))
            done.write_text("")
        rows = {}
        for arm, model in (("tapt", root / "run"), ("base", Path(args.model))):
            out = root / f"suite-{arm}"
            cmd = [sys.executable, str(HERE / "finetune_suite.py"), "--lang", "en", "--model", str(model), "--out",
                   str(out), "--lr", "5e-4", "--epochs", "3", "--seeds", *map(str, args.seeds), "--only", task,
                   "--arms", "pretrained", "--threads", "1", "--data-root", str(args.data_root)]
            if subprocess.run(cmd).returncode:
                raise SystemExit(f"failed: {' '.join(cmd)}")
            result = json.loads((out / "results.json").read_text())[task]
            rows[arm] = [result["runs"][s]["pretrained"][result["metric"]] for s in sorted(result["runs"], key=int)]
        summary[task] = rows
        (args.out / "tapt.json").write_text(json.dumps(summary, indent=2) + "\n")
        print(task, {arm: sum(v) / len(v) for arm, v in rows.items()}, file=sys.stderr)
    report(summary, args.out)


def report(summary: dict, out: Path) -> None:
    """OUT/tapt.md (mean ± sd, the paired difference, seeds won, paired t-test p) and OUT/tapt.png (each seed's
    pair of scores joined by a line)."""
    import statistics

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from robustness import paired_cells

    lines = ["| task | seeds | TAPT | no TAPT | TAPT - no TAPT (paired, mean ± sd) | seeds TAPT wins | paired t-test p |",
             "|---|---|---|---|---|---|---|"]
    fig, axes = plt.subplots(1, len(summary), figsize=(3.2 * len(summary), 3.2), squeeze=False)
    for ax, (task, rows) in zip(axes[0], summary.items()):
        tapt, base = rows["tapt"], rows["base"]
        lines.append(f"| {task} | {len(tapt)} | " + paired_cells(tapt, base))
        for b, a in zip(base, tapt):
            ax.plot([0, 1], [b, a], "o-", color="tab:blue", alpha=0.6)
        ax.plot([0, 1], [statistics.mean(base), statistics.mean(tapt)], "s-", color="black", label="mean")
        ax.set_xticks([0, 1], ["no TAPT", "TAPT"])
        ax.set_xlim(-0.3, 1.3)
        ax.set_title(task, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("dev score (accuracy / F1)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "tapt.png", dpi=110)
    plt.close(fig)
    (out / "tapt.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
