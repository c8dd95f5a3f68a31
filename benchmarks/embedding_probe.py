"""How distinguishable are the word embeddings of entity pieces after pretraining? For the pieces that occur
(mostly) inside CoNLL-2003 entities and the most frequent other pieces: mean and nearest-neighbour cosine,
the effective rank of the centred embeddings, and the mean norm; a random initialisation (std 0.02, as
`initializer_range`) for reference. BENCHMARKS.md, "why pretrained encoders lose on CoNLL-2003".

    .venv/bin/python benchmarks/embedding_probe.py --conll ../shared/data/en/conll2003/train.txt \\
        electra-t2=STUDY/electra-t2-15m/export/discriminator mlm=STUDY/mlm-15m/export/generator
"""

from __future__ import annotations

import argparse
import collections
import random

import torch
from safetensors import safe_open
from tokenizers import Tokenizer

KEY = "electra.embeddings.word_embeddings.weight"


def pieces(tokenizer: Tokenizer, conll: str, frequent: int = 2000) -> tuple[list[int], list[int]]:
    """Pieces seen at least 3x as often inside entities as outside, and the most frequent pieces outside."""
    inside, outside = collections.Counter(), collections.Counter()
    for line in open(conll, encoding="utf-8"):
        cols = line.split()
        if len(cols) < 2 or cols[0] == "-DOCSTART-":
            continue
        (inside if cols[-1] != "O" else outside).update(tokenizer.encode(cols[0], add_special_tokens=False).ids)
    entity = [i for i, n in inside.most_common() if n > 3 * outside[i]]
    return random.Random(0).sample(entity, min(2000, len(entity))), [i for i, _ in outside.most_common(frequent)]


def stats(E: torch.Tensor, ids: list[int]) -> str:
    X = torch.nn.functional.normalize(E[ids], dim=-1)
    C, n = X @ X.T, len(ids)
    mean_cos = (C.sum() - n) / (n * (n - 1))
    nearest = C.fill_diagonal_(-1).max(1).values.mean()
    p = torch.linalg.svdvals(E[ids] - E[ids].mean(0)) ** 2
    p = p / p.sum()
    rank = torch.exp(-(p * p.clamp_min(1e-30).log()).sum())
    return f"{mean_cos:.2f} / {nearest:.2f} / {rank:.1f} / {E[ids].norm(dim=-1).mean():.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", metavar="NAME=DIR",
                    help="exported models (Hugging Face layout) sharing one tokenizer")
    ap.add_argument("--conll", required=True, help="a CoNLL-2003 file: word first, NER tag last")
    args = ap.parse_args()
    named = dict(m.split("=", 1) for m in args.models)
    tokenizer = Tokenizer.from_file(f"{next(iter(named.values()))}/tokenizer.json")
    entity, frequent = pieces(tokenizer, args.conll)
    print(f"{len(entity)} entity pieces, {len(frequent)} frequent other pieces; "
          "mean cos / nearest cos / eff. rank / norm")
    print("| encoder | entity pieces | frequent pieces |\n|---|---|---|")
    for name, directory in {"random": None, **named}.items():
        if directory is None:
            width = safe_open(f"{next(iter(named.values()))}/model.safetensors", "pt").get_slice(KEY).get_shape()[1]
            E = torch.randn(tokenizer.get_vocab_size(), width, generator=torch.Generator().manual_seed(0)) * 0.02
        else:
            E = safe_open(f"{directory}/model.safetensors", "pt").get_tensor(KEY)
        print(f"| {name} | {stats(E, entity)} | {stats(E, frequent)} |")


if __name__ == "__main__":
    main()
