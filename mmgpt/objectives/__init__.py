"""Training objectives, composed with weights by the LightningModule: (network, batch) -> loss and metrics.

Network-side code (they use :mod:`mmgpt.model`, never :mod:`mmgpt.training`); registered by name in
:mod:`mmgpt.registry` and chosen per task in ``conf/task/``.
"""

from mmgpt.objectives.adversarial import AdversarialClassification, EmbeddingAttack, robust_accuracy
from mmgpt.objectives.base import Objective, ObjectiveOutput
from mmgpt.objectives.classify import Classification
from mmgpt.objectives.contrastive import Contrastive
from mmgpt.objectives.lm import CausalLM
from mmgpt.objectives.matching import Matching
from mmgpt.objectives.mlm import MaskedLM

__all__ = [
    "AdversarialClassification",
    "CausalLM", "Classification", "Contrastive",
    "EmbeddingAttack", "Matching", "MaskedLM", "Objective", "ObjectiveOutput",
    "robust_accuracy",
]
