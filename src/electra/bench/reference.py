"""The Hugging Face reference that `electra bench --compare hf` times against: what PyTorch users
write today with `transformers` (needs the package; imported only by the benchmark).

Pretraining: ElectraForMaskedLM (generator) and ElectraForPreTraining (discriminator) of the same
sizes, embeddings shared, generator logits at every position, sampling, loss = MLM + 50 x BCE.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from electra.config import ElectraConfig, ObjectiveConfig, SpecialIds
from electra.hf import hf_config
from electra.model.electra import mask_tokens


class HFReferencePretraining(torch.nn.Module):
    def __init__(self, cfg: ElectraConfig, special: SpecialIds, objective: ObjectiveConfig | None = None):
        super().__init__()
        import transformers

        def config(c, arch):
            return transformers.ElectraConfig(**{k: v for k, v in hf_config(c, arch).items()
                                                 if k not in ("architectures", "model_type", "dtype")})

        self.generator = transformers.ElectraForMaskedLM(config(cfg.generator, "ElectraForMaskedLM"))
        self.discriminator = transformers.ElectraForPreTraining(config(cfg.discriminator, "ElectraForPreTraining"))
        self.generator.electra.embeddings = self.discriminator.electra.embeddings  # shared, as in the paper
        self.generator.generator_lm_head.weight = self.discriminator.electra.embeddings.word_embeddings.weight
        self.special = special
        self.objective = objective or ObjectiveConfig()

    def forward(self, input_ids, attention_mask, token_type_ids, example_index, *, step: int, seed: int):
        obj = self.objective
        m = mask_tokens(input_ids, attention_mask, example_index, seed=seed, step=step, special=self.special, cfg=obj)
        labels = torch.full_like(input_ids, -100).scatter(1, m.positions, torch.where(m.valid, m.targets, -100))
        logits = self.generator(input_ids=m.input_ids, attention_mask=attention_mask,
                                token_type_ids=token_type_ids).logits  # (B, T, V): every position
        gen_loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)
        with torch.no_grad():
            probs = torch.softmax(logits.float(), dim=-1)
            sampled = torch.multinomial(probs.flatten(0, 1), 1).view_as(input_ids)
            is_masked = labels != -100
            corrupted = torch.where(is_masked, sampled, input_ids)
            disc_labels = (corrupted != input_ids).float()
        disc_logits = self.discriminator(input_ids=corrupted, attention_mask=attention_mask,
                                         token_type_ids=token_type_ids).logits
        w = attention_mask.float()
        disc_loss = (F.binary_cross_entropy_with_logits(disc_logits.float(), disc_labels, reduction="none") * w).sum() / w.sum()
        loss = obj.gen_weight * gen_loss + obj.disc_weight * disc_loss
        return loss, {"loss": loss.detach(), "gen_loss": gen_loss.detach(), "disc_loss": disc_loss.detach()}
