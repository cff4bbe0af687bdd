"""The rows of a manifest folder: what a row holds, the compact per-split table that keeps rows in their file, the
problems found while reading, and the resolution of a row's media paths.

A manifest folder ``DIR`` holds ``train`` and ``val`` (optionally ``test``) split files (see
:mod:`mmgpt.datamodules.manifest.formats`), and optionally ``labels.txt`` (one class name per line). A row has
``id``, ``label``, ``caption`` and one key per declared modality (:func:`row_keys`; by default ``text``, ``image``,
``audio``): a ``text`` modality's value is the text, any other kind's is a file path relative to ``DIR`` (``.npy``
for ``features``). Nothing here decodes media: see :mod:`mmgpt.datamodules.decode` and
:mod:`mmgpt.datamodules.manifest.media` for that.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, overload

import numpy as np

from mmgpt.datamodules.processors import DEFAULT_MODALITIES

#: Splits a manifest folder may hold, and whether each is required.
SPLITS: dict[str, bool] = {"train": True, "val": True, "test": False}
#: Keys a row of a folder with the default modalities may have; any but ``label`` may be absent or null.
ROW_KEYS: tuple[str, ...] = ("id", "text", "image", "audio", "label", "caption")
#: The file-valued modalities of the default declaration.
MEDIA_KEYS: tuple[str, ...] = ("image", "audio")


def row_keys(kinds: Mapping[str, str]) -> tuple[str, ...]:
    """The keys (JSON Lines) / columns (CSV) a row may have with the modalities ``kinds`` (name -> kind)."""
    return ("id", *sorted(kinds), "label", "caption")


def media_keys(kinds: Mapping[str, str]) -> tuple[str, ...]:
    """The modalities whose values are file paths (every kind but ``text``), sorted."""
    return tuple(sorted(n for n, k in kinds.items() if k != "text"))


LABELS_FILE = "labels.txt"
#: What a row's ``label`` is: a class name (``class``), a number (``float``: regression), or a list of class
#: names (``multilabel``; in CSV one cell with the names separated by ``|``).
LABEL_TYPES: tuple[str, ...] = ("class", "float", "multilabel")
#: The class list of ``float`` labels: one target, one head output.
FLOAT_TARGET = "target"
# Per-row flag bits of a RowTable: whether its label was written as an integer, then (bit 1 + j) whether the row
# names a file of its j-th file-valued modality (:func:`media_keys` order).
INT_LABEL = 1


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a manifest folder.

    Attributes:
        file: the file it is in, relative to the folder (a split file, ``labels.txt``, or a media file's row).
        line: 1-based line number in ``file`` (CSV: the header is line 1), None for whole-file problems.
        message: what is wrong, naming the key and value.
        fatal: True when skipping rows cannot fix it (a missing or empty split, an unreadable ``labels.txt``).
    """

    file: str
    line: int | None
    message: str
    fatal: bool = False

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where}: {self.message}"


@dataclass(slots=True)  # built one at a time: RowTable keeps rows in their file and parses one when asked
class Row:
    """One sample as written in a split file, with its location for error reports.

    Attributes:
        split: ``train``, ``val`` or ``test``.
        file: the split file's name (``train.jsonl``).
        line: 1-based line number of the row.
        id: the sample id (``<split>:<line>`` when the row gives none).
        label: the class name (integer labels become their decimal string); with ``float`` labels the number's
            ``repr``; with ``multilabel`` the class names joined by ``|`` (see :meth:`labels`).
        values: modality name -> its value (text, or a path relative to the folder), present modalities only.
        caption: optional caption.
        label_is_int: the label was written as an integer (for sorting the class list numerically).
    """

    split: str
    file: str
    line: int
    id: str
    label: str
    values: dict[str, str] = field(default_factory=dict)
    caption: str | None = None
    label_is_int: bool = False

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"

    def labels(self) -> list[str]:
        """A multilabel row's class names (none for an empty list)."""
        return label_names(self.label)

    def get(self, modality: str) -> str | None:
        """The value of ``modality`` (text, or a path relative to the folder); None when absent."""
        return self.values.get(modality)

    # Shortcuts for the default declaration's modalities (what rows held before modalities were declared).
    text = property(lambda self: self.values.get("text"))
    image = property(lambda self: self.values.get("image"))
    audio = property(lambda self: self.values.get("audio"))


@dataclass
class ManifestIndex:
    """Every parsed row of a folder, its class list and the problems found while reading (no decoding yet).

    Attributes:
        root: the folder.
        rows: split -> rows that parsed cleanly (media not yet checked), kept on disk (:class:`RowTable`).
        class_names: the class list, in index order.
        problems: every problem found so far.
        files: split -> split file name, for the splits present.
        warnings: things that do not stop training but deserve a look (a sample in train and in val/test).
        kinds: the declared modalities, name -> kind.
        label_type: what a row's label is (:data:`LABEL_TYPES`).
    """

    root: Path
    rows: dict[str, RowTable] = field(default_factory=dict)
    class_names: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    kinds: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_MODALITIES))
    label_type: str = "class"


class RowsChanged(ValueError):
    """A split file changed after its rows were read (its rows are read again from it on demand)."""


class RowTable(Sequence[Row]):
    """The rows of one split file, kept in the file: per row only its byte offset, length, line number, label
    (code, or value for ``float`` labels) and flags (about 20 bytes, in NumPy arrays), so a large folder holds no
    Python object per row.

    ``table[i]`` reads and parses row ``i`` again (one ``pread`` of its line); iterating reads them in order.
    A table pickles without its open file (loader workers open their own). Reading a row of a split file that
    changed since the table was made raises :class:`RowsChanged`.

    Args:
        split: the split. path: the split file. header: a CSV file's columns (None: JSON Lines).
        offset, length, line: per row, the line's byte offset, byte length (without the newline) and 1-based number.
        label: per row, the index of its label in ``labels`` (a :class:`Row` label: a class name, or ``multilabel``
            names joined by ``|``); with ``labels`` None (``float`` labels), the label's value.
        flags: per row, ``INT_LABEL`` and one bit per file-valued modality (:meth:`has`).
        stat: the file's (size, mtime_ns) when it was read. kinds: the declared modalities, name -> kind.
    """

    def __init__(self, split: str, path: str, header: tuple[str, ...] | None, offset: np.ndarray, length: np.ndarray,
                 line: np.ndarray, label: np.ndarray, labels: tuple[str, ...] | None, flags: np.ndarray,
                 stat: tuple[int, int], kinds: Mapping[str, str]) -> None:
        self.split, self.path, self.file, self.header = split, path, os.path.basename(path), header
        self.offset, self.length, self.line, self.label, self.flags = offset, length, line, label, flags
        self.labels, self.stat, self.kinds = labels, stat, dict(kinds)
        self.names, self.media = tuple(sorted(kinds)), media_keys(kinds)
        self._fd, self._pid = -1, -1

    def __len__(self) -> int:
        return len(self.offset)

    @overload
    def __getitem__(self, i: int) -> Row: ...
    @overload
    def __getitem__(self, i: slice) -> RowTable: ...
    def __getitem__(self, i: int | slice) -> Row | RowTable:
        if isinstance(i, slice):
            return self.take(np.arange(*i.indices(len(self))))
        obj = self.read_obj(i)
        return build_row(self.split, self.file, int(self.line[i]), obj, row_values(obj, self.names, self.media),
                          self.label_str(i), bool(self.flags[i] & INT_LABEL))

    def __iter__(self) -> Iterator[Row]:
        for i in range(len(self)):
            yield self[i]

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_fd": -1, "_pid": -1}

    def __del__(self) -> None:
        if self._fd >= 0 and self._pid == os.getpid():
            os.close(self._fd)

    def take(self, rows: np.ndarray) -> RowTable:
        """The table of rows ``rows`` (indices into this one), in that order."""
        return RowTable(self.split, self.path, self.header, self.offset[rows], self.length[rows], self.line[rows],
                        self.label[rows], self.labels, self.flags[rows], self.stat, self.kinds)

    def has(self, key: str) -> np.ndarray:
        """(N,) bool: which rows name a file of the file-valued modality ``key``."""
        return (self.flags & media_bit(self.media, key)) != 0

    def label_str(self, i: int) -> str:
        """Row ``i``'s label as :class:`Row` holds it (no read of the file)."""
        return self.labels[self.label[i]] if self.labels is not None else repr(float(self.label[i]))

    def read_obj(self, i: int) -> dict[str, Any]:
        """Row ``i`` as parsed from its line (a JSON object, or a CSV row as a dict; empty cells are None)."""
        if self._pid != os.getpid():
            self._open()
        n = int(self.length[i])
        raw = os.pread(self._fd, n, int(self.offset[i]))
        if len(raw) != n:
            raise RowsChanged(f"{self.path} changed since it was read (run the check again)")
        if self.header is None:
            return json.loads(raw.removeprefix(b"\xef\xbb\xbf").rstrip(b"\r"))  # bytes: no str decode step
        text = raw.decode("utf-8-sig" if self.line[i] == 1 else "utf-8").rstrip("\r")
        return {k: (v if v != "" else None) for k, v in zip(self.header, next(csv.reader((text,))))}

    def _open(self) -> None:
        fd = os.open(self.path, os.O_RDONLY)
        st = os.fstat(fd)
        if (st.st_size, st.st_mtime_ns) != self.stat:
            os.close(fd)
            raise RowsChanged(f"{self.path} changed since its rows were read (size or modification time); "
                              "run the check again")
        self._fd, self._pid = fd, os.getpid()


def resolve_media(root: Path, rel: str, allow_outside_root: bool = False) -> Path:
    """The path of media file ``rel`` inside ``root``.

    The check is lexical (``..`` and absolute paths), so a symlink inside the folder may still point elsewhere:
    that is the user's own choice, not something a manifest row can do.

    Raises:
        ValueError: ``rel`` is absolute or escapes ``root`` and ``allow_outside_root`` is False.
    """
    root = Path(os.path.normpath(os.path.abspath(root)))
    path = Path(os.path.normpath(os.path.join(root, rel)))
    if allow_outside_root:
        return path
    if os.path.isabs(rel) or os.path.splitdrive(rel)[0]:
        raise ValueError(f"absolute path {rel!r} refused (paths are relative to the folder; "
                         "allow_outside_root=true opts in)")
    if path != root and root not in path.parents:
        raise ValueError(f"path {rel!r} escapes the folder (allow_outside_root=true opts in)")
    return path


def row_values(obj: dict[str, Any], names: Sequence[str], media: Sequence[str]) -> dict[str, str]:
    """The present modalities of a parsed row, name -> value (an empty text is a missing text, not a present
    modality)."""
    return {k: v for k in names if isinstance(v := obj.get(k), str) and (k in media or v.strip())}


def build_row(split: str, file: str, n: int, obj: dict[str, Any], values: dict[str, str], label: str,
               label_is_int: bool) -> Row:
    """The :class:`Row` of an object :func:`_row` found valid (rows read again from disk skip the checks), with its
    modalities' ``values`` and its ``label`` as :class:`Row` holds it."""
    sid = obj.get("id")
    return Row(
        split=split,
        file=file,
        line=n,
        id=str(sid) if sid is not None else f"{split}:{n}",
        label=label,
        values=values,
        caption=obj.get("caption"),
        label_is_int=label_is_int,
    )


def label_names(label: str) -> list[str]:
    """The class names of a ``multilabel`` label as :class:`Row` holds it (none for an empty list)."""
    return label.split("|") if label else []


def media_bit(media: Sequence[str], key: str) -> int:
    """The :class:`RowTable` flag bit of file-valued modality ``key`` (its position in ``media``)."""
    if key not in media:
        raise ValueError(f"{key!r} is not a file-valued modality here (those are: {list(media)})")
    return 2 << media.index(key)
