"""The datamodule base: what every mmgpt datamodule shares, implemented once (see docs/data.md).

:class:`MultimodalDataModule` builds the modalities' processors from the shared options, the training and
evaluation collates (modality dropout on training batches only), and the loaders: the resumable map-style loader
for map-style datasets, the resumable streaming loader for streaming ones, both pinned when CUDA is there.
A datamodule says which splits it has (:meth:`has_split`), its classes, and how to build a split's dataset
(:meth:`make_dataset`); per-sample data randomness (image flips, modality dropout) is seeded by (seed, epoch,
sample) in both loaders, so batches do not depend on worker counts and resuming mid-epoch is exact.
"""

from __future__ import annotations

import inspect
from abc import abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from mmgpt.datamodules.collate import Collate, check_dropout_probs, require_positive
from mmgpt.datamodules.decode import DEFAULT_MAX_IMAGE_PIXELS
from mmgpt.datamodules.processors import Processor, default_processors
from mmgpt.datamodules.resumable import StreamLoader, batches_trained, resumable_loader

#: The splits a datamodule may have, in the order they are used.
SPLITS: tuple[str, ...] = ("train", "val", "test")


class ProcessedDataset(Dataset):
    """Map-style samples as per-sample dicts: each modality's stored value through its processor's ``transform``.

    Args:
        items: the samples, in any form ``fields`` understands.
        fields: item -> dict with ``id``, ``label``, ``caption`` and one stored value (or None) per modality.
        processors: modality name -> processor.
        train: apply training-time augmentation.
    """

    def __init__(self, items: Sequence[Any], fields: Callable[[Any], Mapping[str, Any]],
                 processors: Mapping[str, Processor], train: bool) -> None:
        self.items, self.fields, self.processors, self.train = items, fields, processors, train

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return process(self.fields(self.items[i]), self.processors, train=self.train)


def process(fields: Mapping[str, Any], processors: Mapping[str, Processor], *, train: bool) -> dict[str, Any]:
    """One sample's stored values -> the dict the collate takes (see :mod:`mmgpt.datamodules.collate`)."""
    sample = {"id": fields.get("id"), "label": fields.get("label"), "caption": fields.get("caption")}
    for name, processor in processors.items():
        value = fields.get(name)
        sample[name] = processor.transform(value, train=train) if value is not None else None
    return sample


class MultimodalDataModule(pl.LightningDataModule):
    """The shared part of every mmgpt datamodule (subclasses list these options in their own signature, so a
    misspelt ``data.*`` key is still refused, and pass them here).

    Args:
        batch_size: per-process batch size.
        num_workers: DataLoader worker processes (0: load in the training process).
        image_size: side of the square images.
        sample_rate: audio sample rate in Hz.
        max_audio_seconds: longer clips are cropped (``round(max_audio_seconds * sample_rate)`` samples).
        max_text_length: token limit of the byte tokenizer.
        max_image_pixels: larger images are refused as a named problem (None: no limit).
        augment: randomly flip training images horizontally.
        modality_dropout: per-modality probability of dropping that modality from a training sample (never a
            sample's last one), e.g. ``{"audio": 0.2}``.
        pin_memory: pin batches for faster host-to-GPU copies; None pins when CUDA is available.
        shuffle: shuffle the training split each epoch.
        seed: shuffling and data-randomness seed.
        num_train: use only the first ``num_train`` training samples (None: all); num_val, num_test likewise.
        processors: modality name -> processor, replacing the default (scratch) processor of that name: what the
            network's encoders declare (:func:`~mmgpt.datamodules.processors.build_processors`; the commands pass
            them). Modalities not named keep :func:`~mmgpt.datamodules.processors.default_processors`.
    """

    def __init__(self, *, batch_size: int, num_workers: int, image_size: int, sample_rate: int,
                 max_audio_seconds: float, max_text_length: int,
                 max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS, augment: bool = False,
                 modality_dropout: Mapping[str, float] | None = None, pin_memory: bool | None = None,
                 shuffle: bool = True, seed: int = 0, num_train: int | None = None, num_val: int | None = None,
                 num_test: int | None = None, processors: Mapping[str, Processor] | None = None) -> None:
        super().__init__()
        require_positive(batch_size=batch_size, num_train=num_train, num_val=num_val, num_test=num_test)
        if int(num_workers) < 0:
            raise ValueError(f"data.num_workers={num_workers}: expected 0 or more")
        self.batch_size, self.num_workers = int(batch_size), int(num_workers)
        self.augment, self.shuffle, self.seed = bool(augment), bool(shuffle), int(seed)
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else bool(pin_memory)
        self.limits = {"train": num_train, "val": num_val, "test": num_test}
        self.processors: dict[str, Processor] = default_processors(
            image_size=image_size, sample_rate=sample_rate, max_audio_seconds=max_audio_seconds,
            max_text_length=max_text_length, augment=augment, max_image_pixels=max_image_pixels)
        self.processors.update(processors or {})
        self.modality_dropout = check_dropout_probs(modality_dropout, self.processors)
        self.collate = Collate(self.processors)
        self.train_collate = Collate(self.processors, modality_dropout=self.modality_dropout)

    # -- what a datamodule says about itself ---------------------------------------------------------------------
    @property
    @abstractmethod
    def class_names(self) -> list[str]:
        """The class list, in label-index order."""

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @abstractmethod
    def has_split(self, split: str) -> bool:
        """Whether the data has ``split`` (``train``, ``val`` or ``test``); cheap: nothing is decoded."""

    @abstractmethod
    def make_dataset(self, split: str, rank: int = 0, world_size: int = 1) -> Dataset | IterableDataset:
        """The dataset of ``split``: map-style (samples via :class:`ProcessedDataset`) or streaming (yielding
        ``(SampleKey, sample)`` pairs, see :class:`mmgpt.datamodules.resumable.StreamingDataset`)."""

    def describe(self) -> str:
        """How error messages name this data (its folder, or the generator)."""
        return type(self).__name__

    # -- loaders -------------------------------------------------------------------------------------------------
    def _loader(self, split: str) -> DataLoader:
        if not self.has_split(split):
            raise ValueError(f"{self.describe()} has no {split} split")
        train = split == "train"
        trainer = self.trainer if train else None
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer is not None else (0, 1)
        dataset = self.make_dataset(split, rank, world)
        collate = self.train_collate if train else self.collate
        if isinstance(dataset, IterableDataset):
            return StreamLoader(dataset, batch_size=self.batch_size, num_workers=self.num_workers,
                                collate_fn=collate, persistent_workers=False, pin_memory=self.pin_memory,
                                consumed=batches_trained(trainer))
        return resumable_loader(dataset, shuffle=train and self.shuffle, seed=self.seed, batch_size=self.batch_size,
                                collate_fn=collate, num_workers=self.num_workers, trainer=trainer,
                                pin_memory=self.pin_memory)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")


def shared_options(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """The base's options picked from a subclass constructor's arguments (its ``locals()`` on entry), so that
    each subclass lists the options in its signature (for config checking) but forwards them in one line."""
    return {name: arguments[name] for name in (*SHARED_OPTIONS, *INJECTED) if name in arguments}


#: What the commands pass every datamodule besides its config (built objects, not ``data.*`` keys).
INJECTED: tuple[str, ...] = ("processors",)
#: The options every datamodule takes and its config sets (the base constructor's other keyword arguments).
SHARED_OPTIONS: tuple[str, ...] = tuple(p for p in inspect.signature(MultimodalDataModule.__init__).parameters
                                         if p not in ("self", *INJECTED))
