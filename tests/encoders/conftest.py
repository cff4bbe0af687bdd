"""The tiny pretrained backbones (tests/helpers/backbones.py), built once per session for every encoder test."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def backbones(tmp_path_factory) -> dict[str, Path]:
    pytest.importorskip("transformers")
    pytest.importorskip("timm")
    from tests.helpers.backbones import FAMILIES

    root = tmp_path_factory.mktemp("backbones")
    return {family: make(root) for family, (make, _, _) in FAMILIES.items()}
