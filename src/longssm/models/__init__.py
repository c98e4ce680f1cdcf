"""Language models built from longssm layers."""

from longssm.models.config import ModelConfig
from longssm.models.lm import SSMLanguageModel
from longssm.models.state import ModelState, detach_state

__all__ = ["ModelConfig", "ModelState", "SSMLanguageModel", "detach_state"]
