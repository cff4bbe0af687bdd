"""AV-MNIST in MultiBench's ``.npy`` layout: a 28x28 digit image and a 112x112 spectrogram of a spoken digit.

The layout, as MultiBench's loader reads it (pliang279/MultiBench, ``datasets/avmnist/get_data.py``,
``get_dataloader``), under the ``avmnist`` folder:

==============================  ==================  =======================================================
file                            shape               meaning
==============================  ==================  =======================================================
``image/train_data.npy``        (60000, 784)        or (60000, 28, 28): grey pixels 0..255, float
``audio/train_data.npy``        (60000, 112, 112)   spectrogram, values 0..255, float
``train_labels.npy``            (60000,)            the digit 0..9
``image/test_data.npy``, ``audio/test_data.npy``, ``test_labels.npy``: the 10000 test samples
==============================  ==================  =======================================================

Splits as MultiBench makes them: train = the first 55000 training samples, val = the last 5000, test = the
test files. MultiBench scales both arrays by 1/255 (``normalize_image``, ``normalize_audio``); here the image
becomes a ``image`` modality (grey to RGB uint8, resized to ``image_size``, then normalised by its processor)
and the spectrogram a ``spectrogram`` ``features`` modality of 112 steps x 112 values scaled by 1/255. The
arrays are memory-mapped: a sample is read when it is loaded.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mmgpt.datamodules.benchmarks.common import (
    BenchmarkDataModule,
    BenchmarkError,
    BenchmarkSplit,
    load_npy,
    require_file,
)
from mmgpt.datamodules.processors import Processor

#: MultiBench's validation split: the last 5000 of the 60000 training samples.
NUM_TRAIN, IMAGE_SIDE, SPECTROGRAM_SIDE = 55000, 28, 112


class _Rows:
    """Rows of a memory-mapped ``.npy`` file through a per-row conversion; opened on first use (so each loader
    worker maps the file itself instead of receiving a copy)."""

    def __init__(self, path: Path, start: int, stop: int, convert: Any) -> None:
        self.path, self.start, self.stop, self.convert = path, start, stop, convert
        self._array: np.ndarray | None = None

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, i: int | slice) -> Any:
        if isinstance(i, slice):
            start, stop, _ = i.indices(len(self))
            return _Rows(self.path, self.start + start, self.start + stop, self.convert)
        if not 0 <= i < len(self):
            raise IndexError(i)
        if self._array is None:
            self._array = load_npy(self.path, mmap=True)
        return self.convert(np.asarray(self._array[self.start + i]))

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_array": None}


class ImageRow:
    """A (784,) or (28, 28) grey row, 0..255 -> (3, S, S) uint8 RGB at ``image_size`` S."""

    def __init__(self, image_size: int) -> None:
        self.image_size = image_size

    def __call__(self, row: np.ndarray) -> torch.Tensor:
        grey = torch.as_tensor(np.clip(np.rint(row.astype(np.float32)), 0, 255).reshape(IMAGE_SIDE, IMAGE_SIDE))
        image = grey[None].float()  # (1, 28, 28)
        if self.image_size != IMAGE_SIDE:
            image = F.interpolate(image[None], size=(self.image_size, self.image_size), mode="bilinear",
                                  align_corners=False)[0].round().clamp(0, 255)
        return image.to(torch.uint8).expand(3, -1, -1).contiguous()  # (3, S, S)


def spectrogram_row(row: np.ndarray) -> np.ndarray:
    """A (112, 112) spectrogram, 0..255 -> float32 / 255 (MultiBench's ``normalize_audio``)."""
    return (row.astype(np.float32) / 255.0).reshape(SPECTROGRAM_SIDE, SPECTROGRAM_SIDE)


def read_avmnist(root: str | Path, *, image_size: int = IMAGE_SIDE, num_train: int = NUM_TRAIN,
                 ) -> dict[str, BenchmarkSplit]:
    """The train/val/test splits of an AV-MNIST folder in MultiBench's layout (see the module doc).

    Args:
        root: the ``avmnist`` folder.
        image_size: side the images are resized to.
        num_train: training samples before the validation part (MultiBench: 55000 of 60000).
    """
    root = Path(root)
    out = {}
    for part in ("train", "test"):
        images = require_file(root / "image" / f"{part}_data.npy", "MultiBench's AV-MNIST layout")
        audio = require_file(root / "audio" / f"{part}_data.npy", "MultiBench's AV-MNIST layout")
        labels = load_npy(require_file(root / f"{part}_labels.npy", "MultiBench's AV-MNIST layout")).astype(np.int64)
        labels = labels.reshape(-1)
        n = len(labels)
        for path, shape in ((images, (IMAGE_SIDE * IMAGE_SIDE,)), (audio, (SPECTROGRAM_SIDE, SPECTROGRAM_SIDE))):
            got = load_npy(path, mmap=True).shape
            if not got or got[0] != n or int(np.prod(got[1:])) != int(np.prod(shape)):
                raise BenchmarkError(f"{path}: shape {got}, expected ({n}, {', '.join(map(str, shape))}) "
                                     f"({n} labels in {part}_labels.npy)")
        if labels.size and not ((labels >= 0) & (labels <= 9)).all():
            raise BenchmarkError(f"{root / f'{part}_labels.npy'}: labels outside 0..9")
        ranges = {"train": (0, min(num_train, n)), "val": (min(num_train, n), n)} if part == "train" \
            else {"test": (0, n)}
        for split, (start, stop) in ranges.items():
            out[split] = BenchmarkSplit(
                ids=[f"{part}/{i}" for i in range(start, stop)], labels=labels[start:stop],
                columns={"image": _Rows(images, start, stop, ImageRow(image_size)),
                         "spectrogram": _Rows(audio, start, stop, spectrogram_row)})
    return out


class AVMNISTDataModule(BenchmarkDataModule):
    """``data=avmnist``: MultiBench's AV-MNIST (10 classes; an image and a spectrogram per sample).

    Args:
        root: the ``avmnist`` folder (``image/``, ``audio/``, ``train_labels.npy``, ``test_labels.npy``).
        image_size: the images' side after resizing (28: as stored).
        train_size: training samples before the validation part (MultiBench: 55000 of the 60000).
        The rest: the shared data options (:class:`~mmgpt.datamodules.base.MultimodalDataModule`).
    """

    task = "multiclass"

    def __init__(self, root: str, train_size: int = NUM_TRAIN, batch_size: int = 40, image_size: int = IMAGE_SIDE,
                 processors: Mapping[str, Processor] | None = None, **options: Any) -> None:
        modalities = {"image": "image", "spectrogram": {"kind": "features", "dim": SPECTROGRAM_SIDE}}
        super().__init__(root=root, modalities=modalities, batch_size=batch_size, image_size=image_size,
                         processors=processors, **options)
        self.save_hyperparameters(ignore=["processors"])
        self.tables = read_avmnist(root, image_size=image_size, num_train=int(train_size))

    @property
    def class_names(self) -> list[str]:
        return [str(d) for d in range(10)]

    def read_split(self, split: str) -> BenchmarkSplit:
        return self.tables[split]
