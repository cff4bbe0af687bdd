"""Adversarial training on the input embeddings of each modality (the article's min-max objective).

    L = a * L(x, y) + b * max_{||d_m||_inf <= eps_m} L(x + d, y)

The perturbation d is added to each modality's encoder tokens (the embeddings the fusion receives) and found by
PGD (``steps`` signed-gradient steps projected onto the eps-ball; FGSM is one step of size eps). Only the fusion
and the head are re-run during the search: the encoders' tokens are computed once.

Legend: B batch, N_m tokens of modality m, D dim, C classes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from mmgpt.batch import MultimodalBatch
from mmgpt.encoders import EncoderOutput
from mmgpt.model import MultimodalTransformer
from mmgpt.objectives.base import ObjectiveOutput
from mmgpt.objectives.classify import Classification


@dataclass
class EmbeddingAttack:
    """PGD / FGSM in embedding space, per modality.

    Attributes:
        eps: modality -> L-inf radius of its perturbation (modalities left out, or 0, are not attacked).
        steps: PGD steps (1 with ``step_size=None`` and no random start is FGSM).
        step_size: size of each signed-gradient step; default ``2.5 * eps / steps``.
        random_start: start from a uniform point in the ball (PGD) instead of 0.
    """

    eps: Mapping[str, float]
    steps: int = 3
    step_size: float | None = None
    random_start: bool = True

    def perturb(
        self, net: MultimodalTransformer, encoded: dict[str, EncoderOutput], labels: Tensor
    ) -> dict[str, Tensor]:
        """The worst-case perturbation d_m (B, N_m, D) per attacked modality, detached."""
        tokens = {m: e.tokens.detach() for m, e in encoded.items()}
        eps = {m: float(e) for m, e in self.eps.items() if float(e) > 0 and m in tokens}
        delta = {
            m: (torch.empty_like(tokens[m]).uniform_(-e, e) if self.random_start else torch.zeros_like(tokens[m]))
            for m, e in eps.items()
        }
        for _ in range(self.steps if delta else 0):
            for d in delta.values():
                d.requires_grad_(True)
            loss = F.cross_entropy(attacked_logits(net, encoded, tokens, delta).float(), labels)
            grads = torch.autograd.grad(loss, list(delta.values()))
            with torch.no_grad():
                for (m, d), g in zip(delta.items(), grads, strict=True):
                    step = self.step_size if self.step_size is not None else 2.5 * eps[m] / self.steps
                    delta[m] = (d + step * g.sign()).clamp(-eps[m], eps[m])
        return {m: d.detach() for m, d in delta.items()}


def attacked_logits(
    net: MultimodalTransformer, encoded: dict[str, EncoderOutput], tokens: dict[str, Tensor], delta: dict[str, Tensor]
) -> Tensor:
    """Head logits (B, C) with ``delta`` added to the given encoder ``tokens`` (masks from ``encoded``)."""
    perturbed = {
        m: EncoderOutput(tokens[m] + delta[m] if m in delta else tokens[m], e.mask) for m, e in encoded.items()
    }
    return net.classify(net.fuse(perturbed))


class AdversarialClassification(Classification):
    """Classification trained on a * clean loss + b * worst-case loss under an :class:`EmbeddingAttack`.

    Args:
        num_classes: number of classes C.
        eps: modality -> L-inf radius on its embeddings.
        steps: PGD steps.
        step_size: PGD step size (default 2.5 * eps / steps).
        random_start: PGD random start.
        clean_weight: a.
        adv_weight: b.
        weight: weight in the total loss.
        label_smoothing: cross-entropy label smoothing.
    """

    def __init__(
        self,
        num_classes: int,
        eps: Mapping[str, float],
        steps: int = 3,
        step_size: float | None = None,
        random_start: bool = True,
        clean_weight: float = 1.0,
        adv_weight: float = 1.0,
        weight: float = 1.0,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__(num_classes, weight, label_smoothing)
        self.attack = EmbeddingAttack(dict(eps), steps, step_size, random_start)
        self.clean_weight = clean_weight
        self.adv_weight = adv_weight

    def forward(self, net: MultimodalTransformer, batch: MultimodalBatch) -> ObjectiveOutput:
        if batch.labels is None:
            raise ValueError("adversarial classification needs labelled batches")
        encoded = net.encode(batch)
        logits = net.classify(net.fuse(encoded))  # (B, C)
        clean = self.criterion(logits.float(), batch.labels)
        if not torch.is_grad_enabled():  # evaluation: report the clean loss, as the plain classifier does
            return ObjectiveOutput(loss=clean, preds=logits, target=batch.labels)
        delta = self.attack.perturb(net, encoded, batch.labels)
        tokens = {m: e.tokens for m, e in encoded.items()}  # with gradients to the encoders
        adv = self.criterion(attacked_logits(net, encoded, tokens, delta).float(), batch.labels)
        loss = self.clean_weight * clean + self.adv_weight * adv
        return ObjectiveOutput(loss=loss, preds=logits, target=batch.labels,
                               values={"clean_loss": clean.detach(), "adv_loss": adv.detach()})


@torch.no_grad()
def robust_accuracy(net: MultimodalTransformer, batch: MultimodalBatch, attack: EmbeddingAttack) -> tuple[float, float]:
    """(clean accuracy, accuracy under ``attack``) of ``net`` on a labelled batch."""
    encoded = net.encode(batch)
    tokens = {m: e.tokens for m, e in encoded.items()}
    clean = net.classify(net.fuse(encoded)).argmax(-1)
    with torch.enable_grad():
        delta = attack.perturb(net, encoded, batch.labels)
    adv = attacked_logits(net, encoded, tokens, delta).argmax(-1)
    return (clean == batch.labels).float().mean().item(), (adv == batch.labels).float().mean().item()
