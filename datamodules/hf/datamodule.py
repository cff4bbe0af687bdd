"""``data=hf data.path=<save_to_disk folder | Parquet/Arrow files | Hub id>``: a Hugging Face data set.

Columns are mapped to modalities (``data.columns={text: question, image: img, label: answer}``; any declared
modality name works, e.g. ``{poster: cover, plot: synopsis}``); a modality's kind comes from ``data.modalities``
when declared, else from the column's type (``Image`` -> image, ``Audio`` -> audio, string -> text, a list of
numbers -> features). ``Image`` / ``Audio`` cells are read undecoded (their bytes, as ``decode=False`` gives them)
and decoded by the modality's processor -- WAV/FLAC/OGG through soundfile, no FFmpeg. The label's type comes from
the column (``ClassLabel`` -> classes with their names, a float -> regression, a list of class labels ->
multi-label) or ``data.label_type``. With ``data.streaming=true`` the rows are streamed piece by piece (nothing
held in memory), split exactly over DDP ranks and loader workers and resumable mid-epoch like ``data=shards``;
without it they are read with random access (Arrow memory-mapped).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mmgpt.batch import MODALITIES
from mmgpt.datamodules.base import SPLITS, MultimodalDataModule
from mmgpt.datamodules.hf.dataset import LABEL_TYPES, HFMapDataset, HFStream, Labels, RowFields
from mmgpt.datamodules.hf.source import HFDataError, SplitFiles, open_source, read_group, read_table
from mmgpt.datamodules.processors import RESERVED_NAMES, Processor
from mmgpt.datamodules.shards.partition import first_samples

log = logging.getLogger(__name__)

#: mmgpt split -> the data set's split names tried, in order, when ``data.splits`` does not name one.
DEFAULT_SPLITS: dict[str, tuple[str, ...]] = {"train": ("train",), "val": ("validation", "valid", "val", "dev"),
                                              "test": ("test", "testing")}
#: Keys of ``data.columns`` that are not modalities.
NON_MODALITY_KEYS: tuple[str, ...] = ("label", "id")


class HFDataModule(MultimodalDataModule):
    """A Hugging Face data set (see the module doc).

    Args:
        path: a ``save_to_disk`` folder, Parquet/Arrow files (a file, folder or glob), any of these at a URL
            (``s3://``, ``http(s)://``), or a Hub id.
        columns: ``{<modality or label or id>: <column>}``; unnamed modalities use the column of their name,
            the label the column ``label``. None: the declared modalities' columns, else whichever of ``text``,
            ``image``, ``audio`` the data has.
        splits: ``{train|val|test: <the data set's split>}``; None: ``train``, ``validation`` (or ``valid``,
            ``val``, ``dev``), ``test``, those present.
        streaming: stream the rows (see the module doc).
        label_type: ``class``, ``float`` or ``multilabel``; None: from the label column's type.
        class_names: the classes in index order; None: from the column (``ClassLabel`` names, else the sorted
            distinct values of the training split).
        piece_rows: streaming unit: runs of at most this many rows are split over ranks x workers.
        cache_dir: where a Hub data set is downloaded (None: ``datasets``' default).
        storage_options: a URL path's filesystem options (e.g. ``{"endpoint_url": ...}``); never saved.
        modalities: the declared modalities (name -> kind, see :mod:`mmgpt.datamodules.processors`); None: from
            the columns' types.
        The rest: the shared data options (:class:`~mmgpt.datamodules.base.MultimodalDataModule`).
    """

    def __init__(self, path: str, columns: Mapping[str, str] | None = None, splits: Mapping[str, str] | None = None,
                 streaming: bool = False, label_type: str | None = None, class_names: list[str] | None = None,
                 piece_rows: int = 256, cache_dir: str | None = None, modalities: Mapping[str, Any] | None = None,
                 num_workers: int = 1, storage_options: dict[str, Any] | None = None,
                 processors: Mapping[str, Processor] | None = None, **options: Any) -> None:
        if int(piece_rows) < 1:
            raise HFDataError(f"data.piece_rows={piece_rows}: expected a positive integer")
        if label_type is not None and label_type not in LABEL_TYPES:
            raise HFDataError(f"data.label_type={label_type!r}: expected one of {', '.join(LABEL_TYPES)}")
        self.path, self.streaming = str(path), bool(streaming)
        self.sources = open_source(self.path, piece_rows=int(piece_rows), cache_dir=cache_dir,
                                   storage_options=storage_options)
        self.split_names = _resolve_splits(self.sources, splits, self.path)
        first = self.sources[self.split_names.get("train") or next(iter(self.split_names.values()))]
        self.columns, self.label_column, self.id_column = _resolve_columns(columns, modalities, first, self.path)
        declared = dict(modalities) if modalities is not None else {
            name: _kind(first, column, self.path) for name, column in self.columns.items()}
        missing = sorted(set(declared) - set(self.columns))
        if missing:
            raise HFDataError(f"data.modalities.{missing[0]}: declared, but {self.path} has no column "
                              f"{missing[0]!r} (map one: data.columns.{missing[0]}=<column>; columns: "
                              f"{', '.join(first.column_names)})")
        super().__init__(num_workers=num_workers, modalities=declared, processors=processors, **options)
        # the module logs the resolved class names; credentials stay out of checkpoints
        self.save_hyperparameters(ignore=["class_names", "processors", "storage_options"])
        self.label_type, self._class_names = self._labels(label_type, class_names)
        log.info("%s: %s", self.path, ", ".join(f"{s}={n} ({self.sources[n].num_rows} rows)"
                                                for s, n in self.split_names.items()))

    # -- what the data says about itself ------------------------------------------------------------------------
    @property
    def class_names(self) -> list[str]:
        return list(self._class_names)

    def has_split(self, split: str) -> bool:
        return split in SPLITS and split in self.split_names

    def describe(self) -> str:
        return self.path

    def split_files(self, split: str) -> SplitFiles:
        """The files and pieces of ``split`` (``train``, ``val``, ``test``)."""
        if split not in self.split_names:
            raise HFDataError(f"{self.path} has no {split} split (it has: {', '.join(self.sources)}; choose with "
                              f"data.splits.{split}=<name>)")
        return self.sources[self.split_names[split]]

    def row_fields(self) -> RowFields:
        labels = Labels(self.label_type, self._class_names, self.label_column) if self.label_column else None
        base = self.path if Path(self.path).is_dir() else str(Path(self.path).parent)
        return RowFields(self.columns, self.processors, labels, self.label_column, self.id_column, base)

    def make_dataset(self, split: str, rank: int = 0, world_size: int = 1) -> HFMapDataset | HFStream:
        files = self.split_files(split)
        where = f"{self.path} [{files.name}]"
        limit = self.limits.get(split)
        if not self.streaming:
            return HFMapDataset(files, self.row_fields(), self.processors, train=split == "train", limit=limit,
                                where=where)
        pieces, sizes = files.pieces, {p: p.num_rows for p in files.pieces}
        if limit is not None:
            pieces, sizes = first_samples(pieces, sizes, int(limit))
        return HFStream(pieces, sizes, self.row_fields(), self.processors, train=split == "train", rank=rank,
                        world_size=world_size, shuffle=self.shuffle and split == "train", seed=self.seed,
                        batch_size=self.batch_size, where=where, storage_options=files.storage_options)

    # -- labels --------------------------------------------------------------------------------------------------
    def _labels(self, label_type: str | None, class_names: list[str] | None) -> tuple[str, list[str]]:
        if self.label_column is None:
            return label_type or "class", list(class_names or [])
        split = self.split_files("train" if "train" in self.split_names else next(iter(self.split_names)))
        feature = split.features[self.label_column]
        inner = getattr(feature, "feature", None)
        kind = type(feature).__name__
        inferred = "multilabel" if inner is not None else "float" if kind == "Value" and "float" in feature.dtype \
            else "class"
        label_type = label_type or inferred
        if class_names is not None:
            return label_type, [str(c) for c in class_names]
        if label_type == "float":
            return label_type, [self.label_column]
        names = getattr(inner if label_type == "multilabel" else feature, "names", None)
        if names:
            return label_type, list(names)
        values = read_column(split, self.label_column)
        flat = [v for row in values if row is not None for v in (row if label_type == "multilabel" else [row])]
        if all(isinstance(v, (int, np.integer)) for v in flat):
            return label_type, [str(i) for i in range(max(flat, default=-1) + 1)]
        return label_type, sorted({str(v) for v in flat})


def read_column(split: SplitFiles, column: str) -> list[Any]:
    """Every value of one column of a split (columnar formats read only that column)."""
    out: list[Any] = []
    for f in split.files:
        out += read_table(f, [column], split.storage_options).column(column).to_pylist()
    return out


def _resolve_splits(sources: Mapping[str, SplitFiles], splits: Mapping[str, str] | None,
                    path: str) -> dict[str, str]:
    out = {}
    for ours in SPLITS:
        if splits is not None and ours in splits:
            if splits[ours] is None:
                continue
            if splits[ours] not in sources:
                raise HFDataError(f"data.splits.{ours}={splits[ours]!r}: {path} has no such split (it has: "
                                  f"{', '.join(sources)})")
            out[ours] = str(splits[ours])
            continue
        found = next((name for name in DEFAULT_SPLITS[ours] if name in sources), None)
        if found:
            out[ours] = found
    if splits is not None:
        for key in splits:
            if key not in SPLITS:
                raise HFDataError(f"data.splits.{key}: not a split (expected {', '.join(SPLITS)})")
    if "train" not in out:
        raise HFDataError(f"{path}: no training split (it has: {', '.join(sources)}; choose with "
                          "data.splits.train=<name>)")
    return out


def _resolve_columns(columns: Mapping[str, str] | None, modalities: Mapping[str, Any] | None, split: SplitFiles,
                     path: str) -> tuple[dict[str, str], str | None, str | None]:
    """(modality -> column, label column, id column), every named column checked against the data."""
    have = split.column_names
    given = dict(columns or {})
    for key, column in given.items():
        if column not in have:
            raise HFDataError(f"data.columns.{key}={column!r}: {path} [{split.name}] has no such column (columns: "
                              f"{', '.join(have)})")
    label = given.pop("label", "label" if "label" in have else None)
    id_column = given.pop("id", None)
    for key in given:
        if key in RESERVED_NAMES:
            raise HFDataError(f"data.columns.{key}: {key!r} is not a modality name")
    names = list(modalities) if modalities is not None else list(given) or [
        n for n in MODALITIES if n in have]
    if not names:
        raise HFDataError(f"{path}: no modality columns: map them, e.g. data.columns={{text: <column>, image: "
                          f"<column>}} (columns: {', '.join(have)})")
    out = {}
    for name in names:
        column = given.get(name, name)
        if column in have:
            out[name] = column
    extra = sorted(set(given) - set(names))
    if extra:
        raise HFDataError(f"data.columns.{extra[0]}: not a declared modality (data.modalities declares "
                          f"{', '.join(names)})")
    return out, label, id_column


def _kind(split: SplitFiles, column: str, path: str) -> Any:
    """The modality kind of a column from its type: Image, Audio, a string, or a list of numbers (features)."""
    feature = split.features[column]
    kind = type(feature).__name__
    if kind in ("Image", "Audio"):
        return kind.lower()
    if kind == "Value" and feature.dtype in ("string", "large_string"):
        return "text"
    if kind in ("Sequence", "List", "LargeList", "Array2D", "Array3D") or kind.startswith("Array"):
        first = next((v for v in _first_rows(split, column) if v is not None), None)
        if first is not None:
            array = np.asarray(first, dtype=np.float32)
            return {"kind": "features", "dim": int(array.shape[-1]) if array.ndim else 1}
    raise HFDataError(f"{path}: column {column!r} ({feature}) is not a modality kind mmgpt reads (Image, Audio, "
                      "string, list of numbers); declare it with data.modalities or leave it out of data.columns")


def _first_rows(split: SplitFiles, column: str) -> list[Any]:
    p = split.pieces[0] if split.pieces else None
    if p is None:
        return []
    return read_group(p.file, p.group, [column], split.storage_options).column(column).to_pylist()[:16]
