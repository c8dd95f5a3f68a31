"""Model FLOPs per token, counted from the architecture (matmuls only: 2 FLOPs per multiply-add).

A training step costs 3x the forward pass (the backward pass computes gradients with respect to
both inputs and weights). Pretraining counts both networks, attention, and the generator's
vocabulary projection on the masked positions only, which is what ELECTRA computes.
"""

from __future__ import annotations

from electra.config import ElectraConfig, ModelConfig


def encoder_forward(cfg: ModelConfig, seq_len: int) -> float:
    """Per token: embedding projection, then per layer q/k/v/out, the feed-forward, and attention
    (scores QK^T and the weighted sum of V, each 2 x seq_len x hidden)."""
    H, I = cfg.hidden_size, cfg.intermediate_size
    per_layer = 2 * (4 * H * H + 2 * H * I) + 4 * seq_len * H
    project = 2 * cfg.embedding_size * H if cfg.embedding_size != H else 0
    return project + cfg.num_hidden_layers * per_layer


def pretraining_step(cfg: ElectraConfig, seq_len: int, mask_fraction: float, objective: str = "electra") -> float:
    """FLOPs per token position of one pretraining step: forward and backward of the generator (the masked
    LM, for `mlm`, of the discriminator's size) and, for ELECTRA, of the discriminator."""
    d, g = cfg.discriminator, cfg.generator
    gen_head = 2 * g.hidden_size * g.embedding_size + 2 * g.embedding_size * g.vocab_size  # per masked position
    gen = encoder_forward(g, seq_len) + mask_fraction * gen_head
    if objective == "mlm":
        return 3.0 * gen
    disc = encoder_forward(d, seq_len) + 2 * d.hidden_size * d.hidden_size + 2 * d.hidden_size  # + RTD head
    return 3.0 * (disc + gen)


def classifier_forward(cfg: ModelConfig, seq_len: int, num_labels: int = 2) -> float:
    """FLOPs per token of a sequence classifier's forward pass as we run it: the last layer computes
    keys and values for every token but the rest (query, attention, output, feed-forward) for [CLS]
    alone, and the head runs once per sequence."""
    H, I, T = cfg.hidden_size, cfg.intermediate_size, seq_len
    last_layer_full = 2 * (4 * H * H + 2 * H * I) + 4 * T * H
    last_layer_cls = 2 * 2 * H * H + (2 * (2 * H * H + 2 * H * I) + 4 * T * H) / T
    head = (2 * H * H + 2 * H * num_labels) / T
    return encoder_forward(cfg, T) - last_layer_full + last_layer_cls + head
