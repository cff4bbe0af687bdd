"""GPU checks of the pretrained backbone encoders (tiny random transformers / timm models saved and loaded by
path): CUDA hidden states equal the CPU ones, and a bf16 training step of a network on three backbones is finite
and reaches every projection. Skipped without CUDA or without transformers / timm on the machine."""

from __future__ import annotations

import pytest
import torch

from mmgpt.datamodules.encoder_processors import build_processors
from mmgpt.registry import build, build_network
from tests.helpers.backbones import FAMILIES, TEXTS, encoder_spec

pytestmark = pytest.mark.gpu
pytest.importorskip("transformers")
pytest.importorskip("timm")


@pytest.fixture(scope="module")
def backbones(tmp_path_factory):
    root = tmp_path_factory.mktemp("backbones")
    return {family: make(root) for family, (make, _, _) in FAMILIES.items()}


def _inputs(processor):
    if processor.kind == "text":
        return processor.collate(TEXTS[:2])[:2]
    if processor.kind == "image":
        return torch.randn(2, 3, *processor.size), None
    wave = torch.randn(12000).numpy()
    clips = [processor.transform(wave, train=False), processor.transform(wave[:5000], train=False)]
    return processor.collate(clips)[:2]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_cuda_hidden_states_equal_cpu(backbones, family):
    spec = encoder_spec(family, backbones[family])
    encoder = build(spec, "e", "encoder").eval()
    processor = build_processors({"encoders": {"x": spec}}, {})["x"]
    torch.manual_seed(0)
    x, mask = _inputs(processor)
    with torch.no_grad():
        cpu = encoder.hidden(x, mask)
        gpu = encoder.cuda().hidden(x.cuda(), None if mask is None else mask.cuda())
    assert torch.equal(gpu.mask.cpu(), cpu.mask)
    torch.testing.assert_close(gpu.tokens.cpu(), cpu.tokens, atol=1e-4, rtol=1e-4)


def test_bf16_step_on_three_backbones(backbones):
    encoders = {"text": encoder_spec("bert", backbones["bert"]), "image": encoder_spec("vit", backbones["vit"]),
                "audio": encoder_spec("wav2vec2", backbones["wav2vec2"])}
    spec = {"encoders": encoders, "fusion": {"type": "cross_attention", "modalities": sorted(encoders), "dim": 16,
                                             "num_layers": 1, "num_heads": 2},
            "head": {"type": "classification_head", "dim": 16}}
    net = build_network(spec, 3).cuda()
    processors = build_processors(spec, {})
    from mmgpt.batch import MultimodalBatch

    inputs, masks = {}, {}
    for m, p in processors.items():
        inputs[m], mask = _inputs(p)
        if mask is not None:
            masks[m] = mask
    batch = MultimodalBatch(inputs=inputs, masks=masks, present={m: torch.ones(2, dtype=torch.bool) for m in inputs},
                            labels=torch.tensor([0, 2]), ids=["a", "b"], captions=["", ""]).to(torch.device("cuda"))
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = torch.nn.functional.cross_entropy(net(batch).logits.float(), batch.labels)
    loss.backward()
    assert torch.isfinite(loss)
    for m in encoders:
        assert net.encoders[m].proj.weight.grad is not None and net.encoders[m].proj.weight.grad.abs().sum() > 0
