"""`electra bench`: time our training step or inference, count model FLOPs, measure the device's
matmul peak in the same run, and optionally time the Hugging Face reference interleaved with ours."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from electra.bench import flops
from electra.config import SIZES, SpecialIds, get_size
from electra.errors import UserError
from electra.model.cpu import use_cpu_kernels
from electra.runtime import autocast as _autocast
from electra.runtime import pick_device
from electra.train.parallelize import compile_layers

SPECIAL = SpecialIds(pad=0, cls=2, sep=3, mask=4)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def dtype_of(precision: str) -> torch.dtype:
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def matmul_peak(device: torch.device, precision: str, seconds: float = 1.0) -> float:
    """FLOP/s of a large square matmul in the benchmark's precision: the best of several timings."""
    n = 8192 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype_of(precision))
    b = torch.randn(n, n, device=device, dtype=dtype_of(precision))
    for _ in range(2):
        a @ b
    sync(device)
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        for _ in range(4):
            a @ b
        sync(device)
        best = max(best, 4 * 2 * n ** 3 / (time.perf_counter() - t0))
    return best


def synthetic_batch(batch_size: int, seq_len: int, vocab_size: int, device: torch.device, seed: int = 0):
    """Full-length pairs: [CLS] A [SEP] B [SEP] with random word pieces."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab_size, (batch_size, seq_len), generator=g)
    half = seq_len // 2
    ids[:, 0], ids[:, half], ids[:, -1] = SPECIAL.cls, SPECIAL.sep, SPECIAL.sep
    types = torch.zeros_like(ids)
    types[:, half + 1:] = 1
    return ids.to(device), torch.ones_like(ids).to(device), types.to(device), torch.arange(batch_size, device=device)


@dataclass
class Timing:
    seconds: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


def interleaved(runs: dict[str, Callable[[], None]], warmup: int, steps: int, rounds: int,
                device: torch.device) -> dict[str, Timing]:
    """Warm each up, then alternate rounds of `steps` calls so noise hits both alike; per-call seconds."""
    for fn in runs.values():
        for _ in range(warmup):
            fn()
    sync(device)
    out = {name: Timing([]) for name in runs}
    for _ in range(rounds):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            for _ in range(steps):
                fn()
            sync(device)
            out[name].seconds.append((time.perf_counter() - t0) / steps)
    return out


def step_memory(runs: dict[str, Callable[[], None]], device: torch.device) -> dict[str, float]:
    """GPU memory one step adds on top of what is already allocated (activations, gradients, workspace;
    weights and optimizer state are the same for both sides and excluded), in MiB. CUDA only."""
    if device.type != "cuda":
        return {}
    out = {}
    for name, fn in runs.items():
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        out[name] = round((torch.cuda.max_memory_allocated(device) - before) / 2**20, 1)
    return out


def pretrain_steps(size: str, batch_size: int, seq_len: int, precision: str, device: torch.device,
                   compare_hf: bool, compile_: bool = False) -> tuple[dict[str, Callable[[], None]], float]:
    """Step functions (ours, and the reference) and our model FLOPs per token."""
    from electra.model.electra import ElectraForPretraining
    from electra.train.optim import adamw

    cfg = get_size(size)
    batch = synthetic_batch(batch_size, seq_len, cfg.discriminator.vocab_size, device)
    torch.manual_seed(0)
    ours = ElectraForPretraining(cfg, SPECIAL).to(device)
    if compile_:
        compile_layers(ours.discriminator.encoder, ours.generator.encoder)
    else:
        use_cpu_kernels(ours)  # as `electra pretrain` does
    opt = adamw(ours, 5e-4, 0.01)
    totals = ours.counts(batch[0], batch[1])

    def our_step():
        with _autocast(precision, device):
            out = ours(*batch, step=0, seed=0, totals=totals)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(ours.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    runs = {"electra": our_step}
    if compare_hf:
        from electra.bench.reference import HFReferencePretraining

        ref = HFReferencePretraining(cfg, SPECIAL).to(device)
        ref_opt = torch.optim.AdamW(ref.parameters(), lr=5e-4, weight_decay=0.01)

        def ref_step():
            with _autocast(precision, device):
                loss, _ = ref(*batch, step=0, seed=0)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.0)
            ref_opt.step()
            ref_opt.zero_grad(set_to_none=True)

        runs["huggingface"] = ref_step
    mask_fraction = float(totals[0]) / (batch_size * seq_len)
    return runs, flops.pretraining_step(cfg, seq_len, mask_fraction)


def run_bench(mode: str, size: str, batch_size: int, seq_len: int, steps: int, warmup: int, rounds: int,
              precision: str, compare_hf: bool, data: Path | None = None, compile_: bool = False,
              backend: str = "torch") -> dict:
    if min(batch_size, seq_len, steps, rounds) <= 0 or warmup < 0:
        raise UserError("--batch-size, --seq-len, --steps and --rounds must be positive")
    device = pick_device()
    if precision != "fp32" and device.type == "cpu":
        raise UserError(f"--precision {precision} is for GPUs here; this CPU runs fp32")
    if (mode != "infer" or size in SIZES) and seq_len > get_size(size).discriminator.max_position_embeddings:
        raise UserError(f"--seq-len {seq_len} exceeds the model's {get_size(size).discriminator.max_position_embeddings} positions")
    if compare_hf:
        try:
            import transformers  # noqa: F401
        except ImportError:
            raise UserError("--compare hf needs `pip install transformers`") from None
    if mode == "pretrain":
        runs, per_token = pretrain_steps(size, batch_size, seq_len, precision, device, compare_hf, compile_)
        units, count = "tokens", batch_size * seq_len
    elif mode == "finetune":
        runs, per_token = finetune_steps(size, batch_size, seq_len, precision, device, compare_hf, compile_)
        units, count = "tokens", batch_size * seq_len
    else:
        return infer(size, batch_size, seq_len, precision, device, compare_hf, data, rounds, compile_, backend)
    timings = interleaved(runs, warmup, steps, rounds, device)
    memory = step_memory(runs, device)
    peak = matmul_peak(device, precision)
    result = {"mode": mode, "model": size, "batch_size": batch_size, "seq_len": seq_len, "precision": precision,
              "compile": compile_,
              "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
              "flops_per_token": round(per_token), "peak_flops": round(peak)}
    for name, t in timings.items():
        rate = count / t.median
        key = "" if name == "electra" else "hf_"
        result[f"{key}{units}_per_s"] = round(rate, 1)
        result[f"{key}step_s_all"] = [round(x, 5) for x in t.seconds]
        if name in memory:
            result[f"{key}step_memory_mb"] = memory[name]
        if name == "electra":
            result["achieved_flops"] = round(rate * per_token)
            result["mfu"] = round(rate * per_token / peak, 4)
    if compare_hf:
        result["ratio_vs_hf"] = round(result[f"{units}_per_s"] / result[f"hf_{units}_per_s"], 3)
    return result


def finetune_steps(size: str, batch_size: int, seq_len: int, precision: str, device: torch.device,
                   compare_hf: bool, compile_: bool = False) -> tuple[dict[str, Callable[[], None]], float]:
    from electra.finetune.model import FinetuneModel
    from electra.train.optim import adamw

    cfg = get_size(size).discriminator
    ids, mask, types, _ = synthetic_batch(batch_size, seq_len, cfg.vocab_size, device)
    labels = torch.randint(0, 2, (batch_size,), device=device)
    torch.manual_seed(0)
    ours = FinetuneModel(cfg, "classification", 2).to(device)
    opt = adamw(ours, 1e-4, 0.0)
    if compile_:
        compile_layers(ours.encoder)
    else:
        use_cpu_kernels(ours)  # as `electra finetune` does

    def our_step():
        with _autocast(precision, device):
            loss = torch.nn.functional.cross_entropy(ours(ids, mask, types).float(), labels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    runs = {"electra": our_step}
    if compare_hf:
        ref = _hf_classifier(ours).to(device)
        ref_opt = torch.optim.AdamW(ref.parameters(), lr=1e-4, weight_decay=0.0)

        def ref_step():
            with _autocast(precision, device):
                loss = ref(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=labels).loss
            loss.backward()
            ref_opt.step()
            ref_opt.zero_grad(set_to_none=True)

        runs["huggingface"] = ref_step
    return runs, 3 * flops.classifier_forward(cfg, seq_len)


def _classifier(model: str, texts: list[str], seq_len: int):
    """(config, classifier, tokenizer) for `bench infer --model`: a size, or a fine-tuned directory."""
    from electra.data.tokenizer import train_tokenizer
    from electra.finetune.model import FinetuneModel

    if model in SIZES:
        cfg = get_size(model).discriminator
        tok = train_tokenizer(texts, vocab_size=min(cfg.vocab_size, 8000), min_frequency=1, show_progress=False)
        torch.manual_seed(0)
        return cfg, FinetuneModel(cfg, "classification", 2), tok
    from electra.api import FinetunedModel
    from electra.finetune.load import load_finetuned

    if not Path(model).is_dir():
        raise UserError(f"--model {model} is neither a size ({', '.join(SIZES)}) nor a directory; give a size or "
                        "a fine-tuned classification model")
    ft = load_finetuned(model)
    pairs = FinetunedModel(ft, torch.device("cpu")).text_count == 2
    if ft.task.name != "classification" or pairs:
        raise UserError(f"{model} is a {ft.task.name}{' (pairs)' if pairs else ''} model; `bench infer` times "
                        "single-sentence classification: give a size or such a model")
    if seq_len > ft.model.config.max_position_embeddings:
        raise UserError(f"--seq-len {seq_len} exceeds the model's {ft.model.config.max_position_embeddings} positions")
    return ft.model.config, ft.model, ft.tokenizer


def _hf_classifier(ours):
    """transformers' ElectraForSequenceClassification with our model's weights."""
    import transformers

    from electra import hf
    config = hf.hf_config(ours.config, "ElectraForSequenceClassification", num_labels=ours.head.out_proj.out_features)
    ref = transformers.ElectraForSequenceClassification(transformers.ElectraConfig(
        **{k: v for k, v in config.items() if k not in ("architectures", "model_type", "dtype")}))
    ref.load_state_dict(hf.to_hf(ours.state_dict(), ours.config, hf.HEADS["classification"]), strict=True)
    return ref.eval()


def _sentences(data: Path | None) -> list[str]:
    if data is None:
        import random
        rng = random.Random(0)  # mixed lengths, as real sentences come
        words = "the a of and to in is was for on that with by as film story it its good bad".split()
        return [" ".join(rng.choice(words) for _ in range(rng.randint(3, 60))) for _ in range(1000)]
    from electra.finetune.tables import read_table
    examples, _ = read_table(data, need_label=False)
    return [ex.texts[0] for ex in examples]


@torch.no_grad()
def infer(size: str, batch_size: int, seq_len: int, precision: str, device: torch.device, compare_hf: bool,
          data: Path | None, rounds: int, compile_: bool = False, backend: str = "torch") -> dict:
    """Classify sentences: ours in length-sorted batches, the reference in file order padded to each
    batch's longest; outputs compared. `size` is a size (random weights, a tokenizer trained on the
    sentences) or a fine-tuned classification directory (its own tokenizer and weights: the rate of the
    model `electra serve` would serve, on the same tokens)."""
    from electra.finetune.predict import CompiledForInference

    texts = _sentences(data)
    cfg, ours, tok = _classifier(size, texts, seq_len)
    encoded = [e.ids[:seq_len] for e in tok.encode_batch(texts)]  # [CLS] ... [SEP]
    ours = ours.to(device).eval()
    n_labels = ours.head.out_proj.out_features
    ref = _hf_classifier(ours).to(device) if compare_hf else None
    if backend == "onnx":  # the same weights, exported and run by ONNX Runtime, as `serve --backend onnx` does
        import tempfile

        from electra.onnx_export import OnnxNetwork, export_network

        if device.type != "cpu" or precision != "fp32" or compile_:
            raise UserError("--backend onnx runs fp32 on the CPU, without --compile")
        path = Path(tempfile.mkdtemp()) / "model.onnx"
        export_network(ours, path, ["logits"], cfg.vocab_size)
        run_model = OnnxNetwork(path, cfg)
    else:
        run_model = CompiledForInference(ours) if compile_ else use_cpu_kernels(ours)  # as `predict` does

    def batches(order):
        for i in range(0, len(order), batch_size):
            chunk = [encoded[j] for j in order[i:i + batch_size]]
            T = max(len(c) for c in chunk)
            ids = torch.zeros(len(chunk), T, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for r, c in enumerate(chunk):
                ids[r, :len(c)] = torch.tensor(c)
                mask[r, :len(c)] = 1
            yield order[i:i + batch_size], ids.to(device), mask.to(device)

    sorted_order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    file_order = list(range(len(encoded)))
    outputs: dict[str, torch.Tensor] = {}

    def run_ours():
        logits = torch.empty(len(encoded), n_labels, device=device)
        with _autocast(precision, device):
            for idx, ids, mask in batches(sorted_order):
                logits[idx] = run_model(ids, mask).float()
        outputs["electra"] = logits

    def run_ref():
        logits = torch.empty(len(encoded), n_labels, device=device)
        with _autocast(precision, device):
            for idx, ids, mask in batches(file_order):
                logits[idx] = ref(input_ids=ids, attention_mask=mask).logits.float()
        outputs["huggingface"] = logits

    runs = {"electra": run_ours, **({"huggingface": run_ref} if compare_hf else {})}
    timings = interleaved(runs, 1, 1, rounds, device)
    peak = matmul_peak(device, precision)
    n_tokens = sum(len(e) for e in encoded)
    per_seq_flops = sum(flops.classifier_forward(cfg, len(e)) * len(e) for e in encoded) / len(encoded)
    rate = len(encoded) / timings["electra"].median
    result = {"mode": "infer", "model": size, "batch_size": batch_size, "sentences": len(encoded),
              "tokens": n_tokens, "precision": precision, "compile": compile_, "backend": backend,
              "sequences_per_s": round(rate, 1),
              "flops_per_token": round(per_seq_flops * len(encoded) / n_tokens), "peak_flops": round(peak),
              "achieved_flops": round(rate * per_seq_flops), "mfu": round(rate * per_seq_flops / peak, 4)}
    if compare_hf:
        result["hf_sequences_per_s"] = round(len(encoded) / timings["huggingface"].median, 1)
        result["ratio_vs_hf"] = round(rate / result["hf_sequences_per_s"], 3)
        result["max_abs_logit_diff"] = float((outputs["electra"] - outputs["huggingface"]).abs().max())
    return result
