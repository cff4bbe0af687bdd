"""Weight initialisation by module type (issue 22 item 6b): every learned table is a LearnedTokens, drawn once,
whatever its attribute is called; state dicts written when the tables were bare parameters still load."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from mmgpt.fusion.base import Fusion, FusionOutput
from mmgpt.layers import LearnedTokens, init_weights, mark_pretrained, unwrapped_names
from mmgpt.registry import build_network, register
from mmgpt.training.finetune import load_partial
from tests.helpers.tiny import tiny_net, tiny_spec


class LatentFusion(Fusion):
    """A fusion written after the init table was gone: its learned tokens are called ``latents``."""

    def __init__(self, *, modalities: list[str], dim: int) -> None:
        super().__init__(modalities=modalities)
        self.latents = LearnedTokens(1, 4, dim)

    def forward(self, tokens: dict[str, Tensor], masks: dict[str, Tensor]) -> FusionOutput:
        B = next(iter(tokens.values())).shape[0]
        pooled = self.latents.weight.expand(B, -1, -1).mean(1)  # (B, D)
        return FusionOutput(pooled=pooled, tokens=self.latents.weight.expand(B, -1, -1),
                            mask=torch.ones(B, 4, dtype=torch.bool))


def _drawn(t: Tensor) -> bool:
    """Drawn from N(0, 0.02): not all zero, and of about that spread."""
    t = t.detach()
    return bool(t.abs().sum() > 0) and 0.01 < float(t.std()) < 0.03


def test_a_new_fusion_s_learned_tokens_are_initialised_whatever_they_are_called() -> None:
    register("latent_test_fusion", "fusion", LatentFusion, replace=True)
    spec = tiny_spec("early", decoder=False)
    spec["fusion"] = {"type": "latent_test_fusion", "dim": 16, "modalities": ["audio", "image", "text"]}
    torch.manual_seed(0)
    net = build_network(spec, num_classes=3)
    assert _drawn(net.fusion.latents.weight)


def test_every_learned_table_of_the_shipped_parts_is_initialised_once() -> None:
    torch.manual_seed(0)
    net = tiny_net("cross_attention")
    tables = {name: m for name, m in net.named_modules() if isinstance(m, LearnedTokens)}
    assert {"encoders.text.pos_emb", "encoders.image.pos_emb", "encoders.audio.pos_emb", "fusion.cls", "fusion.null",
            "fusion.type_emb.table.image"} <= set(tables)
    for name, m in tables.items():
        assert _drawn(m.weight), name


def test_a_table_with_its_own_std_keeps_it_and_zero_means_zeros() -> None:
    torch.manual_seed(0)
    net = tiny_net("late")
    missing = net.fusion.missing.values()
    assert all(float(m.weight.detach().abs().max()) == 0.0 for m in missing)  # starts as "no information"
    parts = nn.ModuleDict({"wide": LearnedTokens(2000, std=1.0), "plain": LearnedTokens(2000)})
    init_weights(parts)
    assert 0.9 < float(parts["wide"].weight.detach().std()) < 1.1 and _drawn(parts["plain"].weight)


def test_parts_marked_pretrained_are_left_alone() -> None:
    loaded = mark_pretrained(nn.ModuleDict({"t": LearnedTokens(8)}))
    parts = nn.ModuleDict({"loaded": loaded, "fresh": LearnedTokens(8)})
    init_weights(parts)
    assert float(parts["loaded"]["t"].weight.detach().abs().max()) == 0.0 and _drawn(parts["fresh"].weight)


def _old_format(state: dict[str, Tensor], net: nn.Module) -> dict[str, Tensor]:
    """``state`` with the keys learned tables had as bare parameters (``fusion.cls``, not ``fusion.cls.weight``)."""
    back = {new: old for old, new in unwrapped_names(net).items()}
    return {back.get(k, k): v for k, v in state.items()}


@pytest.mark.parametrize("fusion, old_key", [("early", "fusion.type_emb.table.text"), ("late", "fusion.missing.text"),
                                             ("cross_attention", "fusion.null")])
def test_a_state_dict_of_the_old_format_loads_strictly(fusion: str, old_key: str) -> None:
    torch.manual_seed(0)
    trained = tiny_net(fusion)
    old = _old_format(trained.state_dict(), trained)
    assert {old_key, "encoders.text.pos_emb"} <= set(old)  # the names checkpoints hold
    assert "encoders.text.pos_emb.weight" not in old and f"{old_key}.weight" not in old
    torch.manual_seed(1)
    fresh = tiny_net(fusion)
    fresh.load_state_dict(old)  # strict
    for key, value in trained.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[key], value, rtol=0, atol=0, msg=key)


def test_an_old_format_state_dict_loads_inside_a_larger_module_and_through_load_partial() -> None:
    torch.manual_seed(0)
    trained = tiny_net("early")
    old = {f"net.{k}": v for k, v in _old_format(trained.state_dict(), trained).items()}
    torch.manual_seed(1)
    holder = nn.Module()
    holder.net = tiny_net("early")
    holder.load_state_dict(old)  # strict; as a LightningModule holding the network loads a checkpoint
    torch.testing.assert_close(holder.net.fusion.cls.weight, trained.fusion.cls.weight, rtol=0, atol=0)
    torch.manual_seed(2)
    other = tiny_net("early")
    report = load_partial(other, old, prefix="net.")
    assert not report.unexpected and not report.missing
    torch.testing.assert_close(other.encoders.text.pos_emb.weight, trained.encoders.text.pos_emb.weight)
