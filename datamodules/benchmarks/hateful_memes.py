"""Hateful Memes (Kiela et al. 2020): a meme's image and its overlaid text -> hateful or not (binary, AUROC).

The distributed folder (the data set's own README: ``img/`` the PNG images, ``train.jsonl``, ``dev.jsonl``,
``test.jsonl``; the later release adds ``dev_seen.jsonl``, ``dev_unseen.jsonl``, ``test_seen.jsonl``,
``test_unseen.jsonl``). One JSON object per line::

    {"id": 42953, "img": "img/42953.png", "label": 0, "text": "its their character not their color that matters"}

``img`` is relative to the folder; ``label`` is 1 for hateful, 0 for not (absent in the unlabelled
``test.jsonl`` of the first release). Splits: train = ``train.jsonl``; val = ``dev_seen.jsonl`` when present,
else ``dev.jsonl``; test = ``test_seen.jsonl`` when present, else ``test.jsonl`` if it is labelled (the
paper reports dev and test "seen"); ``val_file`` / ``test_file`` choose others (e.g. ``dev_unseen.jsonl``).
Modalities: ``image`` (decoded by its processor when loaded) and ``text``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mmgpt.datamodules.benchmarks.common import BenchmarkDataModule, BenchmarkError, BenchmarkSplit, require_file
from mmgpt.datamodules.processors import Processor

#: Split -> the files tried in order.
SPLIT_FILES: dict[str, tuple[str, ...]] = {"train": ("train.jsonl",), "val": ("dev_seen.jsonl", "dev.jsonl"),
                                           "test": ("test_seen.jsonl", "test.jsonl")}
CLASS_NAMES: list[str] = ["not_hateful", "hateful"]


def read_jsonl(path: Path, *, root: Path, labelled: bool = True) -> BenchmarkSplit:
    """One Hateful Memes ``.jsonl`` file (see the module doc); errors name the file and line."""
    ids, labels, texts, images = [], [], [], []
    with open(require_file(path, "a Hateful Memes .jsonl file"), encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise BenchmarkError(f"{path}:{number}: not JSON ({e.msg})") from e
            missing = [k for k in ("id", "img", "text") + (("label",) if labelled else ()) if k not in row]
            if missing:
                raise BenchmarkError(f"{path}:{number}: no {missing[0]!r} (a line has id, img, label, text)")
            if labelled and row["label"] not in (0, 1):
                raise BenchmarkError(f"{path}:{number}: label {row['label']!r}, expected 0 or 1")
            ids.append(str(row["id"]))
            labels.append(int(row["label"]) if labelled else -1)
            texts.append(str(row["text"]))
            images.append(str(root / row["img"]))
    return BenchmarkSplit(ids=ids, labels=np.asarray(labels, dtype=np.int64),
                          columns={"image": images, "text": texts}, files=frozenset({"image"}))


def split_file(root: Path, split: str, chosen: str | None = None) -> Path | None:
    """The file of ``split``: ``chosen`` if given, else the first of :data:`SPLIT_FILES` that exists and is
    labelled (None: the split is not available)."""
    if chosen:
        return require_file(root / chosen, f"data.{split}_file")
    for name in SPLIT_FILES[split]:
        path = root / name
        if path.is_file() and (split == "train" or _labelled(path)):
            return path
    return None


def _labelled(path: Path) -> bool:
    with open(path, encoding="utf-8") as f:
        first = next((line for line in f if line.strip()), "{}")
    try:
        return "label" in json.loads(first)
    except json.JSONDecodeError:
        return True  # read_jsonl will name the line


class HatefulMemesDataModule(BenchmarkDataModule):
    """``data=hateful_memes``: the Hateful Memes folder (image + text -> hateful, binary).

    Args:
        root: the folder with ``img/`` and the ``.jsonl`` files.
        val_file: the validation file (default: ``dev_seen.jsonl``, else ``dev.jsonl``).
        test_file: the test file (default: ``test_seen.jsonl``, else a labelled ``test.jsonl``).
        The rest: the shared data options (:class:`~mmgpt.datamodules.base.MultimodalDataModule`).
    """

    task = "binary"

    def __init__(self, root: str, val_file: str | None = None, test_file: str | None = None, batch_size: int = 32,
                 num_workers: int = 2, image_size: int = 64, max_text_length: int = 128,
                 processors: Mapping[str, Processor] | None = None, **options: Any) -> None:
        super().__init__(root=root, modalities={"image": "image", "text": "text"}, batch_size=batch_size,
                         num_workers=num_workers, image_size=image_size, max_text_length=max_text_length,
                         processors=processors, **options)
        self.save_hyperparameters(ignore=["processors"])
        self.files = {"train": split_file(self.root, "train"), "val": split_file(self.root, "val", val_file),
                      "test": split_file(self.root, "test", test_file)}
        if self.files["train"] is None:
            raise BenchmarkError(f"{self.root / 'train.jsonl'}: not found (a Hateful Memes folder has img/ and "
                                 "train.jsonl, dev.jsonl or dev_seen.jsonl, ...)")

    @property
    def class_names(self) -> list[str]:
        return list(CLASS_NAMES)

    def has_split(self, split: str) -> bool:
        return self.files.get(split) is not None

    def read_split(self, split: str) -> BenchmarkSplit:
        path = self.files.get(split)
        if path is None:
            raise BenchmarkError(f"{self.root}: no labelled {split} file ({' or '.join(SPLIT_FILES[split])})")
        return read_jsonl(path, root=self.root)
