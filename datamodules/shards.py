"""Streaming data: WebDataset tar shards written from a manifest folder, and a datamodule that streams them.

``mmgpt-data shard DIR OUT`` writes ``OUT/<split>-000000.tar, ...`` (WebDataset layout: the files of one sample
share a key: ``<key>.json`` with id/text/label/caption, ``<key>.image.<ext>`` and ``<key>.audio.<ext>`` holding
the original file bytes), plus ``OUT/labels.txt`` and ``OUT/shards.json``. ``data=shards data.root=OUT`` trains
on them without ever holding the set in memory or on one disk: shards can live anywhere a path reaches.

Splitting is explicit and exact: shard ``i`` of a split goes to the data-loading worker ``i mod (ranks x
workers)``, so every sample is read exactly once per epoch across all DDP ranks and their workers (the tests
check it). Shard order is shuffled per epoch with a seed shared by all ranks.
"""

from __future__ import annotations

import io
import json
import logging
import random
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from datamodules.collate import Collate, normalize_image
from datamodules.manifest.decode import load_audio, load_image
from datamodules.manifest.records import read_index, resolve_media
from mmgpt.tokenizer import ByteTokenizer

log = logging.getLogger(__name__)


class ShardError(ValueError):
    """A manifest folder that cannot be sharded, or a shard folder that cannot be read."""


def _key(sample_id: str, n: int) -> str:
    # WebDataset splits keys from extensions at the first dot, so ids are made dot-free (and unique).
    return f"{n:08d}_" + re.sub(r"[^A-Za-z0-9_-]", "_", sample_id)


def write_shards(root: str | Path, out: str | Path, samples_per_shard: int = 256,
                 allow_outside_root: bool = False) -> dict[str, Any]:
    """Write every split of the manifest folder ``root`` as tar shards under ``out``.

    Raises:
        ShardError: the folder has problems (run ``mmgpt-data check`` for the full report) or ``out`` is not empty.
    """
    root, out = Path(root), Path(out)
    index = read_index(root)
    if index.problems:
        shown = "\n  ".join(str(p) for p in index.problems[:20])
        raise ShardError(f"{root}: {len(index.problems)} problem(s); fix them first (mmgpt-data check {root}):\n  {shown}")
    if out.exists() and any(out.iterdir()):
        raise ShardError(f"{out} is not empty; shards are written into a new folder")
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"class_names": index.class_names, "splits": {}}
    for split, rows in index.rows.items():
        pattern = str(out / f"{split}-%06d.tar")
        # A whole-second mtime: with a fractional one Python writes an extra PAX header before every member,
        # which doubles the tar parsing work of every reader in every epoch.
        with wds.ShardWriter(pattern, maxcount=samples_per_shard, verbose=0, mtime=int(time.time())) as sink:
            for n, row in enumerate(rows):
                sample: dict[str, Any] = {
                    "__key__": _key(row.id, n),
                    "json": json.dumps({"id": row.id, "text": row.text, "label": row.label, "caption": row.caption}),
                }
                for modality in ("image", "audio"):
                    rel = getattr(row, modality)
                    if rel is not None:
                        path = resolve_media(root, rel, allow_outside_root)
                        sample[f"{modality}{path.suffix.lower()}"] = path.read_bytes()
                sink.write(sample)
        shards = sorted(p.name for p in out.glob(f"{split}-*.tar"))
        summary["splits"][split] = {"shards": shards, "samples": len(rows)}
        log.info("%s: %d samples in %d shards", split, len(rows), len(shards))
    (out / "labels.txt").write_text("".join(f"{c}\n" for c in index.class_names))
    (out / "shards.json").write_text(json.dumps(summary, indent=2))
    return summary


def worker_shards(shards: list[str], rank: int, world_size: int, worker: int, num_workers: int) -> list[str]:
    """The shards one data-loading worker of one rank reads: an exact partition over all ranks x workers."""
    return shards[rank * num_workers + worker :: world_size * num_workers]


class ShardDataset(IterableDataset):
    """Streams decoded per-sample dicts (see :mod:`datamodules.collate`) from tar shards.

    Args:
        shards: shard paths of one split.
        class_names: the class list (label -> index).
        image_size: side of the square images.
        sample_rate: audio sample rate after resampling.
        max_audio_samples: longer clips are cropped.
        rank: this process's DDP rank; world_size: number of ranks.
        shuffle: shuffle shard order per epoch (same permutation on every rank) and samples within a small buffer.
        seed: shuffling seed.
    """

    def __init__(self, shards: list[str], class_names: list[str], image_size: int, sample_rate: int,
                 max_audio_samples: int, rank: int = 0, world_size: int = 1, shuffle: bool = False,
                 seed: int = 0) -> None:
        super().__init__()
        self.shards = list(shards)
        self.class_index = {c: i for i, c in enumerate(class_names)}
        self.image_size, self.sample_rate, self.max_audio_samples = image_size, sample_rate, max_audio_samples
        self.rank, self.world_size = rank, world_size
        self.shuffle, self.seed = shuffle, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info else (0, 1)
        shards = list(self.shards)
        if self.shuffle:
            random.Random(self.seed + self.epoch).shuffle(shards)
        mine = worker_shards(shards, self.rank, self.world_size, worker, num_workers)
        if not mine:
            return
        # The partition above is ours, so WebDataset must not split again (by node or by worker).
        stream = wds.WebDataset(mine, shardshuffle=False, nodesplitter=_all, workersplitter=_all, empty_check=False)
        for raw in stream:
            yield self._decode(raw)

    def _decode(self, raw: dict[str, Any]) -> dict[str, Any]:
        meta = json.loads(raw["json"])
        image = audio = None
        for key, value in raw.items():
            if key.startswith("image."):
                image = normalize_image(load_image(io.BytesIO(value), self.image_size).float() / 255.0)
            elif key.startswith("audio."):
                audio = load_audio(io.BytesIO(value), self.sample_rate, self.max_audio_samples)
        return {"id": meta["id"], "text": meta["text"], "image": image, "audio": audio,
                "label": self.class_index[meta["label"]], "caption": meta.get("caption")}


def _all(urls: Any) -> Any:
    return urls


class EpochLoader(DataLoader):
    """A DataLoader that tells its :class:`ShardDataset` the epoch each time a pass starts (before workers fork)."""

    def __iter__(self):  # noqa: ANN204 - same return type as DataLoader.__iter__
        self._epoch = getattr(self, "_epoch", -1) + 1
        self.dataset.set_epoch(self._epoch)
        return super().__iter__()


class ShardDataModule(pl.LightningDataModule):
    """``data=shards``: trains on the output of ``mmgpt-data shard``, streaming, split exactly across ranks/workers.

    Args:
        root: the shard folder (with ``shards.json`` and ``labels.txt``).
        batch_size: per-process batch size.
        num_workers: data-loading workers per process.
        image_size: image side in pixels.
        sample_rate: audio sample rate in Hz.
        max_audio_seconds: longest clip.
        max_text_length: token limit.
        shuffle: shuffle training shards each epoch.
        seed: shuffling seed.
    """

    def __init__(self, root: str, batch_size: int = 64, num_workers: int = 2, image_size: int = 32,
                 sample_rate: int = 8000, max_audio_seconds: float = 1.0, max_text_length: int = 64,
                 shuffle: bool = True, seed: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.root = Path(root)
        meta = self.root / "shards.json"
        if not meta.is_file():
            raise ShardError(f"{meta}: not found; write shards with `mmgpt-data shard DIR {root}`")
        self.meta = json.loads(meta.read_text())
        self.collate = Collate(ByteTokenizer(max_text_length), image_size, int(max_audio_seconds * sample_rate))

    @property
    def class_names(self) -> list[str]:
        return list(self.meta["class_names"])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def dataset(self, split: str, rank: int = 0, world_size: int = 1) -> ShardDataset:
        hp = self.hparams
        if split not in self.meta["splits"]:
            raise ShardError(f"{self.root}: no {split} shards")
        shards = [str(self.root / s) for s in self.meta["splits"][split]["shards"]]
        return ShardDataset(shards, self.class_names, hp.image_size, hp.sample_rate,
                            int(hp.max_audio_seconds * hp.sample_rate), rank, world_size,
                            shuffle=hp.shuffle and split == "train", seed=hp.seed)

    def _loader(self, split: str) -> DataLoader:
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        hp = self.hparams
        return EpochLoader(self.dataset(split, rank, world), batch_size=hp.batch_size, num_workers=hp.num_workers,
                           collate_fn=self.collate, persistent_workers=False)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")
