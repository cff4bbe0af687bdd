"""``mmgpt.load(path)``: a trained model (a checkpoint or an exported folder) that predicts from raw inputs.

The model is opened by mmgpt's safe loaders (:mod:`mmgpt.training.safe_load` for checkpoints,
:mod:`mmgpt.exported` for exported folders), and raw inputs go through the model's own processors (the ones its
encoders declare, with the data settings it was trained with), collated into a batch exactly as the datamodules
collate theirs: a file predicted here gives the logits ``mmgpt-eval`` computes for it in the same batch.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mmgpt.errors import UserError

__all__ = ["Prediction", "Predictor", "task_of"]


@dataclass(frozen=True)
class Prediction:
    """What :meth:`Predictor.predict` returns for a batch of B samples.

    Attributes:
        logits: the head's outputs (B, C), float32 on the CPU.
        probs: class probabilities (B, C): softmax, or per-label sigmoid for a multi-label model; None for regression.
        labels: the predicted class name of each sample (multi-label: the list of names at or above the threshold;
            regression: None).
        values: regression outputs (B,) (None for the other tasks).
        class_names: the model's classes, in logit order.
    """

    logits: Tensor
    probs: Tensor | None
    labels: list[Any] | None
    values: Tensor | None
    class_names: list[str]

    @property
    def label(self) -> Any:
        """The first (or only) sample's label."""
        return None if self.labels is None else self.labels[0]


class Predictor:
    """A trained network with its processors, in eval mode; see :func:`load`.

    Attributes:
        net: the :class:`~mmgpt.model.MultimodalTransformer`.
        processors: modality name -> its processor (decode, transform, collate).
        class_names: the classes in logit order; task: ``classify``, ``multilabel``, ``regress`` or ``binary``.
        source: where the model was loaded from.
    """

    def __init__(self, net: torch.nn.Module, processors: Mapping[str, Any], class_names: Sequence[str], *,
                 task: str = "classify", threshold: float = 0.5, source: str | Path = "") -> None:
        self.net = net.eval()
        self.processors = dict(processors)
        self.class_names = list(class_names)
        self.task, self.threshold, self.source = task, threshold, str(source)

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    @property
    def modalities(self) -> list[str]:
        return list(self.net.modalities)

    def to(self, device: str | torch.device) -> Predictor:
        self.net.to(device)
        return self

    # -- inputs ------------------------------------------------------------------------------------------------------
    def _stored(self, name: str, value: Any) -> Any:
        """One raw input -> the processor's stored form (what ``decode`` gives for a file)."""
        processor = self.processors[name]
        kind = processor.kind
        if value is None or kind == "text":
            return value
        if isinstance(value, (str, Path, bytes)):
            return processor.decode(value if isinstance(value, bytes) else str(value))
        if kind == "image" and not isinstance(value, Tensor):
            from PIL import Image

            if isinstance(value, np.ndarray):
                value = Image.fromarray(value)
            if isinstance(value, Image.Image):  # through the decoder as a lossless file, as a file would go
                buf = io.BytesIO()
                value.save(buf, format="PNG")
                return processor.decode(buf.getvalue())
        if kind == "audio" and isinstance(value, tuple) and len(value) == 2:  # (waveform, sample rate): resampled
            import soundfile as sf

            buf = io.BytesIO()
            sf.write(buf, np.asarray(value[0], dtype=np.float32), int(value[1]), format="WAV", subtype="FLOAT")
            return processor.decode(buf.getvalue())
        if kind == "features":
            return processor.decode(value)
        return torch.as_tensor(value)  # already the stored form: (3, S, S) uint8 image, (S,) waveform at the rate

    def batch(self, inputs: Mapping[str, Any]):  # noqa: ANN201 (MultimodalBatch)
        """The batch of ``inputs`` (modality -> one value or a list; a missing modality or a None value is absent),
        decoded, transformed and collated by the model's processors, on the model's device."""
        from mmgpt.datamodules.collate import Collate

        unknown = sorted(set(inputs) - set(self.processors))
        if unknown:
            raise UserError(f"{unknown[0]}: the model has no modality {unknown[0]!r} (it has: "
                            f"{', '.join(self.processors)})")
        columns = {name: _as_list(v) for name, v in inputs.items() if v is not None}
        sizes = {len(v) for v in columns.values()}
        if not columns:
            raise UserError(f"give at least one input ({', '.join(self.processors)})")
        if len(sizes - {1}) > 1:
            raise UserError(f"inputs of different lengths: {', '.join(f'{k}: {len(v)}' for k, v in columns.items())}")
        n = max(sizes)
        samples = []
        for i in range(n):
            sample: dict[str, Any] = {"id": i, "label": None, "caption": None}
            for name, values in columns.items():
                stored = self._stored(name, values[i if len(values) > 1 else 0])
                sample[name] = None if stored is None else self.processors[name].transform(stored, train=False)
            samples.append(sample)
        return Collate(self.processors)(samples).to(self.device)

    # -- outputs -----------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, text: Any = None, image: Any = None, audio: Any = None, *, batch_size: int = 32,
                **media: Any) -> Prediction:
        """Predict from raw inputs: any subset of the modalities, one sample or lists of equal length.

        Args:
            text: a string (or list); image: a file path, PIL image or (H, W, 3) uint8 array (or a list);
                audio: a file path or ``(waveform, sample_rate)`` (or a list); a tensor is taken as the processor's
                stored form (a (3, S, S) uint8 image, a waveform at the model's rate).
            batch_size: samples per forward pass (the same batches as ``mmgpt-eval`` give the same logits bit for
                bit on CPU).
            media: other modalities by name (``poster=...``, ``vision_feats=...``).
        """
        inputs = {k: v for k, v in {"text": text, "image": image, "audio": audio, **media}.items() if v is not None}
        columns = {k: _as_list(v) for k, v in inputs.items()}
        n = max((len(v) for v in columns.values()), default=1)
        columns = {k: v * n if len(v) == 1 else v for k, v in columns.items()}  # a single value goes with every sample
        logits = [self.net(self.batch({k: v[start:start + batch_size] for k, v in columns.items()})).logits
                  for start in range(0, n, batch_size)]
        return self._prediction(torch.cat(logits).float().cpu())

    def _prediction(self, logits: Tensor) -> Prediction:
        if self.task == "regress":
            return Prediction(logits, None, None, logits[:, 0], self.class_names)
        if self.task == "multilabel":
            probs = logits.sigmoid()
            labels = [[self.class_names[j] for j in np.flatnonzero(row >= self.threshold)] for row in probs.numpy()]
            return Prediction(logits, probs, labels, None, self.class_names)
        probs = logits.softmax(dim=-1)
        names = self.class_names or [str(i) for i in range(logits.shape[-1])]
        return Prediction(logits, probs, [names[int(i)] for i in probs.argmax(dim=-1)], None, self.class_names)

    @torch.no_grad()
    def generate(self, image: Any = None, audio: Any = None, *, prompt: str | Sequence[str] = "",
                 max_new_tokens: int = 48, temperature: float = 0.0, top_k: int | None = None,
                 top_p: float | None = None, seed: int = 0, **media: Any) -> list[str]:
        """Text about the media (a captioning model: ``task=caption``), as ``mmgpt-generate`` writes it: the prompt
        plus its continuation, one text per sample."""
        from mmgpt.generation import GenerationConfig, generate

        if self.net.decoder is None:
            raise UserError(f"{self.source}: this model has no text decoder (train it with task=caption)")
        inputs = {k: v for k, v in {"image": image, "audio": audio, **media}.items() if v is not None}
        if not inputs:
            raise UserError("give the media to write about: image=..., audio=... or another modality by name")
        prompts = [str(p) for p in _as_list(prompt)]
        n = max(*(len(_as_list(v)) for v in inputs.values()), len(prompts))
        if len(prompts) not in (1, n):
            raise UserError(f"prompt: {len(prompts)} values for a batch of {n}")
        prompts = prompts * n if len(prompts) == 1 else prompts
        batch = self.batch({k: (_as_list(v) * n if len(_as_list(v)) == 1 else v) for k, v in inputs.items()})
        config = GenerationConfig(max_new_tokens, temperature, top_k, top_p, True)
        g = torch.Generator(device=self.device).manual_seed(int(seed))
        out = generate(self.net, batch, prompts, config, generator=g)
        return [p + t for p, t in zip(prompts, out.texts, strict=True)]


def _is_list(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and not (len(value) == 2 and isinstance(value[1], int)
                                                     and not isinstance(value[0], (str, Path)))


def _as_list(value: Any) -> list[Any]:
    return list(value) if _is_list(value) else [value]


def task_of(objectives: Mapping[str, Any] | None) -> tuple[str, float]:
    """The task the head serves (``classify``, ``multilabel``, ``regress``, ``binary``) and the multi-label
    threshold, from the objectives' specs (none: classification)."""
    for spec in (objectives or {}).values():
        if isinstance(spec, Mapping) and spec.get("type") in ("multilabel", "regress", "binary", "classify") and (
                float(spec.get("weight", 1.0)) > 0):
            return str(spec["type"]), float(spec.get("threshold", 0.5))
    return "classify", 0.5
