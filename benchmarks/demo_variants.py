"""Which recipe makes the best demo? Runs `electra demo`'s whole pipeline (bundled sample, tokenizer,
pretraining, the display) with each recipe and seed, and collects what a person sees: the rank of each
swapped word among its sentence's pieces (the demo's target: top 2 in every sentence), the held-out ROC
AUC for random replacements (drawn uniformly, and as often as they occur in the text), whether fill-mask
was shown, and the minutes.

    .venv/bin/python benchmarks/demo_variants.py --out bench-runs/demo-variants \\
        --recipes demo benchmarks/demo_variants/*.yaml --seeds 0 1 --threads 1

Finished runs are kept in OUT/results.json; run again to go on. Writes OUT/demo_variants.md.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--recipes", nargs="+", default=["demo"], help="recipe names or YAML files")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    import torch

    from electra.demo import run_demo

    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "results.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    for recipe in args.recipes:
        name = Path(recipe).stem
        for seed in args.seeds:
            key = f"{name}/{seed}"
            if key in results:
                continue
            started = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()) as shown:
                r = run_demo(args.out / f"{name}-{seed}", None, None, None, progress=False, model=recipe, seed=seed)
            results[key] = {"ranks": r["ranks"], "auc": r["auc"], "auc_frequent": r["auc_frequent"],
                            "fill_mask_shown": r["fill_mask_shown"],
                            "minutes": round((time.perf_counter() - started) / 60, 1), "threads": args.threads}
            (args.out / f"{name}-{seed}.txt").write_text(shown.getvalue())
            path.write_text(json.dumps(results, indent=2) + "\n")
            print(key, results[key])
    lines = ["| recipe | seeds | minutes | swapped word's rank per sentence (per seed) | top 2 in all 4 | AUC | AUC, frequency-matched replacements | fill-mask shown |",
             "|---|---|---|---|---|---|---|---|"]
    for name in dict.fromkeys(k.split("/")[0] for k in results):
        runs = [v for k, v in results.items() if k.split("/")[0] == name]
        aucs = [r["auc"] for r in runs]
        sd = statistics.stdev(aucs) if len(aucs) > 1 else 0.0
        frequent = [r["auc_frequent"] for r in runs if "auc_frequent" in r]  # recorded since session 14
        lines.append(f"| {name} | {len(runs)} | {statistics.median(r['minutes'] for r in runs):.1f} | "
                     f"{'; '.join(' '.join(map(str, r['ranks'])) for r in runs)} | "
                     f"{sum(max(r['ranks']) <= 2 for r in runs)}/{len(runs)} | {statistics.mean(aucs):.3f} ± {sd:.3f} | "
                     f"{f'{statistics.mean(frequent):.3f} ({len(frequent)})' if frequent else '-'} | "
                     f"{sum(r['fill_mask_shown'] for r in runs)}/{len(runs)} |")
    (args.out / "demo_variants.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
