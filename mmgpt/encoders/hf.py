"""Hugging Face ``transformers`` models as mmgpt encoders: text, image and audio backbones + a learned projection.

Each class loads ``name_or_path`` (a local ``save_pretrained`` folder, or a hub id found in the local cache or, with
network, downloaded) with the ``transformers`` Auto classes, and returns hidden layer ``layer`` of the backbone
(``-1``: the model's ``last_hidden_state``, after its final norm where it has one; ``i >= 0``: ``hidden_states[i]``,
0 = the embeddings) with the right mask. Encoder-decoder models (Whisper, T5) keep only their encoder.

Inputs are what the modality's backbone processor (:mod:`mmgpt.datamodules.hf_processors`) collates:

- text: token ids (B, T) and the attention mask (B, T);
- image: pixel values (B, 3, H, W); every patch / feature-map position is valid (a ConvNeXt / ResNet feature map
  (B, C, h, w) becomes h * w tokens);
- audio, raw waveform backbones (wav2vec 2.0, HuBERT, WavLM): the normalised waveform (B, S) and its sample mask
  (B, S); frames are valid up to the backbone's own ``_get_feat_extract_output_lengths`` of each clip's length;
- audio, fixed-length feature backbones: Whisper takes 30 s of log-mel frames (B, C, L) and ignores any attention
  mask, so the frames past each clip's end are masked AFTER the encoder (the encoder itself attended to the
  padding, as Whisper always does); AST takes a fixed (B, L, C) filterbank and all its tokens are valid.

``transformers`` is imported inside the constructors only: importing mmgpt never pulls it in.
Legend: B batch, T text tokens, S audio samples, L feature frames, C feature bins, N tokens, H hidden size.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import Tensor, nn

from mmgpt.encoders.backbone import BackboneEncoder, BackboneIdentity
from mmgpt.encoders.base import EncoderOutput
from mmgpt.encoders.tuning import Tuning
from mmgpt.errors import UserError
from mmgpt.layers import mark_pretrained

log = logging.getLogger(__name__)

#: Files whose bytes make up a backbone's identity hash.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".msgpack", ".h5")


class BackboneNotFound(UserError):
    """A backbone that cannot be loaded: not a local folder, not cached, and no network to fetch it."""


# -- loading: local folders, the hub cache, the network ---------------------------------------------------------------
def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


_NETWORK: dict[str, bool] = {}


def network_available(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub can be reached (False at once with HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE).

    The probe (name lookup + TCP connect) runs in a daemon thread joined with ``timeout``: a resolver that hangs
    counts as no network instead of stalling start-up.
    """
    if _truthy("HF_HUB_OFFLINE") or _truthy("TRANSFORMERS_OFFLINE"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    if host not in _NETWORK:
        reached: list[bool] = []

        def probe() -> None:
            try:
                socket.create_connection((host, 443), timeout=timeout).close()
                reached.append(True)
            except OSError:
                pass

        thread = threading.Thread(target=probe, daemon=True)
        thread.start()
        thread.join(timeout)
        _NETWORK[host] = bool(reached)
    return _NETWORK[host]


def offline_message(name_or_path: str, what: str = "name_or_path") -> str:
    return (f"{what}={name_or_path!r} is not a local folder and is not in the Hugging Face cache, and the hub cannot "
            "be reached (no network or HF_HUB_OFFLINE=1): on a machine with network run "
            f"`AutoModel.from_pretrained({name_or_path!r}).save_pretrained(DIR)` (and the same for its processor), "
            f"copy DIR here and set {what}=DIR")


@contextmanager
def _quiet_progress() -> Iterator[None]:
    """No "Loading weights" progress bar per backbone (mmgpt logs what it loads); restored afterwards."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def load_pretrained(loader: Callable[..., Any], name_or_path: str, *, what: str = "name_or_path",
                    **kwargs: Any) -> Any:
    """``loader(name_or_path, **kwargs)`` (a ``from_pretrained``), from a local folder, the cache, or the hub.

    Without network (or with ``HF_HUB_OFFLINE=1``) a hub id is looked up in the local cache only
    (``local_files_only``), so nothing hangs on a download; a miss raises :class:`BackboneNotFound` in one line.
    A local folder (or the cached snapshot of a hub id) is checked as data first, unless the user set
    ``trust_remote_code`` (:func:`~mmgpt.encoders.model_folder.check_model_folder`: no shipped code, no unknown
    model type, no pickled weights that are not plain data), and refused in one line.
    """
    if not kwargs.get("trust_remote_code"):
        from mmgpt.encoders.model_folder import check_model_folder

        folder = local_folder(name_or_path)
        if folder is not None:
            check_model_folder(folder, what)
    if Path(name_or_path).exists():
        with _quiet_progress():
            return loader(str(name_or_path), **kwargs)
    online = network_available()
    try:
        with _quiet_progress():
            return loader(name_or_path, **kwargs, **({} if online else {"local_files_only": True}))
    except (OSError, ValueError) as e:
        if not online:
            raise BackboneNotFound(offline_message(name_or_path, what)) from None
        raise BackboneNotFound(f"{what}={name_or_path!r}: cannot load it ({str(e).splitlines()[0]})") from e


def local_folder(name_or_path: str) -> Path | None:
    """The folder holding ``name_or_path``'s files: itself, or its snapshot in the hub cache (None if neither)."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    if path.is_file():
        return path.parent
    try:
        from huggingface_hub import try_to_load_from_cache
        found = try_to_load_from_cache(name_or_path, "config.json")
    except Exception:  # not a valid repo id: no cache entry
        return None
    return Path(found).parent if isinstance(found, str) else None


_HASHES: dict[tuple[str, int, int], str] = {}


def _file_sha256(path: Path) -> str:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _HASHES:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        _HASHES[key] = h.hexdigest()
    return _HASHES[key]


def weights_sha256(name_or_path: str, suffixes: tuple[str, ...] = WEIGHT_SUFFIXES) -> str:
    """sha256 over the weight files of ``name_or_path`` (names and contents, sorted; a file: its contents).

    Hashes are memoised per process by (path, size, mtime), so several encoders on one backbone hash it once.
    """
    path = Path(name_or_path)
    if path.is_file():
        return _file_sha256(path)
    folder = local_folder(name_or_path)
    if folder is None:
        raise BackboneNotFound(offline_message(name_or_path))
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name.endswith(suffixes))
    if not files:
        raise BackboneNotFound(f"name_or_path={name_or_path!r}: no weight files ({', '.join(suffixes)}) in {folder}")
    h = hashlib.sha256()
    for p in files:
        h.update(str(p.relative_to(folder)).encode() + b"\0" + _file_sha256(p).encode())
    return h.hexdigest()


def warn_remote_code(name_or_path: str, trust_remote_code: bool) -> None:
    if trust_remote_code:
        log.warning("trust_remote_code=true for %r: Python code shipped in that model folder will run in this process",
                    name_or_path)


# -- the encoders ---------------------------------------------------------------------------------------------------
def hidden_width(config: Any, layer: int) -> int:
    """H of hidden layer ``layer``: ``hidden_size`` (or ``d_model``), or per stage for CNNs (``hidden_sizes``)."""
    sizes = getattr(config, "hidden_sizes", None)
    if sizes:  # ConvNeXt / ResNet: hidden_states = embeddings, then one per stage
        widths = [getattr(config, "embedding_size", sizes[0])] + list(sizes)
        return widths[layer]
    for key in ("hidden_size", "d_model", "n_embd", "dim"):
        if isinstance(getattr(config, key, None), int):
            return getattr(config, key)
    raise UserError(f"cannot tell the hidden size of a {type(config).__name__}; set it in the encoder's hidden_size")


def repeated_blocks(model: nn.Module) -> list[nn.Module]:
    """The backbone's repeated blocks: the children of its largest (by parameters) ``ModuleList`` / ``Sequential``
    whose children are all of one class (BERT's ``encoder.layer``, wav2vec 2.0's ``encoder.layers``, timm's
    ``blocks``, ConvNeXt's ``stages``)."""
    best: list[nn.Module] = []
    best_size = -1
    for module in model.modules():
        children = list(module.children()) if isinstance(module, (nn.ModuleList, nn.Sequential)) else []
        if len(children) > 1 and len({type(m) for m in children}) == 1:
            size = sum(p.numel() for p in module.parameters())
            if size > best_size:
                best, best_size = children, size
    return best


def as_tokens(hidden: Tensor) -> Tensor:
    """(B, N, H) as is; a CNN feature map (B, H, h, w) -> (B, h * w, H) tokens, row-major."""
    return hidden.flatten(2).transpose(1, 2) if hidden.ndim == 4 else hidden


class HFEncoder(BackboneEncoder):
    """A ``transformers`` backbone (see the module doc); subclasses say how their modality's inputs run through it.

    Args:
        name_or_path: hub id or local ``save_pretrained`` folder.
        dim: D, the width of the projected tokens.
        layer: which hidden layer to return (-1: ``last_hidden_state``; i: ``hidden_states[i]``).
        tuning: fine-tuning controls (:class:`~mmgpt.encoders.tuning.Tuning`; default frozen).
        trust_remote_code: run code shipped with the model folder (off unless set explicitly in the spec).
        revision: the hub revision (branch, tag or commit) of a hub id.
    """

    def __init__(self, *, name_or_path: str, dim: int, layer: int = -1,
                 tuning: Tuning | Mapping[str, Any] | None = None, trust_remote_code: bool = False,
                 revision: str | None = None) -> None:
        from transformers import AutoConfig

        warn_remote_code(name_or_path, trust_remote_code)
        opts: dict[str, Any] = {"trust_remote_code": trust_remote_code, **({"revision": revision} if revision else {})}
        config = load_pretrained(AutoConfig.from_pretrained, name_or_path, **opts)
        backbone = self.load_backbone(name_or_path, config, opts)
        if getattr(backbone.config, "is_encoder_decoder", False) and hasattr(backbone, "get_encoder"):
            backbone = backbone.get_encoder()  # Whisper, T5: the encoder only (the decoder is dropped)
        width_config = getattr(backbone, "config", config)
        n_hidden = getattr(width_config, "num_hidden_layers", None)
        if layer != -1 and n_hidden is not None and not -(n_hidden + 1) <= layer <= n_hidden:
            raise UserError(f"layer={layer}: {name_or_path!r} has hidden_states 0..{n_hidden} (or -1 for the last)")
        log.info("backbone %s: %s, %.1fM parameters", name_or_path, type(backbone).__name__,
                 sum(p.numel() for p in backbone.parameters()) / 1e6)
        backbone.train()  # from_pretrained gives eval mode; freezing (apply_tuning) decides, like any module
        super().__init__(backbone=mark_pretrained(backbone), hidden_size=hidden_width(width_config, layer), dim=dim,
                         identity=BackboneIdentity(name_or_path=str(name_or_path),
                                                   sha256=weights_sha256(name_or_path)),
                         tuning=tuning)
        self.layer = layer

    def load_backbone(self, name_or_path: str, config: Any, opts: dict[str, Any]) -> nn.Module:
        """The pretrained model (``AutoModel``; subclasses pick towers)."""
        from transformers import AutoModel

        return load_pretrained(AutoModel.from_pretrained, name_or_path, **opts)

    def layers(self) -> list[nn.Module]:
        return repeated_blocks(self.backbone)

    def run(self, **inputs: Any) -> Tensor:
        """Run the backbone and pick hidden layer ``self.layer`` -> (B, N, H) tokens."""
        if self.layer == -1:
            out = self.backbone(**inputs)
            return as_tokens(out.last_hidden_state)
        out = self.backbone(**inputs, output_hidden_states=True)
        return as_tokens(out.hidden_states[self.layer])


class HFTextEncoder(HFEncoder):
    """A ``transformers`` text model (BERT, RoBERTa, DistilBERT, GPT-2, T5's encoder...): ids (B, T) + mask (B, T).

    Args:
        max_length: the tokenizer's truncation length (its processor reads it; None: ``data.max_text_length``);
            refused above the model's position table.
        (the rest as :class:`HFEncoder`)
    """

    modality_kind = "text"

    def __init__(self, *, name_or_path: str, dim: int, layer: int = -1, max_length: int | None = None,
                 tuning: Tuning | Mapping[str, Any] | None = None, trust_remote_code: bool = False,
                 revision: str | None = None) -> None:
        super().__init__(name_or_path=name_or_path, dim=dim, layer=layer, tuning=tuning,
                         trust_remote_code=trust_remote_code, revision=revision)
        limit = getattr(self.backbone.config, "max_position_embeddings", None) or getattr(
            self.backbone.config, "n_positions", None)
        if max_length is not None and isinstance(limit, int) and max_length > limit:
            raise UserError(f"max_length={max_length}: {name_or_path!r} has {limit} positions")
        self.max_length = max_length

    def hidden(self, x: Tensor, mask: Tensor | None = None) -> EncoderOutput:
        if mask is None:
            mask = torch.ones_like(x, dtype=torch.bool)
        tokens = self.run(input_ids=x, attention_mask=mask.long())  # (B, T, H)
        return EncoderOutput(tokens, mask)


class HFImageEncoder(HFEncoder):
    """A ``transformers`` vision model: ViT, DINOv2, ConvNeXt, or the vision tower of CLIP / SigLIP. (B, 3, H, W)."""

    modality_kind = "image"

    def load_backbone(self, name_or_path: str, config: Any, opts: dict[str, Any]) -> nn.Module:
        if getattr(config, "vision_config", None) is not None:  # a dual-tower model: load its <Name>VisionModel
            import transformers

            name = type(config).__name__.removesuffix("Config") + "VisionModel"
            tower = getattr(transformers, name, None)
            if tower is None:
                raise UserError(f"name_or_path={name_or_path!r}: a {type(config).__name__} with no {name} in "
                                "transformers; point name_or_path at a vision-only model")
            from transformers.utils import logging as hf_logging

            # The other tower's weights are unused by design: no report listing each of them as unexpected.
            verbosity = hf_logging.get_verbosity()
            hf_logging.set_verbosity_error()
            try:
                model = load_pretrained(tower.from_pretrained, name_or_path, **opts)
            finally:
                hf_logging.set_verbosity(verbosity)
            log.info("%s: loaded the %s of a %s checkpoint (its other tower is not loaded)", name_or_path, name,
                     type(config).__name__.removesuffix("Config"))
            return model
        return super().load_backbone(name_or_path, config, opts)

    def hidden(self, x: Tensor, mask: Tensor | None = None) -> EncoderOutput:
        tokens = self.run(pixel_values=x)  # (B, N, H): patches (+ CLS) or feature-map positions
        return EncoderOutput(tokens, torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device))


class HFAudioEncoder(HFEncoder):
    """A ``transformers`` audio model: wav2vec 2.0 / HuBERT / WavLM (waveform), Whisper's encoder, AST (features).

    Masks (see the module doc): waveform models mask frames by their own output-length arithmetic; Whisper's
    encoder always runs on its fixed 30 s window and its frames past the clip's end are masked after it; AST's
    tokens are all valid.
    """

    modality_kind = "audio"

    def hidden(self, x: Tensor, mask: Tensor | None = None) -> EncoderOutput:
        lengths_of = getattr(self.backbone, "_get_feat_extract_output_lengths", None)
        if x.ndim == 2:  # raw waveform (B, S), sample mask (B, S)
            if mask is None:
                mask = torch.ones_like(x, dtype=torch.bool)
            tokens = self.run(input_values=x, attention_mask=mask.long())  # (B, F, H)
            lengths = lengths_of(mask.sum(dim=1)) if lengths_of is not None else mask.sum(dim=1)
        else:  # fixed-length features (B, C, L) or (B, L, C), frame mask (B, L) or None
            name = getattr(self.backbone, "main_input_name", "input_features")
            tokens = self.run(**{name: x})  # the backbone ignores padding masks: masked below
            if mask is None or lengths_of is None:
                return EncoderOutput(tokens, torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device))
            lengths = lengths_of(mask.sum(dim=1))
        frame_mask = torch.arange(tokens.shape[1], device=tokens.device)[None] < lengths.to(tokens.device)[:, None]
        return EncoderOutput(tokens, frame_mask)  # (B, F, H), (B, F)
