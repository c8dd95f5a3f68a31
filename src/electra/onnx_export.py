"""ONNX, both ways: `electra export --format onnx` writes OUT/model.onnx (dynamic batch and sequence axes),
electra.json (what the network is: a discriminator, or a task model with its labels and settings) and
the tokenizer; `load_onnx` runs that directory with ONNX Runtime behind the same prediction code as
PyTorch (`electra.load`, `electra predict`, `electra serve --backend onnx`)."""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from electra.checkpoint import ELECTRA_JSON, FORMAT_VERSION
from electra.config import ModelConfig, read_json
from electra.data.tokenizer import check_vocab, is_lowercase, load_tokenizer, save_tokenizer, special_ids
from electra.errors import UserError

ONNX_FILE = "model.onnx"
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
OPSET = 17


class _DiscriminatorOutputs(nn.Module):
    """What the discriminator's ONNX graph returns: replaced-token logits and the last hidden states."""

    def __init__(self, disc: nn.Module):
        super().__init__()
        self.disc = disc

    def forward(self, input_ids, attention_mask, token_type_ids):
        h = self.disc.encoder(input_ids, attention_mask, token_type_ids)  # (B, T, H)
        return self.disc.head(h), h


def is_onnx_dir(directory: Path) -> bool:
    return (Path(directory) / ONNX_FILE).is_file() and (Path(directory) / ELECTRA_JSON).is_file()


def export_onnx(src: str, out: Path, overwrite: bool = False) -> Path:
    """Export a fine-tuned model (its task head) or a pretrained discriminator to OUT; the ONNX Runtime
    outputs are checked against PyTorch's on a padded batch, and the largest difference is recorded."""
    from electra.finetune.load import is_finetuned_dir, load_finetuned
    from electra.pretrained import load_pretrained, resolve

    _require_onnx()
    directory = resolve(src)
    out = Path(out)
    if out.resolve() in (directory.resolve(), *directory.resolve().parents, Path(src).resolve()):
        raise UserError(f"--out {out} is or holds the model being exported; choose another directory")
    if out.exists() and any(out.iterdir()) and not (overwrite and is_onnx_dir(out)):
        raise UserError(f"{out} already exists and is not empty" + ("" if overwrite else
                        "; choose another --out or pass --overwrite") + (
                        "; --overwrite replaces only an earlier ONNX export" if overwrite else ""))
    if is_finetuned_dir(directory):
        ft = load_finetuned(directory)
        net, tok, outputs = ft.model.eval(), ft.tokenizer, ["logits"]
        meta = {"kind": "finetuned", "task": ft.task.name, "labels": ft.task.labels, "settings": ft.task.settings,
                "max_seq_len": ft.max_seq_len, "model": ft.model.config.to_dict()}
    else:
        pre = load_pretrained(directory)
        disc = pre.require("discriminator").eval()
        net, tok, outputs = _DiscriminatorOutputs(disc), pre.tokenizer, ["logits", "last_hidden_state"]
        meta = {"kind": "discriminator", "model": disc.config.to_dict()}
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        check = export_network(net, tmp / ONNX_FILE, outputs, meta["model"]["vocab_size"])
        if check > 1e-3:
            raise UserError(f"the ONNX graph's outputs differ from PyTorch's by {check:.2e}; this export is not "
                            "trustworthy (please report it with the model's config)")
        save_tokenizer(tok, tmp, lowercase=is_lowercase(tok), max_length=meta.get("max_seq_len"))
        meta.update(format="onnx", format_version=FORMAT_VERSION, source=str(directory.resolve()), opset=OPSET,
                    source_weights=_fingerprint(directory), max_abs_difference_vs_torch=check)
        (tmp / ELECTRA_JSON).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        raise UserError("ONNX needs the onnx and onnxruntime packages: pip install 'electra[onnx]'") from None


def _fingerprint(directory: Path) -> list:
    """Size and modification time of a model directory's weights: an export made from them is current
    while these are unchanged."""
    files = sorted(p for p in Path(directory).iterdir() if p.suffix in (".safetensors", ".bin"))
    return [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def is_current(export: Path, source: Path) -> bool:
    """Was the ONNX export made from the source's weights as they are now?"""
    meta = read_json(Path(export) / ELECTRA_JSON, "model config")
    return meta.get("source") == str(Path(source).resolve()) and meta.get("source_weights") == _fingerprint(source)


def export_network(net: nn.Module, path: Path, outputs: list[str], vocab_size: int) -> float:
    """Trace `net` (input_ids, attention_mask, token_type_ids) -> outputs into an ONNX file with dynamic
    batch and sequence axes; returns the largest difference of ONNX Runtime's outputs from PyTorch's."""
    axes = {name: {0: "batch", 1: "sequence"} for name in (*INPUTS, *outputs)}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on shapes it keeps symbolic anyway
        torch.onnx.export(net.eval(), _sample(vocab_size), str(path), input_names=list(INPUTS), output_names=outputs,
                          dynamic_axes=axes, opset_version=OPSET, dynamo=False)
    return _largest_difference(net, path, vocab_size)


def _sample(vocab_size: int, lengths=(9, 5)) -> tuple[torch.Tensor, ...]:
    """A padded batch: rows of the given lengths, [CLS]-like first ids."""
    g = torch.Generator().manual_seed(0)
    T = max(lengths)
    ids = torch.randint(5, vocab_size, (len(lengths), T), generator=g)
    mask = torch.zeros_like(ids)
    for r, n in enumerate(lengths):
        mask[r, :n] = 1
    return ids * mask, mask, torch.zeros_like(ids)


def _largest_difference(net: nn.Module, path: Path, vocab_size: int) -> float:
    """Max |ONNX Runtime - PyTorch| over every output, on batches of other shapes than the exported one."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for lengths in ((12, 3, 7), (4,)):
        sample = _sample(vocab_size, lengths)
        with torch.no_grad():
            want = net(*sample)
        got = session.run(None, {k: v.numpy() for k, v in zip(INPUTS, sample)})
        for w, g in zip(want if isinstance(want, tuple) else (want,), got):
            worst = max(worst, float(np.abs(w.numpy() - g).max()))
    return worst


class OnnxNetwork(nn.Module):
    """A network run by ONNX Runtime, called like ours: (input_ids, attention_mask, token_type_ids) -> logits."""

    def __init__(self, path: Path, config: ModelConfig):
        super().__init__()
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.config = config
        self.encoder = _Hidden(self)

    def run(self, input_ids, attention_mask=None, token_type_ids=None) -> list[np.ndarray]:
        ids = input_ids.cpu().numpy().astype(np.int64)
        mask = np.ones_like(ids) if attention_mask is None else attention_mask.cpu().numpy().astype(np.int64)
        types = np.zeros_like(ids) if token_type_ids is None else token_type_ids.cpu().numpy().astype(np.int64)
        return self.session.run(None, dict(zip(INPUTS, (ids, mask, types))))

    def forward(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        return torch.from_numpy(self.run(input_ids, attention_mask, token_type_ids)[0])


class _Hidden:
    """`net.encoder(...)`: the last hidden states a discriminator's graph returns (for embeddings)."""

    def __init__(self, net: OnnxNetwork):
        self.net = net

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        outputs = self.net.run(input_ids, attention_mask, token_type_ids)
        if len(outputs) < 2:
            raise UserError("this ONNX model is a task model; embeddings need an exported discriminator")
        return torch.from_numpy(outputs[1])


def load_onnx(directory: Path):
    """An ONNX export directory -> a Finetuned (task models) or a Pretrained (a discriminator) whose network
    runs in ONNX Runtime."""
    from electra.finetune.load import Finetuned
    from electra.finetune.tasks import make_task
    from electra.pretrained import Pretrained

    _require_onnx()
    meta = read_json(Path(directory) / ELECTRA_JSON, "model config")
    cfg = ModelConfig.from_dict(meta["model"])
    tok = load_tokenizer(directory)
    check_vocab(tok, cfg.vocab_size, str(directory))
    special = special_ids(tok, f"the tokenizer in {directory}")
    net = OnnxNetwork(Path(directory) / ONNX_FILE, cfg)
    if meta.get("kind") == "finetuned":
        task = make_task(meta["task"], meta.get("labels"), meta.get("settings", {}))
        return Finetuned(net, task, tok, special, meta["max_seq_len"], Path(directory))
    return Pretrained(net, None, tok, special, Path(directory), "onnx", meta=meta)
