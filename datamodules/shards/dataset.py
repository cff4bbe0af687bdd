"""Streaming the samples of tar shards: each worker of each rank reads its own shards, decodes, and yields them."""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from torch.utils.data import IterableDataset, get_worker_info

from mmgpt.datamodules.base import process
from mmgpt.datamodules.decode import DecodeError
from mmgpt.datamodules.processors import Processor
from mmgpt.datamodules.resumable import SampleKey, resumed_reader
from mmgpt.datamodules.shards.format import ShardError, sample_index
from mmgpt.datamodules.shards.partition import dealt_batches, reader_runs
from mmgpt.training.rng import mix_seed, seeded

if TYPE_CHECKING:
    from mmgpt.datamodules.shards.remote import RemoteShards


def read_tar(shard: str, name: str | None = None) -> Iterator[dict[str, Any]]:
    """The raw samples of one shard, in order: ``{"__key__", "__url__", "<ext>": bytes, ...}``; ``name`` (default:
    the path) is the ``__url__`` and what errors call the shard, e.g. the URL of a local copy of a remote shard.

    Members of one sample are consecutive and share the part of their name before the first dot (WebDataset's
    layout). The tar is read as a stream of 512-byte headers and member data, parsed here rather than by
    ``tarfile``, whose per-member overhead was a third of the streaming loader's time; POSIX (ustar, pax) and
    GNU long names are understood, and a header whose checksum is wrong is an error naming the shard.
    """
    sample: dict[str, Any] = {}
    url = name or shard
    for member, data in _tar_members(shard, url):
        folder, _, base = member.rpartition("/")
        stem, _, ext = base.partition(".")
        key = f"{folder}/{stem}" if folder else stem  # the folder part stays in the key, as in WebDataset
        if sample and key != sample["__key__"]:
            yield sample
            sample = {}
        if not sample:
            sample = {"__key__": key, "__url__": url}
        sample[ext] = data
    if sample:
        yield sample


def _tar_members(shard: str, url: str) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of every regular file in a tar, in order (errors name the shard ``url``)."""
    try:
        with open(shard, "rb", buffering=1 << 20) as f:
            end = f.seek(0, 2)  # a member's size is checked against what is left before it is read
            f.seek(0)
            long_name: str | None = None
            while True:
                header = f.read(512)
                if len(header) < 512 or header.count(0) == 512:
                    return  # end of archive (two zero blocks), or a file cut at a header boundary
                if sum(header[:148]) + 256 + sum(header[156:]) != _octal(header[148:156]):
                    raise ShardError(f"{url}: not a tar file, or damaged (bad header checksum at byte "
                                     f"{f.tell() - 512})")
                size, kind = _octal(header[124:136]), header[156:157]
                if size > end - f.tell():
                    raise ShardError(f"{url}: truncated (a member ends past the end of the file)")
                data = f.read(size)
                f.seek((-size) % 512, 1)
                if kind in (b"x", b"L"):  # pax extended header / GNU long name: the next member's name
                    long_name = _pax_path(data) if kind == b"x" else data.rstrip(b"\0").decode()
                    continue
                if kind not in (b"0", b"\0", b"7"):  # folders, links, global pax headers...
                    long_name = None
                    continue
                name = long_name or _ustar_name(header)
                long_name = None
                if name.startswith("/") or ".." in name.split("/"):
                    raise ShardError(f"{url}: the member {name!r} has an absolute or '..' name; refused (members "
                                     "are named <key>.<ext>; nothing is extracted)")
                yield name, data
    except OSError as e:
        raise ShardError(f"{url}: cannot read the shard ({e})") from e
    except (ValueError, UnicodeDecodeError) as e:  # a header field that is not octal, a name that is not UTF-8
        if isinstance(e, ShardError):
            raise
        raise ShardError(f"{url}: not a tar file, or damaged ({e})") from e


def _octal(field: bytes) -> int:
    if field[0] & 0x80:  # GNU base-256 for large sizes
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    return int(text, 8) if text else 0


def _ustar_name(header: bytes) -> str:
    name = header[:100].split(b"\0", 1)[0].decode()
    if header[257:262] == b"ustar":
        prefix = header[345:500].split(b"\0", 1)[0].decode()
        if prefix:
            return f"{prefix}/{name}"
    return name


def _pax_path(data: bytes) -> str | None:
    """The ``path`` record of a pax extended header (records are ``<length> <key>=<value>\\n``)."""
    pos = 0
    while pos < len(data):
        space = data.index(b" ", pos)
        length = int(data[pos:space])
        key, _, value = data[space + 1 : pos + length - 1].partition(b"=")
        if key == b"path":
            return value.decode()
        pos += length
    return None


class ShardDataset(IterableDataset):
    """Streams ``(SampleKey, sample)`` pairs (samples as in :mod:`mmgpt.datamodules.collate`) from tar shards.

    Each sample's randomness (image flips) is seeded by (seed, epoch, its index in the split), so it does not
    depend on which worker or rank reads it, nor on a resume.

    Args:
        shards: shard paths of one split.
        class_names: the class list (label -> index).
        processors: modality name -> processor (a text-kind modality comes from the sample's JSON under its
            name; any other from the member ``<key>.<name>.<ext>``).
        train: training data (augmentation on, as the processors say).
        rank: this process's DDP rank; world_size: number of ranks.
        shuffle: shuffle the shard order per epoch (the same permutation on every rank).
        seed: shuffling and data-randomness seed.
        batch_size: the loader's batch size (to resume mid-epoch, see :meth:`resume_at`).
        sizes: samples per shard, by path (from ``shards.json``; to resume mid-epoch).
        remote: where remote shards (URLs) are fetched from and cached (None: the shards are local paths).
        byte_sizes: bytes per shard, by path (from ``shards.json``; a remote copy of another size is refused).
    """

    def __init__(self, shards: list[str], class_names: list[str], processors: Mapping[str, Processor], *,
                 train: bool = False, rank: int = 0, world_size: int = 1, shuffle: bool = False, seed: int = 0,
                 batch_size: int = 1, sizes: dict[str, int] | None = None, remote: RemoteShards | None = None,
                 byte_sizes: dict[str, int | None] | None = None) -> None:
        super().__init__()
        self.shards = list(shards)
        self.batch_size, self.sizes = batch_size, dict(sizes or {})
        self.resume: tuple[int, int] | None = None  # (epoch, batches of it already trained on)
        self.class_index = {c: i for i, c in enumerate(class_names)}
        self.processors, self.train = dict(processors), train
        self.rank, self.world_size = rank, world_size
        self.shuffle, self.seed = shuffle, seed
        self.epoch = 0
        self.remote, self.byte_sizes = remote, dict(byte_sizes or {})

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume_at(self, epoch: int, batches: int) -> None:
        """Make epoch ``epoch`` continue after the ``batches`` batches (of this rank) already trained on.

        Each worker skips, without decoding, the samples it had delivered, and takes over the part of the worker
        whose batch came next, so the loader yields exactly the batches an uninterrupted epoch would have.
        """
        self._require_sizes("resume mid-epoch")
        self.resume = (epoch, batches)

    def _epoch_shards(self, epoch: int) -> list[str]:
        shards = list(self.shards)
        if self.shuffle:
            random.Random(self.seed + epoch).shuffle(shards)
        return shards

    def _require_sizes(self, why: str) -> None:
        missing = [s for s in self.shards if s not in self.sizes]
        if missing:
            raise ShardError(f"cannot {why}: no sample count for {missing[0]} (shards written by an older "
                             "mmgpt-data shard lack them in shards.json; write the shards again)")

    def batches_per_worker(self, epoch: int, num_workers: int) -> list[int]:
        """How many batches each of ``num_workers`` workers (1 for none) yields in ``epoch`` on this rank; every
        rank yields as many (:func:`~mmgpt.datamodules.shards.partition.padding_batches`)."""
        return dealt_batches(self._epoch_shards(epoch), self.sizes, self.rank, self.world_size, num_workers,
                             self.batch_size)

    def __iter__(self) -> Iterator[tuple[SampleKey, dict[str, Any]]]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info else (0, 1)
        shards = self._epoch_shards(self.epoch)
        role, skip = worker, 0
        if self.resume is not None and self.resume[0] == self.epoch and self.resume[1] > 0:
            role, skip = resumed_reader(self.batches_per_worker(self.epoch, num_workers), worker, self.resume[1],
                                        self.batch_size)
        if self.world_size > 1:
            self._require_sizes(f"deal the shards evenly over {self.world_size} ranks")
        # (shard, its first n samples: all, or fewer with data.num_train), then worker 0's padding under DDP
        runs = reader_runs(shards, self.sizes, self.rank, self.world_size, role, num_workers, self.batch_size)
        raw_samples = self._read_runs(runs)
        random_transform = self.train and any(getattr(p, "augment", False) for p in self.processors.values())
        for raw in itertools.islice(raw_samples, skip, None):
            index = sample_index(raw["__key__"])
            key = SampleKey(index, mix_seed(self.seed, self.epoch, index))
            if random_transform:
                with seeded(key.seed):  # not around the yield: the training process draws in between
                    sample = self._decode(raw)
            else:
                sample = self._decode(raw)
            yield key, sample

    def _read_runs(self, runs: Sequence[tuple[str, int | None]]) -> Iterator[dict[str, Any]]:
        """The raw samples of ``runs`` (shard, samples from its start) in order: local shards read where they are,
        remote ones through the node's cache, fetched ahead."""
        if self.remote is None:
            located = ((s, s, n) for s, n in runs)
        else:
            located = ((url, str(path), n) for url, path, n in self.remote.local_runs(runs, self.byte_sizes))
        for url, path, n in located:
            count = 0
            for raw in itertools.islice(read_tar(path, url), n):
                count += 1
                yield raw
            if n is not None and count < n:  # a shard cut at a member boundary parses as a shorter one
                raise ShardError(f"{url}: truncated ({count} samples, {n} expected from shards.json)")

    def _decode(self, raw: dict[str, Any]) -> dict[str, Any]:
        meta = json.loads(raw["json"])
        fields: dict[str, Any] = {"id": meta["id"], "label": self.class_index[meta["label"]],
                                  "caption": meta.get("caption")}
        for name, processor in self.processors.items():
            if processor.kind == "text":
                fields[name] = meta.get(name)
        for member, value in raw.items():
            name = member.split(".", 1)[0]
            processor = self.processors.get(name)
            if processor is None or processor.kind == "text" or member == "json":
                continue
            try:
                fields[name] = processor.decode(value)
            except DecodeError as e:
                raise ShardError(f"{raw['__url__']}: sample {meta.get('id')!r} ({raw['__key__']}.{member}): {e}") from e
        return process(fields, self.processors, train=self.train)
