"""Training objectives, composed with weights by the LightningModule: (network, batch) -> loss and metrics."""

from mmgpt.objectives.base import Objective, ObjectiveOutput
from mmgpt.objectives.classify import Classification
from mmgpt.objectives.lm import CausalLM

__all__ = ["CausalLM", "Classification", "Objective", "ObjectiveOutput"]
