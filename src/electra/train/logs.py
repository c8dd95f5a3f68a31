"""Where training numbers go: metrics.jsonl, TensorBoard (when installed), PNG curves."""

from __future__ import annotations

import json
from pathlib import Path


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

    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4))
    for ax, (title, keys) in zip(list(axes) if len(panels) > 1 else [axes], panels):
        for key in keys:
            pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
            if pts:
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
