"""The validation pass: read every row and decode every file once, and report every problem with file and line.

:func:`check_folder` is what ``mmgpt-data check DIR`` runs and what
:class:`~mmgpt.datamodules.manifest.ManifestDataModule`
runs before training; its decoded tensors are what the datamodule trains on, so checking costs no extra decoding.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from torch import Tensor

from mmgpt.datamodules.decode import DecodeError
from mmgpt.datamodules.manifest.records import MEDIA_KEYS, SPLITS, Problem, Row, read_index, resolve_media
from mmgpt.datamodules.store import MediaCache


class ManifestError(ValueError):
    """A manifest folder with problems; the message lists every one of them."""

    def __init__(self, report: CheckReport, note: str = "") -> None:
        self.report = report
        super().__init__(report.format(limit=None) + (f"\n{note}" if note else ""))


@dataclass
class Sample:
    """A row whose media decoded: what the dataset hands to the collate function."""

    row: Row
    image: Tensor | None  # (3, H, W) uint8
    audio: Tensor | None  # (S,) float32


@dataclass
class CheckReport:
    """The outcome of :func:`check_folder`.

    Attributes:
        root: the folder.
        class_names: the class list, in index order.
        samples: split -> the usable samples, in file order.
        problems: every problem, in file and line order.
        rows_read: split -> rows read from its file (including bad ones that parsed as a row).
        decoded: media files decoded by this pass (0 when every file came from the cache).
        warnings: things that do not stop training but deserve a look (samples shared by train and val/test).
    """

    root: Path
    class_names: list[str]
    samples: dict[str, list[Sample]] = field(default_factory=dict)
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


def check_folder(root: str | Path, cache: MediaCache, allow_outside_root: bool = False) -> CheckReport:
    """Read every split file, decode every referenced file (through ``cache``) and collect every problem.

    Never raises for bad data: everything wrong is a :class:`Problem` in the report.
    """
    root = Path(root)
    index = read_index(root)
    report = CheckReport(root=root, class_names=index.class_names, problems=list(index.problems),
                         warnings=list(index.warnings))
    # Resolve media paths; a refused path is a problem of its row.
    wanted: dict[str, dict[int, dict[str, Path]]] = {}
    for split, rows in index.rows.items():
        report.rows_read[split] = len(rows)
        for i, row in enumerate(rows):
            for key in MEDIA_KEYS:
                rel = getattr(row, key)
                if rel is None:
                    continue
                try:
                    wanted.setdefault(split, {}).setdefault(i, {})[key] = resolve_media(root, rel, allow_outside_root)
                except ValueError as e:
                    report.problems.append(Problem(row.file, row.line, f"{key}: {e}"))
    decoded = {
        key: cache.get_many(key, [p for per_split in wanted.values() for m in per_split.values()
                                  for k, p in m.items() if k == key])
        for key in MEDIA_KEYS
    }
    report.decoded = cache.decoded
    bad_lines = Counter((p.file, p.line) for p in report.problems)
    for split, rows in index.rows.items():
        kept: list[Sample] = []
        for i, row in enumerate(rows):
            media: dict[str, Tensor | None] = {"image": None, "audio": None}
            ok = (row.file, row.line) not in bad_lines
            for key, path in wanted.get(split, {}).get(i, {}).items():
                value = decoded[key][path]
                if isinstance(value, DecodeError):
                    report.problems.append(Problem(row.file, row.line, f"{key} {getattr(row, key)!r}: {value}"))
                    ok = False
                else:
                    media[key] = value
            if ok:
                kept.append(Sample(row, media["image"], media["audio"]))
        report.samples[split] = kept
        already = any(p.fatal and p.file == index.files.get(split) for p in report.problems)
        if not kept and not already:
            report.problems.append(Problem(index.files[split], None, "no usable rows", True))
    report.problems.sort(key=lambda p: (p.file, p.line or 0))
    return report
