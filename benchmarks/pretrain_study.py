"""Does pretraining pay off? ELECTRA against BERT-style MLM at equal compute, and both against no
pretraining, as the paper's Figure 3: the fine-tuning suite's average against pretraining FLOPs.

    .venv/bin/python benchmarks/pretrain_study.py --data DATA --out bench-runs/study/en \\
        --budgets 15m 1h 2h --arms electra mlm --seeds 0 1 2 --data-root ../shared/data
    .venv/bin/python benchmarks/pretrain_study.py ... --budgets 1h --arms electra-gdes electra-wwm

DATA is a directory made by `electra prepare` (English: a cased tokenizer, since NER needs case).
Each budget is wall-clock time of one single-thread ELECTRA job on this CPU: a short calibration run
measures ELECTRA's steps per second, and the ELECTRA arms get the steps that fill the budget. Every
other arm gets the steps that match ELECTRA's FLOPs (`electra.bench.flops`; the generator counted),
so runs are matched by compute, not by steps or by time. Each model is exported and fine-tuned by
benchmarks/finetune_suite.py (three seeds; scores from `electra finetune`'s dev evaluation); the
same encoder from random weights (the scratch arm) is fine-tuned once.

Resumable: finished pretraining runs (their export exists), finished fine-tuning runs (in each
suite's results.json) and every run scored in OUT/study.json are kept; run it again to continue. A
fresh checkout continues from the committed study.json: copy it into OUT. Writes OUT/study.json,
OUT/study.md (a table per budget) and OUT/study.png (suite average against FLOPs, one line per
objective, scratch as a horizontal line).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
MLM = ["--objective", "mlm"]
# name -> (YAML objective section, extra pretrain flags, peak lr or None for --lr / --mlm-lr): the arms a
# study can compare (a "generator_size" in the section is the YAML's top-level width multiplier)
ARMS = {
    "electra": ({}, [], None),
    "mlm": ({"kind": "mlm"}, MLM, None),
    "electra-gdes": ({"embedding_sharing": "gdes"}, [], None),
    "electra-wwm": ({"whole_word_mask": True}, [], None),
    "electra-t2": ({"temperature": 2.0}, [], None),  # the generator sampled hotter: the discriminator starts sooner
    "mlm-wwm": ({"kind": "mlm", "whole_word_mask": True}, MLM, None),
    "electra-t2-gdes": ({"temperature": 2.0, "embedding_sharing": "gdes"}, [], None),
    "electra-t2-wwm": ({"temperature": 2.0, "whole_word_mask": True}, [], None),
    # the peak rate, searched at the shortest budget (MLM gets its own best rate)
    "electra-t2-lr3e-3": ({"temperature": 2.0}, [], 3e-3),
    "mlm-lr5e-4": ({"kind": "mlm"}, MLM, 5e-4),
    "mlm-lr3e-3": ({"kind": "mlm"}, MLM, 3e-3),
    # a generator half the discriminator's width (tiny: 64, not 32): does it leave the unigram stage sooner?
    "electra-t2-g05": ({"temperature": 2.0, "generator_size": 0.5}, [], None),
    # a generator as wide as the discriminator, sampled at T=1: the released ELECTRA-Small's choice ("the generator
    # size is 1 for the ELECTRA-Small model", google-research/electra#39), for when a quarter-width one stays unigram
    "electra-g1": ({"generator_size": 1.0}, [], None),
    # the same at T=2: at T=1 a full-width generator's samples are hard, and the discriminator's recall was still at
    # the base rate 20% (English) and 47% (Chinese) into the 1-hour runs (session 15)
    "electra-t2-g1": ({"temperature": 2.0, "generator_size": 1.0}, [], None),
}
TASKS = {"en": ["SST-2", "MRPC", "STS-B", "CoNLL-2003"], "zh": ["ChnSentiCorp", "Weibo NER"]}


def cpu_name() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def seconds(text: str) -> float:
    from electra.config import parse_duration
    return parse_duration(text)


def electra(*args: str, threads: int = 1) -> None:
    cmd = [sys.executable, "-m", "electra", *map(str, args), "--threads", str(threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr[-2000:]}")


def spec_file(args, arm: str) -> Path:
    """A YAML of the study's model with the arm's objective settings."""
    import yaml

    section = dict(ARMS[arm][0])
    spec = {"model": args.size}
    if args.spec:
        spec = yaml.safe_load(Path(args.spec).read_text())
    if "generator_size" in section:
        spec["generator_size"] = section.pop("generator_size")
    spec = {**spec, "objective": {**spec.get("objective", {}), **section}}
    if section.get("kind") == "mlm":
        spec.pop("generator_size", None)
        spec.pop("generator", None)
    path = args.out / f"{arm}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=True))
    return path


def steps_per_second(args) -> float:
    """ELECTRA's optimizer steps per second in one thread, from a short run (kept in the state)."""
    run = args.out / "calibration"
    if not (run / "metrics.jsonl").is_file():
        electra("pretrain", "--data", str(args.data), "--model", str(spec_file(args, "electra")), "--out", str(run),
                "--batch-size", str(args.batch_size), "--max-steps", "60", "--log-every", "10", "--eval-every", "0",
                "--save-every", "1000000", "--lr", str(args.lr))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "elapsed_s" in r]
    first, last = rows[1], rows[-1]  # past the first rows' warm-up
    return (last["step"] - first["step"]) / (last["elapsed_s"] - first["elapsed_s"])


def flops_per_step(args, arm: str) -> float:
    from electra.bench import flops
    from electra.config import ElectraConfig, model_from_spec
    from electra.data.dataset import PretrainingData

    data = PretrainingData(args.data)
    cfg, yaml_data, _ = model_from_spec(str(spec_file(args, arm)))
    kind = ARMS[arm][0].get("kind", "electra")
    if kind == "mlm":
        cfg = ElectraConfig(cfg.discriminator, cfg.discriminator)
    mask_prob = yaml_data.get("objective", {}).get("mask_prob", 0.15)
    return args.batch_size * data.seq_len * flops.pretraining_step(cfg, data.seq_len, mask_prob, kind)


def pretrain(args, arm: str, budget: str, steps: int, lr: float) -> Path:
    """Pretrain one arm for `steps` (resumable); returns its export directory."""
    run = args.out / f"{arm}-{budget}"
    export = run / "export"
    if (export / "done").is_file():
        return export
    flags = ARMS[arm][1]
    resume = ["--resume"] if (run / "run.json").is_file() else []
    print(f"study: pretraining {arm} for {budget} ({steps:,} steps, lr {lr:g})", file=sys.stderr)
    electra("pretrain", "--data", str(args.data), "--model", str(spec_file(args, arm)), "--out", str(run),
            "--batch-size", str(args.batch_size), "--max-steps", str(steps), "--lr", str(lr), "--eval-every",
            str(max(1, steps // 5)), "--save-every", str(max(1, steps // 10)), *flags, *resume, threads=args.threads)
    electra("export", "--model", str(run), "--out", str(export), "--overwrite")
    (export / "done").write_text("")
    return export


# fine-tuning epochs per task: 3, and 10 for STS-B, as the official code's configure_finetuning.py (at 3
# epochs every tiny model, pretrained or not, scored Pearson 0.08-0.19); Weibo NER's 1,350 sentences
# need 20 (at 3 epochs every tiny model scores entity F1 0; BENCHMARKS "Fine-tuning")
EPOCHS = {"STS-B": 10, "Weibo NER": 20}


def suite(args, model: Path, out: Path, arms: list[str]) -> dict:
    tasks = TASKS[args.lang]
    for epochs in sorted({EPOCHS.get(t, 3) for t in tasks}):
        only = [t for t in tasks if EPOCHS.get(t, 3) == epochs]
        cmd = [sys.executable, str(HERE / "finetune_suite.py"), "--lang", args.lang, "--model", str(model), "--out",
               str(out), "--lr", str(args.ft_lr), "--epochs", str(epochs), "--seeds", *map(str, args.seeds),
               "--only", *only, "--jobs", str(args.jobs), "--data-root", str(args.data_root),
               "--size", str(spec_file(args, "electra")), "--arms", *arms, "--threads", "1"]
        proc = subprocess.run(cmd, text=True, stdout=subprocess.PIPE)
        if proc.returncode:
            raise SystemExit(f"failed: {' '.join(cmd)}")
    return json.loads((out / "results.json").read_text())


def scores(results: dict, arm: str) -> dict[str, list[float]]:
    """task -> the metric per seed (seeds in order) of one arm of a suite's results."""
    out = {}
    for name, row in results.items():
        if name.startswith("_"):
            continue
        seeds = sorted(row["runs"], key=int)
        if all(arm in row["runs"][s] for s in seeds):
            out[name] = [row["runs"][s][arm][row["metric"]] for s in seeds]
    return out


def summary(per_task: dict[str, list[float]], tasks: list[str]) -> dict:
    """Mean and sd per task, and the suite average (the mean over tasks of each seed's score)."""
    if not all(t in per_task for t in tasks):
        return {}
    n = min(len(per_task[t]) for t in tasks)
    averages = [statistics.mean(per_task[t][i] for t in tasks) for i in range(n)]
    sd = lambda xs: statistics.stdev(xs) if len(xs) > 1 else 0.0
    return {"tasks": {t: {"mean": statistics.mean(per_task[t]), "sd": sd(per_task[t]), "n": len(per_task[t])}
                      for t in tasks},
            "average": {"mean": statistics.mean(averages), "sd": sd(averages), "n": n}}


def report(args, study: dict) -> None:
    tasks = TASKS[args.lang]
    lines = [f"Machine: {study['machine']}; {study['date']}. Suite: {', '.join(tasks)} (dev), "
             f"{len(args.seeds)} seeds, mean ± sd; scores x100.", ""]
    scratch = study.get("scratch", {})
    # every budget and arm the study holds, not only this invocation's
    budgets = sorted({k.rsplit("-", 1)[1] for k in study["runs"]}, key=seconds)
    arms = sorted({k.rsplit("-", 1)[0] for k in study["runs"]}, key=list(ARMS).index)
    for budget in budgets:
        rows = [(arm, study["runs"].get(f"{arm}-{budget}")) for arm in arms]
        rows = [(a, r) for a, r in rows if r and r.get("summary")]
        if not rows:
            continue
        lines += [f"### {budget}", "", "| arm | steps | PFLOPs | " + " | ".join(tasks) + " | average |",
                  "|---|---|---|" + "---|" * (len(tasks) + 1)]
        for arm, r in rows + ([("scratch", {"steps": 0, "flops": 0, "summary": scratch})] if scratch else []):
            s = r["summary"]
            cells = [f"{100 * s['tasks'][t]['mean']:.1f} ± {100 * s['tasks'][t]['sd']:.1f}" for t in tasks]
            lines.append(f"| {arm} | {r['steps']:,} | {r['flops'] / 1e15:.2f} | " + " | ".join(cells)
                         + f" | **{100 * s['average']['mean']:.1f} ± {100 * s['average']['sd']:.1f}** |")
        lines.append("")
    (args.out / "study.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    plot(args, study)


def plot(args, study: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for arm in ARMS:
        points = sorted((r["flops"], r["summary"]["average"]) for k, r in study["runs"].items()
                        if k.rsplit("-", 1)[0] == arm and r.get("summary"))
        if points:
            ax.errorbar([p[0] for p in points], [100 * p[1]["mean"] for p in points],
                        yerr=[100 * p[1]["sd"] for p in points], marker="o", capsize=3, label=arm)
    if study.get("scratch"):
        ax.axhline(100 * study["scratch"]["average"]["mean"], color="grey", linestyle="--", label="no pretraining")
    ax.set_xscale("log")
    xs = [r["flops"] for r in study["runs"].values() if r.get("summary")]
    if xs:  # at least a decade, so that a single budget still gets readable ticks
        ax.set_xlim(min(xs) / 3, max(xs) * 3)
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("pretraining FLOPs")
    ax.set_ylabel(f"suite average (dev, x100; {len(args.seeds)} seeds)")
    ax.set_title(f"{args.lang}: {', '.join(TASKS[args.lang])}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out / "study.png", dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="a directory made by `electra prepare`")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--lang", choices=list(TASKS), default="en")
    ap.add_argument("--budgets", nargs="+", default=["15m", "1h", "2h"])
    ap.add_argument("--arms", nargs="+", choices=list(ARMS), default=["electra", "mlm"])
    ap.add_argument("--size", default="tiny", help="a registered size (or use --spec)")
    ap.add_argument("--spec", help="a YAML of model settings (a recipe) instead of --size")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3, help="ELECTRA's peak pretraining rate")
    ap.add_argument("--mlm-lr", type=float, help="MLM's peak rate (default: --lr)")
    ap.add_argument("--ft-lr", type=float, default=5e-4)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--threads", type=int, default=1,
                    help="threads per pretraining job: the budget stays one thread's steps, more threads only finish "
                         "it sooner (a 2-hour arm: 2 h 23 min measured with 1 beside another job, about 83 minutes estimated with 2 alone)")
    ap.add_argument("--jobs", type=int, default=1, help="fine-tuning runs at a time (one thread each)")
    ap.add_argument("--data-root", type=Path, default=HERE.parents[1] / "shared" / "data")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    state_path = args.out / "study.json"
    study = json.loads(state_path.read_text()) if state_path.is_file() else {"runs": {}}
    study.update(date=date.today().isoformat(), machine=f"{cpu_name()}, {platform.machine()}; one thread per job "
                 "(a pretraining run's own count, when --threads gave more, is its pretrain_threads)")

    def save(key: str | None = None):
        """Write the run `key` (and the top-level fields) into study.json as it is on disk now: two studies may
        share OUT (one lane per arm), so every other run is taken from disk, where the other lane may have
        finished it since we read it."""
        on_disk = json.loads(state_path.read_text()) if state_path.is_file() else {"runs": {}}
        if key:
            on_disk["runs"][key] = study["runs"][key]
        study["runs"] = {**study["runs"], **on_disk["runs"]}
        state_path.write_text(json.dumps({**on_disk, **study}, indent=2) + "\n")

    rate = study.get("electra_steps_per_s") or steps_per_second(args)
    study["electra_steps_per_s"] = rate
    save()
    electra_flops = flops_per_step(args, "electra")
    tasks = TASKS[args.lang]
    # a run whose suite is scored for every seed is finished, even when its files are gone (a fresh checkout
    # holding only the committed study.json)
    scored = lambda per_task: all(len(per_task.get(t, [])) >= len(args.seeds) for t in tasks)
    for budget in args.budgets:  # pretrain every arm of every budget first: the suites reuse the exports
        for arm in args.arms:
            key = f"{arm}-{budget}"
            if scored(study["runs"].get(key, {}).get("scores", {})):
                continue
            steps = math.ceil(seconds(budget) * rate)  # ELECTRA's steps in the budget
            if flops_per_step(args, arm) != electra_flops:
                steps = math.ceil(steps * electra_flops / flops_per_step(args, arm))  # the same FLOPs
            lr = ARMS[arm][2] or (args.mlm_lr if arm.startswith("mlm") and args.mlm_lr else args.lr)
            started = time.perf_counter()
            export = pretrain(args, arm, budget, steps, lr)
            run = study["runs"].setdefault(key, {})
            run.update(steps=steps, lr=lr, flops=steps * flops_per_step(args, arm), export=str(export))
            run.setdefault("pretrain_wall_s", round(time.perf_counter() - started, 1))
            run.setdefault("pretrain_threads", args.threads)
            save(key)
    for budget in args.budgets:
        for arm in args.arms:
            key = f"{arm}-{budget}"
            run = study["runs"][key]
            if scored(run.get("scores", {})):
                continue
            results = suite(args, Path(run["export"]) / "discriminator" if not arm.startswith("mlm")
                            else Path(run["export"]) / "generator", args.out / f"suite-{arm}-{budget}", ["pretrained"])
            run["scores"] = scores(results, "pretrained")
            run["summary"] = summary(run["scores"], tasks)
            save(key)
    # the scratch arm takes only the tokenizer from a model: always the study's first, as its suite recorded
    if not scored(study.get("scratch_scores", {})):
        source = study.setdefault("scratch_source", next(iter(study["runs"].values()))["export"])
        if not Path(source).is_dir():  # gone with a fresh checkout: any of this study's exports has the tokenizer
            source = next(r["export"] for r in study["runs"].values() if Path(r["export"]).is_dir())
        results = suite(args, Path(source) / "discriminator", args.out / "suite-scratch", ["scratch"])
        study["scratch_scores"] = scores(results, "scratch")
        study["scratch"] = summary(study["scratch_scores"], tasks)
        save()
    report(args, study)


if __name__ == "__main__":
    main()
