"""``data=shards data.root=OUT``: train on the output of ``mmgpt-data shard``, streaming."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mmgpt.datamodules.base import SPLITS, MultimodalDataModule
from mmgpt.datamodules.processors import DEFAULT_MODALITIES, Processor
from mmgpt.datamodules.shards.dataset import ShardDataset
from mmgpt.datamodules.shards.format import META_FILE, ShardError, read_meta
from mmgpt.datamodules.shards.partition import first_samples


class ShardDataModule(MultimodalDataModule):
    """Streams tar shards, split exactly across ranks and workers, decoding every epoch (nothing held in memory).

    Args:
        root: the shard folder (with ``shards.json`` and ``labels.txt``).
        num_workers: data-loading workers per process.
        num_train: stream only the first ``num_train`` training samples (in the order written; None: all), for
            quick runs (``experiment=smoke`` sets it); needs the per-shard counts of ``shards.json``; num_val,
            num_test likewise.
        max_image_pixels: a larger image stops streaming with an error naming its shard and sample (None: no
            limit); ``mmgpt-data shard`` refuses such images before writing.
        The rest: the shared data options (:class:`~mmgpt.datamodules.options.DataOptions`).
    """

    def __init__(self, root: str, num_workers: int = 2, modalities: Mapping[str, Any] | None = None,
                 processors: Mapping[str, Processor] | None = None, **options: Any) -> None:
        super().__init__(num_workers=num_workers, modalities=modalities, processors=processors, **options)
        self.require_modalities(DEFAULT_MODALITIES, "shards")
        self.save_hyperparameters(ignore=["processors"])
        self.root = Path(root)
        self.meta = read_meta(self.root)

    @property
    def class_names(self) -> list[str]:
        return list(self.meta["class_names"])

    def has_split(self, split: str) -> bool:
        return split in SPLITS and split in self.meta["splits"]

    def describe(self) -> str:
        return str(self.root)

    def make_dataset(self, split: str, rank: int = 0, world_size: int = 1) -> ShardDataset:
        if split not in self.meta["splits"]:
            raise ShardError(f"{self.root}: no {split} shards")
        shards = [str(self.root / s) for s in self.meta["splits"][split]["shards"]]
        counts = self.meta["splits"][split].get("sizes")
        sizes = dict(zip(shards, counts)) if counts else {}
        limit = self.limits.get(split)
        if limit is not None:
            if not counts:
                raise ShardError(f"{self.root / META_FILE}: no per-shard sample counts, so data.num_{split} "
                                 "cannot be applied; write the shards again with mmgpt-data shard")
            shards, sizes = first_samples(shards, sizes, int(limit))
        return ShardDataset(shards, self.class_names, self.processors, train=split == "train", rank=rank,
                            world_size=world_size, shuffle=self.shuffle and split == "train", seed=self.seed,
                            batch_size=self.batch_size, sizes=sizes)

    def dataset(self, split: str, rank: int = 0, world_size: int = 1) -> ShardDataset:
        """The streaming dataset of ``split`` for ``rank`` of ``world_size`` (as the loaders build it)."""
        return self.make_dataset(split, rank, world_size)
