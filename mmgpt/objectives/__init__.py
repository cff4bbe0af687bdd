"""Training objectives, composed with weights by the LightningModule: (network, batch) -> loss and metrics."""

from mmgpt.objectives.base import Objective, ObjectiveOutput
from mmgpt.objectives.classify import Classification
from mmgpt.objectives.contrastive import Contrastive
from mmgpt.objectives.lm import CausalLM
from mmgpt.objectives.matching import Matching
from mmgpt.objectives.mlm import MaskedLM

__all__ = ["CausalLM", "Classification", "Contrastive", "Matching", "MaskedLM", "Objective", "ObjectiveOutput"]
