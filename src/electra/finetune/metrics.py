"""Task metrics from the libraries the field uses: scikit-learn, scipy, seqeval; SQuAD in squad.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np

MAIN_METRIC = {"prompt": "accuracy", "classification": "accuracy", "regression": "pearson", "ner": "f1", "qa": "f1"}
# the metrics that can pick the best epoch (higher is better)
SELECTABLE = {"prompt": ("accuracy", "f1", "mcc", "macro_f1"), "classification": ("accuracy", "f1", "mcc", "macro_f1"), "regression": ("pearson", "spearman"),
              "ner": ("f1", "precision", "recall", "token_accuracy"), "qa": ("f1", "exact_match")}


def positive_label(labels: list[str]) -> str:
    """The class binary F1 is about: '1' (GLUE, CLUE), else true/yes/positive, else the second label."""
    for candidate in ("1", "true", "yes", "positive", "pos"):
        for label in labels:
            if label.lower() == candidate:
                return label
    return labels[-1]


def classification_metrics(gold: list[str], pred: list[str], labels: list[str]) -> dict:
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    out = {"accuracy": float(accuracy_score(gold, pred)), "mcc": float(matthews_corrcoef(gold, pred))}
    if len(labels) == 2:
        out["f1"] = float(f1_score(gold, pred, pos_label=positive_label(labels), average="binary", zero_division=0))
    else:
        out["f1"] = float(f1_score(gold, pred, labels=labels, average="macro", zero_division=0))
    out["macro_f1"] = float(f1_score(gold, pred, labels=labels, average="macro", zero_division=0))
    return {k: round(v, 6) for k, v in out.items()} | {"examples": len(gold)}


def regression_metrics(gold: list[float], pred: list[float]) -> dict:
    from scipy.stats import pearsonr, spearmanr

    g, p = np.asarray(gold, dtype=np.float64), np.asarray(pred, dtype=np.float64)
    constant = len(g) < 2 or np.ptp(g) == 0 or np.ptp(p) == 0  # correlation undefined
    return {"pearson": 0.0 if constant else round(float(pearsonr(g, p)[0]), 6),
            "spearman": 0.0 if constant else round(float(spearmanr(g, p)[0]), 6),
            "mse": round(float(np.mean((g - p) ** 2)), 6), "examples": len(gold)}


def ner_metrics(gold: list[list[str]], pred: list[list[str]]) -> dict:
    """Entity-level precision/recall/F1 as conlleval counts them (seqeval's default mode)."""
    from seqeval.metrics import accuracy_score, f1_score, precision_score, recall_score

    return {"precision": round(float(precision_score(gold, pred, zero_division=0)), 6),
            "recall": round(float(recall_score(gold, pred, zero_division=0)), 6),
            "f1": round(float(f1_score(gold, pred, zero_division=0)), 6),
            "token_accuracy": round(float(accuracy_score(gold, pred)), 6), "sentences": len(gold)}


def write_reports(task: str, out: Path, gold: list, pred: list, labels: list[str] | None) -> list[Path]:
    """Human-readable reports next to the model: per-class/per-type tables, a confusion matrix PNG."""
    written = []
    if task == "classification":
        from sklearn.metrics import classification_report, confusion_matrix

        (out / "classification_report.txt").write_text(
            classification_report(gold, pred, labels=labels, digits=4, zero_division=0), encoding="utf-8")
        written.append(out / "classification_report.txt")
        written.append(plot_confusion(confusion_matrix(gold, pred, labels=labels), labels, out / "confusion_matrix.png"))
    elif task == "ner":
        from seqeval.metrics import classification_report

        (out / "ner_report.txt").write_text(classification_report(gold, pred, digits=4, zero_division=0),
                                            encoding="utf-8")
        written.append(out / "ner_report.txt")
    return written


def plot_confusion(matrix: np.ndarray, labels: list[str], path: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    size = min(4 + 0.45 * len(labels), 14)
    fig, ax = plt.subplots(figsize=(size, size))
    ConfusionMatrixDisplay(matrix, display_labels=labels).plot(ax=ax, cmap="Blues", colorbar=False,
                                                               xticks_rotation=45 if len(labels) > 4 else "horizontal")
    ax.set_title("dev confusion matrix (rows: gold)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
