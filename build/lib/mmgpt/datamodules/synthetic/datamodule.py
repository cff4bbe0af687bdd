"""``data=synthetic``: the embedded data set, generated in memory in seconds, deterministic by seed."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from mmgpt.datamodules.collate import IMAGE_MEAN, IMAGE_STD, Collate, require_positive
from mmgpt.datamodules.resumable import resumable_loader
from mmgpt.datamodules.synthetic.generator import CLASSES, SyntheticGenerator, SyntheticSample
from mmgpt.tokenizer import ByteTokenizer

log = logging.getLogger(__name__)


class SyntheticDataset(Dataset):
    """Wraps generated samples as per-sample dicts (see :mod:`mmgpt.datamodules.collate`)."""

    def __init__(self, samples: list[SyntheticSample], transform: v2.Transform) -> None:
        self.samples = samples
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        s = self.samples[i]
        return {
            "id": s.id,
            "text": s.text,
            "image": self.transform(torch.from_numpy(s.image)),
            "audio": torch.from_numpy(s.audio),
            "label": s.label,
            "caption": s.caption,
        }


def image_transform(image_size: int, augment: bool) -> v2.Transform:
    """Resize, (on training data) light augmentation that keeps the answer (flips), and normalisation."""
    steps: list[v2.Transform] = [v2.Resize((image_size, image_size), antialias=True)]
    if augment:
        steps.append(v2.RandomHorizontalFlip())
    steps += [v2.ToDtype(torch.float32, scale=False), v2.Normalize(mean=[IMAGE_MEAN] * 3, std=[IMAGE_STD] * 3)]
    return v2.Compose(steps)


class SyntheticDataModule(pl.LightningDataModule):
    """Generates train/val/test splits of the synthetic set (see :mod:`mmgpt.datamodules.synthetic.generator`).

    Args:
        num_train: training samples.
        num_val: validation samples.
        num_test: test samples.
        seed: generation seed; splits use seed, seed + 1, seed + 2.
        image_size: image side in pixels.
        sample_rate: audio sample rate in Hz.
        max_audio_seconds: longest clip.
        max_text_length: token limit of the byte tokenizer.
        batch_size: per-process batch size.
        num_workers: DataLoader workers.
        augment: flip training images.
        modality_dropout: per-modality probability of dropping that modality from a training sample
            (never a sample's last modality), e.g. ``{"audio": 0.2}``.
        shuffle: shuffle the training split each epoch (off: a fixed order, e.g. to compare 1 vs N processes).
    """

    def __init__(
        self,
        num_train: int = 4000,
        num_val: int = 1000,
        num_test: int = 1000,
        seed: int = 0,
        image_size: int = 32,
        sample_rate: int = 8000,
        max_audio_seconds: float = 1.0,
        max_text_length: int = 64,
        batch_size: int = 64,
        num_workers: int = 0,
        augment: bool = True,
        modality_dropout: dict[str, float] | None = None,
        shuffle: bool = True,
    ) -> None:
        super().__init__()
        require_positive(batch_size=batch_size, num_train=num_train, num_val=num_val, num_test=num_test)
        self.save_hyperparameters()
        self.generator = SyntheticGenerator(image_size, sample_rate, max_seconds=max_audio_seconds)
        tokenizer, max_audio_samples = ByteTokenizer(max_text_length), int(max_audio_seconds * sample_rate)
        self.collate = Collate(tokenizer, image_size, max_audio_samples)
        self.train_collate = Collate(tokenizer, image_size, max_audio_samples, modality_dropout=modality_dropout)
        self.splits: dict[str, SyntheticDataset] = {}

    @property
    def class_names(self) -> list[str]:
        return list(CLASSES)

    @property
    def num_classes(self) -> int:
        return len(CLASSES)

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        hp = self.hparams
        t0 = time.perf_counter()
        sizes = {"train": hp.num_train, "val": hp.num_val, "test": hp.num_test}
        for k, (split, n) in enumerate(sizes.items()):
            samples = self.generator.generate(n, seed=hp.seed + k, prefix=split)
            self.splits[split] = SyntheticDataset(samples, image_transform(hp.image_size, hp.augment and split == "train"))
        log.info("generated synthetic data %s in %.1fs", sizes, time.perf_counter() - t0)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        hp = self.hparams
        train = split == "train"
        return resumable_loader(self.splits[split], shuffle=shuffle, seed=hp.seed, batch_size=hp.batch_size,
                                collate_fn=self.train_collate if train else self.collate, num_workers=hp.num_workers,
                                trainer=self.trainer if train else None)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=self.hparams.shuffle)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
