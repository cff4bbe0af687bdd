"""The store: where decoded inputs (and, later, cached features) live, keyed by source identity and processor
fingerprint.

:class:`MediaStore` is the interface (see docs/data.md); :class:`MediaCache` implements it today as a dict in
memory plus one ``.pt`` file on disk per (folder, settings). A memory-mapped store (issue 16) replaces it behind
the same ``get``/``put``/``flush``.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple, Protocol

import torch
from torch import Tensor

from mmgpt.datamodules import decode
from mmgpt.datamodules.decode import DEFAULT_MAX_IMAGE_PIXELS, DecodeError

log = logging.getLogger(__name__)

#: Bump when decoding changes, so old on-disk caches are not reused.
#: 2: high-bit-depth images scaled instead of saturated; resampling of awkward rates through a nearby ratio.
#: 3: audio resampled by soxr at the exact ratio of any two rates.
CACHE_VERSION = 3

#: A file's identity: (size in bytes, modification time in ns); None when it cannot be read.
FileStat = tuple[int, int] | None


class StoreKey(NamedTuple):
    """What a stored value is keyed by.

    Attributes:
        source: the source's identity: ``<kind>:<path>`` (a shard member: ``<shard path>#<member>``).
        stat: the source file's (size, mtime_ns) when it was decoded: a changed file is stale.
        fingerprint: the processor's fingerprint (every setting decoding depends on).
    """

    source: str
    stat: FileStat
    fingerprint: str


class MediaStore(Protocol):
    """Where decoded inputs live. ``get`` returns None for a value not stored, or stored for another stat."""

    def get(self, key: StoreKey) -> Tensor | DecodeError | None: ...

    def put(self, key: StoreKey, value: Tensor | DecodeError) -> None: ...

    def flush(self) -> None: ...


@dataclass(frozen=True)
class DecodeSettings:
    """Everything decoding depends on: part of every cache key.

    Attributes:
        image_size: side of the square RGB images.
        sample_rate: audio sample rate after resampling, in Hz.
        max_audio_samples: longer clips are cropped (from the start) to this many samples.
        max_image_pixels: larger images are refused (None: no limit).
    """

    image_size: int
    sample_rate: int
    max_audio_samples: int
    max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS

    def fingerprint(self) -> str:
        return repr(sorted(asdict(self).items()))


def file_stat(path: Path) -> FileStat:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


class MediaCache:
    """Decoded media by path, in memory and (optionally) on disk, keyed by file and preprocessing settings.

    Each entry remembers the file's size and modification time: a changed file is decoded again. The on-disk
    cache is one file per (folder, settings) under ``cache_dir``, rewritten atomically when entries were added,
    so several runs on the same folder (one per fusion) decode once.

    Args:
        settings: decoding settings.
        cache_dir: where the on-disk cache lives; None keeps it in memory only.
        key: what identifies the data set (its folder), mixed into the cache file name.
        threads: decoding threads (Pillow and libsndfile release the GIL).
    """

    def __init__(self, settings: DecodeSettings, cache_dir: str | Path | None = None, key: str = "",
                 threads: int = 4) -> None:
        self.settings = settings
        self.threads = max(1, threads)
        self.entries: dict[str, tuple[FileStat, Tensor | None, str | None]] = {}
        self.decoded = 0  # files decoded by this object (0 on a warm cache)
        self.path: Path | None = None
        if cache_dir is not None:
            digest = hashlib.sha256(repr((CACHE_VERSION, key, settings.fingerprint())).encode()).hexdigest()
            self.path = Path(cache_dir) / f"media-{digest[:16]}.pt"
            self._load()

    # -- the MediaStore interface --------------------------------------------------------------------------
    def get(self, key: StoreKey) -> Tensor | DecodeError | None:
        if key.fingerprint != self.settings.fingerprint():
            return None
        hit = self.entries.get(key.source)
        if hit is None or hit[0] != key.stat:
            return None
        return hit[1] if hit[1] is not None else DecodeError(hit[2] or "cannot decode")

    def put(self, key: StoreKey, value: Tensor | DecodeError) -> None:
        if key.fingerprint != self.settings.fingerprint():
            raise ValueError("MediaCache holds one settings fingerprint; this key has another")
        ok = isinstance(value, Tensor)
        self.entries[key.source] = (key.stat, value if ok else None, None if ok else str(value))

    def flush(self) -> None:
        self.save()

    # -- on disk ---------------------------------------------------------------------------------------------
    def _load(self) -> None:
        assert self.path is not None
        if not self.path.is_file():
            return
        try:
            self.entries = torch.load(self.path, map_location="cpu", weights_only=True)
            log.info("media cache %s: %d entries", self.path, len(self.entries))
        except Exception as e:  # a truncated or foreign file: start afresh, but say so
            log.warning("ignoring unreadable media cache %s (%s)", self.path, e)
            self.entries = {}

    def save(self) -> None:
        """Write the on-disk cache (atomically) if it has one; failures are logged, never fatal."""
        if self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(f".tmp{os.getpid()}")
            torch.save(self.entries, tmp)
            tmp.replace(self.path)
            log.info("media cache written: %s (%d entries)", self.path, len(self.entries))
        except OSError as e:
            log.warning("could not write media cache %s: %s", self.path, e)

    # -- decoding through the cache ----------------------------------------------------------------------------
    def get_many(self, kind: str, paths: Iterable[Path]) -> dict[Path, Tensor | DecodeError]:
        """Decoded tensors (or the error) for ``paths`` of ``kind`` ``image``/``audio``; decodes what is stale."""
        s = self.settings
        work_fn: Callable[[Path], Tensor]
        if kind == "image":
            work_fn = lambda p: decode.load_image(p, s.image_size, s.max_image_pixels)  # noqa: E731
        elif kind == "audio":
            work_fn = lambda p: decode.load_audio(p, s.sample_rate, s.max_audio_samples)  # noqa: E731
        else:
            raise ValueError(f"unknown media kind {kind!r}")
        fingerprint = s.fingerprint()
        out: dict[Path, Tensor | DecodeError] = {}
        todo: list[StoreKey] = []
        paths_of: dict[str, Path] = {}
        for p in dict.fromkeys(paths):
            stat = file_stat(p)
            if stat is None:
                out[p] = DecodeError("missing file" if not os.path.lexists(p) else "cannot read file")
                continue
            key = StoreKey(f"{kind}:{p}", stat, fingerprint)
            hit = self.get(key)
            if hit is not None:
                out[p] = hit
            else:
                todo.append(key)
                paths_of[key.source] = p

        def work(key: StoreKey) -> Tensor | DecodeError:
            try:
                return work_fn(paths_of[key.source])
            except DecodeError as e:
                return e

        with ThreadPoolExecutor(self.threads) as pool:
            for key, result in zip(todo, pool.map(work, todo)):
                out[paths_of[key.source]] = result
                self.put(key, result)
        self.decoded += len(todo)
        return out
