"""Decoding media files into the tensors the model takes (:mod:`~mmgpt.datamodules.manifest.media` stores them).

Images: anything Pillow reads, composited onto white when it has transparency, converted to RGB and resized to a
square of ``image_size`` -> (3, H, W) uint8. Audio: WAV / FLAC / OGG (whatever ``soundfile``'s libsndfile reads),
mixed down to mono, resampled to ``sample_rate`` and cropped to ``max_audio_samples`` -> (S,) float32.
Legend: H/W image height/width, S audio samples.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF
from PIL import Image, UnidentifiedImageError
from torch import Tensor

log = logging.getLogger(__name__)

#: Bump when decoding changes, so stored arrays decoded the old way are not reused (part of the fingerprint).
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
