"""``mmgpt-data check <Hugging Face data>``: read every row of every split once, decode every media cell, and
report every problem (a bad label, an undecodable image or recording) with its split, row and column."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmgpt.datamodules.problems import problem_lines

#: The file types of Hugging Face data (as :data:`mmgpt.datamodules.hf.source.DATA_SUFFIXES`; repeated so that
#: telling a manifest folder from Hugging Face data imports neither pyarrow nor datasets).
DATA_SUFFIXES = (".parquet", ".arrow")


def is_hf_source(path: str) -> bool:
    """Whether ``path`` is Hugging Face data (a save_to_disk folder, Parquet/Arrow files) rather than a manifest."""
    p = Path(path)
    if p.is_file():
        return p.suffix in DATA_SUFFIXES
    if p.is_dir():
        if (p / "dataset_dict.json").is_file() or (p / "state.json").is_file():
            return True
        manifest = any((p / f"train{ext}").is_file() for ext in (".jsonl", ".csv"))
        return not manifest and any(f.suffix in DATA_SUFFIXES for f in p.rglob("*"))
    return any(ch in path for ch in "*?[") and path.endswith(DATA_SUFFIXES)


@dataclass
class HFReport:
    """What a check found: rows per split, the declared modalities and labels, and every problem."""

    path: str
    rows: dict[str, int] = field(default_factory=dict)
    modalities: dict[str, str] = field(default_factory=dict)
    label: str = ""
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def format(self, limit: int | None = None) -> str:
        lines = [f"{self.path}: " + ", ".join(f"{s} {n} rows" for s, n in self.rows.items()),
                 "modalities: " + ", ".join(f"{n} ({k})" for n, k in self.modalities.items()), self.label]
        return "\n".join([*lines, *problem_lines(self.problems, limit)])


def check_hf(path: str, *, columns: Mapping[str, str] | None = None, splits: Mapping[str, str] | None = None,
             **options: Any) -> HFReport:
    """Check every row of ``path`` (see the module doc); ``options`` are :class:`HFDataModule` options."""
    from mmgpt.datamodules.hf.datamodule import HFDataModule
    from mmgpt.datamodules.hf.source import HFDataError

    dm = HFDataModule(path=path, columns=columns, splits=splits, num_workers=0, streaming=False, **options)
    report = HFReport(path=path, modalities=dict(dm.modalities),
                      label=f"label: {dm.label_column} ({dm.label_type}: {', '.join(dm.class_names)})"
                      if dm.label_column else "label: none (unlabelled)")
    for split in ("train", "val", "test"):
        if not dm.has_split(split):
            continue
        dataset = dm.make_dataset(split)
        report.rows[f"{split} ({dm.split_names[split]})"] = len(dataset)
        for i in range(len(dataset)):
            try:
                dataset[i]
            except HFDataError as e:
                report.problems.append(str(e))
    return report
