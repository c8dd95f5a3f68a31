"""The `electra` subcommands: plain typed functions; electra.cli turns them into flags and help."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Literal

from electra.cli import computes
from electra.config import Precision, Strategy, Task
from electra.errors import UserError


@computes
def detect(text: str, *, model: str, json_: bool = False, threshold: float = 0.5) -> None:
    """Show, for each word piece, the probability that the discriminator thinks it was replaced.

    Args:
        text: the text to check (quote it)
        model: our run or model directory, an export, or a Hugging Face ELECTRA discriminator directory
        json_: print one JSON object {"tokens": [...], "replaced_prob": [...]} instead of a table
        threshold: probability above which a piece is highlighted as likely replaced
    """
    from electra.display import print_detection, say_truncated
    from electra.inference import detect as run_detect
    from electra.pretrained import load_pretrained

    result = run_detect(load_pretrained(model), [text])[0]
    say_truncated(result)
    tokens, probs = result["tokens"], result["replaced_prob"]
    if json_:
        print(json.dumps({"tokens": tokens, "replaced_prob": [round(p, 6) for p in probs]}, ensure_ascii=False))
    else:
        print_detection(tokens, probs, threshold)


@computes
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
    from electra.display import join_pieces, say_truncated

    result = run_fill_mask(pre, [text], top_k)[0]
    say_truncated(result)
    filled = list(result["tokens"])
    for n, m in enumerate(result["masks"], 1):
        best = ", ".join(f"{c['token']} ({c['score']:.3f})" for c in m["candidates"])
        print(f"[MASK] #{n} (piece {m['position']}): {best}")
        filled[m["position"]] = m["candidates"][0]["token"]
    print("best fill: " + join_pieces(filled))


@computes
def export(*, model: str, out: Path, format: Literal["hf", "onnx"] = "hf", overwrite: bool = False) -> None:
    """Export a model in Hugging Face format (OUT/discriminator/ and OUT/generator/, whichever it has), or as ONNX.

    Each Hugging Face directory is loadable with ElectraForPreTraining / ElectraForMaskedLM and
    AutoTokenizer.from_pretrained. A fine-tuned model is exported into OUT itself, loadable with
    AutoModelForSequenceClassification, AutoModelForTokenClassification or AutoModelForQuestionAnswering.
    --format onnx writes OUT/model.onnx (dynamic batch and sequence axes; inputs input_ids,
    attention_mask, token_type_ids; outputs logits, and last_hidden_state for a discriminator),
    electra.json (task, labels, settings) and the tokenizer; ONNX Runtime's outputs are checked
    against PyTorch's before it is kept. `electra predict`, `electra serve --backend onnx` and
    electra.load run such a directory.

    Args:
        model: a run directory (its newest intact checkpoint is used), a checkpoint, model or fine-tuned directory
        out: the directory to write into
        format: hf (Hugging Face transformers) or onnx (ONNX Runtime)
        overwrite: replace an earlier export in OUT
    """
    from electra.finetune.load import export_finetuned, is_finetuned
    from electra.pretrained import export_hf, load_pretrained

    if format == "onnx":
        from electra.onnx_export import export_onnx

        print(f"wrote {export_onnx(model, out, overwrite) / 'model.onnx'}")
        return
    if is_finetuned(model):
        print(f"wrote {export_finetuned(model, out, overwrite)}")
        return
    for path in export_hf(load_pretrained(model), out, overwrite=overwrite):
        print(f"wrote {path}")


def tokenizer_train(*, corpus: list[str], vocab_size: int = 30522, out: Path, cased: bool = False,
                    min_frequency: int = 2, text_field: str = "text", overwrite: bool = False) -> None:
    """Train a WordPiece vocabulary on a corpus (Hugging Face `tokenizers`, BERT-style normalisation).

    Lower-cases and strips accents unless --cased; Chinese, Japanese and Korean characters become
    single characters. Writes tokenizer.json and vocab.txt (loadable by AutoTokenizer) into OUT. The
    same corpus and settings give the same tokenizer.json, byte for byte. Undecodable lines are
    skipped and counted; a file mostly not UTF-8 is refused, with its likely encoding.

    Args:
        corpus: text files (.txt, .jsonl, optionally .gz) or directories of them
        vocab_size: number of word pieces, special tokens included (fewer when the corpus has fewer)
        out: directory to write the tokenizer into
        cased: keep case and accents
        min_frequency: ignore pieces seen fewer times than this
        text_field: the field holding the text in .jsonl files
        overwrite: replace the tokenizer files in OUT (a tokenizer, or a model's; other files stay)
    """
    from electra.data.corpus import corpus_files, iter_lines
    from electra.data.tokenizer import check_out_dir, save_tokenizer, train_tokenizer

    check_out_dir(out, overwrite)
    files = corpus_files(corpus)
    if min_frequency < 1:
        raise UserError(f"--min-frequency must be at least 1 (got {min_frequency})")
    lines = iter_lines(files, text_field)
    tok = train_tokenizer(lines, vocab_size, lowercase=not cased, min_frequency=min_frequency,
                          show_progress=sys.stderr.isatty())
    n = tok.get_vocab_size()
    if n <= 5:
        raise UserError(f"the corpus gave no vocabulary ({lines.stats.lines:,} lines read, "
                        f"{lines.stats.skipped()}); is it UTF-8 text?")
    save_tokenizer(tok, out, lowercase=not cased)
    print(f"wrote {out}/tokenizer.json and vocab.txt ({n:,} tokens) from {lines.stats.lines:,} lines; "
          f"{lines.stats.skipped()}")
    if n < vocab_size:  # the trainer stops early without a word, and the model's size follows the vocabulary
        why = (f"no more pieces occur at least {min_frequency} times (--min-frequency) in this corpus; "
               "lower --min-frequency or add text" if min_frequency > 1
               else "every word of this corpus is already one piece; add text")
        print(f"electra: note: the vocabulary has {n:,} pieces, not the {vocab_size:,} asked for: {why}",
              file=sys.stderr)


def prepare(*, corpus: list[str], tokenizer: Path, out: Path, seq_len: int = 128, workers: int = 0, seed: int = 0,
            val_every: int = 100, text_field: str = "text", split_sentences: bool = True,
            overwrite: bool = False, words: Literal["pieces", "jieba"] = "pieces") -> None:
    """Tokenize a corpus into pretraining examples: memory-mappable token shards plus a manifest.

    Reads plain text (one paragraph or sentence per line, a blank line between documents) and .jsonl
    with a text field, gzip-compressed or not; directories expand to their files. Examples are built as
    the official ELECTRA code does ([CLS] A [SEP] B [SEP], segments from one document). Undecodable
    lines are skipped and counted; a file mostly not UTF-8 is refused, with its likely encoding.

    Args:
        corpus: text files or directories
        tokenizer: a tokenizer directory (from `electra tokenizer train`, or a Hugging Face model's)
        out: directory to write shards and manifest.json into
        seq_len: tokens per example
        workers: tokenizer processes (0: one per CPU core)
        seed: seed of the example builder's random choices
        val_every: hold out every N-th document for validation (0: none)
        text_field: the field holding the text in .jsonl files
        split_sentences: split paragraph lines into sentences before packing
        overwrite: replace an existing prepared directory at OUT
        words: where whole-word masking finds words: pieces (a piece without the ## mark starts a word; right
            for English and other space-separated text) or jieba (Chinese word segmentation, stored beside the
            shards; needs `pip install jieba`)
    """
    from electra.data.corpus import ReadStats
    from electra.data.prepare import prepare as run_prepare

    if workers < 0:
        raise UserError(f"--workers must be >= 0 (got {workers})")
    m = run_prepare(corpus, tokenizer, out, seq_len, workers=workers, seed=seed, val_every=val_every,
                    text_field=text_field, split_sentences=split_sentences, overwrite=overwrite,
                    progress=sys.stderr.isatty(), words=words)
    c = m["corpus"]
    skipped = ReadStats(skipped_lines=c["skipped_lines"], undecodable_lines=c["undecodable_lines"]).skipped()
    print(f"wrote {out}: {m['train']['examples']:,} train and {m['validation']['examples']:,} validation examples "
          f"of {m['seq_len']} tokens ({m['tokens']:,} tokens) from {c['documents']:,} documents; "
          f"{skipped}; {m['mb_per_s']} MB/s")


@computes
def pretrain(*, data: Path, model: str | None = None, out: Path, max_steps: int | None = None,
             batch_size: int | None = None, lr: float | None = None, seed: int | None = None,
             save_every: int | None = None, resume: bool = False, dropout: float | None = None,
             time_budget: str | None = None, precision: Literal["fp32", "bf16", "fp16"] | None = None,
             grad_accum: int | None = None, compile: bool = False, warmup_steps: int | None = None,
             eval_every: int | None = None, log_every: int | None = None, keep_last: int | None = None,
             tokenizer: Path | None = None, strategy: Literal["ddp", "fsdp"] | None = None,
             init: str | None = None, init_generator: str | None = None,
             objective: Literal["electra", "mlm"] | None = None) -> None:
    """Pretrain ELECTRA (generator + discriminator), or the BERT-style masked-LM baseline, on data made by
    `electra prepare`.

    AdamW (weight decay 0.01, none on LayerNorm and biases), linear warm-up then linear decay,
    clipping at 1.0. Checkpoints go to OUT/step-<8-digit step>/ (atomic; the last K kept); metrics to
    OUT/metrics.jsonl and OUT/curves.png. SIGTERM/SIGINT save a checkpoint and stop (exit code 143/130);
    --resume continues exactly where the newest intact checkpoint left off. Settings: defaults < the YAML
    file given as --model < these flags. Under `torchrun --nproc-per-node N -m electra pretrain ...`
    the N processes share each global batch (DistributedDataParallel; NCCL on GPUs, gloo on CPU).

    Args:
        data: a directory written by `electra prepare`
        model: a size (tiny, small, base, large), a packaged recipe (`demo`, `cpu-1h`, `cpu-1h-mlm`; README
            "Recipes") or a YAML file of model/objective/train settings (default small; with --resume, the saved
            run's)
        out: the run directory (checkpoints, metrics, plots)
        max_steps: optimizer steps (default 10000)
        batch_size: global batch size in examples (default 128)
        lr: peak learning rate (default: the paper's for the size; tiny 1e-3)
        seed: seed of initialisation, data order, masking and sampling (default 0)
        save_every: steps between checkpoints (default 1000)
        resume: continue the run in OUT from its newest intact checkpoint, with its saved settings (flags given
            override them, except --batch-size, --seed, --model and --data, which would not continue the same run)
        dropout: override hidden and attention dropout of both networks
        time_budget: stop with a checkpoint after this long, e.g. 45m or 2h
        precision: fp32, or bf16/fp16 mixed precision where the hardware has it (default fp32)
        grad_accum: micro-batches per optimizer step (default 1)
        compile: torch.compile each transformer layer
        warmup_steps: linear warm-up steps (default 10% of max-steps, at most 10000)
        eval_every: steps between validation passes (default 500; 0 = never)
        log_every: steps between rows of metrics.jsonl (default 10)
        keep_last: checkpoints to keep (default 3)
        tokenizer: the tokenizer directory (default: the copy inside DATA)
        strategy: under torchrun, ddp replicates the model, fsdp shards it (PyTorch's fully_shard) (default ddp)
        init: continue pretraining from these weights: our run, checkpoint or export, or a Hugging Face
            ELECTRA discriminator directory; its architecture replaces --model's; the data must be prepared
            with its tokenizer; the optimizer starts fresh; run.json records the source
        init_generator: the generator to start from (a run, export or Hugging Face ElectraForMaskedLM
            directory; default: --init's, or a fresh one of the configured width when it has none)
        objective: electra (replaced-token detection, the default) or mlm (BERT's masked LM on the
            discriminator-sized encoder: 80% [MASK], 10% random, 10% kept; exported as ElectraForMaskedLM).
            Both log their cumulative training FLOPs as `flops` in metrics.jsonl, to compare them at equal compute
    """
    from electra.config import parse_duration
    from electra.train.pretrain import pretrain as run_pretrain

    flags = dict(max_steps=max_steps, batch_size=batch_size, lr=lr, seed=seed, save_every=save_every,
                 precision=precision, grad_accum=grad_accum, warmup_steps=warmup_steps, eval_every=eval_every,
                 log_every=log_every, keep_last=keep_last, time_budget_s=parse_duration(time_budget),
                 compile=compile or None, dropout=dropout, strategy=strategy, objective=objective)
    run_pretrain(data, model, out, resume=resume, tokenizer=tokenizer, init=init, init_generator=init_generator,
                 **flags)


@computes
def demo(*, out: Path = Path("demo-run"), model: str = "demo", steps: int | None = None, batch_size: int | None = None,
         lr: float | None = None, seed: int | None = None) -> None:
    """Pretrain a tiny ELECTRA on the bundled English Wikipedia sample and show it working.

    Trains a tokenizer, prepares examples, pretrains for a few minutes on 2 CPU cores, exports the
    model in Hugging Face format, then shows the discriminator spotting swapped words, how well it
    tells replaced tokens in held-out text (uniformly random ones, and ones as frequent as the
    originals), and the generator filling masks once its candidates change with the context.

    Args:
        out: directory for everything the demo makes (replaced if it holds an earlier demo)
        model: the recipe to pretrain with: a recipe name or a YAML file
        steps: pretraining steps (default: the recipe's; demo: 1500)
        batch_size: examples per step (default: the recipe's; demo: 32)
        lr: peak learning rate (default: the recipe's; demo: 1e-3)
        seed: seed of initialisation, data order, masking and sampling (default: the recipe's, or 0)
    """
    from electra.demo import run_demo

    if (steps is not None and steps <= 0) or (batch_size is not None and batch_size <= 0):
        raise UserError("--steps and --batch-size must be positive")
    run_demo(out, steps, batch_size, lr, progress=sys.stderr.isatty(), model=model, seed=seed)

@computes
def finetune(*, task: Task, model: str, train: Path, dev: Path, out: Path, config: Path | None = None,
             text_columns: str | None = None, label_column: str | None = None, no_header: bool = False,
             epochs: int | None = None, batch_size: int | None = None, lr: float | None = None,
             layer_decay: float | None = None, warmup: float | None = None, weight_decay: float | None = None,
             max_seq_len: int | None = None, seed: int | None = None, dropout: float | None = None,
             freeze_layers: int | None = None, head_only: bool = False, lora: bool = False,
             lora_rank: int | None = None, doc_stride: int | None = None, max_answer_len: int | None = None,
             metric: str | None = None, tokenizer: Path | None = None, precision: Precision | None = None,
             strategy: Strategy | None = None, length_buckets: bool | None = None, overwrite: bool = False,
             adversarial: Literal["fgm", "pgd", "freelb"] | None = None, adv_epsilon: float | None = None,
             adv_steps: int | None = None, adv_alpha: float | None = None, template: str | None = None,
             verbalizer: str | None = None, shots: int | None = None) -> int:
    """Fine-tune a pretrained discriminator (or a random baseline) on a labelled task.

    Tasks: classification and regression of a text or a text pair (TSV, CSV or JSONL; GLUE and CLUE
    files read as they are), ner (CoNLL columns or one character per line; IOB1/BIO/BIOES/BILOU/BMES
    tags, learned and predicted as BIO), qa (SQuAD v1.1/v2.0 JSON, CMRC 2018). The paper's recipe:
    AdamW, layer-wise learning-rate decay (top layer the full rate, each lower layer DECAY times the
    one above, embeddings lowest), 10% warm-up then linear decay, no weight decay; the learning rate
    by the encoder's size (small 3e-4, base 1e-4, large 5e-5, as the official code; other widths
    3e-4 x 256 / hidden size: tiny 6e-4). The dev set is scored after each epoch (OUT/metrics.jsonl)
    and the best model kept in OUT, with dev reports (classification_report.txt and
    confusion_matrix.png, or ner_report.txt) and curves.png; the resolved settings are saved in
    OUT/electra.json. Settings: defaults < the YAML file of --config < these flags. The last line of
    standard output is a JSON object of the best dev metrics. Ctrl-C or SIGTERM stops after the
    current step, keeps the best complete epoch (or a partial one, marked so) and exits 130/143.
    Runs under torchrun as `electra pretrain` does.

    Args:
        task: classification, regression, ner, qa, or prompt (classification through the replaced-token head)
        model: our run/model directory or export (ELECTRA: its discriminator; mlm: its masked LM's encoder), a Hugging Face
            ELECTRA directory, or a size (tiny, small, base, large), a packaged recipe or a model YAML file for a
            random start
        train: the training file
        dev: the dev file (scored every epoch; the best epoch is kept)
        out: directory for the fine-tuned model, metrics and reports
        config: a YAML file of fine-tuning settings (the flags below without dashes, e.g. `epochs: 5`)
        text_columns: the text column, or two for pairs, by header name or 0-based index (default: guessed from the header, e.g. sentence or sentence1,sentence2)
        label_column: the label column, by name or index (default: label/score/quality..., or the last column)
        no_header: the table's first row is data (as in GLUE's CoLA)
        epochs: passes over the training data (default 3)
        batch_size: examples per optimizer step (default 32)
        lr: peak learning rate of the top layer and the head (default: by the model's size, see above)
        layer_decay: learning-rate factor per layer going down; 1: off (default 0.8)
        warmup: fraction of the steps spent warming up (default 0.1)
        weight_decay: AdamW weight decay (default 0)
        max_seq_len: word pieces per input; longer ones are truncated and counted, QA contexts are windowed (default 128; 384 for qa)
        seed: seed of the head's initialisation, dropout and data order (default 0)
        dropout: override the encoder's dropout
        freeze_layers: freeze the embeddings and the lowest N layers
        head_only: train only the task head
        lora: train LoRA adapters (peft) and the head; merged into the weights when saved
        lora_rank: rank of the LoRA adapters (default 8)
        doc_stride: qa: tokens between the starts of overlapping context windows (default 128)
        max_answer_len: qa: longest answer in word pieces (default 30)
        metric: the dev metric that picks the best epoch (default: accuracy, pearson, or f1 for ner and qa)
        tokenizer: tokenizer directory (required with a size or recipe; default: the model's)
        precision: fp32, or bf16/fp16 mixed precision on hardware that has it (default fp32)
        strategy: under torchrun, ddp replicates the model, fsdp shards it (PyTorch's fully_shard) (default ddp)
        length_buckets: batch examples of similar length (each window of 8 shuffled batches sorted by
            length; the batches shuffled) so less compute goes to padding; --no-length-buckets: plain random batches (default on)
        overwrite: replace a fine-tuned model already in OUT
        adversarial: train on perturbations of the word-embedding output as well: fgm (one gradient step,
            Miyato et al. 2017), pgd (projected ascent, Madry et al. 2018) or freelb (Zhu et al. 2020); costs
            2 (fgm), steps + 1 (pgd) or steps (freelb) forward and backward passes per step
        adv_epsilon: the largest perturbation: its L2 norm per example as a fraction of the norm of that
            example's word embeddings (default 0.02)
        adv_steps: pgd and freelb: ascent steps (default 3)
        adv_alpha: pgd and freelb: the size of each ascent step, the same kind of fraction (default 0.01)
        template: prompt: where the text and the label word go, e.g. '{text} It was {label}.'; --task prompt
            fine-tunes the discriminator through its replaced-token head on the filled templates (Xia et al. 2022)
        verbalizer: prompt: a word per label, e.g. '0=terrible,1=great'
        shots: train on this many examples per class, drawn with --seed (few-shot; classification and prompt)
    """
    from electra.config import FinetuneConfig, load_yaml, merge_settings
    from electra.errors import Interrupted
    from electra.finetune.train import finetune as run_finetune

    flags = dict(epochs=epochs, batch_size=batch_size, lr=lr, layer_decay=layer_decay, warmup=warmup,
                 weight_decay=weight_decay, max_seq_len=max_seq_len, seed=seed, dropout=dropout,
                 freeze_layers=freeze_layers, head_only=head_only or None, lora=lora or None, lora_rank=lora_rank,
                 doc_stride=doc_stride, max_answer_len=max_answer_len, metric=metric, precision=precision,
                 strategy=strategy, length_buckets=length_buckets, adversarial=adversarial, adv_epsilon=adv_epsilon,
                 adv_steps=adv_steps, adv_alpha=adv_alpha, template=template, verbalizer=verbalizer, shots=shots)
    known = {f.name for f in dataclasses.fields(FinetuneConfig)}
    configured = load_yaml(config, known) if config is not None else {}
    settings = merge_settings(FinetuneConfig, str(config or "the flags"), configured, flags)
    columns = {"text_columns": text_columns, "label_column": label_column, "no_header": no_header}
    summary = run_finetune(task, model, train, dev, out, settings, columns, tokenizer=tokenizer, overwrite=overwrite)
    if summary:  # under torchrun, rank 0 reports
        interrupted = summary.pop("interrupted", None)
        print(json.dumps(summary))
        if interrupted:
            raise Interrupted(interrupted)
    return 0


def _load_for(model: str, task: str | None):
    from electra.finetune.load import load_finetuned
    from electra.onnx_export import is_onnx_dir, load_onnx
    from electra.runtime import pick_device

    if is_onnx_dir(Path(model)):
        ft = load_onnx(Path(model))
        if not hasattr(ft, "task"):
            raise UserError(f"{model} is an exported discriminator, not a fine-tuned model")
        if task is not None and task != ft.task.name:
            raise UserError(f"{model} was fine-tuned for {ft.task.name}, not {task}")
        import torch
        return ft, torch.device("cpu")
    ft = load_finetuned(model, task)
    device = pick_device()
    ft.model.to(device)
    return ft, device


def _say_truncated(truncated: int, total: int, max_len: int) -> None:
    if truncated:
        print(f"electra: {truncated} of {total} inputs were longer than the model's {max_len} word pieces "
              "and were truncated", file=sys.stderr)


@computes
def zero_shot(*, model: str, data: Path, template: str, verbalizer: str, text_columns: str | None = None,
              label_column: str | None = None, no_header: bool = False, batch_size: int = 64,
              output: Path | None = None) -> None:
    """Classify with a pretrained discriminator and no training: prompt-based zero-shot ("Prompting ELECTRA",
    Xia et al. 2022).

    Each candidate label's word is put into the template; the replaced-token-detection head says how
    original it looks there (a word of several pieces averages them), and the most original wins.
    Prints accuracy, F1 and Matthews correlation (scikit-learn) with the majority class's accuracy
    beside them; the last line of standard output is one JSON object, as `evaluate` prints.

    Args:
        model: a pretrained ELECTRA (our run, checkpoint or export, or a Hugging Face ElectraForPreTraining)
        data: a labelled table (TSV, CSV or JSONL), read as `finetune --task classification` reads it
        template: where the text and the label word go, e.g. '{text} It was {label}.' (Chinese works too)
        verbalizer: a word per label, e.g. '0=terrible,1=great'; every label of the data needs one
        text_columns: the text column (default: guessed from the header)
        label_column: the label column (default: label, or the last column)
        no_header: the table's first row is data
        batch_size: prompts per forward pass
        output: also write one JSON line per example (prediction and label probabilities)
    """
    from collections import Counter

    from electra.finetune.metrics import classification_metrics
    from electra.finetune.predict import check_output, write_jsonl_atomic
    from electra.finetune.tables import parse_columns, read_table
    from electra.pretrained import load_pretrained
    from electra.prompt import Prompt, zero_shot as run_zero_shot

    prompt = Prompt.parse(template, verbalizer)
    if output is not None:
        check_output(output, data)
    texts, label = parse_columns(text_columns, label_column)
    examples, _ = read_table(data, texts=texts, label=label, no_header=no_header)
    if any(len(ex.texts) != 1 for ex in examples):
        raise UserError(f"{data} holds text pairs; zero-shot reads one text per example: pass --text-columns NAME")
    gold = [ex.label for ex in examples]
    prompt.check_labels(set(gold), str(data))
    pre = load_pretrained(model)
    rows = run_zero_shot(pre, prompt, [ex.texts[0] for ex in examples], batch_size)
    preds = [r["prediction"] for r in rows]
    scores = classification_metrics(gold, preds, prompt.labels)
    majority, count = Counter(gold).most_common(1)[0]
    scores["majority_accuracy"] = count / len(gold)
    scores["examples"] = len(gold)
    if output is not None:
        write_jsonl_atomic(output, rows)
        print(f"wrote {output}", file=sys.stderr)
    for k, v in scores.items():
        print(f"{k:>18}: {v:.4f}" if isinstance(v, float) else f"{k:>18}: {v}")
    print(json.dumps(scores))


@computes
def attack(*, model: str, data: Path, out: Path, methods: list[str] | None = None, rate: float = 0.15,
           generator: str | None = None, max_queries: int = 100, max_change: float = 0.3, detect: str | None = None,
           limit: int | None = None, seed: int = 0, text_columns: str | None = None, label_column: str | None = None,
           no_header: bool = False, overwrite: bool = False) -> None:
    """Attack a fine-tuned classifier and report how robust it is; optionally, how well a discriminator
    spots the attacked inputs.

    typos: character swaps, deletions, insertions and keyboard neighbours at --rate per word (Chinese:
    swaps with the next character, deletions and repeats at --rate per character); words: word drops and
    swaps at --rate (never every word; in Chinese text each character is a word, spaces stay);
    generator: an ELECTRA generator proposes in-context substitutes for the most important words,
    replaced greedily until the prediction flips, within --max-queries and --max-change (BAE /
    BERT-Attack style; as in BAE, stop words are neither replaced nor put in). The last text of a pair
    is attacked. Reports the clean metric, the metric under each attack, the attack success rate (of
    the examples classified correctly), words changed per success and queries per example; writes
    OUT/<method>.jsonl (each example clean and attacked, readable) and OUT/report.json; the last line
    of standard output is that report as one JSON object.

    Args:
        model: a fine-tuned classification (or prompt) model
        data: a labelled file, read as the model was trained
        out: directory for the attacked examples and the report
        methods: attacks to run: typos, words, generator (default: all three)
        rate: typos and words: the chance that each word is edited
        generator: the generator proposing substitutes (a run, export or Hugging Face ElectraForMaskedLM;
            default: the generator of the model the classifier was fine-tuned from); its vocabulary must be the model's
        max_queries: generator: model queries per example, at most
        max_change: generator: the largest share of an example's words that may change
        detect: a pretrained discriminator: scores every clean and attacked input by its largest
            replaced-token probability and reports the ROC AUC of telling them apart
        limit: attack only the first N examples
        seed: seed of the typos and words attacks
        text_columns: override the remembered text column(s)
        label_column: override the remembered label column
        no_header: the table has no header row
        overwrite: replace the files of an earlier attack in OUT
    """
    import random

    from electra.attack import attack_examples, generator_for
    from electra.finetune.predict import describe_examples, write_jsonl_atomic
    from electra.pretrained import load_pretrained

    methods = methods or ["typos", "words", "generator"]
    unknown = sorted(set(methods) - {"typos", "words", "generator"})
    if unknown:
        raise UserError(f"unknown attack {', '.join(unknown)}; choose from typos, words, generator")
    for name, value, ok in (("--rate", rate, 0 < rate <= 1), ("--max-change", max_change, 0 < max_change <= 1),
                            ("--max-queries", max_queries, max_queries > 0), ("--limit", limit, limit is None or limit > 0)):
        if not ok:
            raise UserError(f"{name} is out of range (got {value})")
    ft, device = _load_for(model, None)
    if ft.task.name not in ("classification", "prompt"):
        raise UserError(f"{model} was fine-tuned for {ft.task.name}; attack needs a classification model "
                        "(a task head with labels)")
    if out.exists() and any(out.glob("*.jsonl")) and not overwrite:
        raise UserError(f"{out} already holds an attack; choose another --out or pass --overwrite")
    gen = generator_for(ft, generator) if "generator" in methods else None
    detector = load_pretrained(detect) if detect else None
    if detector is not None:
        detector.require("discriminator")
    flags = {"text_columns": text_columns, "label_column": label_column, "no_header": no_header}
    examples = ft.task.read(data, flags, training=False)[:limit]
    if any(ex.label is None for ex in examples):
        raise UserError(f"{data} has no labels; attacks are scored against the gold label")
    clean = [r["prediction"] for r in describe_examples(ft, examples, device)[0]]
    report = {"examples": len(examples), "clean": ft.task.score(examples, clean)}
    print(f"{'clean':>10}: accuracy {report['clean']['accuracy']:.4f} ({len(examples)} examples)", file=sys.stderr)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    for method in methods:
        rows, result = attack_examples(ft, device, examples, clean, method, rng=rng, rate=rate, generator=gen,
                                       max_queries=max_queries, max_change=max_change, detector=detector)
        report[method] = result
        write_jsonl_atomic(out / f"{method}.jsonl", rows)
        auc = result.get("detection_auc")
        print(f"{method:>10}: accuracy {result['metrics']['accuracy']:.4f}, success rate {result['success_rate']:.3f} "
              f"of {result['attacked']}, words changed per success {result['words_changed_per_success'] or 0:.2f}, "
              f"queries per example {result['queries_per_example']:.1f}"
              + (f", detection AUC {auc:.3f}" if auc is not None else ""), file=sys.stderr)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report))


@computes
def evaluate(*, model: str, data: Path, task: Task | None = None, text_columns: str | None = None,
             label_column: str | None = None, no_header: bool = False, batch_size: int = 64,
             report_dir: Path | None = None, compile: bool = False) -> None:
    """Score a fine-tuned model on a labelled file with the task's standard metrics.

    Classification: accuracy, F1 (binary: of the positive class; otherwise macro), Matthews
    correlation (scikit-learn); regression: Pearson and Spearman (scipy); ner: entity-level
    precision, recall and F1 (seqeval) and a per-type report; qa: exact match and F1, 0-100, with
    the official SQuAD answer normalisation. The last line of standard output is one JSON object.
    Column settings are remembered from fine-tuning; flags override them.

    Args:
        model: a fine-tuned directory (from `electra finetune`, or a Hugging Face ElectraFor* task model)
        data: a labelled file of the same format as the training data
        task: check that the model was fine-tuned for this task
        text_columns: override the remembered text column(s)
        label_column: override the remembered label column
        no_header: the table has no header row
        batch_size: examples per forward pass
        report_dir: also write the classification/NER report (and confusion matrix) here
        compile: torch.compile the model first, weights frozen (15-40 s for small on 2 CPU cores; pays
            off from a few thousand examples)
    """
    from electra.finetune.metrics import write_reports
    from electra.finetune.predict import predict_examples

    ft, device = _load_for(model, task)
    flags = {"text_columns": text_columns, "label_column": label_column, "no_header": no_header}
    examples = ft.task.read(data, flags, training=False)
    preds, truncated = predict_examples(ft, examples, device, batch_size, progress=sys.stderr.isatty(),
                                        compile_=compile)
    _say_truncated(truncated, len(examples), ft.max_seq_len)
    scores = ft.task.score(examples, preds)
    for k, v in scores.items():
        print(f"{k:>16}: {v:.4f}" if isinstance(v, float) else f"{k:>16}: {v}")
    if report_dir is not None:
        report_dir.mkdir(parents=True, exist_ok=True)
        for path in write_reports(ft.task.name, report_dir, ft.task.gold(examples), preds, ft.task.labels):
            print(f"wrote {path}", file=sys.stderr)
    print(json.dumps(scores))


@computes
def predict(*, model: str, input: Path, output: Path, task: Task | None = None, text_columns: str | None = None,
            no_header: bool = False, batch_size: int = 64, n_best: int = 1, top_k: int | None = None,
            compile: bool = False) -> None:
    """Run a fine-tuned model on a file and write one JSON object per example, in input order.

    Each object has "prediction", and its probabilities as transformers pipelines give them:
    classification: the label as written in the training data, "score" (its probability) and
    "scores" ({label: probability}, most likely first); regression: a number; ner: one BIO tag per
    input word, "scores" (each word's probability of its tag; null for words past --max-seq-len)
    and "entities" ([{"type", "start_word", "end_word" (exclusive), "text", "score" (the mean of its
    words' scores)}]); qa: the answer text with the question's "id", "score" (its probability) and
    "start"/"end", its characters in the context (0, 0 for no answer). The input may carry labels;
    they are ignored.

    NER input is CoNLL columns (one word per line, the word first, a blank line between sentences),
    JSON lines ({"tokens": [...]}), or plain text: one sentence per line, words separated by spaces
    (blank lines skipped). A file without tabs is plain text when its lines hold different numbers
    of words, or when no blank line separates sentences and its last column is not tags.

    The output may not be the input (nor a link to it), a directory, or in a directory that does not
    exist or cannot be written: these are refused before the model runs.

    Args:
        model: a fine-tuned directory
        input: a file in the training data's format (labels optional); for ner also plain text
        output: the JSON lines file to write
        task: check that the model was fine-tuned for this task
        text_columns: override the remembered text column(s)
        no_header: the table has no header row
        batch_size: examples per forward pass
        n_best: qa: also list the N best answers with their scores (start+end logits) under "n_best"
        top_k: classification: keep only the K most likely labels in "scores" (default: all)
        compile: torch.compile the model first, weights frozen (15-40 s for small on 2 CPU cores; pays
            off from a few thousand examples)
    """
    from electra.finetune.predict import check_output, describe_examples, write_jsonl_atomic

    if n_best <= 0:
        raise UserError(f"--n-best must be positive (got {n_best})")
    if top_k is not None and top_k <= 0:
        raise UserError(f"--top-k must be positive (got {top_k})")
    check_output(output, input)
    ft, device = _load_for(model, task)
    if top_k is not None and ft.task.name != "classification":
        raise UserError(f"--top-k keeps the most likely labels of a classification model; {model} does "
                        f"{ft.task.name}: leave --top-k out")
    flags = {"text_columns": text_columns, "no_header": no_header}
    examples = ft.task.read(input, flags, training=False, labelled=False)
    rows, truncated = describe_examples(ft, examples, device, batch_size, n_best=n_best, top_k=top_k,
                                        progress=sys.stderr.isatty(), compile_=compile)
    _say_truncated(truncated, len(examples), ft.max_seq_len)
    write_jsonl_atomic(output, rows)
    print(f"wrote {len(rows):,} predictions to {output}", file=sys.stderr)


def _bench(mode: str, model: str, batch_size: int, seq_len: int, steps: int, warmup: int, rounds: int,
           precision: str, compare: str | None, json_: bool, data: Path | None = None, compile_: bool = False,
           backend: str = "torch") -> None:
    from electra.bench.runner import run_bench

    r = run_bench(mode, model, batch_size, seq_len, steps, warmup, rounds, precision, compare == "hf", data,
                  compile_, backend)
    unit = "sequences" if mode == "infer" else "tokens"
    print(f"{mode} {model}, batch {batch_size}" + (f", seq {seq_len}" if mode != "infer" else "")
          + f", {precision}: {r[f'{unit}_per_s']:,.1f} {unit}/s; {r['flops_per_token'] / 1e6:.1f} MFLOP per token; "
          f"{r['achieved_flops'] / 1e9:.1f} GFLOP/s of a measured {r['peak_flops'] / 1e9:.1f} GFLOP/s matmul peak "
          f"(MFU {100 * r['mfu']:.1f}%)")
    if compare == "hf":
        print(f"Hugging Face reference: {r[f'hf_{unit}_per_s']:,.1f} {unit}/s; ours is {r['ratio_vs_hf']:.2f}x"
              + (f"; largest logit difference {r['max_abs_logit_diff']:.2e}" if "max_abs_logit_diff" in r else ""))
    if "step_memory_mb" in r:
        print(f"GPU memory a step adds on top of weights and optimizer state: {r['step_memory_mb']:,.0f} MiB"
              + (f" (reference: {r['hf_step_memory_mb']:,.0f} MiB)" if "hf_step_memory_mb" in r else ""))
    if json_:
        print(json.dumps(r))


@computes
def bench_pretrain(*, model: str = "small", batch_size: int = 16, seq_len: int = 128, steps: int = 5,
                   warmup: int = 2, rounds: int = 3, precision: Literal["fp32", "bf16", "fp16"] = "fp32",
                   compare: Literal["hf"] | None = None, compile: bool = False, json_: bool = False) -> None:
    """Time pretraining steps (both networks, AdamW) on synthetic full-length batches.

    Reports tokens/s, model FLOPs per token (matmuls of both networks, attention, the generator's
    vocabulary projection on masked positions only), achieved FLOP/s, the device's matmul peak
    measured in the same run, and MFU. With --compare hf, the Hugging Face reference
    (ElectraForMaskedLM + ElectraForPreTraining, logits at every position) is timed interleaved.

    Args:
        model: a size: tiny, small, base, large
        batch_size: sequences per step
        seq_len: tokens per sequence
        steps: timed steps per round
        warmup: untimed steps first
        rounds: rounds of timed steps (the median is reported)
        precision: fp32, or bf16/fp16 on a GPU
        compare: hf: also time the Hugging Face reference
        compile: torch.compile each transformer layer of ours (the reference stays eager, as users run it)
        json_: end with one JSON object of the results
    """
    _bench("pretrain", model, batch_size, seq_len, steps, warmup, rounds, precision, compare, json_,
           compile_=compile)


@computes
def bench_finetune(*, model: str = "small", batch_size: int = 32, seq_len: int = 128, steps: int = 5,
                   warmup: int = 2, rounds: int = 3, precision: Literal["fp32", "bf16", "fp16"] = "fp32",
                   compare: Literal["hf"] | None = None, compile: bool = False, json_: bool = False) -> None:
    """Time fine-tuning steps of a sequence classifier on synthetic full-length batches.

    Args:
        model: a size: tiny, small, base, large
        batch_size: sequences per step
        seq_len: tokens per sequence
        steps: timed steps per round
        warmup: untimed steps first
        rounds: rounds of timed steps (the median is reported)
        precision: fp32, or bf16/fp16 on a GPU
        compare: hf: also time transformers' ElectraForSequenceClassification
        compile: torch.compile each transformer layer of ours (the reference stays eager, as users run it)
        json_: end with one JSON object of the results
    """
    _bench("finetune", model, batch_size, seq_len, steps, warmup, rounds, precision, compare, json_,
           compile_=compile)


@computes
def bench_infer(*, model: str = "small", data: Path | None = None, batch_size: int = 32, seq_len: int = 128,
                rounds: int = 3, precision: Literal["fp32", "bf16", "fp16"] = "fp32",
                compare: Literal["hf"] | None = None, compile: bool = False, backend: Literal["torch", "onnx"] = "torch",
                json_: bool = False) -> None:
    """Time classifying sentences: ours in length-sorted batches, the reference in file order.

    With --compare hf, transformers' ElectraForSequenceClassification with the same weights
    classifies the same sentences on batches padded to their longest member; the largest logit
    difference is reported. The model forward only: tokenizing and the results are not timed.

    Args:
        model: a size (tiny, small, base, large: random weights and a tokenizer trained on the
            sentences), or a fine-tuned single-sentence classifier's directory (its own tokenizer and
            weights: what `electra serve` would serve, on the same tokens)
        data: a table of sentences (e.g. SST-2's dev.tsv); default: 1000 synthetic sentences of mixed length
        batch_size: sentences per batch
        seq_len: longest input; longer sentences are cut
        rounds: passes over the sentences (the median is reported)
        precision: fp32, or bf16/fp16 on a GPU
        compare: hf: also time the Hugging Face reference
        compile: torch.compile ours for inference, weights frozen, as `predict --compile` does
            (compiled in the untimed warm-up pass; the reference stays eager, as users run it)
        backend: torch, or onnx: our model exported to ONNX and run by ONNX Runtime (fp32, CPU)
        json_: end with one JSON object of the results
    """
    _bench("infer", model, batch_size, seq_len, 1, 1, rounds, precision, compare, json_, data, compile, backend)


@computes
def serve(*, model: str, host: str = "127.0.0.1", port: int = 8000, max_batch_size: int = 64,
          max_wait_ms: float = 5.0, max_queue: int = 1024, backend: Literal["torch", "onnx"] = "torch") -> None:
    """Serve a model over HTTP (JSON) with dynamic batching, Prometheus metrics and a page to try it.

    POST /v1/predict {"inputs": [...]} for a fine-tuned model (texts, [text_a, text_b] pairs, or
    {"question", "context"} objects; "top_k" for classification); POST /v1/detect, /v1/fill-mask
    ("top_k") and /v1/embed ("pooling": mean or cls) for a pretrained one. Answers {"outputs": [...]}
    in the shapes `electra predict` writes. GET /health, GET /metrics (Prometheus), GET / (a page).
    Concurrent requests are batched up to --max-batch-size inputs or --max-wait-ms, whichever comes
    first; the model runs off the event loop. Malformed requests get 400, too large ones 413 (1 MB
    bodies, 256 inputs, 20,000 characters an input), a full queue 503 with Retry-After; a failing
    batch fails its own requests only (500). SIGTERM or Ctrl-C stop accepting, finish what is in
    flight, and exit 0.

    Args:
        model: anything --model accepts elsewhere, or an `electra export --format onnx` directory
        host: the address to listen on (127.0.0.1: this machine only)
        port: the TCP port
        max_batch_size: most inputs the model runs at once
        max_wait_ms: how long a batch waits for more requests after its first one (after the model is free,
            for requests that queued while it ran); longer fills batches better under many clients
            and makes a lone request wait that much longer
        max_queue: most inputs waiting; beyond, requests get 503
        backend: torch (the most sentences/s under load), or onnx (ONNX Runtime: on 2 CPU cores 2-2.7x
            faster one request at a time, slower with batching; a model that is no ONNX export is
            exported to MODEL-onnx/ first)
    """
    import socket

    from electra.serve.app import Limits, create_app, run_server
    from electra.serve.backends import load_backend

    if max_batch_size <= 0 or max_wait_ms < 0 or max_queue <= 0 or not 0 < port < 65536:
        raise UserError("--max-batch-size and --max-queue must be positive, --max-wait-ms >= 0, --port in 1-65535")
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:  # before the model loads
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as e:
            raise UserError(f"cannot listen on {host}:{port} ({e.strerror}); choose another --port or --host") from None
    loaded = load_backend(model, backend)
    if backend == "torch":
        import torch

        # PyTorch runs GELU on CPU through oneDNN, which compiles and keeps a kernel for every tensor shape
        # it meets (up to 1,024): a server's batches of ever-different lengths fill that cache and fragment
        # the heap around it (+22-31 MB in a 10-minute soak; BENCHMARKS.md). PyTorch's own GELU is as fast.
        torch.backends.mkldnn.enabled = False
    app = create_app(loaded, max_batch_size, max_wait_ms, Limits(max_queue=max_queue))
    print(f"electra: serving {model} ({', '.join(loaded.endpoints)}; {backend}) on http://{host}:{port}/",
          file=sys.stderr, flush=True)
    run_server(app, host, port)


COMMANDS: dict = {
    "demo": demo,
    "tokenizer": {"train": tokenizer_train},
    "prepare": prepare,
    "pretrain": pretrain,
    "detect": detect,
    "fill-mask": fill_mask,
    "export": export,
    "finetune": finetune,
    "evaluate": evaluate,
    "predict": predict,
    "zero-shot": zero_shot,
    "attack": attack,
    "serve": serve,
    "bench": {"pretrain": bench_pretrain, "finetune": bench_finetune, "infer": bench_infer},
}
