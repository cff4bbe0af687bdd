"""Decoding media files (a path, or the bytes of a shard member) into the tensors the processors store.

Images: anything Pillow reads, composited onto white when it has transparency, high bit depths (16-bit grey or
colour, 32-bit integer, float) scaled to 8 bits, converted to RGB and resized to a square of ``image_size`` ->
(3, H, W) uint8. Images above ``max_pixels`` are refused from their header, before any pixel is decoded. Audio:
WAV / FLAC / OGG (whatever ``soundfile``'s libsndfile reads), mixed down to mono, resampled to ``sample_rate``
and cropped to ``max_samples`` -> (S,) float32.

Memory is bounded per file: JPEG decodes straight at a reduced scale (Pillow's ``draft``); other formats that
are large are reduced by an integer factor right after decoding, and only one such large decode runs at a time
whatever the number of decoding threads. Audio is resampled by libsoxr (``soxr``) at the exact ratio of any two
rates (44111 -> 8000 Hz as well), its filter bounded in size whatever the ratio.
Pillow's own refusal of very large images (``PIL.Image.MAX_IMAGE_PIXELS``, a process-wide setting) is left as the
user's program set it: the limit of a data config is applied per decode (``max_pixels``).
Legend: H/W image height/width, S audio samples.
"""

from __future__ import annotations

import io
import math
import re
import struct
import threading
import warnings
import wave
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soundfile as sf
import soxr
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from mmgpt.errors import UserError

#: Bump when decoding changes, so stored decoded media (the media store's entries) are not reused.
#: 2: high-bit-depth images scaled instead of saturated; resampling of awkward rates through a nearby ratio.
#: 3: audio resampled by soxr at the exact ratio of any two rates.
CACHE_VERSION = 3
#: Default refusal threshold (pixels) for images: Pillow's own warning threshold (about 9459 x 9459).
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485
#: Images above this many pixels are decoded one at a time and reduced at once (a few hundred MB of RGB).
LARGE_IMAGE_PIXELS = 16_000_000

_large_decode = threading.Lock()
# mmgpt refuses images above data.max_image_pixels itself, with a named problem; Pillow's warning about images
# above its own threshold would only repeat that, and its error would bypass the limit the user chose.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

Source = str | Path | BinaryIO | bytes


class DecodeError(UserError):
    """A media file that cannot be decoded (or decodes to nothing, or is refused by a limit)."""


def _open(source: Source) -> str | BinaryIO:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return io.BytesIO(source)
    return str(source) if isinstance(source, Path) else source


def load_image(source: Source, image_size: int, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> Tensor:
    """Decode any Pillow image to a (3, image_size, image_size) uint8 RGB tensor.

    Args:
        source: a path, an open binary file, or the file's bytes.
        image_size: side of the square output.
        max_pixels: refuse images with more pixels than this (None: no limit).

    Raises:
        DecodeError: the file is not an image Pillow can read, has no pixels, has more than ``max_pixels``, or
            has values that cannot be mapped to 8 bits.
    """
    rgb = open_rgb(source, max_pixels, image_size)
    rgb = rgb.resize((image_size, image_size), Image.Resampling.BILINEAR, reducing_gap=None)
    return torch.from_numpy(np.asarray(rgb, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()  # (3, H, W)


def open_rgb(source: Source, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
             target_size: int | None = None) -> Image.Image:
    """Decode any Pillow image to an 8-bit RGB image, checked against ``max_pixels`` (see :func:`load_image`).

    With ``target_size`` a JPEG may be decoded at a reduced scale and a large image shrunk early, as long as both
    sides stay at least ``target_size`` (4x for large images); without it the image is decoded at full size (what a
    pretrained backbone's own processor sees).
    """
    try:
        with Image.open(_open(source)) as im:
            w, h = im.size
            if w == 0 or h == 0:
                raise DecodeError("image has no pixels")
            if max_pixels is not None and w * h > max_pixels:
                raise DecodeError(f"image of {w}x{h} = {w * h:,} pixels is larger than the limit of {max_pixels:,} "
                                  "(data.max_image_pixels)")
            if target_size is None:
                return _to_rgb(im)
            im.draft("RGB", (target_size, target_size))  # JPEG: decode at 1/2, 1/4 or 1/8 scale when that suffices
            if im.width * im.height > LARGE_IMAGE_PIXELS:
                with _large_decode:
                    return _to_rgb(_reduce_large(im, target_size))
            return _to_rgb(im)
    except Image.DecompressionBombError as e:  # above twice Pillow's threshold: refused before we see the size
        raise _pillow_refusal(e, max_pixels) from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        if isinstance(e, DecodeError):
            raise
        raise DecodeError(f"cannot decode image: {e}") from e


def _pillow_refusal(error: Image.DecompressionBombError, max_pixels: int | None) -> DecodeError:
    """The one-line problem of an image Pillow refused before its size could be checked against ``max_pixels``."""
    found = re.search(r"\((\d+) pixels\)", str(error))
    pixels = int(found.group(1)) if found else None
    size = f"{pixels:,} pixels" if pixels is not None else "too many pixels"
    if max_pixels is not None and (pixels is None or pixels > max_pixels):
        return DecodeError(f"image of {size} is larger than the limit of {max_pixels:,} (data.max_image_pixels)")
    # Within the config's limit, but past Pillow's process-wide one, which mmgpt does not change behind the
    # program's back: the program that wants such images raises it itself.
    pillow_limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
    return DecodeError(f"image of {size} is within data.max_image_pixels but above Pillow's own limit of "
                       f"{pillow_limit:,} pixels (2 x PIL.Image.MAX_IMAGE_PIXELS, a process-wide setting: raise it in "
                       "a plugin module to decode such images)")


def _reduce_large(im: Image.Image, image_size: int) -> Image.Image:
    """Decode a large image and shrink it at once by an integer factor (box average), keeping >= 4 x image_size."""
    im.load()
    factor = max(1, min(im.width, im.height) // (4 * image_size))
    if factor == 1:
        return im
    if im.mode.startswith("I") or im.mode == "F":
        im = _to_8bit(im)  # reduce() takes 8-bit modes; scale first (one full-size 8-bit copy)
    if im.mode not in ("L", "RGB", "RGBA"):
        has_alpha = "A" in im.mode or "transparency" in im.info
        im = im.convert("RGBA" if has_alpha else "RGB")
    return im.reduce(factor)


def _to_8bit(im: Image.Image) -> Image.Image:
    """High-bit-depth single-channel modes (I;16*, I, F) -> L, scaled, not clipped."""
    a = np.asarray(im)
    if im.mode.startswith("I;16"):
        out = a.astype(np.float32) / 257.0  # 0..65535 -> 0..255
    elif im.mode == "I":
        # Mode I is what Pillow gives 16-bit greyscale PNG/TIFF (and 32-bit integer TIFF): a 16-bit range.
        lo, hi = int(a.min()), int(a.max())
        if lo < 0 or hi > 65535:
            raise DecodeError(f"32-bit integer image with values in [{lo}, {hi}]: expected 0..65535")
        out = a.astype(np.float32) / 257.0
    else:  # F: float pixels, in [0, 1] (the usual convention) or in [0, 255]
        if not np.isfinite(a).all():
            raise DecodeError("float image contains NaN or infinite pixels")
        lo, hi = float(a.min()), float(a.max())
        if lo >= 0.0 and hi <= 1.0:
            out = a * 255.0
        elif lo >= 0.0 and hi <= 255.0:
            out = a
        else:
            raise DecodeError(f"float image with values in [{lo:g}, {hi:g}]: expected [0, 1] or [0, 255]")
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8), mode="L")


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any mode -> RGB: high bit depths scaled to 8 bits, transparency composited onto white."""
    if im.mode.startswith("I") or im.mode == "F":
        im = _to_8bit(im)
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, rgba)
    return im.convert("RGB")


def resample(wave: np.ndarray, orig: int, new: int) -> np.ndarray:
    """Resample a mono float32 waveform from ``orig`` to ``new`` Hz at the exact ratio (libsoxr, high quality).

    Any pair of rates costs the same small filter (44111 -> 8000 Hz included), and the output has
    ``round(len(wave) * new / orig)`` samples.
    """
    if orig == new:
        return wave
    return soxr.resample(wave, orig, new, quality="HQ")


def _read_pcm16_wav(source: Source, frames_for: Callable[[int], int]) -> tuple[int, np.ndarray] | None:
    """(rate, (S, channels) float32) of a plain 16-bit PCM WAV through the standard library, or None for any other
    file (libsndfile reads those). Per call it costs a sixth of libsndfile's on in-memory bytes (shard members),
    and gives the same values (sample / 32768)."""
    if isinstance(source, (str, Path)) and not str(source).lower().endswith(".wav"):
        return None
    position = source.tell() if hasattr(source, "tell") else None
    try:
        with wave.open(_open(source), "rb") as w:
            if w.getsampwidth() != 2 or w.getcomptype() != "NONE":
                raise wave.Error("not 16-bit PCM")
            rate, channels = w.getframerate(), w.getnchannels()
            raw = w.readframes(frames_for(rate))
    except (wave.Error, EOFError, OSError, ValueError, struct.error):
        if position is not None:
            source.seek(position)  # type: ignore[union-attr]
        return None
    pcm = np.frombuffer(raw, dtype="<i2").reshape(-1, channels)
    return rate, pcm.astype(np.float32) / np.float32(32768.0)


def load_audio(source: Source, sample_rate: int, max_samples: int) -> Tensor:
    """Decode a WAV/FLAC/OGG file to a mono (S,) float32 waveform at ``sample_rate``, S <= ``max_samples``.

    Only the part that survives cropping is read, so long recordings cost little.

    Raises:
        DecodeError: libsndfile cannot read the file, or it holds no samples.
    """
    # Read what the crop keeps, plus a margin so the resampler's filter has context at the end.
    frames_for = lambda sr_in: math.ceil(max_samples * sr_in / sample_rate) + 64  # noqa: E731
    read = _read_pcm16_wav(source, frames_for)
    if read is None:
        try:
            with sf.SoundFile(_open(source)) as f:
                read = f.samplerate, f.read(frames=frames_for(f.samplerate), dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError, OSError, ValueError) as e:
            raise DecodeError(f"cannot decode audio: {e}") from e
    sr_in, data = read  # data: (S_in, channels) float32
    if data.shape[0] == 0:
        raise DecodeError("empty audio: no samples")
    mono = data[:, 0] if data.shape[1] == 1 else data.mean(axis=1)  # (S_in,) mixed down to mono
    if not np.isfinite(mono).all():
        raise DecodeError("audio contains NaN or infinite samples")
    wave = resample(np.ascontiguousarray(mono), sr_in, sample_rate)  # (S,)
    return torch.from_numpy(np.ascontiguousarray(wave[:max_samples], dtype=np.float32))
