"""What the benchmark loaders share: a split as read from the distributed files, and the datamodule over it.

A reader (one module per distributed format: :mod:`.mmsa`, :mod:`.avmnist`, :mod:`.mmimdb`,
:mod:`.hateful_memes`) turns the files of one split into a :class:`BenchmarkSplit`: sample ids, labels, and per
modality a column holding each sample's stored value (an array, a string) or the path of a media file that the
modality's processor decodes when the sample is loaded. :class:`BenchmarkDataModule` serves the splits as
map-style datasets through the shared base (resumable loader, seeded augmentation, modality dropout).

Labels, by task: ``regression`` float32 (N,); ``multiclass``/``binary`` int64 (N,); ``multilabel`` multi-hot
int64 (N, C).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from mmgpt.datamodules.base import SPLITS, MultimodalDataModule, ProcessedDataset
from mmgpt.datamodules.collate import Collate, Rows
from mmgpt.datamodules.decode import DecodeError
from mmgpt.datamodules.processors import Processor
from mmgpt.errors import UserError

#: Task types a benchmark declares (the label layout above follows from it).
TASKS: tuple[str, ...] = ("regression", "multiclass", "binary", "multilabel")


class BenchmarkError(UserError):
    """A benchmark's files are missing, or not in the distributed format; the message names the file and key."""


@dataclass
class BenchmarkSplit:
    """One split of a benchmark, as its files hold it.

    Attributes:
        ids: sample identifiers, in file order.
        labels: (N,) float32 / int64, or (N, C) multi-hot (see the module doc).
        columns: modality name -> per-sample values (indexable; arrays may be memory-mapped).
        files: the modalities whose column holds media file paths (decoded by the processor when loaded).
        lengths: modality name -> (N,) true lengths; a value is cut to its first ``length`` steps when loaded
            (unaligned feature sequences stored padded, as MMSA's ``audio_lengths``).
    """

    ids: list[str]
    labels: np.ndarray
    columns: dict[str, Sequence[Any]]
    files: frozenset[str] = frozenset()
    lengths: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.ids)
        for name, column in {"labels": self.labels, **self.columns, **self.lengths}.items():
            if len(column) != n:
                raise BenchmarkError(f"{name}: {len(column)} entries for {n} samples")

    def __len__(self) -> int:
        return len(self.ids)

    def head(self, n: int | None) -> BenchmarkSplit:
        """The first ``n`` samples (all when ``n`` is None)."""
        if n is None or n >= len(self):
            return self
        return BenchmarkSplit(self.ids[:n], self.labels[:n], {k: v[:n] for k, v in self.columns.items()},
                              self.files, {k: v[:n] for k, v in self.lengths.items()})

    def stored(self, i: int, name: str, processor: Processor) -> Any:
        """Sample ``i``'s stored value of modality ``name`` (a media file decoded by ``processor``)."""
        value = self.columns[name][i]
        if name in self.files:
            if value is None or value == "":
                return None
            try:
                return processor.decode(value)
            except DecodeError as e:
                raise BenchmarkError(f"{value}: {e} (sample {self.ids[i]!r}, modality {name})") from e
        if name in self.lengths:
            value = value[: int(self.lengths[name][i])]
        return value

    def label(self, i: int) -> Any:
        y = self.labels[i]
        return y.tolist() if isinstance(y, np.ndarray) else y.item() if isinstance(y, np.generic) else y


class BenchmarkDataModule(MultimodalDataModule):
    """The datamodule of a benchmark read by one of the readers (subclasses: which files, which modalities).

    A subclass gives its ``task`` (one of :data:`TASKS`), its :attr:`class_names` (the output names: one per
    class, per label of a multi-label task, or the single regression target) and :meth:`read_split`; it passes
    its modalities (name -> kind or ``{kind: features, dim: F}``) and the shared options to this constructor.
    """

    task: str

    def __init__(self, *, root: str | Path, modalities: Mapping[str, Any], **options: Any) -> None:
        super().__init__(modalities=dict(modalities), **options)
        self.root = Path(root)
        self._splits: dict[str, BenchmarkSplit] = {}

    def use_processor(self, name: str, processor: Processor) -> None:
        """Replace modality ``name``'s processor (one the declaration's kind cannot build, e.g. token ids)."""
        if self.processors[name].kind != processor.kind:
            raise ValueError(f"{name}: a {processor.kind} processor for a {self.processors[name].kind} modality")
        self.processors[name] = processor
        self.collate = Collate(self.processors)
        self.train_collate = Collate(self.processors, modality_dropout=self.modality_dropout)

    @abstractmethod
    def read_split(self, split: str) -> BenchmarkSplit:
        """Read ``split`` (``train``, ``val`` or ``test``) from the benchmark's files."""

    def split(self, split: str) -> BenchmarkSplit:
        """``split`` as read (once), cut to ``data.num_<split>`` samples."""
        if split not in self._splits:
            self._splits[split] = self.read_split(split).head(self.limits.get(split))
        return self._splits[split]

    def has_split(self, split: str) -> bool:
        return split in SPLITS

    def describe(self) -> str:
        return str(self.root)

    def make_dataset(self, split: str, rank: int = 0, world_size: int = 1) -> Dataset:
        table = self.split(split)
        return ProcessedDataset(range(len(table)), _Fields(table, self.processors), self.processors,
                                train=split == "train")


class _Fields:
    """Sample index -> the dict :func:`mmgpt.datamodules.base.process` takes (picklable, for loader workers)."""

    draws_randomness = False  # a table lookup

    def __init__(self, table: BenchmarkSplit, processors: Mapping[str, Processor]) -> None:
        self.table, self.processors = table, dict(processors)

    def __call__(self, i: int) -> dict[str, Any]:
        fields: dict[str, Any] = {"id": self.table.ids[i], "label": self.table.label(i), "caption": None}
        for name, processor in self.processors.items():
            fields[name] = self.table.stored(i, name, processor)
        return fields

    def rows(self, indices: Sequence[int]) -> Rows | None:
        """Samples ``indices`` gathered at once: each modality's rows and lengths by one indexing of its array.
        None when a modality's column is not a numeric array (files, strings, token lists) or holds a negative
        length (then the per-sample path decides)."""
        table, index = self.table, np.asarray(indices, dtype=np.int64)
        values: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
        for name in self.processors:
            column = table.columns[name]
            if name in table.files or not isinstance(column, np.ndarray) or column.dtype.kind not in "biuf":
                return None
            lengths = table.lengths[name][index] if name in table.lengths else None
            if lengths is not None and (lengths < 0).any():
                return None
            values[name] = (column[index], lengths)
        return Rows(ids=[table.ids[i] for i in index], labels=table.labels[index], values=values)


def require_file(path: Path, what: str) -> Path:
    """``path`` if it is a file, else a :class:`BenchmarkError` saying what was expected there."""
    if not path.is_file():
        raise BenchmarkError(f"{path}: not found ({what})")
    return path


def require_keys(mapping: Mapping[str, Any], keys: Sequence[str], where: str) -> None:
    """Raise a :class:`BenchmarkError` naming the first of ``keys`` missing from ``mapping``."""
    if not isinstance(mapping, Mapping):
        raise BenchmarkError(f"{where}: expected a dict, found {type(mapping).__name__}")
    for key in keys:
        if key not in mapping:
            raise BenchmarkError(f"{where}: no key {key!r} (has: {', '.join(map(str, mapping))})")



def load_npy(path: Path, *, mmap: bool = False) -> np.ndarray:
    """A ``.npy`` file as a numeric array, read as data: never unpickled (``allow_pickle=False``), never an ``.npz``
    archive or a file of another kind, never Python objects or records.

    Raises:
        BenchmarkError: naming the file and what it holds instead.
    """
    try:
        array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:  # a pickle, object dtype, a truncated or foreign file
        raise BenchmarkError(f"{path}: not a numeric .npy array ({str(e).splitlines()[0]})") from None
    if not isinstance(array, np.ndarray):  # np.load opens any zip as an .npz archive
        array.close()
        raise BenchmarkError(f"{path}: an .npz archive, not a .npy array")
    if array.dtype.kind not in "biuf":
        raise BenchmarkError(f"{path}: an array of dtype {array.dtype}, not numbers")
    return array


def h5_dataset(file: Any, key: str, path: str | Path, kinds: str = "biuf") -> Any:
    """Dataset ``key`` of an open HDF5 file, read as data from that file alone: refused when it is a link to
    another file (external link), a virtual dataset or one with external storage (both read other files), or
    holds anything but ``kinds`` of dtype (numbers by default; ``S``/``O`` strings where asked).

    Raises:
        BenchmarkError: naming the file, the key and why.
    """
    import h5py

    link = file.get(key, getlink=True)
    if link is None:
        raise BenchmarkError(f"{path}: no dataset {key!r}")
    if isinstance(link, h5py.ExternalLink):
        raise BenchmarkError(f"{path}: {key!r} is a link to another file ({link.filename}); refused")
    dataset = file[key]
    if not isinstance(dataset, h5py.Dataset):
        raise BenchmarkError(f"{path}: {key!r} is a {type(dataset).__name__}, not a dataset")
    if dataset.is_virtual or dataset.external:
        raise BenchmarkError(f"{path}: {key!r} reads its data from other files (virtual or external storage); "
                             "refused")
    string = h5py.check_string_dtype(dataset.dtype) is not None
    if dataset.dtype.kind not in kinds or (dataset.dtype.kind == "O" and not string):
        raise BenchmarkError(f"{path}: {key!r} holds {dataset.dtype}, not {'strings' if 'S' in kinds else 'numbers'}")
    return dataset
