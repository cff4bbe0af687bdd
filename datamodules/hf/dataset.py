"""The rows of a Hugging Face data set as mmgpt samples: map-style (random access) or streamed.

A row becomes the per-sample dict the collate takes through :class:`RowFields`: each modality's column through
its processor (``Image``/``Audio`` cells' bytes decoded by ``decode``; text as is; feature lists as arrays), the
label through :class:`Labels`. :class:`HFStream` streams pieces (runs of rows) split exactly over DDP ranks x
loader workers and resumes mid-epoch like the tar shards (:mod:`mmgpt.datamodules.shards`).
"""

from __future__ import annotations

import bisect
import itertools
import random
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from mmgpt.datamodules.base import process
from mmgpt.datamodules.decode import DecodeError
from mmgpt.datamodules.hf.source import HFDataError, Piece, SplitFiles, read_group, read_table
from mmgpt.datamodules.processors import Processor
from mmgpt.datamodules.resumable import SampleKey, resumed_reader
from mmgpt.datamodules.shards.partition import dealt_batches, reader_runs
from mmgpt.training.rng import mix_seed, seeded

#: What a label column may hold.
LABEL_TYPES: tuple[str, ...] = ("class", "float", "multilabel")


class Labels:
    """A label cell -> the label the collate takes: a class index, a float, or a multi-hot list.

    Args:
        label_type: ``class``, ``float`` or ``multilabel``.
        class_names: the classes (for ``class``/``multilabel``); a cell may be a class index or a class name.
        column: the label column (for error messages).
    """

    def __init__(self, label_type: str, class_names: Sequence[str], column: str) -> None:
        self.label_type, self.class_names, self.column = label_type, list(class_names), column
        self.index = {name: i for i, name in enumerate(self.class_names)}

    def __call__(self, value: Any) -> Any:
        if value is None:
            raise ValueError(f"column {self.column!r}: no label")
        if self.label_type == "float":
            return float(value)
        if self.label_type == "multilabel":
            hot = [0] * len(self.class_names)
            for v in value:
                hot[self._class(v)] = 1
            return hot
        return self._class(value)

    def _class(self, v: Any) -> int:
        if isinstance(v, str):
            if v not in self.index:
                raise ValueError(f"column {self.column!r}: label {v!r} is not one of the classes {self.class_names}")
            return self.index[v]
        if not 0 <= int(v) < len(self.class_names):
            raise ValueError(f"column {self.column!r}: label {v!r} outside 0..{len(self.class_names) - 1}")
        return int(v)


class RowFields:
    """A row (a dict of columns) -> the fields of one sample (stored values, before ``transform``).

    Args:
        columns: modality name -> its column.
        processors: modality name -> processor.
        labels: the label converter, or None (unlabelled).
        label_column: the label's column; id_column: the sample id's column (None: the row index).
        base: folder that relative media paths (cells stored by path) are relative to.
    """

    def __init__(self, columns: Mapping[str, str], processors: Mapping[str, Processor], labels: Labels | None,
                 label_column: str | None, id_column: str | None, base: str) -> None:
        self.columns, self.processors, self.labels = dict(columns), dict(processors), labels
        self.label_column, self.id_column, self.base = label_column, id_column, base

    @property
    def needed(self) -> list[str]:
        """The columns a row must hold."""
        return sorted({*self.columns.values(), *filter(None, (self.label_column, self.id_column))})

    def __call__(self, row: Mapping[str, Any], index: int, where: str) -> dict[str, Any]:
        fields: dict[str, Any] = {"id": row[self.id_column] if self.id_column else index, "caption": None}
        try:
            fields["label"] = self.labels(row[self.label_column]) if self.labels else None
        except ValueError as e:
            raise HFDataError(f"{where}: row {index}: {e}") from e
        for name, column in self.columns.items():
            fields[name] = self._value(name, row[column], index, where)
        return fields

    def _value(self, name: str, cell: Any, index: int, where: str) -> Any:
        if cell is None:
            return None
        kind = self.processors[name].kind
        if kind == "text":
            return str(cell)
        if kind == "features":
            return np.asarray(cell, dtype=np.float32)
        source = cell
        if isinstance(cell, Mapping):  # an Image / Audio cell: {"bytes", "path"}
            source = cell.get("bytes") or cell.get("path")
            if source is None:
                return None
            if isinstance(source, str) and not Path(source).is_absolute():
                source = str(Path(self.base) / source)
        try:
            return self.processors[name].decode(source)
        except DecodeError as e:
            raise HFDataError(f"{where}: row {index}, column {self.columns[name]!r}: {e}") from e


class HFMapDataset(Dataset):
    """Random access to a split's rows (Arrow files memory-mapped, Parquet files read once into memory, each
    when first needed in a process), each row through :class:`RowFields` and the processors' ``transform``."""

    def __init__(self, split: SplitFiles, fields: RowFields, processors: Mapping[str, Processor], *, train: bool,
                 limit: int | None = None, where: str = "") -> None:
        self.split, self.fields, self.processors, self.train, self.where = split, fields, processors, train, where
        files = list(dict.fromkeys(p.file for p in split.pieces))
        rows = {f: 0 for f in files}
        for p in split.pieces:
            rows[p.file] += p.num_rows
        self.files = files
        self.starts = list(itertools.accumulate([0] + [rows[f] for f in files]))  # first row of each file
        self.length = self.starts[-1] if limit is None else min(limit, self.starts[-1])
        self._tables: dict[str, Any] = {}

    def __len__(self) -> int:
        return self.length

    def row(self, i: int) -> dict[str, Any]:
        k = bisect.bisect_right(self.starts, i) - 1
        f = self.files[k]
        if f not in self._tables:
            self._tables[f] = read_table(f, self.fields.needed, self.split.storage_options)
        return self._tables[f].slice(i - self.starts[k], 1).to_pylist()[0]

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not 0 <= i < self.length:
            raise IndexError(i)
        return process(self.fields(self.row(i), i, self.where), self.processors, train=self.train)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_tables": {}}  # each worker maps its own


class HFStream(IterableDataset):
    """Streams ``(SampleKey, sample)`` pairs from a split's pieces, split exactly over ranks x workers.

    Like :class:`~mmgpt.datamodules.shards.ShardDataset`: the pieces are shuffled per epoch (the same order on
    every rank) when ``shuffle``, each loader worker of each rank reads its own pieces in order, a sample's
    randomness is seeded by (seed, epoch, its row index), and :meth:`resume_at` continues an epoch after the
    batches already trained on, skipping without decoding what each worker had delivered. Every rank yields the
    same number of batches (``partition.padding_batches``), so DDP never waits on a rank that ran out: when the
    pieces do not divide evenly a few rows are repeated, as ``DistributedSampler`` does for map-style data.

    Args:
        pieces: the split's pieces (possibly cut by :func:`~mmgpt.datamodules.shards.partition.first_samples`).
        sizes: rows per piece (for a cut last piece, fewer than ``piece.num_rows``).
        fields: row -> sample fields.
        processors: modality name -> processor.
        train: training data (augmentation as the processors say).
        rank, world_size: this process's DDP rank and the number of ranks.
        shuffle: shuffle the pieces each epoch.
        seed: shuffling and data-randomness seed.
        batch_size: the loader's batch size (to resume mid-epoch).
        where: how errors name the data (path and split).
    """

    def __init__(self, pieces: list[Piece], sizes: dict[Piece, int], fields: RowFields,
                 processors: Mapping[str, Processor], *, train: bool = False, rank: int = 0, world_size: int = 1,
                 shuffle: bool = False, seed: int = 0, batch_size: int = 1, where: str = "",
                 storage_options: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.pieces, self.sizes, self.fields = list(pieces), dict(sizes), fields
        self.storage_options = storage_options  # the pieces' files are URLs: their filesystem's options
        self.processors, self.train, self.where = dict(processors), train, where
        self.rank, self.world_size, self.shuffle, self.seed = rank, world_size, shuffle, seed
        self.batch_size = batch_size
        self.epoch = 0
        self.resume: tuple[int, int] | None = None
        self._group: tuple[tuple[str, int], Any] | None = None  # the last row group read (pieces share groups)

    # No __len__, as for tar shards: a rank's batch count depends on the loader's workers (each ends with its own
    # partial batch), so Lightning runs each pass until the stream ends (every rank: the same count, padded).

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume_at(self, epoch: int, batches: int) -> None:
        self.resume = (epoch, batches)

    def _epoch_pieces(self, epoch: int) -> list[Piece]:
        pieces = list(self.pieces)
        if self.shuffle:
            random.Random(self.seed + epoch).shuffle(pieces)
        return pieces

    def batches_per_worker(self, epoch: int, num_workers: int) -> list[int]:
        """How many batches each of ``num_workers`` workers (1 for none) yields in ``epoch`` on this rank; every
        rank yields as many (:func:`~mmgpt.datamodules.shards.partition.padding_batches`)."""
        return dealt_batches(self._epoch_pieces(epoch), self.sizes, self.rank, self.world_size, num_workers,
                             self.batch_size)

    def __iter__(self) -> Iterator[tuple[SampleKey, dict[str, Any]]]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info else (0, 1)
        role, skip = worker, 0
        if self.resume is not None and self.resume[0] == self.epoch and self.resume[1] > 0:
            role, skip = resumed_reader(self.batches_per_worker(self.epoch, num_workers), worker, self.resume[1],
                                        self.batch_size)
        pieces = self._epoch_pieces(self.epoch)
        runs = reader_runs(pieces, self.sizes, self.rank, self.world_size, role, num_workers, self.batch_size)
        for piece, n in runs:
            if skip >= n:  # skipped whole, unread
                skip -= n
                continue
            rows = self._rows(piece)
            for j in range(skip, n):
                index = piece.first + j
                key = SampleKey(index, mix_seed(self.seed, self.epoch, index))
                with seeded(key.seed):  # not around the yield: the training process draws in between
                    sample = process(self.fields(rows[j], index, self.where), self.processors, train=self.train)
                yield key, sample
            skip = 0

    def _rows(self, piece: Piece) -> list[dict[str, Any]]:
        group = (piece.file, piece.group)
        if self._group is None or self._group[0] != group:
            self._group = (group, read_group(piece.file, piece.group, self.fields.needed, self.storage_options))
        return self._group[1].slice(piece.start, piece.num_rows).to_pylist()
