"""``data=shards data.root=OUT``: train on the output of ``mmgpt-data shard``, streaming."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmgpt.datamodules.base import SPLITS, MultimodalDataModule
from mmgpt.datamodules.processors import DEFAULT_MODALITIES, Processor
from mmgpt.datamodules.remote import is_url
from mmgpt.datamodules.shards.dataset import ShardDataset
from mmgpt.datamodules.shards.format import META_FILE, ShardError, read_meta
from mmgpt.datamodules.shards.partition import first_samples

if TYPE_CHECKING:
    from mmgpt.datamodules.shards.remote import RemoteShards


class ShardDataModule(MultimodalDataModule):
    """Streams tar shards, split exactly across ranks and workers, decoding every epoch (nothing held in memory).

    Args:
        root: the shard folder (with ``shards.json`` and ``labels.txt``), or its URL (``s3://bucket/prefix``,
            ``https://host/prefix``: see :mod:`mmgpt.datamodules.shards.remote`).
        num_workers: data-loading workers per process.
        num_train: stream only the first ``num_train`` training samples (in the order written; None: all), for
            quick runs (``experiment=smoke`` sets it); needs the per-shard counts of ``shards.json``; num_val,
            num_test likewise.
        max_image_pixels: a larger image stops streaming with an error naming its shard and sample (None: no
            limit); ``mmgpt-data shard`` refuses such images before writing.
        storage_options: a URL root's filesystem options (e.g. ``{"endpoint_url": "http://store:9000"}``);
            credentials are best left to the environment or ``~/.aws``. Never saved with the run.
        cache_dir: a URL root's node-local shard cache (None: a folder per root under the temporary folder).
        cache_size: the most bytes that cache holds (``"4GB"``; least recently used shards are evicted).
        read_ahead: shards each loader worker downloads ahead of the one it reads.
        The rest: the shared data options (:class:`~mmgpt.datamodules.options.DataOptions`).
    """

    def __init__(self, root: str, num_workers: int = 2, modalities: Mapping[str, Any] | None = None,
                 storage_options: dict[str, Any] | None = None, cache_dir: str | None = None,
                 cache_size: int | str = "4GB", read_ahead: int = 2,
                 processors: Mapping[str, Processor] | None = None, **options: Any) -> None:
        super().__init__(num_workers=num_workers, modalities=modalities, processors=processors, **options)
        self.require_modalities(DEFAULT_MODALITIES, "shards")
        self.save_hyperparameters(ignore=["processors", "storage_options"])  # credentials stay out of checkpoints
        self.remote: RemoteShards | None = None
        if is_url(root):
            from mmgpt.datamodules.shards.remote import RemoteShards  # fsspec only when a URL needs it

            self.root: Path | str = root.rstrip("/")
            self.remote = RemoteShards(self.root, storage_options=storage_options, cache_dir=cache_dir,
                                       cache_size=cache_size, read_ahead=read_ahead)
            self.meta = self.remote.read_meta()
            self.remote.check(self.meta, self.num_workers, processes=_processes_per_node())
        else:
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
        names = self.meta["splits"][split]["shards"]
        shards = [self.remote.url(s) for s in names] if self.remote else [str(Path(self.root) / s) for s in names]
        byte_sizes = byte_sizes_of(self.meta, split, shards)
        counts = self.meta["splits"][split].get("sizes")
        sizes = dict(zip(shards, counts)) if counts else {}
        limit = self.limits.get(split)
        if limit is not None:
            if not counts:
                raise ShardError(f"{self.root}/{META_FILE}: no per-shard sample counts, so data.num_{split} "
                                 "cannot be applied; write the shards again with mmgpt-data shard")
            shards, sizes = first_samples(shards, sizes, int(limit))
        return ShardDataset(shards, self.class_names, self.processors, train=split == "train", rank=rank,
                            world_size=world_size, shuffle=self.shuffle and split == "train", seed=self.seed,
                            batch_size=self.batch_size, sizes=sizes, remote=self.remote, byte_sizes=byte_sizes)

    def dataset(self, split: str, rank: int = 0, world_size: int = 1) -> ShardDataset:
        """The streaming dataset of ``split`` for ``rank`` of ``world_size`` (as the loaders build it)."""
        return self.make_dataset(split, rank, world_size)


def byte_sizes_of(meta: Mapping[str, Any], split: str, shards: list[str]) -> dict[str, int | None]:
    """The recorded byte size of each shard of ``split`` (``bytes`` in ``shards.json``; None where absent)."""
    recorded = meta["splits"][split].get("bytes") or [None] * len(shards)
    return dict(zip(shards, recorded))


def _processes_per_node() -> int:
    """Training processes that share this node's shard cache (the launchers' ``LOCAL_WORLD_SIZE``; else 1)."""
    value = os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("SLURM_NTASKS_PER_NODE") or "1"
    return int(value) if value.isdigit() else 1  # SLURM may say "2(x3)" for uneven nodes: not worth guessing
