"""``mmgpt-generate``: write text about an image and/or a sound with a trained checkpoint that has a decoder.

    mmgpt-generate ckpt_path=run/checkpoints/last.ckpt image=cat.png audio=meow.wav prompt="2 red"
    mmgpt-generate ckpt_path=... image=[a.png,b.png] temperature=0.8 top_p=0.9 num_samples=3

Each of ``image``/``audio``/``prompt`` is one value or a list; single values are repeated over the batch, and
``num_samples`` repeats the whole batch (useful with sampling). A missing modality is marked absent.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import hydra
import torch
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from mmgpt.batch import MultimodalBatch
from mmgpt.cli.app import with_version
from mmgpt.cli.common import user_errors
from mmgpt.errors import UserError
from mmgpt.generation import GenerationConfig, generate
from mmgpt.model import MultimodalTransformer
from mmgpt.registry import encoder_kind
from mmgpt.training.lit_module import MultimodalModule
from mmgpt.training.safe_load import read_checkpoint, stored_run_config

log = logging.getLogger("mmgpt.generate")


@dataclass
class GenerateSchema:
    """The arguments of ``mmgpt-generate``."""

    ckpt_path: str = "???"
    image: Any = None            # path or list of paths (the modality named image)
    audio: Any = None            # path or list of paths (the modality named audio)
    media: Any = None            # any modality by name: {poster: a.png, vision_feats: [a.npy, b.npy]}
    prompt: Any = ""             # text the caption starts with, or a list
    num_samples: int = 1         # repeat the batch (with sampling: several candidates)
    max_new_tokens: int = 48
    temperature: float = 0.0     # 0: greedy
    top_k: int | None = None
    top_p: float | None = None
    use_cache: bool = True
    seed: int = 0
    device: str = "cpu"
    plugins: list[str] = field(default_factory=list)  # your modules registering parts the checkpoint uses
    # No run directory and no log file: the command prints its texts and writes nothing where it is run.
    defaults: list[Any] = field(default_factory=lambda: [{"override hydra/job_logging": "stdout"}, "_self_"])
    hydra: Any = field(default_factory=lambda: {"output_subdir": None, "run": {"dir": "."}})


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)) or OmegaConf.is_list(value):
        return list(value)
    return [value]


def media_processors(net: MultimodalTransformer, spec: dict[str, Any], data_cfg: dict[str, Any],
                     ) -> dict[str, Any]:
    """name -> the processor of each of the network's modalities, as the run trained with: the data's declaration
    (``data.modalities`` in the checkpoint's run config) and the processors the encoders declare."""
    from mmgpt.datamodules.encoder_processors import build_processors
    from mmgpt.datamodules.options import DataOptions
    from mmgpt.datamodules.processors import declared_processors

    declared = data_cfg.get("modalities") or {m: encoder_kind(spec["encoders"][m], f"net.encoders.{m}")
                                              for m in net.modalities}
    processors = declared_processors(declared, DataOptions.given(data_cfg))
    processors.update(build_processors(spec, data_cfg))  # the encoders' own (backbones; scratch sizes)
    return {m: processors[m] for m in net.modalities}


def build_batch(net: MultimodalTransformer, media: dict[str, list[str]], batch_size: int,
                processors: dict[str, Any]) -> MultimodalBatch:
    """A batch of ``batch_size`` samples with the given media files (one file is repeated) and no text, decoded
    and collated by the modalities' processors exactly as for training."""
    from mmgpt.datamodules.collate import Collate

    unknown = sorted(set(media) - set(net.modalities))
    if unknown:
        raise UserError(f"media.{unknown[0]}: the network has no modality {unknown[0]!r} (it has: "
                        f"{', '.join(net.modalities)})")
    pick = lambda xs, i: xs[i if len(xs) > 1 else 0]  # noqa: E731
    samples = []
    for i in range(batch_size):
        sample: dict[str, Any] = {"id": i, "label": None, "caption": None}
        for name, paths in media.items():
            if paths:
                sample[name] = processors[name].transform(processors[name].decode(str(pick(paths, i))), train=False)
        samples.append(sample)
    return Collate(processors)(samples)


def run_generate(cfg: DictConfig) -> list[str]:
    """Load the checkpoint, build the batch, generate; returns the texts (prompt + continuation)."""
    media = {name: _as_list(paths) for name, paths in (cfg.get("media") or {}).items()}
    for name in ("image", "audio"):  # the shorthands for modalities of those names
        if cfg.get(name) is not None:
            media[name] = _as_list(cfg[name])
    media = {name: paths for name, paths in media.items() if paths}
    prompts = [str(p) for p in _as_list(cfg.prompt)]
    if not media:
        raise UserError("give the media to write about: image=..., audio=... or media={<modality>: <file>}")
    plugins = list(cfg.get("plugins") or [])
    module = MultimodalModule.load_from_checkpoint(cfg.ckpt_path, map_location="cpu", plugins=plugins)
    net = module.net.to(cfg.device).eval()
    if net.decoder is None:
        raise UserError(f"{cfg.ckpt_path} has no text decoder: train it with task=caption")
    n = max(*(len(xs) for xs in media.values()), len(prompts), 1)
    for name, xs in (*media.items(), ("prompt", prompts)):
        if len(xs) not in (0, 1, n):
            raise UserError(f"{name}: {len(xs)} values for a batch of {n}")
    data_cfg = (stored_run_config(read_checkpoint(cfg.ckpt_path), cfg.ckpt_path) or {}).get("data") or {}
    processors = media_processors(net, module.hparams["net"], data_cfg)
    batch = build_batch(net, media, n * cfg.num_samples, processors).to(cfg.device)
    prompts = (prompts or [""]) * (n if len(prompts) <= 1 else 1)
    prompts = [prompts[i % len(prompts)] for i in range(n * cfg.num_samples)]
    gen = GenerationConfig(cfg.max_new_tokens, cfg.temperature, cfg.top_k, cfg.top_p, cfg.use_cache)
    g = torch.Generator(device=cfg.device).manual_seed(int(cfg.seed))
    out = generate(net, batch, prompts, gen, generator=g)  # the decoder's own tokenizer
    texts = [p + t for p, t in zip(prompts, out.texts, strict=True)]
    for i, t in enumerate(texts):
        print(f"[{i}] {t}")  # noqa: T201  (the command's output)
    return texts


ConfigStore.instance().store(name="generate", node=GenerateSchema)


@with_version("mmgpt-generate")
@hydra.main(version_base="1.3", config_path=None, config_name="generate")
@user_errors
def main(cfg: DictConfig) -> None:
    run_generate(cfg)


if __name__ == "__main__":
    main()
