"""``mmgpt-generate``: write text about an image and/or a sound with a trained checkpoint that has a decoder.

    mmgpt-generate ckpt_path=run/checkpoints/last.ckpt image=cat.png audio=meow.wav prompt="2 red"
    mmgpt-generate ckpt_path=... image=[a.png,b.png] temperature=0.8 top_p=0.9 num_samples=3

Each of ``image``/``audio``/``prompt`` is one value or a list; single values are repeated over the batch, and
``num_samples`` repeats the whole batch (useful with sampling). A missing modality is marked absent.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import hydra
import torch
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from mmgpt.batch import MultimodalBatch
from mmgpt.cli.common import user_errors
from mmgpt.errors import UserError
from mmgpt.generation import GenerationConfig, generate
from mmgpt.training.safe_load import load_module, read_checkpoint, stored_run_config

log = logging.getLogger("mmgpt.generate")


@dataclass
class GenerateSchema:
    """The arguments of ``mmgpt-generate``."""

    ckpt_path: str = "???"
    image: Any = None            # path or list of paths
    audio: Any = None            # path or list of paths
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


def build_batch(net_spec: Mapping[str, Any], images: list[str], audios: list[str], batch_size: int,
                data: Mapping[str, Any]) -> MultimodalBatch:
    """A batch of ``batch_size`` samples with the given media (repeated when one is given) and no text: each file
    through the processor its modality's encoder declares, decoded and normalised exactly as for training.

    Args:
        net_spec: the checkpoint's network spec (its encoders say which processors).
        data: the run's data options (sizes, rates; clips are cropped at ``max_audio_seconds``).
    """
    # Imported here: the entry point sits at the edge, importing mmgpt never pulls in datamodules.
    from mmgpt.datamodules.collate import Collate
    from mmgpt.datamodules.processors import build_processors

    processors = build_processors(net_spec, data)
    pick = lambda xs, i: xs[i if len(xs) > 1 else 0]  # noqa: E731
    samples = []
    for i in range(batch_size):
        sample: dict[str, Any] = {"id": str(i), "label": None, "caption": None}
        for name, files in (("image", images), ("audio", audios)):
            if files and name in processors:
                processor = processors[name]
                sample[name] = processor.transform(processor.decode(pick(files, i)), train=False)
        samples.append(sample)
    return Collate(processors)(samples)


def run_generate(cfg: DictConfig) -> list[str]:
    """Load the checkpoint, build the batch, generate; returns the texts (prompt + continuation)."""
    images, audios, prompts = _as_list(cfg.image), _as_list(cfg.audio), [str(p) for p in _as_list(cfg.prompt)]
    if not images and not audios:
        raise UserError("give image=... and/or audio=... (the media to write about)")
    module = load_module(cfg.ckpt_path, map_location="cpu", plugins=list(cfg.get("plugins") or []))
    net = module.net.to(cfg.device).eval()
    if net.decoder is None:
        raise UserError(f"{cfg.ckpt_path} has no text decoder: train it with task=caption")
    n = max(len(images), len(audios), len(prompts), 1)
    for name, xs in (("image", images), ("audio", audios), ("prompt", prompts)):
        if len(xs) not in (0, 1, n):
            raise UserError(f"{name}: {len(xs)} values for a batch of {n}")
    data_cfg = (stored_run_config(read_checkpoint(cfg.ckpt_path)) or {}).get("data") or {}
    # Without the run's data settings, clips are kept whole (up to 10 minutes).
    data = {"max_audio_seconds": 600.0, **{k: v for k, v in data_cfg.items() if v is not None}}
    batch = build_batch(module.hparams.net, images, audios, n * cfg.num_samples, data).to(cfg.device)
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


@hydra.main(version_base="1.3", config_path=None, config_name="generate")
@user_errors
def main(cfg: DictConfig) -> None:
    run_generate(cfg)


if __name__ == "__main__":
    main()
