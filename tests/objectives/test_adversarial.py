"""Adversarial training on embeddings: the worst-case loss is at least the clean loss; attacks lower accuracy."""

import pytest
import torch

from mmgpt.objectives import AdversarialClassification, EmbeddingAttack, robust_accuracy
from tests.conftest import make_batch
from tests.helpers.tiny import tiny_net


@pytest.mark.parametrize("fusion", ["early", "late", "cross_attention"])
@pytest.mark.parametrize("steps,random_start", [(1, False), (3, True)])  # FGSM, PGD
def test_adversarial_loss_is_at_least_the_clean_loss(fusion, steps, random_start):
    torch.manual_seed(0)
    net = tiny_net(fusion, decoder=False)
    obj = AdversarialClassification(5, eps={"audio": 0.3, "image": 0.3, "text": 0.3}, steps=steps,
                                    random_start=random_start)
    out = obj(net, make_batch(4))
    assert out.values["adv_loss"] >= out.values["clean_loss"] - 1e-6
    assert out.values["adv_loss"] > out.values["clean_loss"]  # the attack does find a worse point
    torch.testing.assert_close(out.loss, out.values["clean_loss"] + out.values["adv_loss"])
    out.loss.backward()
    assert all(p.grad is not None for n, p in net.named_parameters() if n.startswith("encoders.text.transformer"))


def test_perturbation_stays_in_the_ball_and_only_attacked_modalities_move():
    torch.manual_seed(0)
    net = tiny_net("early", decoder=False)
    batch = make_batch(3)
    attack = EmbeddingAttack({"image": 0.1, "audio": 0.0}, steps=4)
    delta = attack.perturb(net, net.encode(batch), batch.labels)
    assert set(delta) == {"image"} and delta["image"].abs().max() <= 0.1 + 1e-6


def test_zero_radius_keeps_accuracy_and_a_large_one_lowers_it():
    torch.manual_seed(0)
    net = tiny_net("late", decoder=False).eval()
    batch = make_batch(8)
    clean, same = robust_accuracy(net, batch, EmbeddingAttack({"text": 0.0}))
    assert same == clean
    _, attacked = robust_accuracy(net, batch, EmbeddingAttack({m: 3.0 for m in ("audio", "image", "text")}, steps=5))
    assert attacked <= clean


def test_evaluation_without_gradients_reports_the_clean_loss():
    net = tiny_net("early", decoder=False)
    obj = AdversarialClassification(5, eps={"text": 0.3})
    batch = make_batch(3)
    with torch.no_grad():
        out = obj(net, batch)
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(net(batch).logits, batch.labels))
