"""Modality kinds and their processors: how a raw sample becomes an encoder input (see docs/data.md).

A processor owns every setting its modality's decoding depends on, and has four jobs: ``decode`` (a file or
bytes -> the stored form), ``transform`` (stored form -> encoder input, with training-time augmentation),
``collate`` (per-sample inputs -> a batch tensor, a padding mask and presence) and ``fingerprint`` (a stable
string of the decode settings, for store keys). The scratch encoders' preprocessing is the set built by
:func:`declared_processors`; a pretrained backbone brings its own processor of the same kind.
Legend: B batch, T text tokens, S audio samples, N feature steps, F feature size.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from mmgpt.batch import MODALITIES
from mmgpt.datamodules.decode import (
    CACHE_VERSION,
    DEFAULT_MAX_IMAGE_PIXELS,
    DecodeError,
    Source,
    load_audio,
    load_image,
)
from mmgpt.datamodules.options import DataOptions
from mmgpt.errors import UserError
from mmgpt.tokenizer import TOKEN_IDS, ByteTokenizer, load_tokenizer

#: The kinds of modality a datamodule can declare.
KINDS: tuple[str, ...] = ("text", "image", "audio", "features")

#: The image normalisation of the scratch image encoder: pixels in [0, 1] -> (x - mean) / std.
IMAGE_MEAN, IMAGE_STD = 0.5, 0.25


def audio_samples(max_audio_seconds: float, sample_rate: int) -> int:
    """The one rule for clip lengths in samples, used by every datamodule and ``mmgpt-data``."""
    return int(round(max_audio_seconds * sample_rate))


def normalize_image(image: Tensor) -> Tensor:
    """(3, H, W) float pixels in [0, 1] -> the normalised image every scratch mmgpt model is trained on."""
    return (image - IMAGE_MEAN) / IMAGE_STD


class Processor(ABC):
    """One modality's raw-sample -> encoder-input rules (see the module doc)."""

    kind: str
    #: Whether ``transform`` may draw random numbers (augmentation). The loader seeds the global generators per
    #: sample only for datasets where something can (:class:`~mmgpt.datamodules.resumable.KeyedDataset`); a
    #: processor that never draws says False.
    draws_randomness: bool = True

    def decode(self, source: Any) -> Any:
        """A file (path or bytes) or an inline value -> the stored form. Raises ``DecodeError``."""
        return source

    def transform(self, stored: Any, *, train: bool) -> Any:
        """The stored form -> the encoder input of one sample (random augmentation only when ``train``)."""
        return stored

    def is_present(self, value: Any) -> bool:
        """Whether a sample's value counts as a present modality."""
        return value is not None

    @abstractmethod
    def collate(self, values: Sequence[Any]) -> tuple[Tensor, Tensor | None, Tensor]:
        """Per-sample inputs (None = missing) -> (batch input (B, ...), padding mask (B, ...) or None, present (B,))."""

    @property
    def collates_rows(self) -> bool:
        """Whether a batch of stored rows gathered from a table at once may take :meth:`collate_rows` (the
        batched path, :class:`~mmgpt.datamodules.collate.Rows`): the class that implements it also gives the
        ``transform`` and ``collate`` in effect, so a subclass that changes either loads one sample at a time."""
        cls = type(self)
        owner = next(c for c in cls.__mro__ if "collate_rows" in c.__dict__)
        return owner is not Processor and all(
            getattr(cls, name) is owner.__dict__.get(name) for name in ("transform", "collate"))

    def collate_rows(self, rows: np.ndarray, lengths: np.ndarray | None) -> tuple[Tensor, Tensor | None, Tensor]:
        """What :meth:`collate` returns for the samples whose stored values are ``rows`` (B, ...), each cut to its
        first ``lengths`` (B,) steps (None: all of them), with ``transform(train=...)`` applied: the same tensors,
        without a Python step per sample."""
        raise NotImplementedError(f"{type(self).__name__} collates samples one by one")

    def fingerprint(self) -> str:
        """Every setting ``decode`` depends on, as a stable string (part of store keys)."""
        return f"{type(self).__name__}"

    def derived(self) -> dict[str, Any]:
        """The ``data.*`` settings this processor decides itself (a pretrained backbone's image size or sample
        rate); :func:`build_processors` refuses an explicit ``data.*`` value that contradicts one."""
        return {}


class TextProcessor(Processor):
    """Text: a string per sample, tokenized at collation. Empty or blank text counts as missing.

    Args:
        tokenizer: the tokenizer (the byte tokenizer of the scratch text encoder by default).
    """

    kind = "text"

    def __init__(self, *, tokenizer: ByteTokenizer) -> None:
        self.tokenizer = tokenizer

    def is_present(self, value: Any) -> bool:
        return isinstance(value, str) and bool(value.strip())

    def collate(self, values: Sequence[Any]) -> tuple[Tensor, Tensor | None, Tensor]:
        present = [self.is_present(v) for v in values]
        ids, mask = self.tokenizer.batch_encode([v if p else None for v, p in zip(values, present)])  # (B, T)
        return ids, mask, torch.tensor(present)

    def fingerprint(self) -> str:
        return f"text:{self.tokenizer.fingerprint()}"


class ImageProcessor(Processor):
    """Images: decoded to (3, S, S) uint8 RGB (stored), then scaled to [0, 1], normalised, flipped in training.

    Args:
        image_size: side S of the square images.
        max_pixels: images with more pixels are refused when decoded (None: no limit).
        augment: randomly flip training images horizontally (p = 0.5, drawn from the global generator, which
            the loaders seed per sample).
        mean: normalisation mean; std: normalisation standard deviation.
    """

    kind = "image"

    def __init__(self, *, image_size: int, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS, augment: bool = False,
                 mean: float = IMAGE_MEAN, std: float = IMAGE_STD) -> None:
        if max_pixels is not None and int(max_pixels) < 1:
            raise ValueError(f"data.max_image_pixels={max_pixels}: expected a positive integer or null")
        self.image_size, self.max_pixels, self.augment = image_size, max_pixels, augment
        self.mean, self.std = mean, std

    def decode(self, source: Source) -> Tensor:
        return load_image(source, self.image_size, self.max_pixels)  # (3, S, S) uint8

    def transform(self, stored: Tensor | np.ndarray, *, train: bool) -> Tensor:
        image = torch.as_tensor(stored)
        image = image.float() / 255.0 if image.dtype == torch.uint8 else image.float()  # (3, S, S) in [0, 1]
        image = (image - self.mean) / self.std
        if train and self.augment and torch.rand(()) < 0.5:
            image = image.flip(-1)
        return image

    def collate(self, values: Sequence[Any]) -> tuple[Tensor, Tensor | None, Tensor]:
        S = self.image_size
        images = torch.zeros(len(values), 3, S, S)  # (B, 3, S, S)
        for i, v in enumerate(values):
            if v is not None:
                images[i] = v
        return images, None, torch.tensor([v is not None for v in values])

    def fingerprint(self) -> str:
        return f"image:v{CACHE_VERSION}:size={self.image_size}:max_pixels={self.max_pixels}"


class AudioProcessor(Processor):
    """Audio: decoded to a mono (S,) float32 waveform at ``sample_rate``, cropped to ``max_samples``; padded
    with a mask at collation. A clip of no samples counts as missing.

    Args:
        sample_rate: the rate waveforms are resampled to (Hz).
        max_samples: longer clips are cropped (see :func:`audio_samples`).
    """

    kind = "audio"

    def __init__(self, *, sample_rate: int, max_samples: int) -> None:
        self.sample_rate, self.max_samples = sample_rate, max_samples

    def decode(self, source: Source) -> Tensor:
        return load_audio(source, self.sample_rate, self.max_samples)  # (S,)

    def transform(self, stored: Tensor | np.ndarray, *, train: bool) -> Tensor:
        return torch.as_tensor(stored)

    def is_present(self, value: Any) -> bool:
        return value is not None and len(value) > 0

    def collate(self, values: Sequence[Any]) -> tuple[Tensor, Tensor | None, Tensor]:
        lengths = [min(len(v), self.max_samples) if v is not None else 0 for v in values]
        S = max(1, max(lengths))
        audio = torch.zeros(len(values), S)  # (B, S)
        mask = torch.zeros(len(values), S, dtype=torch.bool)
        for i, (v, n) in enumerate(zip(values, lengths)):
            if n:
                audio[i, :n] = v[:n]
                mask[i, :n] = True
        return audio, mask, torch.tensor([n > 0 for n in lengths])

    def fingerprint(self) -> str:
        return f"audio:v{CACHE_VERSION}:rate={self.sample_rate}:max={self.max_samples}"


class FeaturesProcessor(Processor):
    """Pre-extracted features: a (N, F) sequence or an (F,) vector per sample (``.npy`` files or arrays).

    Sequences are padded to the longest in the batch (mask (B, N)); vectors are stacked as (B, 1, F).

    Args:
        dim: the feature size F every sample must have.
        max_steps: longer sequences are cropped (None: no limit).
    """

    kind = "features"
    draws_randomness = False  # no augmentation: the stored features as they are

    def __init__(self, *, dim: int, max_steps: int | None = None) -> None:
        self.dim, self.max_steps = dim, max_steps

    def decode(self, source: Any) -> Tensor:
        try:
            array = np.load(source, allow_pickle=False) if isinstance(source, (str, bytes)) or hasattr(source, "read") \
                else np.asarray(source)
        except (OSError, ValueError) as e:
            raise DecodeError(f"cannot read features: {e}") from e
        x = torch.as_tensor(np.asarray(array, dtype=np.float32))
        x = x[None] if x.ndim == 1 else x  # (N, F)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise DecodeError(f"features of shape {tuple(array.shape)}: expected (N, {self.dim}) or ({self.dim},)")
        return x[: self.max_steps] if self.max_steps else x

    def transform(self, stored: Any, *, train: bool) -> Tensor:
        x = torch.as_tensor(np.asarray(stored, dtype=np.float32))
        return x[None] if x.ndim == 1 else x  # (N, F): a vector is one step

    def is_present(self, value: Any) -> bool:
        return value is not None and len(value) > 0

    def collate(self, values: Sequence[Any]) -> tuple[Tensor, Tensor | None, Tensor]:
        # One padding call for the batch (a Python loop of per-sample slice assignments cost more than a small
        # network's step: MMSA-sized models train on batches of 32-128 short sequences).
        empty = torch.zeros(0, self.dim)
        steps = [torch.as_tensor(v, dtype=torch.float32) if self.is_present(v) else empty for v in values]
        lengths = torch.tensor([len(x) for x in steps])  # (B,)
        N = max(1, int(lengths.max()))
        out = pad_sequence(steps, batch_first=True)  # (B, N', F), N' the longest; zeros after each length
        if out.shape[1] < N:  # every sample lacks the modality: one masked step
            out = torch.zeros(len(values), N, self.dim)
        mask = torch.arange(N)[None, :] < lengths[:, None]  # (B, N)
        return out, mask, lengths > 0

    def collate_rows(self, rows: np.ndarray, lengths: np.ndarray | None) -> tuple[Tensor, Tensor | None, Tensor]:
        x = torch.as_tensor(np.asarray(rows, dtype=np.float32))
        x = x[:, None] if x.ndim == 2 else x  # (B, T, F): a vector is one step
        B, T = x.shape[:2]
        steps = torch.full((B,), T) if lengths is None else torch.as_tensor(lengths, dtype=torch.long).clamp(max=T)
        N = max(1, int(steps.max())) if B else 1
        mask = torch.arange(N)[None, :] < steps[:, None]  # (B, N)
        if N > T:  # no steps stored at all: one masked step, as per sample
            return x.new_zeros(B, N, x.shape[2]), mask, steps > 0
        x = x[:, :N]
        if lengths is not None and bool((steps < N).any()):
            x = x.masked_fill(~mask[:, :, None], 0.0)  # zeros after each length (whatever the padding stored)
        return x.contiguous(), mask, steps > 0

    def fingerprint(self) -> str:
        return f"features:{self.dim}:{self.max_steps}"


#: The modalities of the embedded synthetic set, and of data that declares none: name -> kind.
DEFAULT_MODALITIES: dict[str, str] = {name: name for name in MODALITIES}


class ModalityError(UserError):
    """A modality declaration (``data.modalities``) that cannot be used; the message names the key."""


def parse_modalities(modalities: Mapping[str, Any] | None, where: str = "data.modalities") -> dict[str, dict[str, Any]]:
    """``data.modalities`` -> name -> ``{"kind": kind, **options}``, in sorted name order.

    Each value is a kind (``image``) or a mapping with ``kind`` and the processor's options
    (``{kind: features, dim: 35, max_steps: 50}``; a ``features`` modality needs ``dim``). None: the default
    three modalities (:data:`DEFAULT_MODALITIES`).

    Raises:
        ModalityError: naming the key of an unknown kind, a bad name, an option the kind does not take.
    """
    if modalities is None:
        modalities = DEFAULT_MODALITIES
    if not isinstance(modalities, Mapping) or not modalities:
        raise ModalityError(f"{where}: expected a mapping name -> kind, e.g. {{poster: image, "
                            f"vision_feats: {{kind: features, dim: 35}}}}, got {modalities!r}")
    out: dict[str, dict[str, Any]] = {}
    for name in sorted(modalities):
        value = modalities[name]
        if not isinstance(name, str) or not name.isidentifier() or name in RESERVED_NAMES:
            raise ModalityError(f"{where}.{name}: a modality name must be an identifier other than "
                                f"{', '.join(RESERVED_NAMES)}")
        spec = {"kind": value} if isinstance(value, str) else dict(value) if isinstance(value, Mapping) else None
        if spec is None or spec.get("kind") not in KINDS:
            kind = spec.get("kind") if spec is not None else value
            raise ModalityError(f"{where}.{name}: kind {kind!r} is not one of {', '.join(KINDS)}")
        allowed = MODALITY_OPTIONS[spec["kind"]]
        for key in spec:
            if key != "kind" and key not in allowed:
                raise ModalityError(f"{where}.{name}.{key}: not an option of a {spec['kind']} modality "
                                    f"(options: {', '.join(allowed) or 'none'})")
        if spec["kind"] == "features" and not isinstance(spec.get("dim"), int):
            raise ModalityError(f"{where}.{name}: a features modality needs its feature size, e.g. "
                                f"{{kind: features, dim: 35}}")
        out[name] = spec
    return out


#: Keys of a sample that are not modalities.
RESERVED_NAMES: tuple[str, ...] = ("id", "label", "caption", "kind")
#: Per-modality options a declaration may give, by kind (the shared data options give the rest).
MODALITY_OPTIONS: dict[str, tuple[str, ...]] = {"text": (), "image": (), "audio": (), "features": ("dim", "max_steps")}


def declared_processors(modalities: Mapping[str, Any] | None, options: DataOptions = DataOptions(),
                        ) -> dict[str, Processor]:
    """The scratch encoders' processors of the declared modalities (see :func:`parse_modalities`; None: the
    default three), with the sizes of the data ``options``."""
    out: dict[str, Processor] = {}
    for name, spec in parse_modalities(modalities).items():
        kind = spec["kind"]
        if kind == "text":
            out[name] = TextProcessor(tokenizer=ByteTokenizer(options.max_text_length))
        elif kind == "image":
            out[name] = ImageProcessor(image_size=options.image_size, max_pixels=options.max_image_pixels,
                                       augment=options.augment)
        elif kind == "audio":
            out[name] = AudioProcessor(sample_rate=options.sample_rate,
                                       max_samples=audio_samples(options.max_audio_seconds, options.sample_rate))
        else:
            out[name] = FeaturesProcessor(dim=spec["dim"], max_steps=spec.get("max_steps"))
    return out


# The scratch encoders' specs name their sizes (the YAML sets them from data.*): the processor follows the encoder.
def scratch_text_processor(spec: Mapping[str, Any], data: Mapping[str, Any]) -> TextProcessor | None:
    """The scratch text encoder's tokenizer: bytes, or the BPE its spec names (``tokenizer: PATH``), truncating at
    ``data.max_text_length`` tokens; none with ``tokenizer: ids`` (the data gives token ids: its processor stays)."""
    if spec.get("tokenizer") == TOKEN_IDS:
        return None
    return TextProcessor(tokenizer=load_tokenizer(spec.get("tokenizer"), int(data["max_text_length"])))


def scratch_image_processor(spec: Mapping[str, Any], data: Mapping[str, Any]) -> ImageProcessor:
    """Square RGB images of the encoder's ``image_size``, normalised with :data:`IMAGE_MEAN` / :data:`IMAGE_STD`."""
    return ImageProcessor(image_size=int(spec.get("image_size") or data["image_size"]),
                          max_pixels=data["max_image_pixels"], augment=bool(data["augment"]))


def scratch_audio_processor(spec: Mapping[str, Any], data: Mapping[str, Any]) -> AudioProcessor:
    """Mono waveforms at the encoder's ``sample_rate`` (its log-mel is the encoder's own front end)."""
    rate = int(spec.get("sample_rate") or data["sample_rate"])
    return AudioProcessor(sample_rate=rate, max_samples=audio_samples(float(data["max_audio_seconds"]), rate))
