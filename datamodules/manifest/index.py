"""Reading a manifest folder into a :class:`~mmgpt.datamodules.manifest.rows.ManifestIndex`: every split file
parsed (:mod:`~mmgpt.datamodules.manifest.formats`), rows collected into compact tables, the class list built, and
duplicates and leakage checked (:mod:`~mmgpt.datamodules.manifest.duplicates`). Problems are reported, not raised.
"""

from __future__ import annotations

import os
from array import array
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from mmgpt.datamodules.manifest.duplicates import leakage_warnings, unique_ids
from mmgpt.datamodules.manifest.formats import check_row, csv_header, parse_csv, parse_jsonl, read_lines, split_file
from mmgpt.datamodules.manifest.rows import (
    FLOAT_TARGET,
    INT_LABEL,
    LABEL_TYPES,
    LABELS_FILE,
    SPLITS,
    ManifestIndex,
    Problem,
    Row,
    RowTable,
    label_names,
    media_keys,
)
from mmgpt.datamodules.processors import DEFAULT_MODALITIES


def class_list(root: Path, train: RowTable | None, index: ManifestIndex) -> list[str]:
    if index.label_type == "float":
        return [FLOAT_TARGET]
    path = root / LABELS_FILE
    if path.is_file():
        lines = read_lines(path, index) or []
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
    if bool(np.all(train.flags & INT_LABEL)):
        return sorted(labels, key=int)
    return sorted(labels)


class TableBuilder:
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
        flags = INT_LABEL if row.label_is_int else 0
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
        path = split_file(root, split, index)
        if path is None:
            continue
        index.files[split] = path.name
        header = None
        if path.suffix == ".jsonl":
            parsed = parse_jsonl(path, index)
        elif (header := csv_header(path, index)) is not None:
            parsed = parse_csv(path, header, index)
        else:
            parsed = iter(())
        builder, n_parsed = TableBuilder(index.kinds, label_type), 0
        for n, off, length, obj in parsed:  # one row at a time: no parsed object outlives its line
            n_parsed += 1
            if (r := check_row(split, path.name, n, obj, index)) is not None:
                builder.add(off, length, r)
        if not n_parsed and not any(p.file == path.name for p in index.problems):
            index.problems.append(Problem(path.name, None, "empty split: no rows", True))
        table, h = builder.table(split, path, header), builder.hashes()
        keep = unique_ids(table, h["id"], index)
        index.rows[split], hashes[split] = table.take(keep), {k: v[keep] for k, v in h.items()}
        held |= builder.held
    if kinds is not None and index.files:  # a declared modality that no row holds is a mistake, not missing data
        for name in sorted(set(index.kinds) - held):
            index.problems.append(Problem(
                ", ".join(index.files.values()), None, f"data.modalities declares {name!r} ({index.kinds[name]}), but "
                f"no row has a value for it (keys/columns named like the modality: {name})", True))
    index.class_names = class_list(root, index.rows.get("train"), index)
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
    index.warnings += leakage_warnings(index, hashes)
    return index
