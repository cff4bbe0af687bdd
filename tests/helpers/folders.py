"""Files the tests build or watch: the synthetic set as files and as WebDataset shards; a run's checkpoints."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch

from mmgpt.datamodules.shards import write_shards
from mmgpt.datamodules.synthetic.export import export_synthetic


def export_and_shard(base: Path, num_train: int, samples_per_shard: int, num_val: int = 12, num_test: int = 6,
                     seed: int = 0) -> Path:
    """The synthetic set exported as a manifest folder (``base/folder``) and written as tar shards; the shard dir."""
    export_synthetic(base / "folder", num_train=num_train, num_val=num_val, num_test=num_test, seed=seed)
    write_shards(base / "folder", base / "shards", samples_per_shard=samples_per_shard)
    return base / "shards"


def newest_step(checkpoints: Iterable[Path]) -> int:
    """The highest ``global_step`` among step checkpoints that load (-1 for none); for watching a live run."""
    steps = [-1]
    for path in checkpoints:
        try:
            steps.append(torch.load(path, map_location="cpu", weights_only=True)["global_step"])
        except Exception:  # noqa: BLE001 - being written or replaced right now
            pass
    return max(steps)
