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


def predict_examples(ft: Finetuned, examples, device: torch.device, batch_size: int = 64, n_best: int = 1,
                     progress: bool = False, compile_: bool = False) -> tuple[list, int]:
    """One prediction per example (the task's `decode`), and how many inputs were truncated to fit."""
    features, truncated = ft.task.encode(examples, ft.tokenizer, ft.special, ft.max_seq_len)
    model = CompiledForInference(ft.model) if compile_ else use_cpu_kernels(ft.model)
    outputs = model_outputs(model, features, batch_size, device, ft.special.pad, progress)
    if ft.task.name == "qa":
        return ft.task.decode(examples, features, outputs, n_best=n_best), truncated
    return ft.task.decode(examples, features, outputs), truncated


def write_jsonl_atomic(path: Path, rows) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
