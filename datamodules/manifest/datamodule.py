"""``data=manifest data.root=DIR``: train on a folder of the user's own images, recordings and texts.

The folder format is documented in :mod:`mmgpt.datamodules.manifest.records`. Before training, every row is read and
every file decoded once (:func:`~mmgpt.datamodules.manifest.check.check_folder`); the decoded tensors stay in memory
(and in an on-disk cache when ``cache_dir`` is set), so no epoch decodes anything.
"""

from __future__ import annotations

import json
import logging
import time
from functools import cached_property
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from mmgpt.datamodules.collate import Collate, check_dropout_probs, normalize_image, require_positive
from mmgpt.datamodules.manifest.check import CheckReport, ManifestError, Sample, check_folder
from mmgpt.datamodules.manifest.decode import DecodeSettings, MediaCache
from mmgpt.datamodules.manifest.records import ManifestIndex, read_index
from mmgpt.datamodules.resumable import resumable_loader
from mmgpt.tokenizer import ByteTokenizer

log = logging.getLogger(__name__)

ON_ERROR = ("raise", "skip")


class ManifestDataset(Dataset):
    """Decoded samples as per-sample dicts (see :mod:`mmgpt.datamodules.collate`).

    Images are cached as uint8 and normalised here (the same normalisation as the synthetic set), with an
    optional random horizontal flip for training.

    Args:
        samples: the decoded samples.
        class_index: class name -> label index.
        augment: randomly flip images horizontally.
    """

    def __init__(self, samples: list[Sample], class_index: dict[str, int], augment: bool = False) -> None:
        self.samples = samples
        self.class_index = class_index
        self.augment = augment

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        s = self.samples[i]
        image = None
        if s.image is not None:
            image = normalize_image(s.image.float() / 255.0)  # (3, H, W)
            if self.augment and torch.rand(()) < 0.5:
                image = image.flip(-1)
        return {
            "id": s.row.id,
            "text": s.row.text,
            "image": image,
            "audio": s.audio,
            "label": self.class_index[s.row.label],
            "caption": s.row.caption,
        }


class ManifestDataModule(pl.LightningDataModule):
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
    ) -> None:
        super().__init__()
        require_positive(batch_size=batch_size, num_train=num_train, num_val=num_val, num_test=num_test)
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error={on_error!r}: expected one of {ON_ERROR}")
        self.save_hyperparameters()
        self.root = Path(root).expanduser().absolute()
        self.modality_dropout = check_dropout_probs(modality_dropout)
        max_audio_samples = int(round(max_audio_seconds * sample_rate))
        self.settings = DecodeSettings(image_size, sample_rate, max_audio_samples)
        tokenizer = ByteTokenizer(max_text_length)
        self.collate = Collate(tokenizer, image_size, max_audio_samples)
        self.train_collate = Collate(tokenizer, image_size, max_audio_samples, modality_dropout=self.modality_dropout)
        self.report: CheckReport | None = None
        self.splits: dict[str, ManifestDataset] = {}

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
        limits = {"train": self.hparams.num_train, "val": self.hparams.num_val, "test": self.hparams.num_test}
        for split, samples in self.report.samples.items():
            if limits[split] is not None and limits[split] < len(samples):
                log.info("using the first %d of %d %s samples (data.num_%s)", limits[split], len(samples), split, split)
                samples = samples[: limits[split]]
            self.splits[split] = ManifestDataset(samples, class_index, augment=self.hparams.augment and split == "train")

    def _loader(self, split: str, train: bool) -> DataLoader:
        if split not in self.splits:
            raise ValueError(f"{self.root} has no {split} split")
        hp = self.hparams
        pin = torch.cuda.is_available() if hp.pin_memory is None else hp.pin_memory
        return resumable_loader(self.splits[split], shuffle=train, seed=hp.seed, batch_size=hp.batch_size,
                                collate_fn=self.train_collate if train else self.collate, num_workers=hp.num_workers,
                                trainer=self.trainer if train else None, pin_memory=pin)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)
