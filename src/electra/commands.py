"""The `electra` subcommands: plain typed functions; electra.cli turns them into flags and help."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from electra.errors import UserError


def _highlight(token: str, on: bool) -> str:
    return f"\033[1;31m{token}\033[0m" if on else f"[{token}]"


def detect(text: str, *, model: str, json_: bool = False, threshold: float = 0.5) -> None:
    """Show, for each word piece, the probability that the discriminator thinks it was replaced.

    Args:
        text: the text to check (quote it)
        model: our run or model directory, an export, or a Hugging Face ELECTRA discriminator directory
        json_: print one JSON object {"tokens": [...], "replaced_prob": [...]} instead of a table
        threshold: probability above which a piece is highlighted as likely replaced
    """
    from electra.inference import detect_replaced
    from electra.pretrained import load_pretrained

    tokens, probs = detect_replaced(load_pretrained(model), text)
    if json_:
        print(json.dumps({"tokens": tokens, "replaced_prob": [round(p, 6) for p in probs]}, ensure_ascii=False))
        return
    color = sys.stdout.isatty()
    marked = [_highlight(t, color) if p > threshold else t for t, p in zip(tokens, probs)]
    print(" ".join(marked).replace(" ##", ""))
    print()
    width = max(len(t) for t in tokens)
    for t, p in zip(tokens, probs):
        flag = "  <- likely replaced" if p > threshold else ""
        print(f"  {t:<{width}}  {p:6.3f}  {'#' * round(p * 20):<20}{flag}")


def fill_mask(text: str, *, model: str, top_k: int = 5) -> None:
    """Show the generator's top candidates for each [MASK] in the text.

    Args:
        text: text with one or more [MASK] tokens (quote it)
        model: our run or model directory, an export, or a Hugging Face ELECTRA generator directory
        top_k: how many candidates to show per mask
    """
    from electra.inference import fill_mask as run_fill_mask
    from electra.pretrained import load_pretrained

    if top_k <= 0:
        raise UserError(f"--top-k must be positive (got {top_k})")
    pre = load_pretrained(model)
    if pre.generator is None and (Path(model) / "generator").is_dir():
        pre = load_pretrained(Path(model) / "generator")  # an `electra export` output directory
    tokens, predictions = run_fill_mask(pre, text, top_k)
    for pred in predictions:
        best = ", ".join(f"{t} ({p:.3f})" for t, p in pred.candidates)
        print(f"[MASK] #{predictions.index(pred) + 1} (piece {pred.position}): {best}")
    filled = list(tokens)
    for pred in predictions:
        filled[pred.position] = pred.candidates[0][0]
    print("best fill: " + " ".join(filled).replace(" ##", ""))


def export(*, model: str, out: Path, overwrite: bool = False) -> None:
    """Export a model in Hugging Face format: OUT/discriminator/ and OUT/generator/ (whichever it has).

    Each is loadable with ElectraForPreTraining / ElectraForMaskedLM and AutoTokenizer.from_pretrained.

    Args:
        model: a run directory (its newest intact checkpoint is used), a checkpoint or model directory
        out: the directory to write into
        overwrite: replace OUT/discriminator and OUT/generator if they exist
    """
    from electra.pretrained import export_hf, load_pretrained

    for path in export_hf(load_pretrained(model), out, overwrite=overwrite):
        print(f"wrote {path}")


COMMANDS: dict = {
    "detect": detect,
    "fill-mask": fill_mask,
    "export": export,
}
