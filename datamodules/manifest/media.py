"""A manifest's media files through the :class:`~mmgpt.datamodules.disk_store.DiskStore`: checked, decoded once,
read back.

:class:`MediaFiles` is what the validation pass and the datasets share. The validation pass checks files in
chunks (``full``: decode and write to the store, then drop; ``headers``: read only each file's header), so its
memory does not grow with the folder; a dataset reads each sample's arrays from the store on demand, decoding (and
storing) a file the store does not hold yet.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
import weakref
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from mmgpt.datamodules.decode import CACHE_VERSION, DecodeError
from mmgpt.datamodules.disk_store import DiskStore, SourceId
from mmgpt.datamodules.processors import Processor

log = logging.getLogger(__name__)

#: ``data.check``: what the validation pass does with each media file.
CHECKS: tuple[str, ...] = ("full", "headers", "off")
#: The store namespace of decoded manifest media (backbone features will use their own).
NAMESPACE = "media"


def read_npy_header(path: str | Path) -> tuple[int, ...]:
    """The shape in a ``.npy`` file's header (nothing else read; object arrays refused).

    Raises:
        DecodeError: not a ``.npy`` file, or one holding Python objects.
    """
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read(f)  # what np.load reads first
    except (OSError, ValueError) as e:
        raise DecodeError(f"cannot read features: {e}") from e
    if dtype.hasobject:
        raise DecodeError("features file holds Python objects (refused: only numeric arrays are read)")
    return tuple(shape)


def read_header(kind: str, path: str | Path) -> None:
    """Open ``path`` and read only its header (image size and mode; audio rate, channels and frames).

    Raises:
        DecodeError: the header is unreadable, or says the file holds nothing.
    """
    if kind == "image":
        try:
            with Image.open(path) as im:  # parses the header; pixels are decoded only by load()
                width, height, mode = im.width, im.height, im.mode
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            raise DecodeError(f"cannot decode image: {e}") from e
        if width == 0 or height == 0 or not mode:
            raise DecodeError("image has no pixels")
    elif kind == "features":
        shape = read_npy_header(path)
        if len(shape) not in (1, 2) or 0 in shape:
            raise DecodeError(f"features of shape {shape}: expected (N, F) or (F,) with N, F > 0")
    elif kind == "audio":
        try:
            info = sf.info(str(path))
        except (sf.LibsndfileError, RuntimeError, OSError, ValueError) as e:
            raise DecodeError(f"cannot decode audio: {e}") from e
        if info.frames == 0 or info.channels == 0:
            raise DecodeError("empty audio: no samples")
        if info.samplerate <= 0:
            raise DecodeError(f"audio header says sample rate {info.samplerate}")
    else:
        raise ValueError(f"unknown media kind {kind!r}")


def _missing(path: str) -> DecodeError:
    return DecodeError("missing file" if not os.path.lexists(path) else "cannot read file")


class MediaFiles:
    """Decoded images and clips of manifest folders, kept in a memory-mapped store (one copy on disk for all).

    Args:
        processors: the modalities, name -> processor (text ones, or None, count as text: rows may hold them); each
            file of an ``image``, ``audio`` or ``features`` modality is decoded by its modality's processor, and
            the processor's fingerprint (every setting decoding depends on) is part of the store key (so keys do not
            depend on the name, and a pretrained backbone's processor gets its own entries).
        store: the store, or its folder; None makes a temporary one, deleted with this object.
        threads: decoding threads in the validation pass (Pillow and libsndfile release the GIL).
        memory_cache_mb: per-process LRU of decoded arrays, in MiB (0: none; see :class:`DiskStore`).
        keep: store what the validation pass decodes; False only checks (decode, drop), for a one-off
            ``mmgpt-data check`` without a store folder.
    """

    def __init__(self, processors: Mapping[str, Processor | None], store: DiskStore | str | Path | None = None, *,
                 threads: int = 4, memory_cache_mb: float = 0, keep: bool = True) -> None:
        #: Every declared modality, name -> kind (text included: what a folder's rows may hold).
        self.modalities = {name: p.kind if p is not None else "text" for name, p in processors.items()}
        #: The file-valued modalities' processors.
        self.processors = {name: p for name, p in processors.items() if p is not None and p.kind != "text"}
        self.kinds = {name: p.kind for name, p in self.processors.items()}
        self.threads = max(1, threads)
        self.keep = keep
        if store is None:
            tmp = tempfile.mkdtemp(prefix="mmgpt-media-")
            # Only the creating process deletes it (a forked loader worker dropping its copy must not).
            weakref.finalize(self, _remove_if_owner, tmp, os.getpid())
            store = tmp
        self.store = store if isinstance(store, DiskStore) else DiskStore(store, memory_cache_mb=memory_cache_mb)
        self.decoded = 0  # files decoded by this object in this process (0 on a warm store)
        self._fingerprints = {name: p.fingerprint() if p.kind != "features" else
                              f"features:v{CACHE_VERSION}:{p.fingerprint()}" for name, p in self.processors.items()}

    def kind(self, name: str) -> str:
        """The kind of modality ``name``."""
        if name not in self.kinds:
            raise ValueError(f"{name!r} is not a file-valued modality here (those are: {sorted(self.kinds)})")
        return self.kinds[name]

    def decode(self, name: str, path: str) -> Tensor:
        """Decode one file of modality ``name`` (no store involved).

        Raises:
            DecodeError: it cannot be decoded.
        """
        self.kind(name)  # a named error for a modality without files
        return self.processors[name].decode(path)

    def check_many(self, kind: str, paths: Sequence[str], mode: str = "full") -> dict[str, str | None]:
        """path -> the problem (None when fine) of each file, by ``mode``: ``full`` decodes (and stores) what the
        store does not hold yet, ``headers`` reads only the header of those files."""
        if mode not in ("full", "headers"):
            raise ValueError(f"check mode {mode!r}: expected full or headers")
        fp = self._fingerprints[kind]
        out: dict[str, str | None] = {}
        todo: list[tuple[str, SourceId]] = []
        for p in dict.fromkeys(paths):
            src = SourceId.of(p)
            if src is None:
                out[p] = str(_missing(p))
                continue
            hit = self.store.lookup(NAMESPACE, fp, src)
            if hit is not None:
                out[p] = hit.error
            else:
                todo.append((p, src))
        if mode == "headers":
            def work(item: tuple[str, SourceId]) -> str | None:
                try:
                    read_header(self.kind(kind), item[0])
                except DecodeError as e:
                    return str(e)
                return None

            with ThreadPoolExecutor(self.threads) as pool:
                out.update(zip((p for p, _ in todo), pool.map(work, todo)))
            return out
        def decode_one(item: tuple[str, SourceId]) -> Tensor | DecodeError:
            try:
                return self.decode(kind, item[0])
            except DecodeError as e:
                return e

        with ThreadPoolExecutor(self.threads) as pool:
            for (p, src), result in zip(todo, pool.map(decode_one, todo)):
                if self.keep:
                    self.store.put(NAMESPACE, fp, src, result.numpy() if isinstance(result, Tensor) else str(result))
                out[p] = None if isinstance(result, Tensor) else str(result)
        self.decoded += len(todo)
        return out

    def get(self, kind: str, path: str) -> Tensor:
        """The decoded tensor of ``path``: from the store, or decoded now (and stored for next time).

        Raises:
            DecodeError: the file is missing or cannot be decoded.
        """
        src = SourceId.of(path)
        if src is None:
            raise _missing(path)
        fp = self._fingerprints[kind]
        hit = self.store.lookup(NAMESPACE, fp, src)
        if hit is not None:
            if hit.error is not None:
                raise DecodeError(hit.error)
            return torch.from_numpy(self.store.read(hit))
        try:
            value = self.decode(kind, path)
        except DecodeError as e:
            self.store.put(NAMESPACE, fp, src, str(e))
            raise
        finally:
            self.decoded += 1
        self.store.put(NAMESPACE, fp, src, value.numpy())
        return value

    def entry(self, kind: str, path: str) -> int:
        """The committed store entry of ``path`` as it is now (-1: none, stale, or a decode error), so a dataset
        checked in full can read it by index (:meth:`read_entry`) without a stat and a lookup per sample."""
        src = SourceId.of(path)
        hit = None if src is None else self.store.lookup(NAMESPACE, self._fingerprints[kind], src)
        return hit.index if hit is not None and hit.error is None and hit.index >= 0 else -1

    def read_entry(self, index: int) -> Tensor:
        """The tensor of committed entry ``index`` (from :meth:`entry`)."""
        return torch.from_numpy(self.store.read_entry(index))

    def flush(self, refresh: bool = True) -> None:
        """Commit what this process decoded, so every other process sees it; ``refresh`` loads it here too."""
        self.store.flush(refresh=refresh)


def _remove_if_owner(path: str, pid: int) -> None:
    if os.getpid() == pid:
        shutil.rmtree(path, ignore_errors=True)


class Progress:
    """Files checked so far, with a rate and an estimate of the time left: a tqdm bar on a terminal, log lines
    (at most one every ``every_s`` seconds) otherwise."""

    def __init__(self, desc: str = "checking media", every_s: float = 10.0, bar: bool | None = None) -> None:
        self.desc, self.every_s = desc, every_s
        self.use_bar = os.isatty(2) if bar is None else bar
        self.t0 = self.last = time.perf_counter()
        self.bar = None
        self.done = 0

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None and self.use_bar and total:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=self.desc, unit="file", dynamic_ncols=True)
        if self.bar is not None:
            self.bar.update(done - self.done)
        self.done = done
        now = time.perf_counter()
        if self.bar is None and total and (now - self.last >= self.every_s or done == total):
            self.last = now
            rate = done / max(now - self.t0, 1e-9)
            eta = (total - done) / rate if rate > 0 else float("inf")
            log.info("%s: %d/%d files (%.0f%%), %.0f files/s, %s left", self.desc, done, total, 100 * done / total,
                     rate, _duration(eta))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _duration(seconds: float) -> str:
    if seconds == float("inf"):
        return "unknown time"
    m, s = divmod(round(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"
