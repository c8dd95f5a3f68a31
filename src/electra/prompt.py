"""Prompt-based classification with the discriminator ("Prompting ELECTRA", Xia et al. 2022).

A template puts each candidate label word into the text (`{text} It was {label}.` with the verbalizer
`0=terrible,1=great`); the replaced-token-detection head says how original the label word looks there,
and the label whose word looks most original wins. A word of several pieces averages its pieces' log
probability of being original. The word's pieces are found through the tokenizer's character offsets,
so templates in any language work (Chinese included, where every character is a piece).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tokenizers import Tokenizer

from electra.config import SpecialIds
from electra.errors import UserError
from electra.pretrained import Pretrained


@dataclass
class Prompt:
    template: str
    words: dict[str, str]  # label -> its word

    @classmethod
    def parse(cls, template: str, verbalizer: str) -> Prompt:
        for field in ("{text}", "{label}"):
            if template.count(field) != 1:
                raise UserError(f"the template must hold {field} exactly once (got {template!r}), "
                                "e.g. '{text} It was {label}.'")
        words = {}
        for item in verbalizer.split(","):
            label, sep, word = item.partition("=")
            label, word = label.strip(), word.strip()
            if not sep or not label or not word:
                raise UserError(f"cannot read the verbalizer {verbalizer!r}: write LABEL=WORD pairs separated by "
                                "commas, e.g. 0=terrible,1=great")
            if any(c.isspace() for c in word):
                raise UserError(f"the label word {word!r} is not a single word; choose one word per label")
            if label in words:
                raise UserError(f"the verbalizer names label {label!r} twice")
            words[label] = word
        if len(words) < 2:
            raise UserError("the verbalizer needs a word for at least two labels")
        return cls(template, words)

    def check_labels(self, labels: set[str], where: str) -> None:
        missing = sorted(labels - self.words.keys())
        absent = sorted(self.words.keys() - labels)
        if missing:
            raise UserError(f"the verbalizer has no word for label(s) {', '.join(missing)} of {where}; "
                            f"add LABEL=WORD for each (it names {', '.join(self.words)})")
        if absent:
            raise UserError(f"the verbalizer names label(s) {', '.join(absent)} that {where} does not have "
                            f"(its labels: {', '.join(sorted(labels))})")

    @property
    def labels(self) -> list[str]:
        return list(self.words)

    def settings(self) -> dict:
        return {"template": self.template, "words": self.words}


@dataclass
class Filled:
    ids: list[int]  # [CLS] pieces [SEP]
    label_positions: list[int]  # where the label word's pieces are in ids


def fill(tok: Tokenizer, special: SpecialIds, prompt: Prompt, text: str, max_len: int) -> tuple[list[Filled], bool]:
    """The template with `text` and each label word, tokenized, and whether the text was cut so that
    every filled prompt fits in `max_len` positions."""
    before, after = prompt.template.split("{label}")
    longest = max(len(tok.encode(w, add_special_tokens=False).ids) for w in prompt.words.values())
    frame = len(tok.encode(prompt.template.replace("{text}", "").replace("{label}", ""), add_special_tokens=False).ids)
    budget = max_len - 2 - frame - longest - 1
    if budget < 1:
        raise UserError(f"the template leaves no room for the text in {max_len} positions")
    pieces = tok.encode(text, add_special_tokens=False)
    cut = len(pieces.ids) > budget
    if cut:
        text = text[:pieces.offsets[budget - 1][1]]
    out = []
    for word in prompt.words.values():
        head = before.replace("{text}", text)
        start, end = len(head), len(head) + len(word)
        enc = tok.encode(head + word + after.replace("{text}", text), add_special_tokens=False)
        ids = [special.cls, *enc.ids[: max_len - 2], special.sep]
        positions = [i + 1 for i, (s, e) in enumerate(enc.offsets) if s < end and e > start and i + 1 < len(ids) - 1]
        if not positions:
            raise UserError(f"the label word {word!r} is lost when the template is tokenized; check the template")
        out.append(Filled(ids, positions))
    return out, cut


def choice_scores(logits: np.ndarray, positions: list[int]) -> float:
    """The mean log probability, over a label word's pieces, that the word is original: (T,) "replaced" logits."""
    return float(np.mean(-np.logaddexp(0.0, logits[positions].astype(np.float64))))  # log sigmoid(-logit)


@torch.no_grad()
def label_scores(pre: Pretrained, prompt: Prompt, texts: list[str], batch_size: int = 64) -> np.ndarray:
    """(N, labels): the mean log probability, over each label word's pieces, that the word is original."""
    from electra.inference import _device, batches

    disc = pre.require("discriminator").eval()
    max_len = disc.config.max_position_embeddings
    filled = [f for t in texts for f in fill(pre.tokenizer, pre.special, prompt, t, max_len)[0]]
    scores = np.empty(len(filled))
    device = _device(disc)
    for chunk, ids, mask in batches(filled, batch_size, pre.special.pad):
        logits = disc(ids.to(device), mask.to(device)).float().cpu().numpy()  # (B, T): "replaced"
        for r, i in enumerate(chunk):
            scores[i] = choice_scores(logits[r], filled[i].label_positions)
    return scores.reshape(len(texts), len(prompt.words))


def zero_shot(pre: Pretrained, prompt: Prompt, texts: list[str], batch_size: int = 64) -> list[dict]:
    """Per text: {"prediction", "score", "scores"} from the untrained discriminator, as a classifier's
    rows (the label scores in place of logits: a softmax over them)."""
    from electra.finetune.tasks import ClassificationTask

    return ClassificationTask(prompt.labels).describe([], [], list(label_scores(pre, prompt, texts, batch_size)))
