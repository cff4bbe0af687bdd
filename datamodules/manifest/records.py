"""Reading a manifest folder: split files (JSON Lines or CSV), rows, the class list, and every problem found.

A manifest folder ``DIR`` holds ``train`` and ``val`` (optionally ``test``) split files, each either
``<split>.jsonl`` (one JSON object per line) or ``<split>.csv`` (a header row, then one sample per row), and
optionally ``labels.txt`` (one class name per line). A row has the keys of :data:`ROW_KEYS`; media paths are
relative to ``DIR``. Nothing here decodes media: see :mod:`mmgpt.datamodules.decode` and
:mod:`mmgpt.datamodules.manifest.media` for that.
"""

from __future__ import annotations

import csv
import io
import json
import os
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, overload

import numpy as np

#: Splits a manifest folder may hold, and whether each is required.
SPLITS: dict[str, bool] = {"train": True, "val": True, "test": False}
#: Keys a row may have. ``text``, ``image``, ``audio``, ``caption`` and ``id`` may be absent or null.
ROW_KEYS: tuple[str, ...] = ("id", "text", "image", "audio", "label", "caption")
MEDIA_KEYS: tuple[str, ...] = ("image", "audio")
LABELS_FILE = "labels.txt"
# Per-row flag bits of a RowTable: which media the row names, and whether its label was written as an integer.
_IMAGE, _AUDIO, _INT_LABEL = 1, 2, 4
_MEDIA_BIT = {"image": _IMAGE, "audio": _AUDIO}


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
        label: the class name (integer labels become their decimal string).
        text: the text, or None when absent.
        image: the image path relative to the folder, or None.
        audio: the audio path relative to the folder, or None.
        caption: optional caption.
        label_is_int: the label was written as an integer (for sorting the class list numerically).
    """

    split: str
    file: str
    line: int
    id: str
    label: str
    text: str | None = None
    image: str | None = None
    audio: str | None = None
    caption: str | None = None
    label_is_int: bool = False

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


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
    """

    root: Path
    rows: dict[str, RowTable] = field(default_factory=dict)
    class_names: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


class RowsChanged(ValueError):
    """A split file changed after its rows were read (its rows are read again from it on demand)."""


class RowTable(Sequence[Row]):
    """The rows of one split file, kept in the file: per row only its byte offset, length, line number, label code
    and media flags (about 20 bytes, in NumPy arrays), so a large folder holds no Python object per row.

    ``table[i]`` reads and parses row ``i`` again (one ``pread`` of its line); iterating reads them in order.
    A table pickles without its open file (loader workers open their own). Reading a row of a split file that
    changed since the table was made raises :class:`RowsChanged`.

    Args:
        split: the split. path: the split file. header: a CSV file's columns (None: JSON Lines).
        offset, length, line: per row, the line's byte offset, byte length (without the newline) and 1-based number.
        label: per row, the index of its label in ``labels``. flags: per row, bits of :data:`_MEDIA_BIT` and
            ``_INT_LABEL``. stat: the file's (size, mtime_ns) when it was read.
    """

    def __init__(self, split: str, path: str, header: tuple[str, ...] | None, offset: np.ndarray, length: np.ndarray,
                 line: np.ndarray, label: np.ndarray, labels: tuple[str, ...], flags: np.ndarray,
                 stat: tuple[int, int]) -> None:
        self.split, self.path, self.file, self.header = split, path, os.path.basename(path), header
        self.offset, self.length, self.line, self.label, self.flags = offset, length, line, label, flags
        self.labels, self.stat = labels, stat
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
        return _build_row(self.split, self.file, int(self.line[i]), self.read_obj(i))

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
                        self.label[rows], self.labels, self.flags[rows], self.stat)

    def has(self, key: str) -> np.ndarray:
        """(N,) bool: which rows name a ``key`` (``image`` or ``audio``) file."""
        return (self.flags & _MEDIA_BIT[key]) != 0

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
        unknown = [h for h in header if h not in ROW_KEYS]
        if unknown:
            index.problems.append(
                Problem(path.name, n, f"unknown column(s) {unknown}; allowed: {list(ROW_KEYS)}", True))
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

    unknown = sorted(set(obj) - set(ROW_KEYS))
    if unknown:
        problem(f"unknown key(s) {unknown}; allowed: {list(ROW_KEYS)}")
    label = obj.get("label")
    if label is None:
        problem("missing label")
    elif isinstance(label, bool) or not isinstance(label, (str, int)):
        problem(f"label {label!r}: expected a string or an integer")
    elif isinstance(label, str) and not label.strip():
        problem("empty label")
    for key in ("text", "caption", *MEDIA_KEYS):
        if obj.get(key) is not None and not isinstance(obj[key], str):
            problem(f"{key} {obj[key]!r}: expected a string or null")
    for key in MEDIA_KEYS:
        if isinstance(obj.get(key), str) and not obj[key].strip():
            problem(f"{key}: empty path (use null for a missing {key})")
    text = obj.get("text")
    if isinstance(text, str) and not text.strip():
        text = None  # an empty text is a missing text, not a present modality
    if text is None and all(obj.get(k) is None for k in MEDIA_KEYS):
        problem("no modality: text, image and audio are all missing (an empty text counts as missing)")
    sid = obj.get("id")
    if sid is not None and (isinstance(sid, bool) or not isinstance(sid, (str, int))):
        problem(f"id {sid!r}: expected a string or an integer")
    return None if bad else _build_row(split, file, n, obj)


def _build_row(split: str, file: str, n: int, obj: dict[str, Any]) -> Row:
    """The :class:`Row` of an object :func:`_row` found valid (rows read again from disk skip the checks)."""
    text, sid, label = obj.get("text"), obj.get("id"), obj["label"]
    return Row(
        split=split,
        file=file,
        line=n,
        id=str(sid) if sid is not None else f"{split}:{n}",
        label=str(label),
        text=text if text is None or text.strip() else None,  # an empty text is a missing text
        image=obj.get("image"),
        audio=obj.get("audio"),
        caption=obj.get("caption"),
        label_is_int=isinstance(label, int),
    )


def _class_list(root: Path, train: RowTable | None, index: ManifestIndex) -> list[str]:
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
    labels = {train.labels[c] for c in np.unique(train.label).tolist()}
    if bool(np.all(train.flags & _INT_LABEL)):
        return sorted(labels, key=int)
    return sorted(labels)


class _TableBuilder:
    """Collects a split's rows as they are parsed: the table's columns plus hashes of each row's id and media
    paths (for duplicate ids and train/eval leakage), in compact arrays (no object per row)."""

    def __init__(self) -> None:
        self.offset, self.id_hash, self.image_hash, self.audio_hash = (array("q") for _ in range(4))
        self.length, self.line, self.label = array("i"), array("i"), array("i")
        self.flags = array("b")
        self.vocab: dict[str, int] = {}

    def add(self, off: int, length: int, row: Row) -> None:
        self.offset.append(off)
        self.length.append(length)
        self.line.append(row.line)
        self.label.append(self.vocab.setdefault(row.label, len(self.vocab)))
        self.flags.append((_IMAGE if row.image is not None else 0) | (_AUDIO if row.audio is not None else 0)
                          | (_INT_LABEL if row.label_is_int else 0))
        self.id_hash.append(hash(row.id))
        self.image_hash.append(hash(os.path.normpath(row.image)) if row.image is not None else 0)
        self.audio_hash.append(hash(os.path.normpath(row.audio)) if row.audio is not None else 0)

    def table(self, split: str, path: Path, header: tuple[str, ...] | None) -> RowTable:
        st = path.stat()
        return RowTable(split, str(path.absolute()), header, np.asarray(self.offset, np.int64),
                        np.asarray(self.length, np.int32), np.asarray(self.line, np.int32),
                        np.asarray(self.label, np.int32), tuple(self.vocab), np.asarray(self.flags, np.int8),
                        (st.st_size, st.st_mtime_ns))

    def hashes(self) -> dict[str, np.ndarray]:
        return {"id": np.asarray(self.id_hash, np.int64), "image": np.asarray(self.image_hash, np.int64),
                "audio": np.asarray(self.audio_hash, np.int64)}


def read_index(root: str | Path) -> ManifestIndex:
    """Parse every split file of ``root`` and build the class list; report problems instead of raising.

    Row-level problems (bad JSON, unknown keys, missing label, duplicate ids, a label outside the class list)
    leave that row out of :attr:`ManifestIndex.rows`; whole-file problems are marked ``fatal``. The rows stay in
    their files (:class:`RowTable`): memory does not grow with the folder beyond a few bytes per row.
    """
    root = Path(root)
    index = ManifestIndex(root=root)
    if not root.is_dir():
        index.problems.append(Problem(str(root), None, "not a directory", True))
        return index
    hashes: dict[str, dict[str, np.ndarray]] = {}
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
        builder, n_parsed = _TableBuilder(), 0
        for n, off, length, obj in parsed:  # one row at a time: no parsed object outlives its line
            n_parsed += 1
            if (r := _row(split, path.name, n, obj, index)) is not None:
                builder.add(off, length, r)
        if not n_parsed and not any(p.file == path.name for p in index.problems):
            index.problems.append(Problem(path.name, None, "empty split: no rows", True))
        table, h = builder.table(split, path, header), builder.hashes()
        keep = _unique_ids(table, h["id"], index)
        index.rows[split], hashes[split] = table.take(keep), {k: v[keep] for k, v in h.items()}
    index.class_names = _class_list(root, index.rows.get("train"), index)
    classes = set(index.class_names)
    source = LABELS_FILE if (root / LABELS_FILE).is_file() else "the train split's labels"
    for split, table in index.rows.items():
        known = np.array([name in classes for name in table.labels], bool)
        ok = known[table.label] if len(table) else np.ones(0, bool)
        for i in np.flatnonzero(~ok).tolist():
            index.problems.append(Problem(table.file, int(table.line[i]), f"label {table.labels[table.label[i]]!r} "
                                          f"is not in the class list (from {source})"))
        keep = np.flatnonzero(ok)
        index.rows[split], hashes[split] = table.take(keep), {k: v[keep] for k, v in hashes[split].items()}
    index.warnings += _leakage(index, hashes)
    return index


def _leakage(index: ManifestIndex, hashes: dict[str, dict[str, np.ndarray]], limit: int = 10) -> list[str]:
    """A warning per evaluation split that shares samples (the same id, or the same image/audio file) with train.

    Candidates are found by hash (arrays, no object per row); only they are read again and compared exactly."""
    train = index.rows.get("train")
    if train is None:
        return []
    th = hashes["train"]
    lookup = {"id": _HashLookup(th["id"])}
    for k in MEDIA_KEYS:
        lookup[k] = _HashLookup(np.where(train.has(k), th[k], 0))
    out = []
    for split in ("val", "test"):
        table = index.rows.get(split)
        if table is None:
            continue
        h = hashes[split]
        hit = lookup["id"].contains(h["id"])
        for k in MEDIA_KEYS:
            hit |= table.has(k) & lookup[k].contains(h[k])
        found = []
        for i in np.flatnonzero(hit).tolist():
            r = table[i]
            twin = next((t for t in reversed(lookup["id"].rows(train, h["id"][i])) if t.id == r.id), None)
            if twin is not None:
                found.append(f"id {r.id!r} ({r.where} and {twin.where})")
            for k in MEDIA_KEYS:
                rel = getattr(r, k)
                if rel is None:
                    continue
                twin = next((t for t in reversed(lookup[k].rows(train, h[k][i]))
                             if getattr(t, k) is not None and os.path.normpath(getattr(t, k)) == os.path.normpath(rel)),
                            None)
                if twin is not None:
                    found.append(f"{k} {rel!r} ({r.where}, id {r.id!r}, and {twin.where}, id {twin.id!r})")
        if found:
            more = f"; ... and {len(found) - limit} more" if len(found) > limit else ""
            out.append(f"{index.files[split]}: {len(found)} sample(s) also in {index.files['train']} (leakage "
                       f"between train and {split}?): " + "; ".join(found[:limit]) + more)
    return out


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
