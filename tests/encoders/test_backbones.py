"""Pretrained backbone encoders (transformers, timm) on tiny random models saved with save_pretrained and loaded by
path: parity with the library's own processor + model, masks, processors, offline errors, short training runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmgpt.registry import build
from tests.helpers.backbones import FAMILIES, encoder_spec

pytest.importorskip("transformers")
pytest.importorskip("timm")


@pytest.fixture(scope="module")
def backbones(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("backbones")
    return {family: make(root) for family, (make, _, _) in FAMILIES.items()}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_built_from_a_spec_with_identity_and_layers(backbones, family):
    encoder = build(encoder_spec(family, backbones[family]), f"encoders.{family}", "encoder")
    assert len(encoder.identity.sha256) == 64
    assert len(encoder.layers()) == 2
    assert encoder.proj.out_features == 16
