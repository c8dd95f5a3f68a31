"""`electra demo`: pretrain a tiny ELECTRA on the bundled Wikipedia sample and show it working."""

from __future__ import annotations

import difflib
import shutil
import sys
from importlib import resources
from pathlib import Path

from electra.errors import UserError

MARKER = ".electra-demo"
# (sentence, words swapped in): the swaps make no sense in context; the discriminator should flag them.
CORRUPTED = [
    ("The river flows through the old town and into the sea.", "The river flows through the old town and into the democracy."),
    ("She studied music in Paris and later taught at a school in Berlin.",
     "She studied music in Paris and later taught at a protein in Berlin."),
    ("The war ended in 1945, and the city was rebuilt over the next decade.",
     "The war ended in 1945, and the city was rebuilt over the next molecule."),
    ("The company sells its products in more than forty countries.",
     "The company sells its products in more than forty symphonies."),
]
FILL_MASK = ["The capital of France is [MASK].", "He was born in 1920 and [MASK] in 1985.",
             "The city is located on the [MASK] of the river."]


def _swapped_pieces(original: list[str], corrupted: list[str]) -> set[int]:
    """Indices of the corrupted sentence's pieces that are not in the original (by alignment)."""
    matcher = difflib.SequenceMatcher(a=original, b=corrupted, autojunk=False)
    kept = {j for block in matcher.get_matching_blocks() for j in range(block.b, block.b + block.size)}
    return set(range(len(corrupted))) - kept


def sample_path() -> Path:
    return Path(str(resources.files("electra") / "assets" / "wiki_sample.txt.gz"))


def _fresh_dir(out: Path) -> None:
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise UserError(f"{out} exists and is not a demo directory; choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("made by `electra demo`; safe to delete\n")


def run_demo(out: Path, steps: int | None, batch_size: int | None, lr: float | None, progress: bool,
             model: str = "demo", seed: int | None = None) -> dict:
    """Everything `electra demo` does, pretraining with the recipe `model`; steps, batch_size, lr and seed
    default to the recipe's."""
    from electra.config import model_from_spec
    from electra.display import print_detection
    from electra.data.corpus import iter_lines
    from electra.data.dataset import PretrainingData
    from electra.data.prepare import prepare
    from electra.data.tokenizer import save_tokenizer, train_tokenizer
    from electra.evaluation import replaced_token_auc, token_frequencies
    from electra.inference import detect, fill_mask
    from electra.pretrained import export_hf, load_pretrained
    from electra.train.pretrain import pretrain

    _, recipe, size = model_from_spec(model)  # the packaged `demo` recipe (src/electra/recipes/demo.yaml) says why
    _fresh_dir(out)
    corpus = [sample_path()]
    print(f"[1/5] training a WordPiece tokenizer on the bundled Wikipedia sample ({corpus[0].stat().st_size / 1e6:.1f} MB gzip)")
    tok = train_tokenizer(iter_lines(corpus), 8192, show_progress=False)
    save_tokenizer(tok, out / "tokenizer", lowercase=True)
    print("[2/5] building 128-token pretraining examples")
    m = prepare(corpus, out / "tokenizer", out / "data", 128, val_every=20, progress=progress)
    print(f"      {m['train']['examples']:,} train / {m['validation']['examples']:,} held-out examples")
    steps = steps or recipe.get("train", {}).get("max_steps", 1500)
    batch_size = batch_size or recipe.get("train", {}).get("batch_size", 32)
    print(f"[3/5] pretraining a {size} ELECTRA for {steps} steps of {batch_size} examples "
          f"({'a few minutes on 2 cores' if model == 'demo' else 'recipe ' + model})")
    temperature = recipe.get("objective", {}).get("temperature", 1.0)
    if temperature != 1.0:
        print(f"      generator sampled at temperature {temperature:g} (the paper's 1 needs a longer run to learn as much)")
    run = pretrain(out / "data", model, out / "run", max_steps=steps, batch_size=batch_size, lr=lr, seed=seed,
                   save_every=steps, eval_every=max(1, steps // 10), log_every=max(1, steps // 50), keep_last=1)
    print("[4/5] exporting in Hugging Face format")
    pre = load_pretrained(run)
    export_hf(pre, out / "export")

    print("[5/5] the discriminator reading sentences with one swapped word; [brackets] mark the word pieces\n"
          "      it finds most suspicious (p(replaced) over twice the sentence's median)\n")
    gaps, ranks = [], []
    for original, corrupted in CORRUPTED:
        result = detect(pre, [corrupted])[0]
        tokens, probs = result["tokens"], result["replaced_prob"]
        swapped = _swapped_pieces(pre.tokenizer.encode(original, add_special_tokens=False).tokens, tokens)
        median = sorted(probs)[len(probs) // 2]
        print("   ", end="")
        print_detection(tokens, probs, threshold=2 * median, table=False)
        rep = [p for i, p in enumerate(probs) if i in swapped]
        other = [p for i, p in enumerate(probs) if i not in swapped]
        word = " ".join(tokens[i] for i in sorted(swapped)).replace(" ##", "")
        if rep and other:
            rank = sorted(probs, reverse=True).index(max(rep)) + 1
            gaps.append((sum(rep) / len(rep), sum(other) / len(other)))
            ranks.append(rank)
            print(f"      swapped in: '{word}': p(replaced) {gaps[-1][0]:.2f}, the other words "
                  f"{gaps[-1][1]:.2f} on average; most suspicious #{rank} of {len(probs)}\n")
    held_out = PretrainingData(out / "data", "validation")
    auc = replaced_token_auc(pre.discriminator, held_out, n_examples=200)
    frequent = replaced_token_auc(pre.discriminator, held_out, n_examples=200,
                                  frequencies=token_frequencies(PretrainingData(out / "data")))
    learned = ("which pieces are rare far more than which fit their context" if frequent["auc"] < 0.6 else
               "which pieces are rare, and also which fit their context")
    print(f"On held-out text with 15% of tokens replaced at random, the discriminator separates replaced from "
          f"original tokens\nwith ROC AUC {auc['auc']:.3f} when the replacements are drawn uniformly from the "
          f"vocabulary (mostly rare pieces),\nand {frequent['auc']:.3f} when they are drawn as often as they occur "
          f"in the text (0.5 = chance): it has learned\n{learned}.\n")
    filled = [r["masks"][0]["candidates"] for r in fill_mask(pre, FILL_MASK, top_k=5)]
    if not shows_context(filled):
        common = ", ".join(c["token"] for c in filled[0])
        print(f"The generator (a small masked language model) has not learned context yet after {steps} steps: its\n"
              f"candidates are near-random or the same frequent words for every mask (first mask: {common}),\n"
              "so its fill-mask is left out here; it needs a much longer run than the discriminator above.")
    else:
        print("The generator (a small masked language model) filling masks:")
        for text, candidates in zip(FILL_MASK, filled):
            best = ", ".join(f"{c['token']} ({c['score']:.2f})" for c in candidates)
            print(f"   {text}\n      -> {best}")
    print(f"\nCurves: {run / 'curves.png'}   metrics: {run / 'metrics.jsonl'}")
    print(f"Hugging Face export: {out / 'export'}/discriminator and /generator "
          "(ElectraForPreTraining / ElectraForMaskedLM)")
    print(f"Try: electra detect --model {run} \"your sentence with one odd carrot\"")
    return {"auc": auc["auc"], "auc_frequent": frequent["auc"], "gaps": gaps, "ranks": ranks,
            "fill_mask_shown": shows_context(filled)}


def shows_context(candidates: list[list[dict]], overlap: float = 0.6, confident: float = 0.02) -> bool:
    """Whether the generator's top candidates are worth showing: it is confident of its first choice somewhere
    (not near-uniform noise), and the candidates change with the context (not every pair of masks sharing
    most of its top-k words, what a short run's near-unigram generator proposes)."""
    sets = [{c["token"] for c in cands} for cands in candidates]
    same = all(len(a & b) >= overlap * min(len(a), len(b)) for i, a in enumerate(sets) for b in sets[i + 1:])
    return not same and max(cands[0]["score"] for cands in candidates) >= confident
