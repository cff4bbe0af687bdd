"""``data=synthetic``: the embedded data set, generated in memory in seconds, deterministic by seed."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from torch.utils.data import Dataset

from mmgpt.datamodules.base import SPLITS, MultimodalDataModule, ProcessedDataset
from mmgpt.datamodules.processors import DEFAULT_MODALITIES, Processor
from mmgpt.datamodules.synthetic.generator import QTYPES, SyntheticGenerator, SyntheticSample

log = logging.getLogger(__name__)


def sample_fields(s: SyntheticSample) -> dict[str, Any]:
    """A generated sample's stored values: the image as (3, H, W) float in [0, 1], the waveform, the question."""
    return {"id": s.id, "label": s.label, "caption": s.caption, "text": s.text, "image": s.image, "audio": s.audio}


class SyntheticDataModule(MultimodalDataModule):
    """Generates train/val/test splits of the synthetic set (see :mod:`mmgpt.datamodules.synthetic.generator`).

    Args:
        num_train: training samples.
        num_val: validation samples.
        num_test: test samples.
        seed: generation seed; splits use seed, seed + 1, seed + 2 (also the shuffling and augmentation seed).
        augment: flip training images.
        questions: the question types (default: the five of the generator's table; ``data=synthetic_relational``
            adds the relational ``same``, and with it the classes ``yes`` and ``no``).
        modalities: a subset of ``audio``, ``image``, ``text`` to use (None: all three), e.g.
            ``{image: image, text: text}`` for an image-text set.
        processors, options: as for every datamodule (:class:`MultimodalDataModule`).
    """

    def __init__(self, num_train: int = 4000, num_val: int = 1000, num_test: int = 1000, augment: bool = True,
                 questions: Sequence[str] = QTYPES, modalities: Mapping[str, Any] | None = None,
                 processors: Mapping[str, Processor] | None = None, **options: Any) -> None:
        super().__init__(num_train=num_train, num_val=num_val, num_test=num_test, augment=augment,
                         modalities=modalities, processors=processors, **options)
        self.require_modalities(DEFAULT_MODALITIES, "the synthetic data set")
        self.save_hyperparameters(ignore=["processors"])
        # Clips are rendered at the audio processor's rate (a backbone's, e.g. 16 kHz); images at image_size (a
        # backbone's processor resizes them).
        sample_rate = getattr(self.processors.get("audio"), "sample_rate", self.options.sample_rate)
        self.generator = SyntheticGenerator(self.options.image_size, sample_rate,
                                            max_seconds=self.options.max_audio_seconds, questions=questions)
        self.splits: dict[str, ProcessedDataset] = {}

    @property
    def class_names(self) -> list[str]:
        return list(self.generator.classes)

    def has_split(self, split: str) -> bool:
        return split in SPLITS  # every count is at least 1

    def describe(self) -> str:
        return "the synthetic data set"

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        t0 = time.perf_counter()
        for k, split in enumerate(SPLITS):
            samples = self.generator.generate(self.limits[split], seed=self.seed + k, prefix=split)
            self.splits[split] = ProcessedDataset(samples, sample_fields, self.processors, train=split == "train")
        log.info("generated synthetic data %s in %.1fs", self.limits, time.perf_counter() - t0)

    def make_dataset(self, split: str, rank: int = 0, world_size: int = 1) -> Dataset:
        return self.splits[split]
