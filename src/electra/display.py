"""How results look on a terminal: word pieces joined back into text, replaced-token highlights."""

from __future__ import annotations

import sys


def _is_cjk(piece: str) -> bool:
    return len(piece) == 1 and ("\u3000" <= piece <= "\u9fff" or "\uf900" <= piece <= "\ufaff" or "\uff00" <= piece <= "\uffef")


def join_pieces(pieces: list[str], raw: list[str] | None = None) -> str:
    """Word pieces back to readable text: '##' pieces attach, CJK characters need no spaces.
    `raw` are the unformatted pieces when `pieces` carry highlighting."""
    raw = raw or pieces
    out = ""
    for i, (shown, piece) in enumerate(zip(pieces, raw)):
        if piece.startswith("##"):
            out += shown.replace("##", "", 1)
        elif i and (_is_cjk(piece) or _is_cjk(raw[i - 1])):
            out += shown
        else:
            out += (" " if i else "") + shown
    return out


def say_truncated(result: dict) -> None:
    """A note on stderr when a text was longer than the model reads."""
    if result.get("truncated"):
        kept = len(result["tokens"])
        print(f"electra: the text has {kept + result['truncated']} word pieces and the model reads {kept} at a time "
              f"(its positions less [CLS] and [SEP]); the last {result['truncated']} were not read", file=sys.stderr)


def _highlight(token: str, on: bool) -> str:
    return f"\033[1;31m{token}\033[0m" if on else f"[{token}]"


def print_detection(tokens: list[str], probs: list[float], threshold: float = 0.5, table: bool = True) -> None:
    """The text with likely replacements highlighted (colour on a terminal, [brackets] otherwise),
    then one row per word piece with its probability."""
    color = sys.stdout.isatty()
    marked = [_highlight(t, color) if p > threshold else t for t, p in zip(tokens, probs)]
    print(join_pieces(marked, tokens))
    if not table:
        return
    width = max(len(t) for t in tokens)
    for t, p in zip(tokens, probs):
        flag = "  <- likely replaced" if p > threshold else ""
        print(f"  {t:<{width}}  {p:6.3f}  {'#' * round(p * 20):<20}{flag}")
