"""Every fusion strategy, through the whole model: shapes, order invariance, gradients, missing modalities."""

from collections.abc import Callable

import pytest
import torch
from torch import nn

from mmgpt.batch import MultimodalBatch
from mmgpt.encoders import AudioEncoder, ImageEncoder, TextEncoder
from mmgpt.fusion import ConcatMLP, CrossAttentionFusion, EarlyFusion, Fusion, LateFusion, LogitAverage
from mmgpt.model import ClassificationHead, MultimodalTransformer
from tests.conftest import DIM, HEADS, IMAGE_SIZE, SAMPLE_RATE, make_batch

MODS = ["audio", "image", "text"]
FUSIONS: dict[str, Callable[[], Fusion]] = {
    "early": lambda: EarlyFusion(modalities=MODS, dim=DIM, num_layers=2, num_heads=HEADS),
    "late_concat": lambda: LateFusion(modalities=MODS, dim=DIM, num_layers=1, num_heads=HEADS, combiner=ConcatMLP(modalities=MODS, dim=DIM)),
    "late_logit_average": lambda: LateFusion(modalities=MODS, dim=DIM, num_layers=1, num_heads=HEADS, combiner=LogitAverage()),
    "cross_attention": lambda: CrossAttentionFusion(modalities=MODS, dim=DIM, num_layers=2, num_heads=HEADS),
    "cross_attention_gated": lambda: CrossAttentionFusion(modalities=MODS, dim=DIM, num_layers=2, num_heads=HEADS, gate_init=0.5),
}


def build(fusion: str, num_classes: int = 5) -> MultimodalTransformer:
    torch.manual_seed(0)
    encoders = {
        "text": TextEncoder(dim=DIM, num_layers=1, num_heads=HEADS, max_length=16),
        "image": ImageEncoder(dim=DIM, num_layers=1, num_heads=HEADS, image_size=IMAGE_SIZE, patch_size=4),
        "audio": AudioEncoder(dim=DIM, num_layers=1, num_heads=HEADS, sample_rate=SAMPLE_RATE, n_mels=16, n_fft=128, hop_length=80),
    }
    return MultimodalTransformer(encoders=encoders, fusion=FUSIONS[fusion](), head=ClassificationHead(dim=DIM, num_classes=num_classes))


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
    tokens = {m: torch.randn(2, 3, DIM) for m in MODS}
    masks = {m: torch.ones(2, 3, dtype=torch.bool) for m in MODS}
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
    for m in MODS:
        a, b = make_batch(seed=2), make_batch(seed=2)
        b.inputs[m] = (b.inputs[m] + 7) % 256 if m == "text" else torch.randn_like(b.inputs[m])
        assert not torch.allclose(model(a).logits, model(b).logits), f"changing {m} changed nothing"


def test_fusion_rejects_unknown_modalities():
    fusion = EarlyFusion(modalities=MODS, dim=DIM, num_layers=1, num_heads=HEADS)
    with pytest.raises(KeyError, match="built for"):
        fusion({"text": torch.randn(1, 2, DIM)}, {"text": torch.ones(1, 2, dtype=torch.bool)})


def test_cross_attention_query_must_be_a_modality():
    with pytest.raises(ValueError, match="query"):
        CrossAttentionFusion(modalities=MODS, dim=DIM, num_layers=1, num_heads=HEADS, query="video")
