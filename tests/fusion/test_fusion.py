"""Every fusion strategy, through the whole model: shapes, order invariance, gradients, missing modalities.

The suite runs on every option of ``conf/model/fusion/`` (and the variants below), built by the preset builders
(:mod:`mmgpt.presets`, which ``tests/test_presets.py`` checks against the composed YAML): a new fusion is tested
by adding its YAML and its preset.
"""

from functools import lru_cache
from typing import Any

import pytest
import torch
from torch import nn

from mmgpt import presets
from mmgpt.batch import MultimodalBatch
from mmgpt.fusion import CrossAttentionFusion, EarlyFusion
from mmgpt.model import MultimodalTransformer
from mmgpt.registry import build_network
from tests.conftest import DIM, HEADS, IMAGE_SIZE, SAMPLE_RATE, make_batch

MODS = ["audio", "image", "text"]
#: option name -> (preset, changes to its fusion spec): every preset (one per YAML of conf/model/fusion), plus
#: variants of some.
FUSIONS: dict[str, tuple[str, dict[str, Any]]] = {name: (name, {}) for name in presets.FUSIONS}
FUSIONS |= {
    "late_logit_average": ("late", {"combiner": {"type": "logit_average"}}),
    "cross_attention_gated": ("cross_attention", {"gate_init": 0.5}),
    "bottleneck_from_first_layer": ("bottleneck", {"fusion_layer": 0}),
}
TINY = presets.Sizes(dim=DIM, num_heads=HEADS, encoder_layers=1, image_size=IMAGE_SIZE, patch_size=4,
                     sample_rate=SAMPLE_RATE, n_mels=16, n_fft=128, max_text_length=16)


def _spec(fusion: str, decoder: bool) -> dict:
    preset, changes = FUSIONS[fusion]
    spec = presets.network_spec(preset, TINY, decoder=decoder)
    spec["fusion"].update(changes)
    return spec


@lru_cache(maxsize=None)
def spec_of(fusion: str) -> dict:
    return _spec(fusion, decoder=False)


def build(fusion: str, num_classes: int = 5) -> MultimodalTransformer:
    torch.manual_seed(0)
    return build_network(spec_of(fusion), num_classes)


@pytest.fixture(params=sorted(FUSIONS))
def fusion_name(request) -> str:
    return request.param


def test_logits_shape(fusion_name, batch):
    out = build(fusion_name)(batch)
    assert out.logits.shape == (batch.batch_size, 5)
    assert torch.isfinite(out.logits).all()


def test_gradients_reach_every_encoder(fusion_name, batch):
    model = build(fusion_name)
    nn.functional.cross_entropy(model(batch).logits, batch.labels).backward()
    for m, encoder in model.encoders.items():
        grads = [p.grad for p in encoder.parameters() if p.requires_grad]
        assert all(g is not None for g in grads), f"{m}: some parameters got no gradient"
        assert sum(g.abs().sum() for g in grads) > 0, f"{m}: all gradients are zero"


def test_output_does_not_depend_on_modality_dict_order(fusion_name, batch):
    model = build(fusion_name).eval()
    reordered = MultimodalBatch(
        inputs={k: batch.inputs[k] for k in reversed(list(batch.inputs))},
        masks={k: batch.masks[k] for k in reversed(list(batch.masks))},
        labels=batch.labels,
    )
    torch.testing.assert_close(model(batch).logits, model(reordered).logits, atol=0, rtol=0)
    tokens = {m: torch.randn(2, 3, DIM) for m in model.fusion.modalities}
    masks = {m: torch.ones(2, 3, dtype=torch.bool) for m in model.fusion.modalities}
    a = model.fusion(tokens, masks).pooled
    b = model.fusion(dict(reversed(list(tokens.items()))), dict(reversed(list(masks.items())))).pooled
    torch.testing.assert_close(a, b, atol=0, rtol=0)


@pytest.mark.parametrize("keep", [{"text"}, {"image"}, {"audio"}, {"image", "audio"}, {"text", "audio"}])
def test_missing_modalities_give_finite_logits_and_gradients(fusion_name, batch, keep):
    model = build(fusion_name)
    missing = batch.with_modalities(keep)
    out = model(missing)
    assert torch.isfinite(out.logits).all()
    nn.functional.cross_entropy(out.logits, batch.labels).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    # Every parameter takes part in the step, so DDP needs no find_unused_parameters.
    assert all(p.grad is not None for p in model.parameters())


def test_absent_modality_content_is_ignored(fusion_name):
    """A sample marked as lacking a modality gives the same logits whatever that modality's input holds."""
    model = build(fusion_name).eval()
    a = make_batch(seed=1).with_modalities({"text", "audio"})
    b = make_batch(seed=1).with_modalities({"text", "audio"})
    b.inputs["image"] = torch.randn_like(b.inputs["image"]) * 5
    torch.testing.assert_close(model(a).logits, model(b).logits, atol=1e-5, rtol=1e-5)


def test_present_modalities_matter(fusion_name):
    model = build(fusion_name).eval()
    for m in model.modalities:  # every modality the network uses (a unimodal baseline: one)
        a, b = make_batch(seed=2), make_batch(seed=2)
        b.inputs[m] = (b.inputs[m] + 7) % 256 if m == "text" else torch.randn_like(b.inputs[m])
        assert not torch.allclose(model(a).logits, model(b).logits), f"changing {m} changed nothing"


def test_a_unimodal_baseline_builds_and_runs_only_its_encoder(batch):
    model = build("unimodal_image")
    assert model.modalities == ("image",) and list(model.encoders) == ["image"]
    a, b = make_batch(seed=3), make_batch(seed=3)
    b.inputs["text"], b.inputs["audio"] = (b.inputs["text"] + 5) % 256, torch.randn_like(b.inputs["audio"])
    torch.testing.assert_close(model.eval()(a).logits, model(b).logits, rtol=0, atol=0)


def test_every_fusion_yaml_is_in_the_suite():
    assert {"early", "late", "cross_attention", "tensor", "low_rank", "mult", "bottleneck", "resampler"} <= set(FUSIONS)


def test_fusion_rejects_unknown_modalities():
    fusion = EarlyFusion(modalities=MODS, dim=DIM, num_layers=1, num_heads=HEADS)
    with pytest.raises(KeyError, match="built for"):
        fusion({"text": torch.randn(1, 2, DIM)}, {"text": torch.ones(1, 2, dtype=torch.bool)})


def test_cross_attention_query_must_be_a_modality():
    with pytest.raises(ValueError, match="query"):
        CrossAttentionFusion(modalities=MODS, dim=DIM, num_layers=1, num_heads=HEADS, query="video")


@lru_cache(maxsize=None)
def caption_spec_of(fusion: str) -> dict:
    spec = _spec(fusion, decoder=True)
    spec["decoder"]["gate_init"] = 0.5
    return spec


def test_every_fusion_conditions_the_text_decoder(fusion_name, batch):
    """The decoder is paired with each fusion (registry.decoder_pairing) and learns from its conditioning."""
    torch.manual_seed(0)
    net = build_network(caption_spec_of(fusion_name), num_classes=5)
    ids = torch.randint(0, 256, (batch.batch_size, 6))
    out = net.decode(batch, ids)
    assert out.logits.shape[:2] == (batch.batch_size, 6) and torch.isfinite(out.logits).all()
    out.logits.float().logsumexp(-1).sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.fusion.parameters()), \
        "the decoder's loss does not reach the fusion"
