"""The datamodule base: what every mmgpt datamodule shares, implemented once (see docs/data.md).

:class:`MultimodalDataModule` builds the modalities' processors from the shared options, the training and
evaluation collates (modality dropout on training batches only), and the loaders: the resumable map-style loader
for map-style datasets, the resumable streaming loader for streaming ones, both pinned when CUDA is there.
A datamodule says which splits it has (:meth:`has_split`), its classes, and how to build a split's dataset
(:meth:`make_dataset`); per-sample data randomness (image flips, modality dropout) is seeded by (seed, epoch,
sample) in both loaders, so batches do not depend on worker counts and resuming mid-epoch is exact.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from mmgpt.datamodules.collate import Collate, Rows, check_dropout_probs, require_positive
from mmgpt.datamodules.options import DataOptions, with_options
from mmgpt.datamodules.processors import ModalityError, Processor, declared_processors, parse_modalities
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
        #: False when neither ``fields`` nor any processor can draw random numbers (each says so with its own
        #: ``draws_randomness``; unknown ones count as drawing): the loader then skips seeding per sample.
        self.draws_randomness = getattr(fields, "draws_randomness", True) or any(
            p.draws_randomness for p in processors.values())

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return process(self.fields(self.items[i]), self.processors, train=self.train)

    def rows(self, indices: Sequence[int]) -> Rows | None:
        """The samples at ``indices`` gathered column by column, for the collate's batched path: when ``fields``
        can gather them (its ``rows``: a table of arrays) and every processor collates stored rows itself. None
        otherwise (then each sample is loaded on its own)."""
        gather = getattr(self.fields, "rows", None)
        if gather is None or not all(p.collates_rows for p in self.processors.values()):
            return None
        return gather([self.items[i] for i in indices])


def process(fields: Mapping[str, Any], processors: Mapping[str, Processor], *, train: bool) -> dict[str, Any]:
    """One sample's stored values -> the dict the collate takes (see :mod:`mmgpt.datamodules.collate`)."""
    sample = {"id": fields.get("id"), "label": fields.get("label"), "caption": fields.get("caption")}
    for name, processor in processors.items():
        value = fields.get(name)
        sample[name] = processor.transform(value, train=train) if value is not None else None
    return sample


class MultimodalDataModule(pl.LightningDataModule):
    """The shared part of every mmgpt datamodule.

    Args:
        modalities: the declared modalities, name -> kind (``text``, ``image``, ``audio``, ``features``) or
            name -> ``{kind: ..., <options>}`` (a ``features`` modality gives its ``dim``); None: ``audio``,
            ``image`` and ``text`` (see :func:`mmgpt.datamodules.processors.parse_modalities`). A datamodule whose
            data can hold other modalities takes it from its config; a benchmark passes those of its files.
        processors: modality name -> processor, replacing the default (scratch) processor of that declared
            modality: what the network's encoders declare (:func:`~mmgpt.datamodules.encoder_processors.
            build_processors`; the commands pass them). Modalities not named keep their scratch processor
            (:func:`~mmgpt.datamodules.processors.declared_processors`).
        **options: the shared options (:class:`~mmgpt.datamodules.options.DataOptions`, read as
            :attr:`options`). A subclass takes them as ``**options`` and passes them on; its signature is extended
            with them (:meth:`__init_subclass__`), so a misspelt ``data.*`` key is still refused when the config is
            checked.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.__signature__ = with_options(cls.__init__)  # type: ignore[attr-defined]

    def __init__(self, *, modalities: Mapping[str, Any] | None = None,
                 processors: Mapping[str, Processor] | None = None, **options: Any) -> None:
        super().__init__()
        self.options = o = DataOptions.of(options)
        require_positive(batch_size=o.batch_size, num_train=o.num_train, num_val=o.num_val, num_test=o.num_test)
        if int(o.num_workers) < 0:
            raise ValueError(f"data.num_workers={o.num_workers}: expected 0 or more")
        self.batch_size, self.num_workers = int(o.batch_size), int(o.num_workers)
        self.augment, self.shuffle, self.seed = bool(o.augment), bool(o.shuffle), int(o.seed)
        self.pin_memory = torch.cuda.is_available() if o.pin_memory is None else bool(o.pin_memory)
        self.limits = {"train": o.num_train, "val": o.num_val, "test": o.num_test}
        #: name -> kind of every declared modality (data.modalities; the default three when none is declared).
        self.modalities: dict[str, str] = {n: spec["kind"] for n, spec in parse_modalities(modalities).items()}
        self.processors: dict[str, Processor] = declared_processors(modalities, o)
        for name, processor in (processors or {}).items():
            if name not in self.modalities:
                continue  # an encoder for a modality this data does not declare: the network check names it
            if processor.kind != self.modalities[name]:
                raise ModalityError(f"data.modalities.{name}: declared {self.modalities[name]!r}, but its encoder's "
                                    f"processor takes {processor.kind!r} input")
            self.processors[name] = processor
        self.modality_dropout = check_dropout_probs(o.modality_dropout, self.processors)
        self._build_collates()

    def _build_collates(self) -> None:
        """The evaluation and training collates of the current processors (modality dropout in training only)."""
        self.collate = self.wrap_collate(Collate(self.processors))
        self.train_collate = self.wrap_collate(Collate(self.processors, modality_dropout=self.modality_dropout))

    def wrap_collate(self, collate: Collate) -> Callable[[Sequence[dict[str, Any]]], Any]:
        """The collate the loaders use around ``collate`` (a datamodule whose datasets may yield failed samples
        wraps it to drop them)."""
        return collate

    def replace_processors(self, processors: Mapping[str, Processor]) -> None:
        """Swap the processors of some modalities (e.g. for the frozen-feature cache's) and rebuild the collates.

        The mapping is updated in place, so datasets already built with it use the new processors too."""
        unknown = sorted(set(processors) - set(self.processors))
        if unknown:
            raise ValueError(f"replace_processors: {unknown} are not modalities of {self.describe()}")
        self.processors.update(processors)
        self._build_collates()

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

    def require_modalities(self, available: Mapping[str, str], data: str) -> None:
        """Check the declared modalities against those ``data`` has (name -> kind): a subset, of the same kinds.

        Raises:
            ModalityError: naming the ``data.modalities`` key that ``data`` does not have.
        """
        for name, kind in self.modalities.items():
            if available.get(name) != kind:
                have = ", ".join(f"{n}: {k}" for n, k in sorted(available.items()))
                raise ModalityError(f"data.modalities.{name}: {data} has no {kind} modality {name!r} (it has: {have})")

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
