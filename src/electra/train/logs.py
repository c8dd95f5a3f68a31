"""Where training numbers go: metrics.jsonl, TensorBoard (when installed), PNG curves."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path

from tqdm import tqdm


class MetricsLog:
    """Appends one JSON object per logged step to RUN/metrics.jsonl (and TensorBoard if installed)."""

    def __init__(self, run: Path, resume_step: int | None = None, tensorboard: bool = True):
        self.path = run / "metrics.jsonl"
        if resume_step is not None and self.path.exists():
            # rows written after the checkpoint we resume from belong to a run that never happened
            kept = [line for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= resume_step]
            self.path.write_text("".join(line + "\n" for line in kept))
        elif resume_step is None and self.path.exists():
            self.path.unlink()
        self.file = open(self.path, "a", buffering=1)
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(str(run / "tensorboard"))
            except ImportError:  # tensorboard is optional
                pass

    def write(self, row: dict) -> None:
        self.file.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, row["step"])

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()


class NullLog:
    """What processes other than rank 0 log to: nothing."""

    def write(self, row: dict) -> None:
        pass

    def close(self) -> None:
        pass


class Progress:
    """Progress of a training run on stderr: a tqdm bar on a terminal; elsewhere (nohup, CI, SLURM, a
    pipe) one plain line every ELECTRA_PROGRESS_SECONDS (default 30 s) with step, loss, rate and ETA."""

    def __init__(self, total: int, initial: int, desc: str, enabled: bool = True):
        tty = sys.stderr.isatty()
        self.bar = tqdm(total=total, initial=initial, desc=desc, unit="step", disable=not (enabled and tty),
                        file=sys.stderr, dynamic_ncols=True)
        self.plain = enabled and not tty
        self.every_s = float(os.environ.get("ELECTRA_PROGRESS_SECONDS", "30"))
        self.total, self.first, self.desc = total, initial, desc
        self.started = self.last = time.perf_counter()
        self.row: dict = {}

    def show(self, row: dict) -> None:
        """The newest metrics row: its loss, accuracy and throughput are shown."""
        self.row = row
        shown = {k: f"{row[k]:.3f}" for k in ("loss", "disc_acc") if k in row}
        self.bar.set_postfix(**shown, tok_s=f"{row.get('tokens_per_s', 0):.0f}", refresh=False)

    def update(self, step: int) -> None:
        self.bar.update(1)
        now = time.perf_counter()
        if self.plain and (now - self.last >= self.every_s or step == self.total):
            self.last = now
            rate = (step - self.first) / max(now - self.started, 1e-9)
            parts = [f"{self.desc}: step {step:,}/{self.total:,} ({100 * step / self.total:.1f}%)"]
            parts += [f"{k} {self.row[k]:.4f}" for k in ("loss", "disc_acc") if k in self.row]
            if "tokens_per_s" in self.row:
                parts.append(f"{self.row['tokens_per_s']:,.0f} tokens/s")
            parts.append(f"{rate:.2f} steps/s, elapsed {_clock(now - self.started)}, "
                         f"ETA {_clock((self.total - step) / rate) if rate > 0 else '?'}")
            print(", ".join(parts), file=sys.stderr, flush=True)

    def close(self) -> None:
        self.bar.close()


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    return f"{h}h{rest // 60:02d}m" if h else f"{rest // 60}m{rest % 60:02d}s"


@contextlib.contextmanager
def training_log(run: Path, is_main: bool, panels: list[tuple[str, list[str]]], resume_step: int | None = None,
                 tensorboard: bool = True):
    """The metrics log of a training run (rank 0 writes; the others log nothing), closed and plotted
    into RUN/curves.png however the run ends."""
    log = MetricsLog(run, resume_step, tensorboard) if is_main else NullLog()
    try:
        yield log
    finally:
        log.close()
        if is_main:
            plot_curves(run, panels)


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def plot_curves(run: Path, panels: list[tuple[str, list[str]]], out_name: str = "curves.png") -> Path | None:
    """One panel per (title, metric keys) from metrics.jsonl; returns the PNG path."""
    rows = read_metrics(run / "metrics.jsonl")
    if not rows:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = []
    for title, keys in panels:
        lines = [(key, pts) for key in keys
                 if (pts := [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))])]
        if lines:  # an objective without these metrics (MLM: the discriminator's) gets no panel
            series.append((title, lines))
    if not series:
        return None
    fig, axes = plt.subplots(1, len(series), figsize=(4.2 * len(series), 3.4), squeeze=False)
    for ax, (title, lines) in zip(axes[0], series):
        for key, pts in lines:
            ax.plot(*zip(*pts), label=key, marker="." if len(pts) < 30 else None)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = run / out_name
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
