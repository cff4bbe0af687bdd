"""Reading a manifest folder: split files (JSON Lines or CSV), rows, the class list, and every problem found.

A manifest folder ``DIR`` holds ``train`` and ``val`` (optionally ``test``) split files, each either
``<split>.jsonl`` (one JSON object per line) or ``<split>.csv`` (a header row, then one sample per row), and
optionally ``labels.txt`` (one class name per line). A row has ``id``, ``label``, ``caption`` and one key per
declared modality (:func:`row_keys`; by default ``text``, ``image``, ``audio``): a ``text`` modality's value is the
text, any other kind's is a file path relative to ``DIR`` (``.npy`` for ``features``). Nothing here decodes
media: see :mod:`mmgpt.datamodules.decode` and
:mod:`mmgpt.datamodules.manifest.media` for that.
"""

from __future__ import annotations

import csv
import io
import json
import os
from array import array
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
_INT_LABEL = 1


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
        flags: per row, ``_INT_LABEL`` and one bit per file-valued modality (:meth:`has`).
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
        return _build_row(self.split, self.file, int(self.line[i]), obj, _values(obj, self.names, self.media),
                          self.label_str(i), bool(self.flags[i] & _INT_LABEL))

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
        return (self.flags & _media_bit(self.media, key)) != 0

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


def _split_file(root: Path, split: str, index: ManifestIndex) -> Path | None:
    found = [root / f"{split}{ext}" for ext in (".jsonl", ".csv") if (root / f"{split}{ext}").is_file()]
    if len(found) > 1:
        index.problems.append(Problem(found[0].name, None, f"both {split}.jsonl and {split}.csv exist; keep one", True))
        return None
    if not found:
        if SPLITS[split]:
            index.problems.append(
                Problem(f"{split}.jsonl", None, f"missing split: neither {split}.jsonl nor {split}.csv", True))
        return None
    return found[0]


def _iter_lines(path: Path, index: ManifestIndex) -> Iterator[tuple[int, int, int, str]]:
    """(line number, byte offset, byte length without the newline, text) of every non-blank line, read one at a
    time (a split file of a large folder is never held whole); undecodable UTF-8 lines are reported and left out."""
    try:
        f = open(path, "rb")  # noqa: SIM115 (closed below; opening fails before any line is yielded)
    except OSError as e:
        index.problems.append(Problem(path.name, None, f"cannot read: {e}", True))
        return
    with f:
        offset = 0
        for n, raw in enumerate(f, start=1):
            start, offset = offset, offset + len(raw)
            raw = raw.rstrip(b"\n")
            try:
                text = raw.decode("utf-8-sig" if n == 1 else "utf-8")
            except UnicodeDecodeError as e:
                index.problems.append(Problem(path.name, n, f"not valid UTF-8 ({e.reason} at byte {e.start})"))
                continue
            if text.strip():
                yield n, start, len(raw), text.rstrip("\r")


def _read_lines(path: Path, index: ManifestIndex) -> list[tuple[int, str]] | None:
    """(line number, text) of every non-blank line of a small file, or None when the file cannot be read."""
    before = len(index.problems)
    lines = [(n, text) for n, _, _, text in _iter_lines(path, index)]
    return None if any(p.line is None and p.file == path.name for p in index.problems[before:]) else lines


#: What the parsers yield: (line number, byte offset, byte length, parsed object).
Parsed = tuple[int, int, int, dict[str, Any]]


def _parse_jsonl(path: Path, index: ManifestIndex) -> Iterator[Parsed]:
    for n, off, length, text in _iter_lines(path, index):
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            index.problems.append(Problem(path.name, n, f"malformed JSON: {e.msg} (column {e.colno})"))
            continue
        if not isinstance(obj, dict):
            index.problems.append(Problem(path.name, n, f"expected a JSON object, got {type(obj).__name__}"))
            continue
        yield n, off, length, obj


def _csv_header(path: Path, index: ManifestIndex) -> tuple[str, ...] | None:
    """The columns of a CSV split file (its first non-blank line), or None (reported) when they are unusable."""
    for n, _, _, text in _iter_lines(path, index):
        header = tuple(h.strip() for h in next(csv.reader(io.StringIO(text))))
        allowed = row_keys(index.kinds)
        unknown = [h for h in header if h not in allowed]
        if unknown:
            index.problems.append(Problem(path.name, n, f"unknown column(s) {unknown}; allowed: {list(allowed)}"
                                          f"{_declare_hint(unknown, index.kinds)}", True))
            return None
        if "label" not in header:
            index.problems.append(
                Problem(path.name, n, f"the header has no 'label' column (columns: {list(header)})", True))
            return None
        return header
    return None


def _parse_csv(path: Path, header: tuple[str, ...], index: ManifestIndex) -> Iterator[Parsed]:
    # csv.reader per line; quoted newlines inside a field are not supported (one sample per line).
    lines = _iter_lines(path, index)
    next(lines, None)  # the header
    for n, off, length, text in lines:
        cells = next(csv.reader((text,)))
        if len(cells) != len(header):
            index.problems.append(Problem(path.name, n, f"{len(cells)} fields, the header has {len(header)}"))
            continue
        # An empty cell is a missing value.
        yield n, off, length, {k: (v if v != "" else None) for k, v in zip(header, cells)}


def _row(split: str, file: str, n: int, obj: dict[str, Any], index: ManifestIndex) -> Row | None:
    """Validate one parsed object; report and return None when it is unusable."""
    bad = False

    def problem(msg: str) -> None:
        nonlocal bad
        index.problems.append(Problem(file, n, msg))
        bad = True

    kinds = index.kinds
    allowed = row_keys(kinds)
    media = media_keys(kinds)
    unknown = sorted(set(obj) - set(allowed))
    if unknown:
        problem(f"unknown key(s) {unknown}; allowed: {list(allowed)}{_declare_hint(unknown, kinds)}")
    label = obj.get("label")
    if index.label_type != "class" and label is not None:
        label = _typed_label(label, index.label_type, problem)
        if label is None:
            label = ""  # reported; the row is left out
    elif label is None:
        problem("missing label")
    elif isinstance(label, bool) or not isinstance(label, (str, int)):
        problem(f"label {label!r}: expected a string or an integer")
    elif isinstance(label, str) and not label.strip():
        problem("empty label")
    for key in ("caption", *sorted(kinds)):
        if obj.get(key) is not None and not isinstance(obj[key], str):
            problem(f"{key} {obj[key]!r}: expected a string or null")
    for key in media:
        if isinstance(obj.get(key), str) and not obj[key].strip():
            problem(f"{key}: empty path (use null for a missing {key})")
    values = _values(obj, sorted(kinds), media)
    if not values and not bad:
        order = ("text", "image", "audio", "features")
        names = sorted(kinds, key=lambda n: (order.index(kinds[n]) if kinds[n] in order else len(order), n))
        problem(f"no modality: {', '.join(names[:-1])} and {names[-1]} are all missing (an empty text counts as "
                "missing)" if len(names) > 1 else f"no modality: {names[0]} is missing")
    sid = obj.get("id")
    if sid is not None and (isinstance(sid, bool) or not isinstance(sid, (str, int))):
        problem(f"id {sid!r}: expected a string or an integer")
    return None if bad else _build_row(split, file, n, obj, values, str(label), isinstance(label, int))


def _values(obj: dict[str, Any], names: Sequence[str], media: Sequence[str]) -> dict[str, str]:
    """The present modalities of a parsed row, name -> value (an empty text is a missing text, not a present
    modality)."""
    return {k: v for k in names if isinstance(v := obj.get(k), str) and (k in media or v.strip())}


def _build_row(split: str, file: str, n: int, obj: dict[str, Any], values: dict[str, str], label: str,
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


def _media_bit(media: Sequence[str], key: str) -> int:
    """The :class:`RowTable` flag bit of file-valued modality ``key`` (its position in ``media``)."""
    if key not in media:
        raise ValueError(f"{key!r} is not a file-valued modality here (those are: {list(media)})")
    return 2 << media.index(key)


def _typed_label(label: Any, label_type: str, problem: Any) -> str | None:
    """A ``float`` or ``multilabel`` row label as :class:`Row` stores it; None (and a problem) when unusable."""
    if label_type == "float":
        try:
            if isinstance(label, bool):
                raise ValueError
            value = float(label)
        except (TypeError, ValueError):
            problem(f"label {label!r}: expected a number (data.label_type=float)")
            return None
        if value != value or value in (float("inf"), float("-inf")):
            problem(f"label {label!r}: expected a finite number")
            return None
        return repr(value)
    names = label.split("|") if isinstance(label, str) else label
    if isinstance(label, str) and not label.strip():
        names = []
    if not isinstance(names, list) or any(isinstance(n, bool) or not isinstance(n, (str, int)) for n in names):
        problem(f"label {label!r}: expected a list of class names (data.label_type=multilabel; in CSV "
                "'name|name')")
        return None
    names = [str(n).strip() for n in names]
    if any(not n or "|" in n for n in names):
        problem(f"label {label!r}: class names must be non-empty and contain no '|'")
        return None
    return "|".join(dict.fromkeys(names))


def _class_list(root: Path, train: RowTable | None, index: ManifestIndex) -> list[str]:
    if index.label_type == "float":
        return [FLOAT_TARGET]
    path = root / LABELS_FILE
    if path.is_file():
        lines = _read_lines(path, index) or []
        names = [t.strip() for _, t in lines]
        seen: dict[str, int] = {}
        for n, name in zip((n for n, _ in lines), names):
            if name in seen:
                index.problems.append(
                    Problem(LABELS_FILE, n, f"duplicate class {name!r} (first on line {seen[name]})", True))
            seen.setdefault(name, n)
        if not names:
            index.problems.append(Problem(LABELS_FILE, None, "no class names", True))
        return list(dict.fromkeys(names))
    if train is None or not len(train):
        return []
    labels = [train.labels[c] for c in np.unique(train.label).tolist()]
    if index.label_type == "multilabel":
        names = {n for label in labels for n in label_names(label)}
        return sorted(names, key=int) if names and all(n.lstrip("-").isdigit() for n in names) else sorted(names)
    if bool(np.all(train.flags & _INT_LABEL)):
        return sorted(labels, key=int)
    return sorted(labels)


class _TableBuilder:
    """Collects a split's rows as they are parsed: the table's columns plus hashes of each row's id and file paths
    (for duplicate ids and train/eval leakage), in compact arrays (no object per row).

    Args:
        kinds: the declared modalities, name -> kind.
        label_type: what a label is (:data:`LABEL_TYPES`): ``float`` labels are kept as values, others as codes.
    """

    def __init__(self, kinds: Mapping[str, str], label_type: str) -> None:
        self.kinds, self.media = kinds, media_keys(kinds)
        if len(self.media) > 63:
            raise ValueError(f"{len(self.media)} file-valued modalities: at most 63 are supported")
        self.offset, self.id_hash = array("q"), array("q")
        self.path_hash = {k: array("q") for k in self.media}
        self.length, self.line = array("i"), array("i")
        self.label = array("d") if label_type == "float" else array("i")
        self.flags = array("B" if len(self.media) < 8 else "Q")
        self.vocab: dict[str, int] | None = None if label_type == "float" else {}
        self.held: set[str] = set()  # the modalities some row has a value for

    def add(self, off: int, length: int, row: Row) -> None:
        self.held.update(row.values)
        self.offset.append(off)
        self.length.append(length)
        self.line.append(row.line)
        if self.vocab is None:
            self.label.append(float(row.label))
        else:
            self.label.append(self.vocab.setdefault(row.label, len(self.vocab)))
        flags = _INT_LABEL if row.label_is_int else 0
        for j, k in enumerate(self.media):
            rel = row.get(k)
            flags |= 0 if rel is None else 2 << j
            self.path_hash[k].append(0 if rel is None else hash(os.path.normpath(rel)))
        self.flags.append(flags)
        self.id_hash.append(hash(row.id))

    def table(self, split: str, path: Path, header: tuple[str, ...] | None) -> RowTable:
        st = path.stat()
        return RowTable(split, str(path.absolute()), header, np.asarray(self.offset, np.int64),
                        np.asarray(self.length, np.int32), np.asarray(self.line, np.int32),
                        np.asarray(self.label, np.float64 if self.vocab is None else np.int32),
                        None if self.vocab is None else tuple(self.vocab),
                        np.asarray(self.flags, np.uint8 if self.flags.typecode == "B" else np.uint64),
                        (st.st_size, st.st_mtime_ns), self.kinds)

    def hashes(self) -> dict[str, np.ndarray]:
        """``id`` and each file-valued modality -> per-row hashes (0: the row has no such file)."""
        return {"id": np.asarray(self.id_hash, np.int64),
                **{k: np.asarray(v, np.int64) for k, v in self.path_hash.items()}}


def read_index(root: str | Path, kinds: Mapping[str, str] | None = None, label_type: str = "class") -> ManifestIndex:
    """Parse every split file of ``root`` and build the class list; report problems instead of raising.

    ``kinds`` (modality name -> kind, ``data.modalities``) says which keys/columns rows may have, and each must
    hold a value in some row; None: the default ``text``, ``image`` and ``audio``, any of them may be absent.
    ``label_type`` says what a label is (:data:`LABEL_TYPES`).

    Row-level problems (bad JSON, unknown keys, missing label, duplicate ids, a label outside the class list)
    leave that row out of :attr:`ManifestIndex.rows`; whole-file problems are marked ``fatal``. The rows stay in
    their files (:class:`RowTable`): memory does not grow with the folder beyond a few bytes per row.
    """
    root = Path(root)
    if label_type not in LABEL_TYPES:
        raise ValueError(f"data.label_type={label_type!r}: expected one of {', '.join(LABEL_TYPES)}")
    index = ManifestIndex(root=root, kinds=dict(DEFAULT_MODALITIES if kinds is None else kinds), label_type=label_type)
    if not root.is_dir():
        index.problems.append(Problem(str(root), None, "not a directory", True))
        return index
    hashes: dict[str, dict[str, np.ndarray]] = {}
    held: set[str] = set()
    for split in SPLITS:
        path = _split_file(root, split, index)
        if path is None:
            continue
        index.files[split] = path.name
        header = None
        if path.suffix == ".jsonl":
            parsed = _parse_jsonl(path, index)
        elif (header := _csv_header(path, index)) is not None:
            parsed = _parse_csv(path, header, index)
        else:
            parsed = iter(())
        builder, n_parsed = _TableBuilder(index.kinds, label_type), 0
        for n, off, length, obj in parsed:  # one row at a time: no parsed object outlives its line
            n_parsed += 1
            if (r := _row(split, path.name, n, obj, index)) is not None:
                builder.add(off, length, r)
        if not n_parsed and not any(p.file == path.name for p in index.problems):
            index.problems.append(Problem(path.name, None, "empty split: no rows", True))
        table, h = builder.table(split, path, header), builder.hashes()
        keep = _unique_ids(table, h["id"], index)
        index.rows[split], hashes[split] = table.take(keep), {k: v[keep] for k, v in h.items()}
        held |= builder.held
    if kinds is not None and index.files:  # a declared modality that no row holds is a mistake, not missing data
        for name in sorted(set(index.kinds) - held):
            index.problems.append(Problem(
                ", ".join(index.files.values()), None, f"data.modalities declares {name!r} ({index.kinds[name]}), but "
                f"no row has a value for it (keys/columns named like the modality: {name})", True))
    index.class_names = _class_list(root, index.rows.get("train"), index)
    classes = set(index.class_names)
    source = LABELS_FILE if (root / LABELS_FILE).is_file() else "the train split's labels"
    for split, table in index.rows.items():
        if table.labels is None:  # float labels: no class list to be in
            continue
        # Per label code, the first of its class names outside the class list (None: all in it).
        outside = [next((n for n in (label_names(label) if label_type == "multilabel" else [label])
                         if n not in classes), None) for label in table.labels]
        ok = np.array([o is None for o in outside], bool)[table.label] if len(table) else np.ones(0, bool)
        for i in np.flatnonzero(~ok).tolist():
            index.problems.append(Problem(table.file, int(table.line[i]), f"label {outside[table.label[i]]!r} "
                                          f"is not in the class list (from {source})"))
        keep = np.flatnonzero(ok)
        index.rows[split], hashes[split] = table.take(keep), {k: v[keep] for k, v in hashes[split].items()}
    index.warnings += _leakage(index, hashes)
    return index


def _leakage(index: ManifestIndex, hashes: dict[str, dict[str, np.ndarray]], limit: int = 10) -> list[str]:
    """A warning per evaluation split that shares samples (the same id, or the same file of a file-valued modality)
    with train.

    Candidates are found by hash (arrays, no object per row); only they are read again and compared exactly."""
    train = index.rows.get("train")
    if train is None:
        return []
    th = hashes["train"]
    media = media_keys(index.kinds)
    lookup = {"id": _HashLookup(th["id"])}
    for k in media:
        lookup[k] = _HashLookup(np.where(train.has(k), th[k], 0))
    out = []
    for split in ("val", "test"):
        table = index.rows.get(split)
        if table is None:
            continue
        h = hashes[split]
        hit = lookup["id"].contains(h["id"])
        for k in media:
            hit |= table.has(k) & lookup[k].contains(h[k])
        found = []
        for i in np.flatnonzero(hit).tolist():
            r = table[i]
            twin = next((t for t in reversed(lookup["id"].rows(train, h["id"][i])) if t.id == r.id), None)
            if twin is not None:
                found.append(f"id {r.id!r} ({r.where} and {twin.where})")
            for k in media:
                rel = r.get(k)
                if rel is None:
                    continue
                twin = next((t for t in reversed(lookup[k].rows(train, h[k][i]))
                             if (other := t.get(k)) is not None and os.path.normpath(other) == os.path.normpath(rel)),
                            None)
                if twin is not None:
                    found.append(f"{k} {rel!r} ({r.where}, id {r.id!r}, and {twin.where}, id {twin.id!r})")
        if found:
            more = f"; ... and {len(found) - limit} more" if len(found) > limit else ""
            out.append(f"{index.files[split]}: {len(found)} sample(s) also in {index.files['train']} (leakage "
                       f"between train and {split}?): " + "; ".join(found[:limit]) + more)
    return out


def _declare_hint(unknown: list[str], kinds: Mapping[str, str]) -> str:
    """How to use unknown keys as modalities (data.modalities), when that is what they look like."""
    names = [u for u in unknown if u.isidentifier()]
    if not names:
        return ""
    declared = ", ".join(f"{n}: {k}" for n, k in sorted(kinds.items()))
    return (f" (a modality must be declared: data.modalities={{{declared}, {names[0]}: <text|image|audio|features>}}"
            ")")


class _HashLookup:
    """Rows by a per-row hash (0: none), sorted once: membership of many hashes, and the rows of one."""

    def __init__(self, hashes: np.ndarray) -> None:
        self.order = np.argsort(hashes, kind="stable")
        self.sorted = hashes[self.order]

    def contains(self, hashes: np.ndarray) -> np.ndarray:
        i = np.minimum(np.searchsorted(self.sorted, hashes), max(len(self.sorted) - 1, 0))
        return (self.sorted[i] == hashes) & (hashes != 0) if len(self.sorted) else np.zeros(len(hashes), bool)

    def rows(self, table: RowTable, h: int) -> list[Row]:
        """The rows of ``table`` with hash ``h``, in file order."""
        lo, hi = np.searchsorted(self.sorted, h, "left"), np.searchsorted(self.sorted, h, "right")
        return [table[i] for i in sorted(self.order[lo:hi].tolist())]


def _unique_ids(table: RowTable, id_hash: np.ndarray, index: ManifestIndex) -> np.ndarray:
    """Indices of the rows to keep: the first row of each id (later ones are reported). Only rows whose id hash
    occurs more than once are read again to compare their ids."""
    _, inverse, counts = np.unique(id_hash, return_inverse=True, return_counts=True)
    keep = np.ones(len(table), bool)
    first: dict[str, int] = {}
    for i in np.flatnonzero(counts[inverse] > 1).tolist():
        r = table[i]
        if r.id in first:
            index.problems.append(Problem(r.file, r.line, f"duplicate id {r.id!r} (first on line {first[r.id]})"))
            keep[i] = False
        else:
            first[r.id] = r.line
    return np.flatnonzero(keep)
