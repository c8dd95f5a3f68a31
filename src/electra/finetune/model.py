"""The discriminator's encoder with a task head; layouts match Hugging Face's
`ElectraForSequenceClassification`, `ElectraForTokenClassification` and
`ElectraForQuestionAnswering`, so `electra export` gives directories those classes load."""

from __future__ import annotations

import re

import torch
from torch import nn

from electra.config import ModelConfig
from electra.model.encoder import Encoder, activation, init_weights
from electra.model.heads import DiscriminatorHead

TASKS = ("classification", "regression", "ner", "qa", "prompt")
HF_ARCHITECTURE = {"prompt": "ElectraForPreTraining", "classification": "ElectraForSequenceClassification",
                   "regression": "ElectraForSequenceClassification",
                   "ner": "ElectraForTokenClassification", "qa": "ElectraForQuestionAnswering"}


class SequenceHead(nn.Module):
    """[CLS] -> dropout -> dense -> GELU -> dropout -> one score per label (ELECTRA uses GELU here, not tanh)."""

    def __init__(self, cfg: ModelConfig, num_labels: int):
        super().__init__()
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.act = activation("gelu")
        self.out_proj = nn.Linear(cfg.hidden_size, num_labels)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        x = self.dropout(h[:, 0])  # (B, T, H) -> (B, H)
        return self.out_proj(self.dropout(self.act(self.dense(x))))  # (B, num_labels)


class TokenHead(nn.Module):
    """dropout -> one score per label for every token."""

    def __init__(self, cfg: ModelConfig, num_labels: int):
        super().__init__()
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)
        self.linear = nn.Linear(cfg.hidden_size, num_labels)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.linear(self.dropout(h))  # (B, T, num_labels)


class SpanHead(nn.Module):
    """Start and end logits for every token."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.linear = nn.Linear(cfg.hidden_size, 2)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.linear(h)  # (B, T, 2): [..., 0] start, [..., 1] end


class FinetuneModel(nn.Module):
    def __init__(self, cfg: ModelConfig, task: str, num_labels: int):
        super().__init__()
        self.config = cfg
        self.task = task
        self.encoder = Encoder(cfg)
        if task in ("classification", "regression"):
            self.head = SequenceHead(cfg, num_labels)
        elif task == "ner":
            self.head = TokenHead(cfg, num_labels)
        elif task == "prompt":  # the replaced-token-detection head, scoring the label words (electra.prompt)
            self.head = DiscriminatorHead(cfg)
        else:
            self.head = SpanHead(cfg)
        init_weights(self, cfg.initializer_range)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        # the sequence head reads [CLS] alone, so the last layer need not compute the other positions;
        # the NER loss ignores padding (the QA loss does not: its softmax runs over every position)
        first_only = self.task in ("classification", "regression")
        unread = self.task in ("ner", "prompt") and self.training
        return self.head(self.encoder(input_ids, attention_mask, token_type_ids, first_token_only=first_only,
                                      padding_unread=unread))


_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def layer_decay_scales(model: nn.Module, num_layers: int, decay: float) -> dict[str, float]:
    """Learning-rate factor per parameter name: the head and the top layer get 1, layer i (0 = lowest)
    decay ** (L - 1 - i), the embeddings (and their projection) decay ** L, the lowest of all.

    The official ELECTRA code puts the head two depths above the top layer, which gives the top
    layer decay ** 2 and the embeddings decay ** (L + 2); here the top layer gets the base rate.
    """
    scales = {}
    for name, _ in model.named_parameters():
        m = _LAYER.search(name)
        if m:
            scales[name] = decay ** (num_layers - 1 - int(m.group(1)))
        elif ".embeddings." in f".{name}" or "encoder.project." in name:
            scales[name] = decay ** num_layers
        else:
            scales[name] = 1.0  # the task head (and LoRA's copies of it)
    return scales
