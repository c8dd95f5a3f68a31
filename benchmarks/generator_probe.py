"""Has a generator learned context, or does it propose the most frequent tokens whatever the mask?

    .venv/bin/python benchmarks/generator_probe.py --data bench-runs/study/data-en --out OUT \\
        electra-t2-15m=bench-runs/study/en/electra-t2-15m mlm-15m=bench-runs/study/en/mlm-15m/export

Masks 15% of the held-out tokens of a prepared data directory (its validation split; the same
positions for every model) and reads each model's masked-LM distribution there (ELECTRA's
generator, or the MLM baseline's head; any `--model` source of `fill-mask`). Against a unigram model
of the training shards it reports: top-1 accuracy and cross-entropy (nats) of both; how far the
distributions move with the context (the mean KL divergence, in nats, from each position's
distribution to the model's average one: 0 for a model that ignores the context); the share of the
top-1 predictions and of samples at temperature 1 and 2 (what the discriminator is shown) that are
among the corpus's 20 most frequent tokens, next to that share among the original tokens; and
how often a sample equals the original token. For models with a discriminator it also reports the
ROC AUC of telling replaced from original tokens when 15% are replaced by tokens drawn uniformly from
the vocabulary (mostly rare pieces: rarity gives them away) and by tokens drawn from the unigram
model (as frequent as the originals: only the context gives them away). Writes
OUT/generator_probe.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import platform
from datetime import date
from pathlib import Path

import numpy as np
import torch

FREQUENT = 20


@torch.no_grad()
def probe(src: str, data_dir: Path, prior: np.ndarray, n_examples: int, seed: int, first_regular: int) -> dict:
    from electra.data.dataset import PretrainingData
    from electra.evaluation import replaced_token_auc
    from electra.pretrained import load_pretrained

    pre = load_pretrained(src)
    gen = pre.require("generator").eval()
    data = PretrainingData(data_dir, "validation")
    rng = np.random.default_rng(seed)  # the same positions for every model
    sampler = torch.Generator().manual_seed(seed)
    frequent = torch.from_numpy(np.argsort(-prior)[:FREQUENT].copy())
    log_prior = torch.from_numpy(np.log(np.maximum(prior, 1e-12))).float()
    sums = {k: 0.0 for k in ("acc", "ce", "uni_acc", "uni_ce", "top1_frequent", "orig_frequent", "t1_frequent",
                             "t2_frequent", "t1_same", "t2_same")}
    dists, n = [], 0
    idx = np.arange(min(n_examples, len(data)))
    for start in range(0, len(idx), 32):
        b = data.batch(idx[start:start + 32])
        ids = b.input_ids.clone()
        regular = (ids >= first_regular) & (b.attention_mask == 1)
        masked = regular & torch.from_numpy(rng.random(ids.shape) < 0.15)
        if not masked.any():
            continue
        ids[masked] = pre.special.mask
        positions = [torch.nonzero(row).flatten() for row in masked]
        width = max(len(p) for p in positions)
        pos = torch.stack([torch.cat([p, p.new_zeros(width - len(p))]) for p in positions])
        logits = gen(ids, b.attention_mask, positions=pos).float()  # (B, N, V)
        keep = torch.stack([torch.arange(width) < len(p) for p in positions])
        logits, target = logits[keep], b.input_ids.gather(1, pos)[keep]
        logp = torch.log_softmax(logits, -1)
        top1 = logp.argmax(-1)
        samples = {t: torch.multinomial(torch.softmax(logits / t, -1), 1, generator=sampler).squeeze(1) for t in (1, 2)}
        sums["acc"] += (top1 == target).sum().item()
        sums["ce"] += -logp.gather(1, target[:, None]).sum().item()
        sums["uni_acc"] += (target == frequent[0]).sum().item()
        sums["uni_ce"] += -log_prior[target].sum().item()
        sums["top1_frequent"] += torch.isin(top1, frequent).sum().item()
        sums["orig_frequent"] += torch.isin(target, frequent).sum().item()
        for t, s in samples.items():
            sums[f"t{t}_frequent"] += torch.isin(s, frequent).sum().item()
            sums[f"t{t}_same"] += (s == target).sum().item()
        dists.append(logp.exp())
        n += len(target)
    p = torch.cat(dists)
    mean = p.mean(0, keepdim=True)
    kl = (p * (torch.log(p.clamp_min(1e-12)) - torch.log(mean.clamp_min(1e-12)))).sum(-1).mean().item()
    out = {k: v / n for k, v in sums.items()}
    if pre.discriminator is not None and pre.has_disc_head:
        for kind, frequencies in (("uniform", None), ("unigram", prior)):
            out[f"auc_{kind}"] = replaced_token_auc(pre.discriminator, data, n_examples=n_examples, seed=seed,
                                                    first_regular_id=first_regular, frequencies=frequencies)["auc"]
    out.update(context_kl=kl, masked_tokens=n,
               mean_top=[pre.tokenizer.id_to_token(int(t)) for t in mean[0].topk(10).indices])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", help="NAME=SOURCE: a run, checkpoint or export with a masked-LM head")
    ap.add_argument("--data", type=Path, required=True, help="a directory made by `electra prepare`")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--examples", type=int, default=512, help="held-out examples to mask")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from electra.data.dataset import PretrainingData
    from electra.evaluation import token_frequencies

    train = PretrainingData(args.data, "train")
    first_regular = max(train.special.values()) + 1
    prior = token_frequencies(train, first_regular)
    results = {}
    for spec in args.models:
        name, _, src = spec.partition("=")
        results[name] = probe(src, args.data, prior, args.examples, args.seed, first_regular)
        print(name, json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in results[name].items()}))
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"date": date.today().isoformat(), "machine": platform.node(), "data": str(args.data),
            "examples": args.examples, "seed": args.seed, "frequent": FREQUENT}
    (args.out / "generator_probe.json").write_text(json.dumps({"_meta": meta, **results}, indent=2) + "\n")
    lines = [f"| model | top-1 acc (unigram) | cross-entropy (unigram) | context KL | top-1 in {FREQUENT} most frequent "
             f"| samples T=1 / T=2 in them (originals) | sample = original T=1 / T=2 | average distribution's top 5 "
             "| discriminator AUC: uniform / unigram replacements |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['acc']:.3f} ({r['uni_acc']:.3f}) | {r['ce']:.2f} ({r['uni_ce']:.2f}) | "
                     f"{r['context_kl']:.2f} | {r['top1_frequent']:.2f} | {r['t1_frequent']:.2f} / "
                     f"{r['t2_frequent']:.2f} ({r['orig_frequent']:.2f}) | {r['t1_same']:.3f} / {r['t2_same']:.3f} | "
                     f"{' '.join(r['mean_top'][:5])} | "
                     + (f"{r['auc_uniform']:.3f} / {r['auc_unigram']:.3f} |" if "auc_uniform" in r else "- |"))
    (args.out / "generator_probe.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
