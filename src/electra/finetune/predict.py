"""Running a fine-tuned model: batched, length-sorted, plain Python results, no printing. The CLI's
`evaluate` and `predict` call this room (and so will the Python API and the server)."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from electra.errors import UserError
from electra.finetune.load import Finetuned
from electra.finetune.tasks import collate
from electra.model.cpu import use_cpu_kernels


class CompiledForInference(torch.nn.Module):
    """The network under torch.compile with its weights frozen into the graph (inductor's `freezing`):
    on CPU the linear layers then run oneDNN kernels on pre-packed weights with bias and GELU fused,
    and the LayerNorms fuse with their residual adds (+10-20% for small on CPU-2). Batch shapes
    vary, so shapes are dynamic: one compilation (15-40 s for small on 2 cores) serves all batches
    (but a batch of a single example, which dynamo specialises, compiles once more).
    Only for weights that no longer change: the frozen graph keeps the values it was compiled with."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.compiled = torch.compile(model.eval(), dynamic=True)

    def forward(self, *args):
        import torch._inductor.config as inductor

        # set per call, not process-wide, so training graphs compiled elsewhere keep live weights;
        # torch.compile(options=...) does not reach this setting
        with inductor.patch(freezing=True):
            return self.compiled(*args)


@torch.no_grad()
def model_outputs(model: torch.nn.Module, features, batch_size: int, device: torch.device, pad_id: int,
                  progress: bool = False) -> list[np.ndarray]:
    """Outputs per feature (logits without padding), computed in length-sorted batches."""
    model.eval()
    order = sorted(range(len(features)), key=lambda i: len(features[i].ids))
    outputs: list[np.ndarray | None] = [None] * len(features)
    for start in tqdm(range(0, len(order), batch_size), desc="predict", unit="batch", disable=not progress,
                      file=sys.stderr, leave=False):
        chunk = order[start:start + batch_size]
        b = collate([dataclasses.replace(features[i], label=None) for i in chunk], pad_id).to(device)
        logits = model(b.input_ids, b.attention_mask, b.token_type_ids).float().cpu().numpy()
        for row, i in zip(logits, chunk):
            outputs[i] = row[:len(features[i].ids)] if row.ndim == 2 else row
    return outputs


def _run(ft: Finetuned, examples, device: torch.device, batch_size: int, progress: bool, compile_: bool):
    """(features, outputs per feature, how many inputs were truncated to fit)."""
    features, truncated = ft.task.encode(examples, ft.tokenizer, ft.special, ft.max_seq_len)
    model = CompiledForInference(ft.model) if compile_ else use_cpu_kernels(ft.model)
    return features, model_outputs(model, features, batch_size, device, ft.special.pad, progress), truncated


def predict_examples(ft: Finetuned, examples, device: torch.device, batch_size: int = 64, n_best: int = 1,
                     progress: bool = False, compile_: bool = False) -> tuple[list, int]:
    """One prediction per example (the task's `decode`), and how many inputs were truncated to fit."""
    features, outputs, truncated = _run(ft, examples, device, batch_size, progress, compile_)
    if ft.task.name == "qa":
        return ft.task.decode(examples, features, outputs, n_best=n_best), truncated
    return ft.task.decode(examples, features, outputs), truncated


def describe_examples(ft: Finetuned, examples, device: torch.device, batch_size: int = 64, n_best: int = 1,
                      top_k: int | None = None, progress: bool = False,
                      compile_: bool = False) -> tuple[list[dict], int]:
    """One JSON-ready row per example (the task's `describe`: the prediction `decode` makes, with its
    probabilities, entities or answer offsets), and how many inputs were truncated to fit."""
    features, outputs, truncated = _run(ft, examples, device, batch_size, progress, compile_)
    return ft.task.describe(examples, features, outputs, n_best=n_best, top_k=top_k), truncated


def check_output(output: Path, input: Path) -> None:
    """Refuse, before any work, an output that would replace the input or cannot be written: found
    out after the model has run, the work is lost (and with the input as output, the input too)."""
    output, input = Path(output), Path(input)
    if output.is_dir():
        raise UserError(f"--output {output} is a directory; give a file name, e.g. {output / 'predictions.jsonl'}")
    same = output.resolve() == input.resolve()
    if not same and output.exists() and input.exists() and hasattr(os.path, "samefile"):
        same = os.path.samefile(output, input)  # a hard link to the input, or a symlink resolve() missed
    if same:
        raise UserError(f"--output {output} is the --input file: the predictions would replace the input; "
                        "choose another output file")
    parent = output.parent  # where os.replace writes, even when the output is a symlink
    if not parent.is_dir():
        why = "is not a directory" if parent.exists() else "does not exist"
        raise UserError(f"--output {output}: the directory {parent} {why}; create it first or choose another place")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"--output {output}: the directory {parent} is not writable; choose another place")


def write_jsonl_atomic(path: Path, rows) -> None:
    """All rows or nothing: a temporary file renamed over `path`, removed if writing fails."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
