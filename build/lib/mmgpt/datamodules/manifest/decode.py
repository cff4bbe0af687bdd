"""Decoding media files into the tensors the model takes, and a cache so each file is decoded once.

Images: anything Pillow reads, composited onto white when it has transparency, converted to RGB and resized to a
square of ``image_size`` -> (3, H, W) uint8. Audio: WAV / FLAC / OGG (whatever ``soundfile``'s libsndfile reads),
mixed down to mono, resampled to ``sample_rate`` and cropped to ``max_audio_samples`` -> (S,) float32.
Legend: H/W image height/width, S audio samples.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF
from PIL import Image, UnidentifiedImageError
from torch import Tensor

log = logging.getLogger(__name__)

#: Bump when decoding changes, so old on-disk caches are not reused.
CACHE_VERSION = 1


@dataclass(frozen=True)
class DecodeSettings:
    """Everything decoding depends on: part of every cache key.

    Attributes:
        image_size: side of the square RGB images.
        sample_rate: audio sample rate after resampling, in Hz.
        max_audio_samples: longer clips are cropped (from the start) to this many samples.
    """

    image_size: int
    sample_rate: int
    max_audio_samples: int


class DecodeError(ValueError):
    """A media file that cannot be decoded (or decodes to nothing)."""


def load_image(path: str | Path, image_size: int) -> Tensor:
    """Decode any Pillow image to a (3, image_size, image_size) uint8 RGB tensor.

    Raises:
        DecodeError: the file is not an image Pillow can read, or it has no pixels.
    """
    try:
        with Image.open(path) as im:
            im.load()
            if im.width == 0 or im.height == 0:
                raise DecodeError("image has no pixels")
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                rgba = im.convert("RGBA")
                white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                im = Image.alpha_composite(white, rgba)
            rgb = im.convert("RGB").resize((image_size, image_size), Image.Resampling.BILINEAR, reducing_gap=None)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        if isinstance(e, DecodeError):
            raise
        raise DecodeError(f"cannot decode image: {e}") from e
    return torch.from_numpy(np.asarray(rgb, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()  # (3, H, W)


def load_audio(path: str | Path, sample_rate: int, max_samples: int) -> Tensor:
    """Decode a WAV/FLAC/OGG file to a mono (S,) float32 waveform at ``sample_rate``, S <= ``max_samples``.

    Only the part that survives cropping is read, so long recordings cost little.

    Raises:
        DecodeError: libsndfile cannot read the file, or it holds no samples.
    """
    try:
        with sf.SoundFile(str(path) if isinstance(path, (str, Path)) else path) as f:  # a path or a file object
            sr_in = f.samplerate
            # Read what the crop keeps, plus a margin so the resampler's filter has context at the end.
            frames = math.ceil(max_samples * sr_in / sample_rate) + 64
            data = f.read(frames=frames, dtype="float32", always_2d=True)  # (S_in, channels)
    except (sf.LibsndfileError, RuntimeError, OSError, ValueError) as e:
        raise DecodeError(f"cannot decode audio: {e}") from e
    if data.shape[0] == 0:
        raise DecodeError("empty audio: no samples")
    wave = torch.from_numpy(data.mean(axis=1))  # (S_in,) mixed down to mono
    if not torch.isfinite(wave).all():
        raise DecodeError("audio contains NaN or infinite samples")
    if sr_in != sample_rate:
        wave = AF.resample(wave, sr_in, sample_rate)
    return wave[:max_samples].contiguous()


def _file_stat(path: Path) -> tuple[int, int] | None:
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
        self.entries: dict[str, tuple[tuple[int, int] | None, Tensor | None, str | None]] = {}
        self.decoded = 0  # files decoded by this object (0 on a warm cache)
        self.path: Path | None = None
        if cache_dir is not None:
            digest = hashlib.sha256(repr((CACHE_VERSION, key, sorted(asdict(settings).items()))).encode()).hexdigest()
            self.path = Path(cache_dir) / f"media-{digest[:16]}.pt"
            self._load()

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

    def get_many(self, kind: str, paths: Iterable[Path]) -> dict[Path, Tensor | DecodeError]:
        """Decoded tensors (or the error) for ``paths`` of ``kind`` ``image``/``audio``; decodes what is stale."""
        decode: Callable[[Path], Tensor]
        s = self.settings
        if kind == "image":
            decode = lambda p: load_image(p, s.image_size)  # noqa: E731
        elif kind == "audio":
            decode = lambda p: load_audio(p, s.sample_rate, s.max_audio_samples)  # noqa: E731
        else:
            raise ValueError(f"unknown media kind {kind!r}")
        out: dict[Path, Tensor | DecodeError] = {}
        todo: list[tuple[Path, tuple[int, int] | None]] = []
        for p in dict.fromkeys(paths):
            stat = _file_stat(p)
            if stat is None:
                out[p] = DecodeError("missing file" if not os.path.lexists(p) else "cannot read file")
                continue
            hit = self.entries.get(f"{kind}:{p}")
            if hit is not None and hit[0] == stat:
                out[p] = hit[1] if hit[1] is not None else DecodeError(hit[2] or "cannot decode")
            else:
                todo.append((p, stat))

        def work(item: tuple[Path, tuple[int, int] | None]) -> Tensor | DecodeError:
            try:
                return decode(item[0])
            except DecodeError as e:
                return e

        with ThreadPoolExecutor(self.threads) as pool:
            for (p, stat), result in zip(todo, pool.map(work, todo)):
                out[p] = result
                ok = isinstance(result, Tensor)
                self.entries[f"{kind}:{p}"] = (stat, result if ok else None, None if ok else str(result))
        self.decoded += len(todo)
        return out
