"""Torchvision image stems (GPT-2 weights: tests/test_hf_decoder.py, the hf_decoder that replaced the GPT-2 loader)."""

import torch

from mmgpt.encoders.image import TorchvisionStem


def test_torchvision_stem_gives_the_token_grid_and_plugs_into_the_image_encoder():
    from mmgpt.encoders import ImageEncoder

    stem = TorchvisionStem(dim=16, patch_size=8, name="resnet18", weights=None)
    assert stem(torch.randn(2, 3, 32, 32)).shape == (2, 16, 4, 4)
    enc = ImageEncoder(dim=16, num_layers=1, num_heads=2, image_size=32, patch_size=8, stem=stem)
    out = enc(torch.randn(2, 3, 32, 32))
    assert out.tokens.shape == (2, 16, 16)
    frozen = TorchvisionStem(dim=16, patch_size=4, freeze=True)
    assert not any(p.requires_grad for p in frozen.trunk.parameters())
    assert all(p.requires_grad for p in frozen.proj.parameters())


def test_torchvision_stem_config_composes_and_trains_one_step(compose_cfg):
    from mmgpt.cli.train import train
    from mmgpt.config import check_targets

    cfg = compose_cfg(["experiment=smoke", "debug=fdr", "logger=csv", "+model/image_stem=torchvision"])
    check_targets(cfg)
    assert cfg.model.net.encoders.image.stem.weights is None and cfg.model.net.encoders.image.stem.patch_size == 8
    results = train(cfg)
    assert results["global_step"] == 1 and results["params"]["encoders.image"] > 100_000  # the ResNet trunk
