"""The frozen-feature cache's filling side: which modalities are cached, :func:`fill` (the backbones run once per
missing sample) and the training callback (see :mod:`mmgpt.datamodules.feature_cache`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.strategies import ModelParallelStrategy
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset

from mmgpt.datamodules.disk_store import SourceId
from mmgpt.datamodules.feature_cache.cache import SPLITS, CachedFeatures, FeatureCache, FeatureCacheMiss, FeatureMiss
from mmgpt.datamodules.processors import Processor
from mmgpt.encoders.backbone import BackboneEncoder
from mmgpt.training.rng import preserved_rng

log = logging.getLogger(__name__)


# --- which modalities are cached -------------------------------------------------------------------------------

def why_not_cached(encoder: nn.Module, processor: Processor) -> str | None:
    """None when ``encoder``'s hidden states of ``processor``'s samples can be cached, else the reason."""
    if isinstance(processor, CachedFeatures):
        return "already cached"
    if not isinstance(encoder, BackboneEncoder):
        return "not a pretrained backbone encoder"
    if not encoder.frozen:
        return "its backbone is fine-tuned (tuning.freeze false, unfreeze_last or lora)"
    if any(p.requires_grad for p in encoder.backbone.parameters()):
        return "some backbone parameters train"
    if getattr(processor, "augment", False):
        return "its processor applies random augmentation"
    return None


def cached_processors(net: nn.Module, processors: Mapping[str, Processor], cache: FeatureCache,
                      exclude: Iterable[str] = ()) -> dict[str, CachedFeatures]:
    """The :class:`CachedFeatures` processors for every modality of ``net`` whose backbone output can be cached
    (each decision logged with its reason)."""
    out: dict[str, CachedFeatures] = {}
    skip = set(exclude)
    for name, encoder in net.encoders.items():
        if name not in processors:
            continue
        reason = "its raw input is read by an objective or the decoder" if name in skip else \
            why_not_cached(encoder, processors[name])
        if reason is not None:
            if isinstance(encoder, BackboneEncoder):
                log.info("feature cache: %s not cached (%s)", name, reason)
            continue
        out[name] = CachedFeatures(name=name, inner=processors[name], cache=cache,
                                   encoder_fingerprint=encoder.feature_fingerprint(),
                                   hidden_size=encoder.proj.in_features)
        log.info("feature cache: %s reads cached hidden states (%s) from %s", name, cache.dtype, cache.root)
    return out


# --- filling ------------------------------------------------------------------------------------------------------

@dataclass
class FillReport:
    """What a fill did: per modality, entries computed and samples already cached; its duration."""

    computed: dict[str, int] = field(default_factory=dict)
    cached: dict[str, int] = field(default_factory=dict)
    missing: dict[str, int] = field(default_factory=dict)
    samples: int = 0
    seconds: float = 0.0

    def describe(self) -> str:
        parts = [f"{m}: {self.computed.get(m, 0)} computed, {self.cached.get(m, 0)} already cached"
                 for m in sorted(set(self.computed) | set(self.cached))]
        return f"{self.samples} samples in {self.seconds:.1f}s ({'; '.join(parts) or 'nothing to cache'})"


def fill(datamodule: Any, net: nn.Module, processors: Mapping[str, CachedFeatures], *,
         device: torch.device | str = "cpu", batch_size: int = 32, rank: int = 0, world_size: int = 1,
         progress: Callable[[int, int], None] | None = None, splits: Sequence[str] = SPLITS,
         compute: bool = True) -> FillReport:
    """Compute and store the hidden states of every sample of ``splits`` missing from the cache.

    This process takes every ``world_size``-th sample from ``rank`` on (a streaming split is already split by
    rank). The backbones run in eval mode without gradients on ``device``; this process's entries are committed
    at the end (the caller waits for the other ranks, then :meth:`FeatureCache.refresh`).

    Args:
        datamodule: a :class:`~mmgpt.datamodules.base.MultimodalDataModule`, set up, using ``processors``.
        net: the network whose ``encoders[name].hidden`` compute the states.
        processors: modality name -> its :class:`CachedFeatures` processor.
        batch_size: samples per backbone call.
        progress: called with (samples done, samples total) of this process.
        compute: False only counts the missing entries (``FillReport.missing``), running no backbone.
    """
    report = FillReport(computed=dict.fromkeys(processors, 0), cached=dict.fromkeys(processors, 0))
    if not processors:
        return report
    t0 = time.perf_counter()
    datasets = [_share(datamodule.make_dataset(s, rank, world_size), rank, world_size)
                for s in splits if datamodule.has_split(s)]
    total = sum(len(d) if not isinstance(d, IterableDataset) else 0 for d in datasets)
    pending: dict[str, dict[SourceId, Any]] = {m: {} for m in processors}
    encoders = {m: net.encoders[m] for m in processors}
    modes = {m: e.training for m, e in encoders.items()}
    for e in encoders.values():
        e.eval()
    try:
        # Other modalities' transforms draw from the global generators: training's own draws stay as they were.
        with preserved_rng():
            for sample in _all_samples(datasets, datamodule.num_workers, batch_size):
                report.samples += 1
                for m in processors:
                    value = sample.get(m)
                    if isinstance(value, FeatureMiss):
                        pending[m].setdefault(value.key, value.value)
                        if not compute:
                            report.missing[m] = len(pending[m])
                        elif len(pending[m]) >= batch_size:
                            report.computed[m] += _compute(encoders[m], processors[m], pending[m], device)
                    elif value is not None:
                        report.cached[m] += 1
                if progress is not None:
                    progress(report.samples, total)
        for m in processors:
            if compute:
                report.computed[m] += _compute(encoders[m], processors[m], pending[m], device)
    finally:
        for m, e in encoders.items():
            e.train(modes[m])
        next(iter(processors.values())).cache.store.flush(refresh=False)
    report.seconds = time.perf_counter() - t0
    return report


@torch.inference_mode()
def _compute(encoder: BackboneEncoder, processor: CachedFeatures, pending: dict[SourceId, Any],
             device: torch.device | str) -> int:
    """Run the backbone on the pending inputs (one batch), store each sample's hidden states, clear ``pending``."""
    if not pending:
        return 0
    keys, values = list(pending), list(pending.values())
    x, mask, _ = processor.inner.collate(values)
    with torch.autocast(torch.device(device).type, enabled=False):
        out = encoder.hidden(x.to(device), None if mask is None else mask.to(device))  # (B, N, H), (B, N)
    tokens, valid = out.tokens.float().cpu(), out.mask.cpu()
    for i, key in enumerate(keys):
        processor.cache.put(processor.key, key, tokens[i], valid[i])
    pending.clear()
    return len(keys)


def _share(dataset: Dataset, rank: int, world_size: int) -> Dataset:
    if isinstance(dataset, IterableDataset) or world_size == 1:
        return dataset  # a streaming dataset is split by rank when it is made
    return Subset(dataset, range(rank, len(dataset), world_size))  # type: ignore[arg-type]


def _as_list(samples: list[Any]) -> list[Any]:
    return samples


def _all_samples(datasets: Sequence[Dataset], num_workers: int, batch_size: int) -> Iterator[dict[str, Any]]:
    """Each sample dict of ``datasets`` (a streaming one yields ``(key, sample)`` pairs), loaded by workers."""
    for dataset in datasets:
        loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=_as_list)
        for batch in loader:
            for item in batch:
                yield item[1] if isinstance(item, tuple) else item


# --- the training side ----------------------------------------------------------------------------------------------

def install(datamodule: Any, net: nn.Module, *, root: str | os.PathLike, dtype: str = "float16",
            exclude: Iterable[str] = ()) -> dict[str, CachedFeatures]:
    """Give ``datamodule`` the cached processors of every cacheable modality of ``net``; returns them."""
    processors = cached_processors(net, datamodule.processors, FeatureCache(root, dtype=dtype), exclude)
    if processors:
        datamodule.replace_processors(processors)
    return processors


class FillFeatureCache(pl.Callback):
    """Fills the feature cache on the training device before the first batch (fit, or validate/test alone).

    Every rank fills its share, then all wait at a barrier and load what the others stored.

    Args:
        processors: what :func:`install` returned.
        batch_size: samples per backbone call.
        splits: the splits to fill (all by default; ``mmgpt-eval`` fills the one it evaluates).
    """

    def __init__(self, processors: Mapping[str, CachedFeatures], batch_size: int = 32,
                 splits: Sequence[str] = SPLITS) -> None:
        self.processors, self.batch_size, self.splits = dict(processors), batch_size, tuple(splits)
        self.cache = next(iter(self.processors.values())).cache if self.processors else None
        self.done = False

    def _fill(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.done or not self.processors:
            return
        self.done = True
        from mmgpt.datamodules.manifest.media import Progress

        # A sharded (FSDP2) backbone runs only inside the whole network's forward: there, fill ahead.
        compute = not isinstance(trainer.strategy, ModelParallelStrategy)
        progress = Progress("filling the feature cache") if trainer.is_global_zero and compute else None
        report = fill(trainer.datamodule, pl_module.net, self.processors, device=pl_module.device,
                      batch_size=self.batch_size, rank=trainer.global_rank, world_size=trainer.world_size,
                      progress=progress, compute=compute, splits=self.splits)
        if progress is not None:
            progress.close()
        if any(report.missing.values()):
            raise FeatureCacheMiss(
                f"feature cache {self.cache.root}: {report.missing} samples are not cached, and sharded (FSDP) "
                "backbones cannot fill it during training; fill it first with mmgpt-data features (the same "
                "overrides, without trainer=fsdp), or train with feature_cache.mode=off")
        trainer.strategy.barrier("feature_cache")
        self.cache.refresh()
        if trainer.is_global_zero:
            log.info("feature cache (rank 0's share): %s", report.describe())

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._fill(trainer, pl_module)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._fill(trainer, pl_module)

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._fill(trainer, pl_module)
