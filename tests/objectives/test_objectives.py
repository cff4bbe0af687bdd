"""Every objective: its loss decreases when overfitting one small batch, on every fusion; composition by weights."""

import pytest
import torch

from mmgpt.objectives import CausalLM, Classification, Contrastive, MaskedLM, Matching
from mmgpt.objectives.matching import counterfactual
from mmgpt.objectives.mlm import mask_tokens
from mmgpt.registry import SpecError
from mmgpt.tokenizer import ByteTokenizer
from mmgpt.training.lit_module import build_objectives
from tests.conftest import make_batch
from tests.helpers.tiny import DIM, FUSIONS, tiny_net

CAPTIONS = ["2 red circles; 3 high beeps", "1 blue square; 1 low chirp", "3 green triangles; 2 mid beeps",
            "1 red square; 2 high chirps", "2 blue circles; 1 mid beep", "3 red triangles; 3 low beeps"]


def caption_batch(n: int = 6):
    batch = make_batch(n)
    batch.captions = CAPTIONS[:n]
    return batch


OBJECTIVES = {
    "classify": lambda: Classification(num_classes=5),
    "lm": lambda: CausalLM(max_length=48),
    "contrastive": lambda: Contrastive(DIM, embed_dim=16, max_length=48),
    "mlm": lambda: MaskedLM(DIM, rate=0.3, max_length=48),
    "matching": lambda: Matching(DIM, max_length=48),
}


def overfit(fusion: str, name: str, steps: int = 25) -> tuple[float, float]:
    torch.manual_seed(0)
    net, objective = tiny_net(fusion), OBJECTIVES[name]()
    batch = caption_batch()
    params = list(net.parameters()) + list(objective.parameters())
    opt = torch.optim.Adam(params, lr=3e-3)
    losses = []
    for _ in range(steps):
        torch.manual_seed(1)  # the same random masks / counterfactuals every step: a fixed small problem
        loss = objective(net, batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses[0], min(losses[-3:])


#: One fusion per objective by default (each fusion covered); the full cross product is marked slow.
QUICK = {"classify": "early", "lm": "cross_attention", "contrastive": "late", "mlm": "early", "matching": "late"}


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_loss_decreases_when_overfitting_a_small_batch(name):
    first, last = overfit(QUICK[name], name)
    assert last < 0.8 * first, (first, last)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(OBJECTIVES))
@pytest.mark.parametrize("fusion", FUSIONS)
def test_loss_decreases_when_overfitting_a_small_batch_every_fusion(fusion, name):
    first, last = overfit(fusion, name)
    assert last < 0.8 * first, (first, last)


def test_contrastive_temperature_is_learned_and_gathers_nothing_on_one_process():
    obj = Contrastive(DIM, embed_dim=16, max_length=48)
    out = obj(tiny_net("late"), caption_batch())
    out.loss.backward()
    assert obj.logit_scale.grad is not None and obj.logit_scale.grad.abs() > 0
    assert out.values["temperature"] == pytest.approx(0.07, rel=1e-4)


def test_mask_tokens_masks_bytes_only_and_at_least_one():
    tok = ByteTokenizer()
    ids, mask = tok.batch_encode(["abc", "hello world"])
    masked, target = mask_tokens(ids, mask, rate=0.0, generator=torch.Generator().manual_seed(0))
    assert ((masked == tok.MASK).sum(1) == 1).all()  # rate 0 still masks one token per text
    assert (target[masked == tok.MASK] < 256).all() and (target[masked != tok.MASK] == tok.PAD).all()
    assert not (masked[:, 0] == tok.MASK).any()  # BOS is never masked


def test_counterfactual_swaps_a_modality_from_another_sample():
    batch = make_batch(8)
    altered, labels = counterfactual(batch, ["audio", "image"], torch.Generator().manual_seed(0))
    for i in range(8):
        same = all(torch.equal(altered.inputs[m][i], batch.inputs[m][i]) for m in ("audio", "image"))
        assert same == bool(labels[i])
    assert 0 < labels.sum() < 8
    assert torch.equal(altered.inputs["text"], batch.inputs["text"])


def test_objectives_compose_by_weight_and_weight_zero_drops_one():
    cfg = {
        "classify": {"type": "classify", "num_classes": None, "weight": 1.0},
        "mlm": {"type": "masked_lm", "dim": DIM, "weight": 0.0},
        "contrastive": {"type": "contrastive", "dim": DIM, "weight": 0.1, "embed_dim": 8},
    }
    objs = build_objectives(cfg, num_classes=7, label_smoothing=0.0)
    assert set(objs) == {"classify", "contrastive"}
    assert objs["classify"].num_classes == 7 and objs["contrastive"].weight == 0.1


def test_objective_given_as_an_import_path_is_refused_before_anything_is_called(tmp_path):
    target = tmp_path / "copied"
    cfg = {"classify": {"_target_": "shutil.copyfile", "_args_": [__file__, str(target)], "weight": 1.0}}
    with pytest.raises(SpecError, match=r"model\.module\.objectives\.classify"):
        build_objectives(cfg, num_classes=7, label_smoothing=0.0)
    assert not target.exists()
