"""The split-file formats of a manifest folder, read one line at a time: JSON Lines (one object per line) or CSV
(a header row, then one sample per line), and the checks of one parsed row against the declared modalities and
label type. Every problem is appended to the index being read, with its file and line; nothing raises.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from mmgpt.datamodules.manifest.rows import (
    SPLITS,
    ManifestIndex,
    Problem,
    Row,
    build_row,
    media_keys,
    row_keys,
    row_values,
)


def split_file(root: Path, split: str, index: ManifestIndex) -> Path | None:
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


def read_lines(path: Path, index: ManifestIndex) -> list[tuple[int, str]] | None:
    """(line number, text) of every non-blank line of a small file, or None when the file cannot be read."""
    before = len(index.problems)
    lines = [(n, text) for n, _, _, text in _iter_lines(path, index)]
    return None if any(p.line is None and p.file == path.name for p in index.problems[before:]) else lines


#: What the parsers yield: (line number, byte offset, byte length, parsed object).
Parsed = tuple[int, int, int, dict[str, Any]]


def parse_jsonl(path: Path, index: ManifestIndex) -> Iterator[Parsed]:
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


def csv_header(path: Path, index: ManifestIndex) -> tuple[str, ...] | None:
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


def parse_csv(path: Path, header: tuple[str, ...], index: ManifestIndex) -> Iterator[Parsed]:
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


def check_row(split: str, file: str, n: int, obj: dict[str, Any], index: ManifestIndex) -> Row | None:
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
    values = row_values(obj, sorted(kinds), media)
    if not values and not bad:
        order = ("text", "image", "audio", "features")
        names = sorted(kinds, key=lambda n: (order.index(kinds[n]) if kinds[n] in order else len(order), n))
        problem(f"no modality: {', '.join(names[:-1])} and {names[-1]} are all missing (an empty text counts as "
                "missing)" if len(names) > 1 else f"no modality: {names[0]} is missing")
    sid = obj.get("id")
    if sid is not None and (isinstance(sid, bool) or not isinstance(sid, (str, int))):
        problem(f"id {sid!r}: expected a string or an integer")
    return None if bad else build_row(split, file, n, obj, values, str(label), isinstance(label, int))


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


def _declare_hint(unknown: list[str], kinds: Mapping[str, str]) -> str:
    """How to use unknown keys as modalities (data.modalities), when that is what they look like."""
    names = [u for u in unknown if u.isidentifier()]
    if not names:
        return ""
    declared = ", ".join(f"{n}: {k}" for n, k in sorted(kinds.items()))
    return (f" (a modality must be declared: data.modalities={{{declared}, {names[0]}: <text|image|audio|features>}}"
            ")")
