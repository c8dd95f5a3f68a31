"""What turns a plain model into the one that trains (torchtitan's `parallelize`): the fast CPU kernels or
torch.compile, then DistributedDataParallel or FSDP. The model files know nothing of this; checkpoints
are always saved from the unwrapped module."""

from __future__ import annotations

import torch
from torch import nn

from electra.model.cpu import use_cpu_kernels
from electra.model.encoder import Encoder
from electra.train.distributed import World


def parallelize(model: nn.Module, world: World, strategy: str, device: torch.device, compile: bool = False) -> nn.Module:
    """Speed up `model` in place (compile each transformer layer, or swap in the eager CPU kernels),
    then wrap it for the processes of `world`. Returns the module to call forward on."""
    encoders = [m for m in model.modules() if isinstance(m, Encoder)]
    if compile:
        compile_layers(*encoders)
    else:
        use_cpu_kernels(model)
    return wrap(model, world, strategy, [layer for e in encoders for layer in e.layers], device)


def compile_layers(*encoders: Encoder) -> None:
    """torch.compile each transformer layer: layers of one width share their compiled graphs, so
    compile time stays that of one layer. The two networks' widths, training vs validation (grad mode),
    and on CPUs batches with and without padding (no mask is passed without padding) need graphs of
    their own; dynamo's limit of 8 per function (beyond which it silently runs the layer eagerly) is
    raised to leave room for them."""
    config = torch._dynamo.config
    limit = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"  # before torch 2.7
    setattr(config, limit, max(getattr(config, limit), 32))
    for encoder in encoders:
        for layer in encoder.layers:
            layer.compile()


def wrap(model: nn.Module, world: World, strategy: str, blocks: list[nn.Module], device: torch.device) -> nn.Module:
    """The module to call forward on. DDP wraps; fully_shard shards each transformer layer, then the
    rest (embeddings, heads) at the root, in place. A world of one gets the model back."""
    if not world.distributed:
        return model
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard
        for block in blocks:
            fully_shard(block)
        fully_shard(model)
        return model
    from torch.nn.parallel import DistributedDataParallel
    # the models have no buffers, so DDP's default buffer sync has nothing to send
    return DistributedDataParallel(model, device_ids=[world.local_rank] if device.type == "cuda" else None)
