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
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Splits a manifest folder may hold, and whether each is required.
SPLITS: dict[str, bool] = {"train": True, "val": True, "test": False}
#: Keys a row of a folder with the default modalities may have; any but ``label`` may be absent or null.
ROW_KEYS: tuple[str, ...] = ("id", "text", "image", "audio", "label", "caption")
#: The file-valued modalities of the default declaration.
MEDIA_KEYS: tuple[str, ...] = ("image", "audio")
#: The default declaration: modality name -> kind.
DEFAULT_KINDS: dict[str, str] = {"audio": "audio", "image": "image", "text": "text"}


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


@dataclass(slots=True)  # no per-row __dict__: a large folder holds one Row per sample
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
        return self.label.split("|") if self.label else []

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
        rows: split -> rows that parsed cleanly (media not yet checked).
        class_names: the class list, in index order.
        problems: every problem found so far.
        files: split -> split file name, for the splits present.
        warnings: things that do not stop training but deserve a look (a sample in train and in val/test).
        kinds: the declared modalities, name -> kind.
        label_type: what a row's label is (:data:`LABEL_TYPES`).
    """

    root: Path
    rows: dict[str, list[Row]] = field(default_factory=dict)
    class_names: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    kinds: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_KINDS))
    label_type: str = "class"


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


def _iter_lines(path: Path, index: ManifestIndex) -> Iterator[tuple[int, str]]:
    """(line number, text) of every non-blank line, read one at a time (a split file of a large folder is never
    held whole); undecodable UTF-8 lines are reported and left out."""
    try:
        f = open(path, "rb")  # noqa: SIM115 (closed below; opening fails before any line is yielded)
    except OSError as e:
        index.problems.append(Problem(path.name, None, f"cannot read: {e}", True))
        return
    with f:
        for n, raw in enumerate(f, start=1):
            try:
                text = raw.rstrip(b"\n").decode("utf-8-sig" if n == 1 else "utf-8")
            except UnicodeDecodeError as e:
                index.problems.append(Problem(path.name, n, f"not valid UTF-8 ({e.reason} at byte {e.start})"))
                continue
            if text.strip():
                yield n, text.rstrip("\r")


def _read_lines(path: Path, index: ManifestIndex) -> list[tuple[int, str]] | None:
    """All of :func:`_iter_lines`, or None when the file cannot be read."""
    before = len(index.problems)
    lines = list(_iter_lines(path, index))
    return None if any(p.line is None and p.file == path.name for p in index.problems[before:]) else lines


def _parse_jsonl(path: Path, index: ManifestIndex) -> Iterator[tuple[int, dict[str, Any]]]:
    for n, text in _iter_lines(path, index):
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            index.problems.append(Problem(path.name, n, f"malformed JSON: {e.msg} (column {e.colno})"))
            continue
        if not isinstance(obj, dict):
            index.problems.append(Problem(path.name, n, f"expected a JSON object, got {type(obj).__name__}"))
            continue
        yield n, obj


def _parse_csv(path: Path, index: ManifestIndex) -> list[tuple[int, dict[str, Any]]]:
    lines = _read_lines(path, index)
    if not lines:
        return []
    # csv.reader over the kept lines; quoted newlines inside a field are not supported (one sample per line).
    header_line, header_text = lines[0]
    header = [h.strip() for h in next(csv.reader(io.StringIO(header_text)))]
    allowed = row_keys(index.kinds)
    unknown = [h for h in header if h not in allowed]
    if unknown:
        index.problems.append(Problem(path.name, header_line, f"unknown column(s) {unknown}; allowed: {list(allowed)}"
                                      f"{_declare_hint(unknown, index.kinds)}", True))
        return []
    if "label" not in header:
        index.problems.append(
            Problem(path.name, header_line, f"the header has no 'label' column (columns: {header})", True))
        return []
    out = []
    for n, text in lines[1:]:
        cells = next(csv.reader(io.StringIO(text)))
        if len(cells) != len(header):
            index.problems.append(Problem(path.name, n, f"{len(cells)} fields, the header has {len(header)}"))
            continue
        # An empty cell is a missing value.
        out.append((n, {k: (v if v != "" else None) for k, v in zip(header, cells)}))
    return out


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
    # An empty text is a missing text, not a present modality.
    values = {k: v for k in sorted(kinds) if isinstance(v := obj.get(k), str) and (k in media or v.strip())}
    if not values and not bad:
        order = ("text", "image", "audio", "features")
        names = sorted(kinds, key=lambda n: (order.index(kinds[n]) if kinds[n] in order else len(order), n))
        problem(f"no modality: {', '.join(names[:-1])} and {names[-1]} are all missing (an empty text counts as "
                "missing)" if len(names) > 1 else f"no modality: {names[0]} is missing")
    sid = obj.get("id")
    if sid is not None and (isinstance(sid, bool) or not isinstance(sid, (str, int))):
        problem(f"id {sid!r}: expected a string or an integer")
    if bad:
        return None
    return Row(
        split=split,
        file=file,
        line=n,
        id=str(sid) if sid is not None else f"{split}:{n}",
        label=str(label),
        values=values,
        caption=obj.get("caption"),
        label_is_int=isinstance(label, int),
    )


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


def _class_list(root: Path, train: list[Row], index: ManifestIndex) -> list[str]:
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
    if index.label_type == "multilabel":
        names = {n for r in train for n in r.labels()}
        return sorted(names, key=int) if names and all(n.lstrip("-").isdigit() for n in names) else sorted(names)
    labels = {r.label for r in train}
    if train and all(r.label_is_int for r in train):
        return sorted(labels, key=int)
    return sorted(labels)


def read_index(root: str | Path, kinds: Mapping[str, str] | None = None, label_type: str = "class") -> ManifestIndex:
    """Parse every split file of ``root`` and build the class list; report problems instead of raising.

    ``kinds`` (modality name -> kind, ``data.modalities``) says which keys/columns rows may have, and each must
    hold a value in some row; None: the default ``text``, ``image`` and ``audio``, any of them may be absent.
    ``label_type`` says what a label is (:data:`LABEL_TYPES`).

    Row-level problems (bad JSON, unknown keys, missing label, duplicate ids, a label outside the class list)
    leave that row out of :attr:`ManifestIndex.rows`; whole-file problems are marked ``fatal``.
    """
    root = Path(root)
    if label_type not in LABEL_TYPES:
        raise ValueError(f"data.label_type={label_type!r}: expected one of {', '.join(LABEL_TYPES)}")
    index = ManifestIndex(root=root, kinds=dict(DEFAULT_KINDS if kinds is None else kinds), label_type=label_type)
    if not root.is_dir():
        index.problems.append(Problem(str(root), None, "not a directory", True))
        return index
    for split in SPLITS:
        path = _split_file(root, split, index)
        if path is None:
            continue
        index.files[split] = path.name
        parsed = _parse_jsonl(path, index) if path.suffix == ".jsonl" else _parse_csv(path, index)
        rows, n_parsed = [], 0
        for n, obj in parsed:  # one row at a time: the parsed objects of a large split never all exist at once
            n_parsed += 1
            if (r := _row(split, path.name, n, obj, index)) is not None:
                rows.append(r)
        if not n_parsed and not any(p.file == path.name for p in index.problems):
            index.problems.append(Problem(path.name, None, "empty split: no rows", True))
        index.rows[split] = _unique_ids(rows, index)
    if kinds is not None and index.files:  # a declared modality that no row holds is a mistake, not missing data
        held = {k for rows in index.rows.values() for r in rows for k in r.values}
        for name in sorted(set(index.kinds) - held):
            index.problems.append(Problem(
                ", ".join(index.files.values()), None, f"data.modalities declares {name!r} ({index.kinds[name]}), but "
                f"no row has a value for it (keys/columns named like the modality: {name})", True))
    index.class_names = _class_list(root, index.rows.get("train", []), index)
    classes = set(index.class_names)
    for split, rows in index.rows.items():
        kept = []
        for r in rows:
            outside = [] if index.label_type == "float" else [
                n for n in (r.labels() if index.label_type == "multilabel" else [r.label]) if n not in classes]
            if not outside:
                kept.append(r)
            else:
                source = LABELS_FILE if (root / LABELS_FILE).is_file() else "the train split's labels"
                index.problems.append(
                    Problem(r.file, r.line, f"label {outside[0]!r} is not in the class list (from {source})"))
        index.rows[split] = kept
    index.warnings += _leakage(index)
    return index


def _leakage(index: ManifestIndex, limit: int = 10) -> list[str]:
    """A warning per evaluation split that shares samples (the same id, or the same image/audio file) with train."""
    train = index.rows.get("train", [])
    by_id = {r.id: r for r in train}
    media = media_keys(index.kinds)
    by_file = {(k, os.path.normpath(r.get(k))): r for r in train for k in media if r.get(k) is not None}
    out = []
    for split in ("val", "test"):
        found = []
        for r in index.rows.get(split, []):
            if r.id in by_id:
                found.append(f"id {r.id!r} ({r.where} and {by_id[r.id].where})")
            for k in media:
                rel = r.get(k)
                twin = by_file.get((k, os.path.normpath(rel))) if rel is not None else None
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


def _unique_ids(rows: list[Row], index: ManifestIndex) -> list[Row]:
    first: dict[str, int] = {}
    kept = []
    for r in rows:
        if r.id in first:
            index.problems.append(Problem(r.file, r.line, f"duplicate id {r.id!r} (first on line {first[r.id]})"))
            continue
        first[r.id] = r.line
        kept.append(r)
    return kept
