"""ELECTRA: pretrain text encoders with replaced-token detection (Clark et al., ICLR 2020)."""

from electra.config import SIZES, ElectraConfig, ModelConfig, ObjectiveConfig, SpecialIds, get_size
from electra.errors import UserError
from electra.model.electra import ElectraForPretraining
from electra.model.heads import Discriminator, Generator
from electra.pretrained import load_pretrained

__version__ = "0.1.0"
__all__ = ["SIZES", "Discriminator", "ElectraConfig", "ElectraForPretraining", "Generator", "ModelConfig",
           "ObjectiveConfig", "SpecialIds", "UserError", "get_size", "load_pretrained"]
