"""``data=manifest data.root=DIR``: train on a folder of the user's own images, recordings and texts.

The folder format is documented in :mod:`mmgpt.datamodules.manifest.records`. Before training, every row is read and
every file decoded once (:func:`~mmgpt.datamodules.manifest.check.check_folder`); the decoded tensors stay in memory
(and in an on-disk cache when ``cache_dir`` is set), so no epoch decodes anything.
"""

from __future__ import annotations

import json
import logging
import time
from functools import cached_property, partial
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from mmgpt.datamodules.base import MultimodalDataModule, ProcessedDataset, shared_options
from mmgpt.datamodules.decode import DEFAULT_MAX_IMAGE_PIXELS
from mmgpt.datamodules.manifest.check import CheckReport, ManifestError, Sample, check_folder
from mmgpt.datamodules.manifest.records import ManifestIndex, read_index
from mmgpt.datamodules.processors import audio_samples
from mmgpt.datamodules.store import DecodeSettings, MediaCache

log = logging.getLogger(__name__)

ON_ERROR = ("raise", "skip")


def sample_fields(s: Sample, class_index: dict[str, int]) -> dict[str, Any]:
    """A checked sample's stored values: the row's text, the decoded (3, H, W) uint8 image and (S,) waveform."""
    return {"id": s.row.id, "label": class_index[s.row.label], "caption": s.row.caption, "text": s.row.text,
            "image": s.image, "audio": s.audio}


class ManifestDataModule(MultimodalDataModule):
    """Train/val/test splits from a manifest folder, validated before use.

    Args:
        root: the folder (``train.jsonl``/``.csv``, ``val...``, optional ``test...`` and ``labels.txt``).
        image_size: images are resized to this square side.
        sample_rate: audio is resampled to this rate (Hz).
        max_audio_seconds: longer recordings are cropped to this length (shorter ones padded, with masks).
        max_text_length: token limit of the byte tokenizer; longer texts are truncated.
        batch_size: per-process batch size.
        num_workers: DataLoader worker processes. Decoded data is in memory (shared with forked workers), so
            one worker, collating while the model trains, is usually enough; 0 collates in the training process.
        pin_memory: pin batches for faster host-to-GPU copies; None pins when CUDA is available.
        augment: randomly flip training images (off by default: digits and text are not mirror-symmetric).
        modality_dropout: per-modality probability of dropping that modality from a training sample
            (never a sample's last modality), e.g. ``{"audio": 0.2}``.
        on_error: ``raise`` stops with the full problem report; ``skip`` trains without the bad rows and logs
            how many were skipped and which.
        allow_outside_root: accept media paths that are absolute or lead outside ``root``.
        cache_dir: on-disk cache of decoded media (keyed by file and decoding settings); None: memory only.
        decode_threads: threads decoding files in the validation pass.
        report_dir: where ``data_report.json`` (the problems found and rows skipped) is written; None: nowhere.
        num_train: use only the first ``num_train`` usable training samples (None: all); for quick runs
            (``experiment=smoke`` sets it). Every row is still checked.
        num_val: the same for the validation split.
        num_test: the same for the test split.
        seed: shuffling and augmentation seed (each epoch's order and each sample's flips follow from it).
        max_image_pixels: images with more pixels are refused as a problem of their row (None: no limit).
        shuffle: shuffle the training split each epoch.
    """

    def __init__(
        self,
        root: str,
        image_size: int = 32,
        sample_rate: int = 8000,
        max_audio_seconds: float = 1.0,
        max_text_length: int = 64,
        batch_size: int = 64,
        num_workers: int = 0,
        pin_memory: bool | None = None,
        augment: bool = False,
        modality_dropout: dict[str, float] | None = None,
        on_error: str = "raise",
        allow_outside_root: bool = False,
        cache_dir: str | None = None,
        decode_threads: int = 4,
        report_dir: str | None = None,
        num_train: int | None = None,
        num_val: int | None = None,
        num_test: int | None = None,
        seed: int = 0,
        max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
        shuffle: bool = True,
    ) -> None:
        super().__init__(**shared_options(locals()))
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error={on_error!r}: expected one of {ON_ERROR}")
        self.save_hyperparameters()
        self.root = Path(root).expanduser().absolute()
        self.settings = DecodeSettings(image_size, sample_rate, audio_samples(max_audio_seconds, sample_rate),
                                       max_image_pixels)
        self.report: CheckReport | None = None
        self.splits: dict[str, ProcessedDataset] = {}

    @cached_property
    def index(self) -> ManifestIndex:
        """The parsed rows and class list (no decoding): enough to size the model's head."""
        return read_index(self.root)

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

    def check(self) -> CheckReport:
        """Run the validation pass (decoding every file once) and apply the ``on_error`` policy.

        Raises:
            ManifestError: with every problem, when there are problems and ``on_error`` is ``raise``, or when a
                problem cannot be skipped (a missing or empty split).
        """
        hp = self.hparams
        t0 = time.perf_counter()
        cache = MediaCache(self.settings, hp.cache_dir, key=str(self.root), threads=hp.decode_threads)
        report = check_folder(self.root, cache, hp.allow_outside_root)
        if cache.decoded:
            cache.save()
        log.info("checked %s in %.1fs: %s samples, %d files decoded (%d from cache)", self.root,
                 time.perf_counter() - t0, {k: len(v) for k, v in report.samples.items()}, cache.decoded,
                 len(cache.entries) - cache.decoded)
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

    def _write_report(self, report: CheckReport) -> None:
        if self.hparams.report_dir is None:
            return
        path = Path(self.hparams.report_dir) / "data_report.json"
        path.parent.mkdir(parents=True, exist_ok=True)
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
        class_index = {c: i for i, c in enumerate(self.report.class_names)}
        for split, samples in self.report.samples.items():
            limit = self.limits[split]
            if limit is not None and limit < len(samples):
                log.info("using the first %d of %d %s samples (data.num_%s)", limit, len(samples), split, split)
                samples = samples[:limit]
            self.splits[split] = ProcessedDataset(samples, partial(sample_fields, class_index=class_index),
                                                  self.processors, train=split == "train")

    def has_split(self, split: str) -> bool:
        """Whether the folder has ``split``'s file (``test`` is optional); read from the file names, no decoding."""
        return split in self.index.files

    def describe(self) -> str:
        return str(self.root)

    def make_dataset(self, split: str, rank: int = 0, world_size: int = 1) -> Dataset:
        return self.splits[split]
