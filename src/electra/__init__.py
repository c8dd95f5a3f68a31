"""ELECTRA: pretrain text encoders with replaced-token detection (Clark et al., ICLR 2020).

`electra.load(path)` gives a model to call from Python (see electra.api); the `electra` command
pretrains, fine-tunes, evaluates and serves."""

from electra.api import FinetunedModel, PretrainedModel, load
from electra.config import SIZES, ElectraConfig, ModelConfig, ObjectiveConfig, SpecialIds, get_size
from electra.errors import UserError
from electra.model.electra import ElectraForPretraining
from electra.model.heads import Discriminator, Generator
from electra.pretrained import load_pretrained

__version__ = "0.1.0"
__all__ = ["SIZES", "Discriminator", "ElectraConfig", "ElectraForPretraining", "FinetunedModel", "Generator",
           "ModelConfig", "ObjectiveConfig", "PretrainedModel", "SpecialIds", "UserError", "get_size", "load",
           "load_pretrained"]
