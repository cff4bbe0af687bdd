"""The validation pass: read every row and check every file once, and report every problem with file and line.

:func:`check_folder` is what ``mmgpt-data check DIR`` runs and what
:class:`~mmgpt.datamodules.manifest.ManifestDataModule` runs before training; with ``check=full`` the decoded
arrays go to the media store the datamodule trains from, so checking costs no extra decoding.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import overload

import numpy as np

from mmgpt.datamodules.manifest.index import read_index
from mmgpt.datamodules.manifest.media import CHECKS, MediaFiles
from mmgpt.datamodules.manifest.rows import SPLITS, Problem, Row, RowTable, media_keys, resolve_media
from mmgpt.errors import UserError


class ManifestError(UserError):
    """A manifest folder with problems; the message lists every one of them."""

    def __init__(self, report: CheckReport, note: str = "") -> None:
        self.report = report
        super().__init__(report.format(limit=None) + (f"\n{note}" if note else ""))


@dataclass(slots=True)
class Sample:
    """A usable row (its decoded media are in the media store; the paths are resolved when asked, so a large
    folder holds no second copy of them)."""

    row: Row
    root: str  # the folder (one string shared by every sample)

    def path(self, modality: str) -> str | None:
        """The resolved path of the sample's ``modality`` file; None when the row has none."""
        rel = self.row.get(modality)
        return None if rel is None else os.path.normpath(os.path.join(self.root, rel))

    # Shortcuts for the default declaration's file-valued modalities.
    image = property(lambda self: self.path("image"))
    audio = property(lambda self: self.path("audio"))


class SampleTable(Sequence[Sample]):
    """A split's usable samples: their rows stay in the split file (:class:`RowTable`), read when asked.

    Args:
        rows: the usable rows.
        root: the folder their media paths are relative to (normalised, absolute).
    """

    def __init__(self, rows: RowTable, root: str) -> None:
        self.rows, self.root = rows, root

    def __len__(self) -> int:
        return len(self.rows)

    @overload
    def __getitem__(self, i: int) -> Sample: ...
    @overload
    def __getitem__(self, i: slice) -> SampleTable: ...
    def __getitem__(self, i: int | slice) -> Sample | SampleTable:
        if isinstance(i, slice):
            return SampleTable(self.rows[i], self.root)
        return Sample(self.rows[i], self.root)

    def __iter__(self) -> Iterator[Sample]:
        for row in self.rows:
            yield Sample(row, self.root)


@dataclass
class CheckReport:
    """The outcome of :func:`check_folder`.

    Attributes:
        root: the folder.
        class_names: the class list, in index order.
        samples: split -> the usable samples, in file order (read from the split file on demand).
        problems: every problem, in file and line order.
        rows_read: split -> rows read from its file (including bad ones that parsed as a row).
        decoded: media files decoded by this pass (0 when every file came from the store).
        warnings: things that do not stop training but deserve a look (samples shared by train and val/test).
    """

    root: Path
    class_names: list[str]
    samples: dict[str, SampleTable] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    rows_read: dict[str, int] = field(default_factory=dict)
    decoded: int = 0
    warnings: list[str] = field(default_factory=list)

    @property
    def fatal(self) -> list[Problem]:
        """Problems that skipping rows cannot fix."""
        return [p for p in self.problems if p.fatal]

    @property
    def bad_rows(self) -> list[tuple[str, int]]:
        """(file, line) of every row left out, sorted."""
        return sorted({(p.file, p.line) for p in self.problems if not p.fatal and p.line is not None})

    @property
    def ok(self) -> bool:
        return not self.problems

    def format(self, limit: int | None = None) -> str:
        """A readable report: one line per problem (the first ``limit`` of them), then a summary."""
        lines = [f"manifest folder: {self.root}"]
        shown = self.problems if limit is None else self.problems[:limit]
        lines += [f"  {p}" for p in shown]
        if len(shown) < len(self.problems):
            lines.append(f"  ... and {len(self.problems) - len(shown)} more")
        lines += [f"  warning: {w}" for w in self.warnings]
        for split in SPLITS:
            if split in self.rows_read or split in self.samples:
                n_bad = sum(1 for f, _ in self.bad_rows if f.startswith(split + "."))
                lines.append(f"  {split}: {len(self.samples.get(split, []))} usable samples, {n_bad} bad rows")
        lines.append(f"  classes ({len(self.class_names)}): {', '.join(self.class_names[:20])}"
                     + (" ..." if len(self.class_names) > 20 else ""))
        verdict = "OK" if self.ok else f"{len(self.problems)} problem(s) in {len(self.bad_rows)} row(s)"
        if self.fatal:
            verdict += f", {len(self.fatal)} that skipping rows cannot fix"
        lines.append(f"  result: {verdict}")
        return "\n".join(lines)


def check_folder(root: str | Path, media: MediaFiles, allow_outside_root: bool = False, check: str = "full",
                 progress: Callable[[int, int], None] | None = None, chunk: int = 512,
                 kinds: Mapping[str, str] | None = None, label_type: str = "class") -> CheckReport:
    """Read every split file, check every referenced file (through ``media``) and collect every problem.

    Rows are checked ``chunk`` at a time and decoded media go to the store, never into the report, and the rows
    stay in their files (the report's samples are :class:`SampleTable` s), so memory does not grow with the
    folder. ``check``: ``full`` decodes every file the store does not hold yet, ``headers`` reads each such
    file's header only, ``off`` trusts the files (problems then show up in training).
    ``progress(done, total)`` is called after each chunk. Never raises for bad data: everything wrong is a
    :class:`Problem` in the report. ``kinds`` declares the modalities (name -> kind, each held by some row;
    None: the default three, any may be absent; ``media`` must have been made for the same ones); ``label_type``
    what a label is (``class``, ``float``, ``multilabel``).
    """
    if check not in CHECKS:
        raise ValueError(f"check={check!r}: expected one of {CHECKS}")
    root = Path(root)
    index = read_index(root, kinds, label_type)
    media_names = media_keys(index.kinds)
    report = CheckReport(root=root, class_names=index.class_names, problems=list(index.problems),
                         warnings=list(index.warnings))
    total = 0 if check == "off" else sum(int(rows.has(k).sum()) for rows in index.rows.values()
                                         for k in media_names)
    done, decoded_before = 0, media.decoded
    root_str = os.path.normpath(os.path.abspath(root))  # what resolve_media joins paths to
    for split, rows in index.rows.items():
        report.rows_read[split] = len(rows)
        kept = np.ones(len(rows), bool)
        for start in range(0, len(rows), chunk):
            resolved: list[dict[str, str]] = []
            bad: set[int] = set()
            block = list(rows[start : start + chunk])
            for j, row in enumerate(block):
                paths = {}
                for key in media_names:
                    rel = row.get(key)
                    if rel is None:
                        continue
                    try:
                        paths[key] = str(resolve_media(root, rel, allow_outside_root))
                    except ValueError as e:  # a refused path is a problem of its row
                        report.problems.append(Problem(row.file, row.line, f"{key}: {e}"))
                        bad.add(j)
                resolved.append(paths)
            status: dict[str, dict[str, str | None]] = {}
            if check != "off":
                for key in media_names:
                    status[key] = media.check_many(key, [p[key] for p in resolved if key in p], check)
                    done += len([p for p in resolved if key in p])
                if progress is not None:
                    progress(done, total)
            for j, (row, paths) in enumerate(zip(block, resolved)):
                ok = j not in bad
                for key, path in paths.items():
                    error = status[key][path] if status else None
                    if error is not None:
                        report.problems.append(Problem(row.file, row.line, f"{key} {row.get(key)!r}: {error}"))
                        ok = False
                kept[start + j] = ok
        report.samples[split] = SampleTable(rows.take(np.flatnonzero(kept)), root_str)
        already = any(p.fatal and p.file == index.files.get(split) for p in report.problems)
        if not len(report.samples[split]) and not already:
            report.problems.append(Problem(index.files[split], None, "no usable rows", True))
    if check == "full":
        media.flush(refresh=False)  # commit: every process (and the next run) reads it from the store
    report.decoded = media.decoded - decoded_before
    report.problems.sort(key=lambda p: (p.file, p.line or 0))
    return report
