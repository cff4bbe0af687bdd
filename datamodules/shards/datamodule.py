"""``data=shards data.root=OUT``: train on the output of ``mmgpt-data shard``, streaming."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from mmgpt.datamodules.base import SPLITS, MultimodalDataModule, shared_options
from mmgpt.datamodules.decode import DEFAULT_MAX_IMAGE_PIXELS
from mmgpt.datamodules.processors import Processor
from mmgpt.datamodules.shards.dataset import ShardDataset
from mmgpt.datamodules.shards.format import META_FILE, ShardError, read_meta
from mmgpt.datamodules.shards.partition import first_samples


class ShardDataModule(MultimodalDataModule):
    """Streams tar shards, split exactly across ranks and workers, decoding every epoch (nothing held in memory).

    Args:
        root: the shard folder (with ``shards.json`` and ``labels.txt``).
        batch_size: per-process batch size.
        num_workers: data-loading workers per process.
        image_size: image side in pixels.
        sample_rate: audio sample rate in Hz.
        max_audio_seconds: longest clip.
        max_text_length: token limit.
        shuffle: shuffle training shards each epoch.
        seed: shuffling and data-randomness seed.
        num_train: stream only the first ``num_train`` training samples (in the order written; None: all), for
            quick runs (``experiment=smoke`` sets it); needs the per-shard counts of ``shards.json``.
        num_val: the same for the validation split.
        num_test: the same for the test split.
        augment: randomly flip training images.
        modality_dropout: per-modality probability of dropping that modality from a training sample
            (never a sample's last modality), e.g. ``{"audio": 0.2}``.
        pin_memory: pin batches for host-to-GPU copies; None pins when CUDA is available.
        max_image_pixels: a larger image stops streaming with an error naming its shard and sample (None: no
            limit); ``mmgpt-data shard`` refuses such images before writing.
    """

    def __init__(self, root: str, batch_size: int = 64, num_workers: int = 2, image_size: int = 32,
                 sample_rate: int = 8000, max_audio_seconds: float = 1.0, max_text_length: int = 64,
                 shuffle: bool = True, seed: int = 0, num_train: int | None = None, num_val: int | None = None,
                 num_test: int | None = None, augment: bool = False, modality_dropout: dict[str, float] | None = None,
                 pin_memory: bool | None = None, max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
                 processors: Mapping[str, Processor] | None = None) -> None:
        super().__init__(**shared_options(locals()))
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
