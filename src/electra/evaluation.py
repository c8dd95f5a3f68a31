"""Intrinsic evaluation of a pretrained discriminator: can it tell randomly replaced tokens from
original ones in held-out text? Reported as ROC AUC (scikit-learn).

Two kinds of replacement: tokens drawn uniformly from the vocabulary are mostly rare pieces, so a
discriminator that has only learned which pieces are rare finds them; tokens drawn as often as they
occur in the text (`token_frequencies`) are as common as the originals, so only the context gives them
away."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from electra.data.dataset import PretrainingData


@torch.no_grad()
def replaced_token_auc(disc: torch.nn.Module, data: PretrainingData, *, n_examples: int = 256,
                       replace_prob: float = 0.15, batch_size: int = 32, seed: int = 0,
                       first_regular_id: int = 5, frequencies: np.ndarray | None = None) -> dict:
    """Replace replace_prob of the non-special tokens by random vocabulary tokens, uniformly or, given
    `frequencies` (probabilities over the vocabulary), as often as they occur; score every non-special
    token with the discriminator; ROC AUC of replaced vs original."""
    rng = np.random.default_rng(seed)
    disc.eval()
    idx = np.arange(min(n_examples, len(data)))
    scores, labels = [], []
    vocab = disc.config.vocab_size
    for start in range(0, len(idx), batch_size):
        b = data.batch(idx[start:start + batch_size])
        ids = b.input_ids.numpy().copy()
        regular = (ids >= first_regular_id) & (b.attention_mask.numpy() == 1)
        replace = regular & (rng.random(ids.shape) < replace_prob)
        if frequencies is None:
            random_ids = rng.integers(first_regular_id, vocab, size=ids.shape)
        else:
            random_ids = rng.choice(len(frequencies), size=ids.shape, p=frequencies)
        replace &= random_ids != ids
        ids[replace] = random_ids[replace]
        logits = disc(torch.from_numpy(ids), b.attention_mask, b.token_type_ids).numpy()
        scores.append(logits[regular])
        labels.append(replace[regular])
    y, s = np.concatenate(labels), np.concatenate(scores)
    return {"auc": float(roc_auc_score(y, s)), "tokens": int(len(y)), "replaced": int(y.sum()),
            "mean_prob_replaced": float(1 / (1 + np.exp(-s[y])).mean()),
            "mean_prob_original": float(1 / (1 + np.exp(-s[~y])).mean())}


def token_frequencies(data: PretrainingData, first_regular_id: int = 5, max_examples: int = 200_000) -> np.ndarray:
    """How often each regular token occurs in (the first max_examples of) data, as probabilities over the
    vocabulary (special tokens 0; every regular token counted once more, so none is impossible)."""
    vocab = int(data.manifest["vocab_size"])
    counts = np.ones(vocab, dtype=np.float64)
    n = min(len(data), max_examples)
    for start in range(0, n, 4096):
        ids = data.batch(np.arange(start, min(start + 4096, n))).input_ids.numpy().ravel()
        counts += np.bincount(ids, minlength=vocab)[:vocab]
    counts[:first_regular_id] = 0
    return counts / counts.sum()
