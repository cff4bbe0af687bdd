"""Processors of pretrained backbones: the backbone's own tokenizer / image processor / feature extractor decides how
raw samples become its inputs (see :mod:`mmgpt.datamodules.processors` for the four jobs of a processor).

- text: ``AutoTokenizer`` (its vocabulary, special tokens and ``max_length``), right-padded, attention mask;
- image (``transformers``): ``AutoImageProcessor``. ``decode`` runs its geometric steps (resize, centre crop) on
  the decoded RGB image and stores the result as uint8 (exactly what the library's processor rescales next);
  ``transform`` rescales and normalises with its mean / std (and flips when augmenting);
- image (timm): ``resolve_data_config`` + ``create_transform``, split the same way (geometric steps at decode,
  ``ToTensor`` + ``Normalize`` at transform);
- audio: ``AutoFeatureExtractor``. ``decode`` stores the mono waveform at the extractor's sampling rate;
  ``transform`` runs the extractor (normalisation, log-mel / filterbank, fixed-length padding where the model
  wants it: Whisper, AST); raw-waveform models (wav2vec 2.0 family) are padded with a sample mask at collation.

An image stored at another size (the synthetic set renders at ``data.image_size``) goes through the geometric steps
in ``transform``. ``transformers`` / ``timm`` are imported when a processor is built.
Legend: B batch, T text tokens, S audio samples, C feature bins, L feature frames.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from mmgpt.datamodules.decode import DEFAULT_MAX_IMAGE_PIXELS, Source, open_rgb
from mmgpt.datamodules.processors import AudioProcessor, ImageProcessor, Processor, audio_samples
from mmgpt.errors import UserError


def _digest(settings: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _load(loader: Callable[..., Any], spec: Mapping[str, Any], what: str) -> Any:
    from mmgpt.encoders.hf import load_pretrained

    opts = {"trust_remote_code": bool(spec.get("trust_remote_code", False)),
            **({"revision": spec["revision"]} if spec.get("revision") else {})}
    try:
        return load_pretrained(loader, spec["name_or_path"], **opts)
    except UserError:
        raise
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"name_or_path={spec['name_or_path']!r}: cannot load its {what} "
                        f"({str(e).splitlines()[0] if str(e) else type(e).__name__}); save it beside the model "
                        f"(`{what}.save_pretrained(DIR)`)") from e


# -- text -------------------------------------------------------------------------------------------------------------
class HFTextProcessor(Processor):
    """Text through a ``transformers`` tokenizer: (B, T) ids and (B, T) attention mask, right-padded.

    Args:
        tokenizer: the backbone's tokenizer (GPT-2's, with no pad token, pads with its end-of-text token).
        max_length: longer texts are truncated to this many tokens (special tokens included).
        name: where the tokenizer came from (part of the fingerprint).
    """

    kind = "text"

    def __init__(self, *, tokenizer: Any, max_length: int, name: str = "") -> None:
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        tokenizer.padding_side = "right"
        self.tokenizer, self.max_length, self.name = tokenizer, int(max_length), name

    def is_present(self, value: Any) -> bool:
        return isinstance(value, str) and bool(value.strip())

    def collate(self, values: Sequence[Any]) -> tuple[Tensor, Tensor | None, Tensor]:
        present = [self.is_present(v) for v in values]
        enc = self.tokenizer([v if p else "" for v, p in zip(values, present)], padding=True, truncation=True,
                             max_length=self.max_length, return_tensors="pt")
        ids, mask = enc["input_ids"], enc["attention_mask"].bool()  # (B, T)
        if ids.shape[1] == 0:
            ids, mask = torch.full((len(values), 1), self.tokenizer.pad_token_id), torch.zeros(len(values), 1).bool()
        mask[~mask.any(dim=1), 0] = True  # a missing text attends to one pad token (no empty softmax); present=False
        return ids, mask, torch.tensor(present)

    def fingerprint(self) -> str:
        vocab = _digest(self.tokenizer.get_vocab())
        return f"hftext:{self.name}:{type(self.tokenizer).__name__}:vocab={vocab}:max_length={self.max_length}"


# -- images -----------------------------------------------------------------------------------------------------------
class BackboneImageProcessor(ImageProcessor):
    """Images for a pretrained backbone: its geometric steps at decode (stored uint8), its rescale + mean / std at
    transform. Subclasses say what the geometric steps are (:meth:`geometric`) and their settings.

    Args:
        mean, std: per-channel normalisation (after scaling pixels to [0, 1] by ``rescale``).
        rescale: the pixel scale factor (1/255), or None to leave pixels in 0..255.
        max_pixels: larger images are refused when decoded (None: no limit).
        augment: randomly flip training images horizontally.
        settings: every setting of the backbone's processor (fingerprinted).
    """

    def __init__(self, *, mean: Sequence[float], std: Sequence[float], rescale: float | None,
                 max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS, augment: bool = False,
                 settings: Mapping[str, Any]) -> None:
        self.settings = dict(settings)
        probe = [self.geometric(Image.new("RGB", size)).shape for size in ((40, 30), (30, 50))]
        if probe[0] != probe[1]:
            raise UserError(f"the image processor gives images of varying size ({probe}): mmgpt batches need one "
                            "size (use a processor with a centre crop or a fixed height and width)")
        _, H, W = probe[0]
        super().__init__(image_size=H, max_pixels=max_pixels, augment=augment)
        self.size = (H, W)
        self.mean_t = torch.tensor(list(mean), dtype=torch.float32)[:, None, None]  # (3, 1, 1)
        self.std_t = torch.tensor(list(std), dtype=torch.float32)[:, None, None]
        self.rescale = rescale

    def geometric(self, image: Image.Image) -> Tensor:
        """An RGB image -> (3, H, W) uint8 after the backbone processor's resize / crop."""
        raise NotImplementedError

    def decode(self, source: Source) -> Tensor:
        return self.geometric(open_rgb(source, self.max_pixels))  # (3, H, W) uint8

    def transform(self, stored: Tensor | np.ndarray, *, train: bool) -> Tensor:
        image = torch.as_tensor(stored)
        if tuple(image.shape[-2:]) != self.size:  # stored at another size (e.g. rendered): the backbone's resize
            image = self.geometric(Image.fromarray(image.permute(1, 2, 0).to(torch.uint8).numpy()))
        x = image.float() * self.rescale if self.rescale else image.float()
        x = (x - self.mean_t) / self.std_t  # (3, H, W)
        if train and self.augment and torch.rand(()) < 0.5:
            x = x.flip(-1)
        return x

    def collate(self, values: Sequence[Any]) -> tuple[Tensor, Tensor | None, Tensor]:
        images = torch.zeros(len(values), 3, *self.size)  # (B, 3, H, W)
        for i, v in enumerate(values):
            if v is not None:
                images[i] = v
        return images, None, torch.tensor([v is not None for v in values])

    def derived(self) -> dict[str, Any]:
        """The ``data.*`` settings this processor decides (an explicit different value is refused)."""
        return {"image_size": self.size[0]} if self.size[0] == self.size[1] else {}

    def fingerprint(self) -> str:
        return f"{type(self).__name__}:{_digest(self.settings)}:max_pixels={self.max_pixels}"


class HFImageProcessor(BackboneImageProcessor):
    """Images through a ``transformers`` image processor (``AutoImageProcessor``)."""

    def __init__(self, *, processor: Any, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
                 augment: bool = False) -> None:
        self.processor = processor
        rescale = float(processor.rescale_factor) if getattr(processor, "do_rescale", True) else None
        normalize = getattr(processor, "do_normalize", True)
        mean = processor.image_mean if normalize else (0.0, 0.0, 0.0)
        std = processor.image_std if normalize else (1.0, 1.0, 1.0)
        super().__init__(mean=mean, std=std, rescale=rescale, max_pixels=max_pixels, augment=augment,
                         settings=processor.to_dict())

    def geometric(self, image: Image.Image) -> Tensor:
        out = self.processor(images=image, do_rescale=False, do_normalize=False, return_tensors="pt")
        return out["pixel_values"][0].round().clamp(0, 255).to(torch.uint8)  # (3, H, W)


class TimmImageProcessor(BackboneImageProcessor):
    """Images through timm's eval transform (``resolve_data_config`` + ``create_transform``)."""

    def __init__(self, *, data_config: Mapping[str, Any], max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
                 augment: bool = False) -> None:
        from timm.data import create_transform

        self.data_config = dict(data_config)
        steps = create_transform(**self.data_config, is_training=False).transforms
        cut = next(i for i, t in enumerate(steps) if "ToTensor" in type(t).__name__)
        self.steps = steps[:cut]  # resize, centre crop (PIL in, PIL out)
        super().__init__(mean=self.data_config["mean"], std=self.data_config["std"], rescale=1.0 / 255.0,
                         max_pixels=max_pixels, augment=augment, settings=self.data_config)

    def geometric(self, image: Image.Image) -> Tensor:
        for step in self.steps:
            image = step(image)
        return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


# -- audio ------------------------------------------------------------------------------------------------------------
@dataclass
class AudioFeatures:
    """One clip's fixed-length features (Whisper log-mel (C, L), AST filterbank (L, C)) and its frame mask (L,)."""

    values: Tensor
    mask: Tensor | None


class HFAudioProcessor(AudioProcessor):
    """Audio through a ``transformers`` feature extractor at its own sampling rate.

    Raw-waveform extractors (wav2vec 2.0, HuBERT, WavLM) give a normalised (S,) waveform per clip, padded with a
    sample mask (B, S) at collation; feature extractors (Whisper, AST) give fixed-length features, stacked, with the
    frame mask they return (B, L) (none for AST: every frame counts).

    Args:
        extractor: the backbone's feature extractor.
        max_samples: longer clips are cropped (``data.max_audio_seconds`` at the extractor's rate).
    """

    def __init__(self, *, extractor: Any, max_samples: int) -> None:
        super().__init__(sample_rate=int(extractor.sampling_rate), max_samples=max_samples)
        self.extractor = extractor
        probe = self._extract(np.zeros(self.sample_rate // 10, dtype=np.float32))
        self.waveform = isinstance(probe, Tensor)

    def _extract(self, wave: np.ndarray) -> Tensor | AudioFeatures:
        out = self.extractor(wave, sampling_rate=self.sample_rate, return_tensors="pt", return_attention_mask=True)
        values = out[self.extractor.model_input_names[0]][0]
        if values.ndim == 1:
            return values.float()  # (S,)
        mask = out.get("attention_mask")
        return AudioFeatures(values.float(), mask[0].bool() if mask is not None else None)

    def transform(self, stored: Tensor | np.ndarray, *, train: bool) -> Tensor | AudioFeatures:
        return self._extract(np.asarray(stored, dtype=np.float32)[: self.max_samples])

    def is_present(self, value: Any) -> bool:
        return value is not None and (isinstance(value, AudioFeatures) or len(value) > 0)

    def collate(self, values: Sequence[Any]) -> tuple[Tensor, Tensor | None, Tensor]:
        if self.waveform:
            return super().collate(values)
        present = [v is not None for v in values]
        shape = next((v.values.shape for v in values if v is not None), None)
        if shape is None:  # no clip in this batch: one silent clip's shape
            shape = self._extract(np.zeros(1, dtype=np.float32)).values.shape
        feats = torch.zeros(len(values), *shape)  # (B, C, L) or (B, L, C)
        masks = [v.mask for v in values if v is not None and v.mask is not None]
        mask = torch.zeros(len(values), len(masks[0]), dtype=torch.bool) if masks else None  # (B, L)
        for i, v in enumerate(values):
            if v is not None:
                feats[i] = v.values
                if mask is not None and v.mask is not None:
                    mask[i] = v.mask
        return feats, mask, torch.tensor(present)

    def derived(self) -> dict[str, Any]:
        return {"sample_rate": self.sample_rate}

    def fingerprint(self) -> str:
        return f"{super().fingerprint()}:{type(self.extractor).__name__}:{_digest(self.extractor.to_dict())}"


# -- builders named by the registry (encoder spec, data options) -> Processor ---------------------------------------
def hf_text_processor(spec: Mapping[str, Any], data: Mapping[str, Any]) -> HFTextProcessor:
    from transformers import AutoTokenizer

    tokenizer = _load(AutoTokenizer.from_pretrained, spec, "tokenizer")
    max_length = spec.get("max_length") or data.get("max_text_length") or tokenizer.model_max_length
    return HFTextProcessor(tokenizer=tokenizer, max_length=max_length, name=str(spec["name_or_path"]))


def hf_image_processor(spec: Mapping[str, Any], data: Mapping[str, Any]) -> HFImageProcessor:
    from transformers import AutoImageProcessor

    return HFImageProcessor(processor=_load(AutoImageProcessor.from_pretrained, spec, "image processor"),
                            max_pixels=data.get("max_image_pixels", DEFAULT_MAX_IMAGE_PIXELS),
                            augment=bool(data.get("augment", False)))


def hf_audio_processor(spec: Mapping[str, Any], data: Mapping[str, Any]) -> HFAudioProcessor:
    from transformers import AutoFeatureExtractor

    extractor = _load(AutoFeatureExtractor.from_pretrained, spec, "feature extractor")
    seconds = float(data.get("max_audio_seconds") or 1.0)
    return HFAudioProcessor(extractor=extractor, max_samples=audio_samples(seconds, int(extractor.sampling_rate)))


def timm_image_processor(spec: Mapping[str, Any], data: Mapping[str, Any]) -> TimmImageProcessor:
    import timm
    from timm.data import resolve_data_config

    with torch.device("meta"):  # the architecture's data config only: no weights allocated or read
        model = timm.create_model(spec["model_name"], pretrained=False,
                                  **{"num_classes": 0, **dict(spec.get("model_kwargs") or {})})
    args = dict(spec.get("data_config") or {})
    img_size = (spec.get("model_kwargs") or {}).get("img_size")
    if img_size is not None and "input_size" not in args:  # timm keeps the pretrained config's size otherwise
        args["input_size"] = (3, *((img_size, img_size) if isinstance(img_size, int) else img_size))
    config = resolve_data_config(args=args, model=model)
    return TimmImageProcessor(data_config=config, max_pixels=data.get("max_image_pixels", DEFAULT_MAX_IMAGE_PIXELS),
                              augment=bool(data.get("augment", False)))
