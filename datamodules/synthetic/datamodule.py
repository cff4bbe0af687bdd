"""``data=synthetic``: the embedded data set, generated in memory in seconds, deterministic by seed."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from torch.utils.data import Dataset

from mmgpt.datamodules.base import SPLITS, MultimodalDataModule, ProcessedDataset, shared_options
from mmgpt.datamodules.decode import DEFAULT_MAX_IMAGE_PIXELS
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
        pin_memory: pin batches for host-to-GPU copies; None pins when CUDA is available.
        max_image_pixels: as for the other datamodules (generated images are small; kept for one option set).
        modalities: a subset of ``audio``, ``image``, ``text`` to use (None: all three), e.g.
            ``{image: image, text: text}`` for an image-text set.
        questions: the question types (default: the five of the generator's table; ``data=synthetic_relational``
            adds the relational ``same``, and with it the classes ``yes`` and ``no``).
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
        pin_memory: bool | None = None,
        max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
        modalities: dict[str, Any] | None = None,
        processors: Mapping[str, Processor] | None = None,
        questions: Sequence[str] = QTYPES,
    ) -> None:
        super().__init__(**shared_options(locals()))
        self.require_modalities(DEFAULT_MODALITIES, "the synthetic data set")
        self.save_hyperparameters(ignore=["processors"])
        # Clips are rendered at the audio processor's rate (a backbone's, e.g. 16 kHz); images at image_size (a
        # backbone's processor resizes them).
        sample_rate = getattr(self.processors.get("audio"), "sample_rate", sample_rate)
        self.generator = SyntheticGenerator(image_size, sample_rate, max_seconds=max_audio_seconds,
                                            questions=questions)
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
