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
import itertools
import json
import logging
import math
import random
import re
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from mmgpt.datamodules.collate import Collate, normalize_image, require_positive
from mmgpt.datamodules.manifest.check import check_folder
from mmgpt.datamodules.manifest.decode import DecodeError, DecodeSettings, MediaCache, load_audio, load_image
from mmgpt.datamodules.manifest.records import read_index, resolve_media
from mmgpt.datamodules.resumable import batches_trained
from mmgpt.tokenizer import ByteTokenizer
from mmgpt.training.rng import mix_seed

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
    if out.exists() and any(out.iterdir()):
        raise ShardError(f"{out} is not empty; shards are written into a new folder")
    # The whole check of `mmgpt-data check` (every file exists and decodes) before anything is written, so that
    # bad data is reported here, by file and line, rather than by a training run that streams it later.
    report = check_folder(root, MediaCache(DecodeSettings(32, 16000, 16000)), allow_outside_root)
    if not report.ok:
        raise ShardError(f"{root}: nothing written, fix these first:\n{report.format(limit=20)}")
    index = read_index(root)
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
        sizes = [min(samples_per_shard, len(rows) - i * samples_per_shard) for i in range(len(shards))]
        summary["splits"][split] = {"shards": shards, "samples": len(rows), "sizes": sizes}
        log.info("%s: %d samples in %d shards", split, len(rows), len(shards))
    (out / "labels.txt").write_text("".join(f"{c}\n" for c in index.class_names))
    (out / "shards.json").write_text(json.dumps(summary, indent=2))
    return summary


def worker_shards(shards: list[str], rank: int, world_size: int, worker: int, num_workers: int) -> list[str]:
    """The shards one data-loading worker of one rank reads: an exact partition over all ranks x workers."""
    return shards[rank * num_workers + worker :: world_size * num_workers]


def first_samples(shards: list[str], sizes: dict[str, int], limit: int) -> tuple[list[str], dict[str, int]]:
    """The shards holding the first ``limit`` samples (in the order written), the last one's count cut to fit."""
    kept: list[str] = []
    left = limit
    for shard in shards:
        if left <= 0:
            break
        kept.append(shard)
        left -= sizes[shard]
    cut = dict(sizes)
    if kept and left < 0:
        cut[kept[-1]] += left
    return kept, {s: cut[s] for s in kept}


def delivered_before(batches_per_worker: Sequence[int], consumed: int) -> tuple[list[int], int]:
    """Where a multi-worker DataLoader over an iterable dataset stands after ``consumed`` batches of an epoch.

    The loader takes one batch from each worker in turn, skipping workers whose stream has ended. Given how many
    batches each worker yields this epoch, returns how many each had delivered and which worker delivers next.
    """
    delivered = [0] * len(batches_per_worker)
    left, rounds = consumed, max(batches_per_worker, default=0)
    for t in range(rounds):
        for w, n in enumerate(batches_per_worker):
            if n > t:
                if left == 0:
                    return delivered, w
                delivered[w] += 1
                left -= 1
    return delivered, 0


class ShardDataset(IterableDataset):
    """Streams decoded per-sample dicts (see :mod:`mmgpt.datamodules.collate`) from tar shards.

    Args:
        shards: shard paths of one split.
        class_names: the class list (label -> index).
        image_size: side of the square images.
        sample_rate: audio sample rate after resampling.
        max_audio_samples: longer clips are cropped.
        rank: this process's DDP rank; world_size: number of ranks.
        shuffle: shuffle the shard order per epoch (the same permutation on every rank).
        seed: shuffling seed.
        batch_size: the loader's batch size (to resume mid-epoch, see :meth:`resume_at`).
        sizes: samples per shard, by path (from ``shards.json``; to resume mid-epoch).
    """

    def __init__(self, shards: list[str], class_names: list[str], image_size: int, sample_rate: int,
                 max_audio_samples: int, rank: int = 0, world_size: int = 1, shuffle: bool = False,
                 seed: int = 0, batch_size: int = 1, sizes: dict[str, int] | None = None) -> None:
        super().__init__()
        self.shards = list(shards)
        self.batch_size, self.sizes = batch_size, dict(sizes or {})
        self.resume: tuple[int, int] | None = None  # (epoch, batches of it already trained on)
        self.class_index = {c: i for i, c in enumerate(class_names)}
        self.image_size, self.sample_rate, self.max_audio_samples = image_size, sample_rate, max_audio_samples
        self.rank, self.world_size = rank, world_size
        self.shuffle, self.seed = shuffle, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume_at(self, epoch: int, batches: int) -> None:
        """Make epoch ``epoch`` continue after the ``batches`` batches (of this rank) already trained on.

        Each worker skips, without decoding, the samples it had delivered, and takes over the part of the worker
        whose batch came next, so the loader yields exactly the batches an uninterrupted epoch would have.
        """
        missing = [s for s in self.shards if s not in self.sizes]
        if missing:
            raise ShardError(f"cannot resume mid-epoch: no sample count for {missing[0]} (shards written by an "
                             "older mmgpt-data shard lack them in shards.json; write the shards again)")
        self.resume = (epoch, batches)

    def _epoch_shards(self, epoch: int) -> list[str]:
        shards = list(self.shards)
        if self.shuffle:
            random.Random(self.seed + epoch).shuffle(shards)
        return shards

    def batches_per_worker(self, epoch: int, num_workers: int) -> list[int]:
        """How many batches each of ``num_workers`` workers (1 for none) yields in ``epoch`` on this rank."""
        shards = self._epoch_shards(epoch)
        n = max(1, num_workers)
        parts = [worker_shards(shards, self.rank, self.world_size, w, n) for w in range(n)]
        return [math.ceil(sum(self.sizes[s] for s in part) / self.batch_size) for part in parts]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info else (0, 1)
        shards = self._epoch_shards(self.epoch)
        role, skip = worker, 0
        if self.resume is not None and self.resume[0] == self.epoch and self.resume[1] > 0:
            delivered, first = delivered_before(self.batches_per_worker(self.epoch, num_workers), self.resume[1])
            role = (worker + first) % num_workers  # worker 0 must yield the batch the epoch continues with
            skip = delivered[role] * self.batch_size
        mine = worker_shards(shards, self.rank, self.world_size, role, num_workers)
        if not mine:
            return
        for raw in itertools.islice(itertools.chain.from_iterable(self._read(s) for s in mine), skip, None):
            yield self._decode(raw)

    def _read(self, shard: str) -> Iterator[dict[str, Any]]:
        """The raw samples of one shard; only the first ``sizes[shard]`` when that is fewer (``data.num_train``)."""
        # The partition is ours, so WebDataset must not split again (by node or by worker).
        stream = wds.WebDataset([shard], shardshuffle=False, nodesplitter=_all, workersplitter=_all, empty_check=False)
        return itertools.islice(stream, self.sizes.get(shard))

    def _decode(self, raw: dict[str, Any]) -> dict[str, Any]:
        meta = json.loads(raw["json"])
        image = audio = None
        for key, value in raw.items():
            try:
                if key.startswith("image."):
                    image = normalize_image(load_image(io.BytesIO(value), self.image_size).float() / 255.0)
                elif key.startswith("audio."):
                    audio = load_audio(io.BytesIO(value), self.sample_rate, self.max_audio_samples)
            except DecodeError as e:
                raise ShardError(f"{raw.get('__url__', 'a shard')}: sample {meta.get('id')!r} ({raw.get('__key__')}."
                                 f"{key}): {e}") from e
        return {"id": meta["id"], "text": meta["text"], "image": image, "audio": audio,
                "label": self.class_index[meta["label"]], "caption": meta.get("caption")}


def _all(urls: Any) -> Any:
    return urls


class EpochLoader(DataLoader):
    """A DataLoader that tells its :class:`ShardDataset` the epoch each time a pass starts (before workers fork),
    and whose position Lightning checkpoints and restores (like :class:`mmgpt.datamodules.resumable.ResumableLoader`).

    Args:
        consumed: returns how many batches of the current epoch the model has trained on (the trainer's count).
        **kwargs: as for ``DataLoader``.
    """

    def __init__(self, *args: Any, consumed: Callable[[], int] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.consumed = consumed
        self._epoch = -1
        self._resume_epoch: int | None = None

    def __iter__(self) -> Iterator[Any]:
        # A generator: this runs at the first batch, after Lightning has restored a resumed position (it may
        # create the iterator before it does).
        if self._resume_epoch is not None:
            self._epoch, self._resume_epoch = self._resume_epoch, None
        else:
            self._epoch += 1
        self.dataset.set_epoch(self._epoch)
        # Workers' base seed from the loader's own generator, not the global one: creating an iterator (each
        # epoch, and again after a resume) must not shift the training process's random draws.
        self.generator = torch.Generator().manual_seed(mix_seed(self.dataset.seed, self._epoch))
        yield from super().__iter__()

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self._epoch, "batches": self.consumed() if self.consumed else 0}

    def load_state_dict(self, state: dict[str, int]) -> None:
        epoch, batches = state["epoch"], state["batches"]
        self.dataset.resume_at(epoch, batches)
        if batches >= sum(self.dataset.batches_per_worker(epoch, self.num_workers)):  # saved at the epoch's end
            epoch, batches = epoch + 1, 0
            self.dataset.resume = None
        self._resume_epoch = epoch


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
        num_train: stream only the first ``num_train`` training samples (in the order written; None: all), for
            quick runs (``experiment=smoke`` sets it); needs the per-shard counts of ``shards.json``.
        num_val: the same for the validation split.
        num_test: the same for the test split.
    """

    def __init__(self, root: str, batch_size: int = 64, num_workers: int = 2, image_size: int = 32,
                 sample_rate: int = 8000, max_audio_seconds: float = 1.0, max_text_length: int = 64,
                 shuffle: bool = True, seed: int = 0, num_train: int | None = None, num_val: int | None = None,
                 num_test: int | None = None) -> None:
        super().__init__()
        require_positive(batch_size=batch_size, num_train=num_train, num_val=num_val, num_test=num_test)
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
        counts = self.meta["splits"][split].get("sizes")
        sizes = dict(zip(shards, counts)) if counts else {}
        limit = {"train": hp.num_train, "val": hp.num_val, "test": hp.num_test}.get(split)
        if limit is not None:
            if not counts:
                raise ShardError(f"{self.root / 'shards.json'}: no per-shard sample counts, so data.num_{split} "
                                 "cannot be applied; write the shards again with mmgpt-data shard")
            shards, sizes = first_samples(shards, sizes, int(limit))
        return ShardDataset(shards, self.class_names, hp.image_size, hp.sample_rate,
                            int(hp.max_audio_seconds * hp.sample_rate), rank, world_size,
                            shuffle=hp.shuffle and split == "train", seed=hp.seed, batch_size=hp.batch_size,
                            sizes=sizes)

    def _loader(self, split: str) -> DataLoader:
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        hp = self.hparams
        return EpochLoader(self.dataset(split, rank, world), batch_size=hp.batch_size, num_workers=hp.num_workers,
                           collate_fn=self.collate, persistent_workers=False,
                           consumed=batches_trained(trainer if split == "train" else None))

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")
