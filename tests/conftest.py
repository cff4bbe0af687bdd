"""Shared fixtures: tiny batches and composed Hydra configs."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

from mmgpt.batch import MultimodalBatch
from mmgpt.config import CONFIG_DIR, register_schemas

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
torch.set_num_threads(min(2, torch.get_num_threads()))
register_schemas()

#: Tiny sizes shared by unit tests.
DIM, HEADS = 16, 2
IMAGE_SIZE, SAMPLE_RATE = 16, 8000


def make_batch(batch_size: int = 3, seed: int = 0, text_len: int = 7, audio_len: int = 2400) -> MultimodalBatch:
    """A random batch with varied text and audio lengths and every modality present."""
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(0, 256, (batch_size, text_len), generator=g)
    text_mask = torch.ones(batch_size, text_len, dtype=torch.bool)
    text_mask[0, text_len - 2 :] = False
    audio = torch.randn(batch_size, audio_len, generator=g) * 0.3
    audio_mask = torch.ones(batch_size, audio_len, dtype=torch.bool)
    audio_mask[-1, audio_len // 2 :] = False
    audio[-1, audio_len // 2 :] = 0
    return MultimodalBatch(
        inputs={"text": text, "image": torch.randn(batch_size, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g), "audio": audio},
        masks={"text": text_mask, "audio": audio_mask},
        labels=torch.randint(0, 5, (batch_size,), generator=g),
        ids=list(range(batch_size)),
    )


@pytest.fixture
def batch() -> MultimodalBatch:
    return make_batch()


@pytest.fixture
def compose_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    """Compose ``conf/<config_name>.yaml`` with overrides, outputs under ``tmp_path`` (no Hydra app needed)."""

    def _compose(overrides: list[str] | None = None, config_name: str = "train") -> DictConfig:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose(config_name, overrides=list(overrides or []))
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path / "run")
            cfg.paths.log_dir = str(tmp_path / "logs")
        return cfg

    return _compose


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``gpu`` are skipped, with the reason, where CUDA is absent (``make test-gpu`` on a CPU)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
