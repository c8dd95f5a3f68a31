"""What runs a batch: the Python API's model (PyTorch, or ONNX Runtime for an ONNX export), behind one
small interface, `endpoints` and `run(endpoint, inputs, options)`."""

from __future__ import annotations

import time
from pathlib import Path

from electra.api import FinetunedModel, PretrainedModel, load
from electra.errors import UserError
from electra.runtime import release_freed_memory


class Backend:
    """`model_batch`: the batcher's batch runs as length-sorted model batches of at most this many inputs
    (None: whole). PyTorch skips the padding outside attention and runs a batch fastest whole; ONNX
    Runtime runs the exported graph padded to each batch's longest input, so a batch of random lengths
    runs faster cut into short length-sorted pieces (SST-2 sentences in batches of 64: 107 sentences/s
    whole, 197 in pieces of 8, on 2 cores; BENCHMARKS.md)."""

    TRIM_EVERY_S = 10.0  # at most this often, between batches, freed memory goes back to the OS

    def __init__(self, model: FinetunedModel | PretrainedModel, name: str, model_batch: int | None = None):
        self.model = model
        self.name = name
        self.model_batch = model_batch
        self.trimmed = time.monotonic()

    @property
    def endpoints(self) -> list[str]:
        """What this model can do: predict (fine-tuned), or detect / fill-mask / embed (pretrained)."""
        if isinstance(self.model, FinetunedModel):
            return ["predict"]
        pre = self.model.pretrained
        have = []
        if pre.discriminator is not None and pre.has_disc_head:
            have.append("detect")
        if pre.generator is not None:
            have.append("fill-mask")
        if pre.discriminator is not None:
            have.append("embed")
        return have

    def describe(self) -> dict:
        info = {"backend": self.name, "endpoints": self.endpoints}
        if isinstance(self.model, FinetunedModel):
            info.update(task=self.model.task, labels=self.model.labels, text_count=self.model.text_count)
        return info

    def run(self, endpoint: str, inputs: list, options: dict) -> list:
        """One result per input (called on the model thread)."""
        try:
            return self._run(endpoint, inputs, options)
        finally:
            if time.monotonic() - self.trimmed > self.TRIM_EVERY_S:
                release_freed_memory()  # the electra command keeps freed memory for speed; a server must not grow
                self.trimmed = time.monotonic()

    def _run(self, endpoint: str, inputs: list, options: dict) -> list:
        m, n = self.model, min(len(inputs), self.model_batch or len(inputs))
        if endpoint == "predict":
            return m.predict(inputs, top_k=options.get("top_k"), batch_size=n)
        if endpoint == "detect":
            return m.detect(inputs, batch_size=n)
        if endpoint == "fill-mask":
            return m.fill_mask(inputs, top_k=options.get("top_k") or 5, batch_size=n)
        if endpoint == "embed":
            return m.embed(inputs, pooling=options.get("pooling", "mean"), batch_size=n).tolist()
        raise ValueError(endpoint)


def load_backend(model: str, backend: str) -> Backend:
    """--model and --backend of `electra serve`: torch runs the model as it is; onnx runs an ONNX export
    directory, or exports the model to one first (kept in MODEL-onnx/ beside it when that is free)."""
    if backend == "torch":
        return Backend(load(model), "torch")
    from electra.onnx_export import export_onnx, is_current, is_onnx_dir
    from electra.pretrained import resolve

    directory = resolve(model)
    if not is_onnx_dir(directory):
        target = Path(str(Path(model).resolve()) + "-onnx")
        if target.exists() and not is_onnx_dir(target):
            raise UserError(f"--backend onnx exports {model} to {target}, which holds something else; export it "
                            "yourself with `electra export --format onnx --out DIR` and serve DIR")
        if not is_onnx_dir(target) or not is_current(target, directory):
            export_onnx(model, target, overwrite=True)  # first time, or the model changed since
        directory = target
    return Backend(load(directory), "onnx", model_batch=8)
