"""Duplicate ids within a split and samples shared between train and an evaluation split (leakage), found by
per-row hashes held in arrays; only candidate rows are read again and compared exactly."""

from __future__ import annotations

import os

import numpy as np

from mmgpt.datamodules.manifest.rows import ManifestIndex, Problem, Row, RowTable, media_keys


def leakage_warnings(index: ManifestIndex, hashes: dict[str, dict[str, np.ndarray]], limit: int = 10) -> list[str]:
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


def unique_ids(table: RowTable, id_hash: np.ndarray, index: ManifestIndex) -> np.ndarray:
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
