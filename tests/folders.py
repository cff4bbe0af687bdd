"""Data folders for the tests: the synthetic set exported as files, and written as WebDataset shards."""

from __future__ import annotations

from pathlib import Path

from datamodules.manifest.export import export_synthetic
from datamodules.shards import write_shards


def export_and_shard(base: Path, num_train: int, samples_per_shard: int, num_val: int = 12, num_test: int = 6,
                     seed: int = 0) -> Path:
    """The synthetic set exported as a manifest folder (``base/folder``) and written as tar shards; the shard dir."""
    export_synthetic(base / "folder", num_train=num_train, num_val=num_val, num_test=num_test, seed=seed)
    write_shards(base / "folder", base / "shards", samples_per_shard=samples_per_shard)
    return base / "shards"
