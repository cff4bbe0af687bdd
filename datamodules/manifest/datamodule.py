"""``data=manifest data.root=DIR``: train on a folder of the user's own images, recordings and texts.

The folder format is documented in :mod:`mmgpt.datamodules.manifest.rows`. Before training, every row is read and
every file checked once (:func:`~mmgpt.datamodules.manifest.check.check_folder`; ``check=full`` decodes it into the
on-disk media store under ``cache_dir``), and the datasets read each sample from the store on demand: no epoch
decodes anything, and memory does not grow with the folder (the store's pages are shared by every process).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from mmgpt.datamodules.base import MultimodalDataModule, ProcessedDataset, process
from mmgpt.datamodules.collate import Collate
from mmgpt.datamodules.decode import DecodeError
from mmgpt.datamodules.manifest.check import CheckReport, ManifestError, SampleTable, check_folder
from mmgpt.datamodules.manifest.index import read_index
from mmgpt.datamodules.manifest.media import CHECKS, MediaFiles, Progress
from mmgpt.datamodules.manifest.rows import LABEL_TYPES, ManifestIndex, label_names
from mmgpt.datamodules.processors import Processor
from mmgpt.datamodules.remote import is_url
from mmgpt.errors import UserError

log = logging.getLogger(__name__)

ON_ERROR = ("raise", "skip")


def unlink_link(path: Path) -> None:
    """Remove ``path`` if it is a symbolic link: a report written into a folder from elsewhere replaces a link found
    there instead of writing through it to wherever it points."""
    if path.is_symlink():
        path.unlink()


class FailureLog:
    """Files that failed to decode while loading, as lines appended to one file, so loader workers' failures
    are counted in the training process too (each line is one small ``O_APPEND`` write)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        unlink_link(self.path)
        self.path.write_text("")

    def add(self, message: str) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW)
        try:
            os.write(fd, (message.replace("\n", " ") + "\n").encode())
        finally:
            os.close(fd)

    def read(self) -> list[str]:
        return self.path.read_text().splitlines() if self.path.is_file() else []


class StoreDataset(ProcessedDataset):
    """Samples read from the media store on demand, each modality's stored value through its processor.

    A sample's row is read back from its split file (:class:`SampleTable`); its media checked in full are read by
    their store entries (``refs``), others by path, decoding (and storing) a file the store lacks. A file that fails
    to decode here (``data.check`` other than ``full``) raises under ``on_error=raise``; under ``skip`` it is
    logged, counted in ``failures`` and the sample is None (left out of its batch by :class:`DropFailed`).

    Args:
        samples: the usable rows.
        class_index: class name -> label index.
        media: the media store reader.
        processors: modality name -> processor.
        train: apply training-time augmentation.
        on_error: ``raise`` or ``skip``.
        failures: where skipped files are recorded.
        label_type: ``class``, ``float`` or ``multilabel`` (see :class:`ManifestDataModule`).
        refs: (N, M) store entries of the file-valued modalities (``media.kinds``, sorted) found by a full check;
            -1: look up by path.
    """

    def __init__(self, samples: SampleTable, class_index: dict[str, int], media: MediaFiles,
                 processors: Mapping[str, Processor], *, train: bool, on_error: str = "raise",
                 failures: FailureLog | None = None, refs: np.ndarray | None = None,
                 label_type: str = "class") -> None:
        super().__init__(samples, dict, processors, train)
        self.samples, self.media, self.label_type = samples, media, label_type
        self.files = tuple(sorted(media.kinds))  # the file-valued modalities, in ``refs`` order
        self.texts = tuple(name for name, kind in media.modalities.items() if kind == "text")
        self.on_error, self.failures, self.refs = on_error, failures, refs
        # Per label code of the rows (float labels have none: the table holds their values), the label as the
        # collate batches it: a class index, or a multi-hot row. No string lookup per sample.
        codes = samples.rows.labels or ()
        if label_type == "multilabel":
            self.by_code = np.zeros((len(codes), len(class_index)), np.int64)
            for c, label in enumerate(codes):
                self.by_code[c, [class_index[name] for name in label_names(label)]] = 1
        else:
            self.by_code = np.array([class_index.get(label, -1) for label in codes], np.int64)

    def label_of(self, i: int) -> int | float | list[int]:
        """Sample ``i``'s label as the collate batches it: a class index, a float, or a multi-hot list."""
        label = self.samples.rows.label[i]
        return float(label) if self.label_type == "float" else self.by_code[label].tolist()

    def __getitem__(self, i: int) -> dict[str, Any] | None:  # type: ignore[override]
        row = self.samples.rows[i]
        refs = self.refs[i].tolist() if self.refs is not None else [-1] * len(self.files)
        media: dict[str, Any] = dict.fromkeys(self.files)
        for ref, key in zip(refs, self.files):
            if ref >= 0:
                media[key] = self.media.read_entry(ref)
                continue
            rel = row.get(key)
            if rel is None:
                continue
            try:
                media[key] = self.media.get(key, os.path.normpath(os.path.join(self.samples.root, rel)))
            except DecodeError as e:
                message = f"{row.where}: {key} {rel!r}: {e}"
                if self.on_error == "raise":
                    raise DecodeError(f"{message} (data.on_error=skip trains without it)") from None
                log.warning("skipping a sample that failed to load: %s", message)
                if self.failures is not None:
                    self.failures.add(message)
                return None
        texts = {name: row.get(name) for name in self.texts}
        fields = {"id": row.id, "label": self.label_of(i), "caption": row.caption, **texts, **media}
        return process(fields, self.processors, train=self.train)


class DropFailed:
    """Wraps a collate function: samples that failed to load (None) are left out of their batch."""

    def __init__(self, collate_fn: Callable[[Sequence[dict[str, Any]]], Any]) -> None:
        self.collate_fn = collate_fn

    def __call__(self, samples: Sequence[dict[str, Any] | None]) -> Any:
        kept = [s for s in samples if s is not None]
        if not kept:
            raise DecodeError(f"all {len(samples)} samples of a batch failed to load (see the warnings above)")
        return self.collate_fn(kept)


class ManifestDataModule(MultimodalDataModule):
    """Train/val/test splits from a manifest folder, validated before use.

    Args:
        root: the folder (``train.jsonl``/``.csv``, ``val...``, optional ``test...`` and ``labels.txt``).
        num_workers: DataLoader worker processes. Samples are read from the media store (the OS page cache holds
            it once for every process), so one worker, collating while the model trains, is usually enough; 0
            collates in the training process.
        on_error: ``raise`` stops with the full problem report; ``skip`` trains without the bad rows and logs
            how many were skipped and which.
        allow_outside_root: accept media paths that are absolute or lead outside ``root``.
        cache_dir: the media store (decoded media on disk, keyed by file and decoding settings) lives in
            ``cache_dir/media-store``, shared by every run, rank and worker (with ``check=full`` it is filled once
            per node, by :meth:`prepare_data`); None: a temporary store for this process.
        decode_threads: threads decoding files in the validation pass.
        check: what the validation pass does with each media file: ``full`` decodes it into the store (every
            problem is known before training), ``headers`` reads only its header (image size and mode, audio rate,
            channels and frames; files are decoded into the store as training first reads them), ``off`` trusts
            the files (a file that fails to decode in training is an error, or under ``on_error=skip`` is
            logged, counted and skipped).
        memory_cache_mb: per-process LRU of decoded samples, in MiB (0: none; the OS page cache holds the store).
        report_dir: where ``data_report.json`` (the problems found and rows skipped) is written; None: nowhere.
        num_train: use only the first ``num_train`` usable training samples (None: all); for quick runs
            (``experiment=smoke`` sets it). Every row is still checked.
        num_val: the same for the validation split.
        num_test: the same for the test split.
        max_image_pixels: images with more pixels are refused as a problem of their row (None: no limit).
        modalities: the folder's modalities, name -> kind (``{text: text, poster: image, vision_feats:
            {kind: features, dim: 35}}``); rows have one key (CSV: column) per name, holding the text or a file
            path (``.npy`` for features). None: ``text``, ``image`` and ``audio``.
        label_type: what a row's ``label`` is: ``class`` (a class name), ``float`` (a number: regression, one
            target), ``multilabel`` (a list of class names; CSV: ``name|name``), batched as (B,) int64, (B,)
            float32 or (B, C) multi-hot.
        The rest: the shared data options (:class:`~mmgpt.datamodules.options.DataOptions`).
    """

    def __init__(
        self,
        root: str,
        on_error: str = "raise",
        allow_outside_root: bool = False,
        cache_dir: str | None = None,
        decode_threads: int = 4,
        check: str = "full",
        memory_cache_mb: float = 0,
        report_dir: str | None = None,
        modalities: dict[str, Any] | None = None,
        label_type: str = "class",
        processors: Mapping[str, Processor] | None = None,
        **options: Any,
    ) -> None:
        super().__init__(modalities=modalities, processors=processors, **options)
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error={on_error!r}: expected one of {ON_ERROR}")
        if check not in CHECKS:
            raise ValueError(f"data.check={check!r}: expected one of {CHECKS}")
        if memory_cache_mb < 0:
            raise ValueError(f"data.memory_cache_mb={memory_cache_mb}: expected >= 0")
        self.save_hyperparameters(ignore=["processors"])
        if label_type not in LABEL_TYPES:
            raise ValueError(f"data.label_type={label_type!r}: expected one of {', '.join(LABEL_TYPES)}")
        if is_url(root):
            raise UserError(f"data.root={root}: data=manifest reads a local folder; data in object storage is read by "
                            "data=shards (mmgpt-data shard DIR URL) or data=hf")
        self.root = Path(root).expanduser().absolute()
        self.report: CheckReport | None = None
        self.splits: dict[str, ProcessedDataset] = {}
        self.media: MediaFiles | None = None
        self._prepared: CheckReport | None = None  # the check pass prepare_data ran in this process
        self.failures: FailureLog | None = None

    def wrap_collate(self, collate: Collate) -> DropFailed:
        return DropFailed(collate)  # samples that fail to load under on_error=skip arrive as None

    @cached_property
    def index(self) -> ManifestIndex:
        """The parsed rows and class list (no decoding): enough to size the model's head."""
        declared = None if self.hparams.modalities is None else self.modalities
        return read_index(self.root, declared, self.hparams.label_type)

    @property
    def class_names(self) -> list[str]:
        if self.report is not None:
            return list(self.report.class_names)
        fatal = [p for p in self.index.problems if p.fatal]
        if not self.index.class_names and fatal:
            raise ManifestError(CheckReport(self.root, [], problems=fatal), "cannot build the class list")
        return list(self.index.class_names)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def prepare_data(self) -> None:
        """Fill the media store once per node, before any rank sets up.

        Lightning calls this on one process per node (local rank 0) and holds the other ranks at a barrier until it
        returns; each rank's :meth:`setup` then finds every file in the store and decodes nothing (its check pass
        only looks entries up). Only ``check=full`` with a ``cache_dir`` fills a store every rank can read; otherwise
        each rank checks on its own in :meth:`setup`. Problems are not raised here but by :meth:`setup`, on every
        rank alike.
        """
        if self.report is not None or self._prepared is not None:  # set up already (Lightning calls this per stage)
            return
        if self.hparams.check != "full" or self.hparams.cache_dir is None:
            if self.hparams.cache_dir is None:
                log.info("data.cache_dir=null: each process decodes %s into its own temporary store (set "
                         "data.cache_dir to decode once per node and share it)", self.root)
            return
        self._prepared = self._check_folder()

    def check(self) -> CheckReport:
        """Run the validation pass (``check``: decoding every file into the store once; done already when
        :meth:`prepare_data` ran in this process) and apply ``on_error``.

        Raises:
            ManifestError: with every problem, when there are problems and ``on_error`` is ``raise``, or when a
                problem cannot be skipped (a missing or empty split).
        """
        report, self._prepared = self._prepared or self._check_folder(), None
        hp = self.hparams
        self._write_report(report)
        for warning in report.warnings:
            log.warning("%s: %s", self.root, warning)
        if report.fatal:
            raise ManifestError(report, "these problems stop training whatever data.on_error says")
        if report.problems:
            if hp.on_error == "raise":
                raise ManifestError(report, "fix these rows, or set data.on_error=skip to train without them")
            bad = report.bad_rows
            log.warning("data.on_error=skip: skipping %d bad row(s) of %s:\n%s", len(bad), self.root,
                        "\n".join(f"  {p}" for p in report.problems))
            log.warning("skipped %d row(s) in total: %s", len(bad), ", ".join(f"{f}:{n}" for f, n in bad))
        return report

    def _check_folder(self) -> CheckReport:
        """The validation pass over the folder through this process's view of the media store."""
        hp = self.hparams
        t0 = time.perf_counter()
        store = None if hp.cache_dir is None else Path(hp.cache_dir) / "media-store"
        self.media = MediaFiles(self.processors, store, threads=hp.decode_threads, memory_cache_mb=hp.memory_cache_mb)
        progress = Progress(f"data.check={hp.check} {self.root.name}")
        report = check_folder(self.root, self.media, hp.allow_outside_root, check=hp.check, progress=progress,
                              kinds=None if hp.modalities is None else self.modalities,
                              label_type=hp.label_type)
        progress.close()
        self.media.store.refresh()  # what this pass (and any other process) committed, for the datasets
        log.info("checked %s (data.check=%s) in %.1fs: %s samples, %d files decoded, %d entries in the store %s",
                 self.root, hp.check, time.perf_counter() - t0, {k: len(v) for k, v in report.samples.items()},
                 report.decoded, len(self.media.store), self.media.store.root)
        return report

    def _write_report(self, report: CheckReport) -> None:
        if self.hparams.report_dir is None:
            return
        path = Path(self.hparams.report_dir) / "data_report.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        unlink_link(path)
        data = {
            "root": str(self.root),
            "on_error": self.hparams.on_error,
            "samples": {k: len(v) for k, v in report.samples.items()},
            "skipped_rows": [f"{f}:{n}" for f, n in report.bad_rows],
            "problems": [str(p) for p in report.problems],
            "warnings": list(report.warnings),
            "class_names": report.class_names,
        }
        path.write_text(json.dumps(data, indent=2))

    def setup(self, stage: str | None = None) -> None:
        if self.report is not None:
            return
        self.report = self.check()
        if self.report.class_names != self.index.class_names:  # the folder changed since the model was sized
            raise ManifestError(self.report, f"class list changed while loading: {self.index.class_names}")
        self.__dict__.pop("index", None)  # its rows duplicate the report's; class_names now come from the report
        class_index = {c: i for i, c in enumerate(self.report.class_names)}
        report_dir = self.hparams.report_dir
        if report_dir is None:
            fd, failures = tempfile.mkstemp(prefix="mmgpt-decode-failures-", suffix=".txt")
            os.close(fd)
        else:
            failures = str(Path(report_dir) / "decode_failures.txt")
        self.failures = FailureLog(failures)
        assert self.media is not None
        for split, samples in self.report.samples.items():
            limit = self.limits[split]
            if limit is not None and limit < len(samples):
                log.info("using the first %d of %d %s samples (data.num_%s)", limit, len(samples), split, split)
                samples = samples[:limit]
            refs = None
            if self.hparams.check == "full":  # every file was checked into the store: read by entry, no lookups
                names = sorted(self.media.kinds)
                refs = np.full((len(samples), len(names)), -1, np.int64)  # filled row by row: no list per sample
                for n, s in enumerate(samples):
                    for j, k in enumerate(names):
                        if (p := s.path(k)) is not None:
                            refs[n, j] = self.media.entry(k, p)
            self.splits[split] = StoreDataset(samples, class_index, self.media, self.processors,
                                              train=split == "train", on_error=self.hparams.on_error,
                                              failures=self.failures, refs=refs, label_type=self.hparams.label_type)

    @property
    def decode_failures(self) -> list[str]:
        """``file:line: what`` of every file that failed to load while training (under ``on_error=skip``),
        in any process (loader workers included)."""
        return self.failures.read() if self.failures is not None else []

    def teardown(self, stage: str | None = None) -> None:
        failed = self.decode_failures
        if failed:
            log.warning("data.on_error=skip: %d sample(s) skipped because a file failed to load while running:\n%s",
                        len(failed), "\n".join(f"  {f}" for f in failed))

    def has_split(self, split: str) -> bool:
        """Whether the folder has ``split``'s file (``test`` is optional); read from the file names, no decoding."""
        return split in self.index.files

    def describe(self) -> str:
        return str(self.root)

    def make_dataset(self, split: str, rank: int = 0, world_size: int = 1) -> Dataset:
        return self.splits[split]
