"""The frozen-feature cache: a frozen backbone's hidden states, computed once per sample and read from disk after.

When a modality's encoder is a :class:`~mmgpt.encoders.backbone.BackboneEncoder` whose backbone is frozen (no
``unfreeze_last``, no LoRA, no backbone parameter that trains) and its processor has no random augmentation, the
backbone's :meth:`~mmgpt.encoders.backbone.BackboneEncoder.hidden` output is a pure function of the sample. Its
processor is then wrapped in :class:`CachedFeatures`, which reads the hidden states (N, H) of each sample from a
:class:`~mmgpt.datamodules.disk_store.DiskStore` (namespace ``features``) and collates them to (B, N, H) with a
mask (B, N); the batch names the modality in ``precomputed`` and the model runs only the encoder's projection.

Key of an entry (a 64-bit hash of all of it, see :func:`~mmgpt.datamodules.disk_store.key_hash`):

* the encoder's :meth:`~mmgpt.encoders.backbone.BackboneEncoder.feature_fingerprint`: class, weights' sha256, layer;
* the processor's fingerprint (decode settings, tokenizer and length), the storage dtype and :data:`VERSION`;
* the sample's content: a blake2b hash of the encoder input its processor's ``transform`` gives for it (pixels
  after normalisation, the text, the waveform). A content key serves every datamodule alike (files, inline and
  synthetic samples, shards, HF data sets): a changed file changes its decoded content, two copies of one file
  share an entry, and a ``touch`` does not invalidate anything.

Only the valid positions are stored: rows up to the last True of the sample's mask (a sample alone has no padding;
a mask with holes inside that range is stored as a second entry, namespace ``features-mask``). Storage is float16
by default (``feature_cache.dtype``): cached outputs then match uncached ones to about 1e-3 relative (float16's
11-bit mantissa); float32 storage matches to float32 rounding (the tests check both).

Filling is ahead of use (:func:`fill`): ``mmgpt-train`` fills every split's missing entries on the training
device before the first batch (:class:`FillFeatureCache`; DDP ranks each fill every world_size-th sample, then
wait at a barrier), and ``mmgpt-data features`` does the same ahead of time. A sample missing from the cache
during training is an error naming the modality and the fix, never a silent backbone run inside a loader worker
(which has no GPU). Concurrent writers are safe: each process appends to its own segment and commits by rename.

Legend: B batch, N tokens, H backbone hidden size.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.strategies import ModelParallelStrategy
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset

from mmgpt.datamodules.disk_store import DiskStore, SourceId
from mmgpt.datamodules.processors import Processor
from mmgpt.encoders.backbone import BackboneEncoder
from mmgpt.errors import UserError
from mmgpt.training.rng import preserved_rng

log = logging.getLogger(__name__)

#: Bump when what is stored changes: every old entry then misses.
VERSION = 1
NAMESPACE, MASK_NAMESPACE = "features", "features-mask"
DTYPES = ("float16", "float32")
SPLITS = ("train", "val", "test")


class FeatureCacheMiss(UserError):
    """A sample's hidden states are not in the cache while training reads it."""


@dataclass
class Hidden:
    """One sample's cached hidden states: tokens (N, H) float32 and their mask (N,) (None: all valid)."""

    tokens: Tensor
    mask: Tensor | None = None


@dataclass
class FeatureMiss:
    """A sample not in the cache: its key and the encoder input to compute the hidden states from."""

    key: SourceId
    value: Any


def content_key(value: Any) -> SourceId:
    """The cache's identity of one sample's encoder input: a hash of its content (tensors and arrays by dtype, shape
    and bytes; text; mappings and sequences of them), as a :class:`SourceId` of the store (``path`` = the hash,
    ``size`` = the bytes hashed)."""
    h = hashlib.blake2b(digest_size=16)
    size = _hash_into(h, value)
    return SourceId(f"content:{h.hexdigest()}", size, 0)


def _hash_into(h: Any, value: Any) -> int:
    if isinstance(value, str):
        data = b"s" + value.encode()
    elif isinstance(value, bytes):
        data = b"b" + value
    elif isinstance(value, (Tensor, np.ndarray)):
        t = value.detach().cpu() if isinstance(value, Tensor) else torch.from_numpy(np.ascontiguousarray(value))
        t = t.contiguous()
        dtype = str(t.dtype)
        raw = t.view(torch.int16) if t.dtype == torch.bfloat16 else t  # numpy has no bfloat16
        data = f"t{dtype}{tuple(t.shape)}\0".encode() + raw.numpy().tobytes()
    elif isinstance(value, (bool, int, float)) or value is None:
        data = f"n{value!r}".encode()
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):  # e.g. audio features with their mask
        h.update(f"d{type(value).__name__}\0".encode())
        return sum(_hash_into(h, getattr(value, f.name)) for f in dataclasses.fields(value))
    elif isinstance(value, Mapping):
        return sum(_hash_into(h, k) + _hash_into(h, value[k]) for k in sorted(value))
    elif isinstance(value, (list, tuple)):
        h.update(f"l{len(value)}\0".encode())
        return sum(_hash_into(h, v) for v in value)
    else:
        raise TypeError(f"feature cache: cannot key an encoder input of type {type(value).__name__}")
    h.update(len(data).to_bytes(8, "little"))
    h.update(data)
    return len(data)


class FeatureCache:
    """Hidden states by (fingerprint, sample content) in a :class:`DiskStore` folder.

    Args:
        root: the cache folder (created if missing); shared by every run, rank and loader worker.
        dtype: storage dtype, ``float16`` or ``float32``.
    """

    def __init__(self, root: str | os.PathLike, *, dtype: str = "float16") -> None:
        if dtype not in DTYPES:
            raise ValueError(f"feature_cache.dtype={dtype!r}: expected one of {', '.join(DTYPES)}")
        self.root, self.dtype = Path(root), dtype
        self.store = DiskStore(self.root)

    def get(self, fingerprint: str, key: SourceId) -> Hidden | None:
        hit = self.store.lookup(NAMESPACE, fingerprint, key)
        if hit is None or hit.error is not None:
            return None
        tokens = torch.from_numpy(self.store.read(hit)).float()  # (N, H)
        mask_hit = self.store.lookup(MASK_NAMESPACE, fingerprint, key)
        mask = torch.from_numpy(self.store.read(mask_hit)) if mask_hit is not None else None
        return Hidden(tokens, mask)

    def put(self, fingerprint: str, key: SourceId, tokens: Tensor, mask: Tensor) -> None:
        """Store one sample's hidden states (N, H) and mask (N,): the rows up to its last valid position."""
        valid = mask.nonzero()
        n = int(valid[-1]) + 1 if len(valid) else 0
        if n and not bool(mask[:n].all()):  # holes inside: keep the mask too (written first: an entry is complete)
            self.store.put(MASK_NAMESPACE, fingerprint, key, mask[:n].cpu().numpy())
        self.store.put(NAMESPACE, fingerprint, key, tokens[:n].to(getattr(torch, self.dtype)).cpu().numpy())

    def flush(self) -> None:
        """Commit this process's entries and load every process's."""
        self.store.flush()

    def refresh(self) -> None:
        self.store.refresh()


class CachedFeatures(Processor):
    """A modality's processor whose samples come out as cached backbone hidden states (see the module doc).

    Decoding (and the media store's keys) stay the wrapped processor's; ``transform`` looks the sample up in the
    cache and ``collate`` pads the hidden states to (B, N, H) with a mask (B, N).

    Args:
        name: the modality (for messages).
        inner: the modality's own processor (its ``transform`` output is what the backbone would see).
        cache: the feature cache.
        encoder_fingerprint: the encoder's :meth:`BackboneEncoder.feature_fingerprint`.
        hidden_size: H.
    """

    precomputed = True

    def __init__(self, *, name: str, inner: Processor, cache: FeatureCache, encoder_fingerprint: str,
                 hidden_size: int) -> None:
        self.name, self.inner, self.cache, self.hidden_size = name, inner, cache, hidden_size
        self.kind = inner.kind
        self.key = f"v{VERSION}|{encoder_fingerprint}|{inner.fingerprint()}|{cache.dtype}"

    def decode(self, source: Any) -> Any:
        return self.inner.decode(source)

    def fingerprint(self) -> str:
        return self.inner.fingerprint()  # the stored (decoded) form is the wrapped processor's

    def is_present(self, value: Any) -> bool:
        return isinstance(value, Hidden) or (value is not None and self.inner.is_present(value))

    def transform(self, stored: Any, *, train: bool) -> Hidden | FeatureMiss | None:
        value = self.inner.transform(stored, train=False)  # no random augmentation: the same in every split
        if not self.inner.is_present(value):
            return None
        key = content_key(value)
        hit = self.cache.get(self.key, key)
        if hit is None:  # filled by another process since this one loaded the index?
            self.cache.refresh()
            hit = self.cache.get(self.key, key)
        return hit if hit is not None else FeatureMiss(key, value)

    def collate(self, values: Sequence[Any]) -> tuple[Tensor, Tensor | None, Tensor]:
        misses = sum(isinstance(v, FeatureMiss) for v in values)
        if misses:
            raise FeatureCacheMiss(
                f"feature cache {self.cache.root}: {misses} sample(s) of modality {self.name!r} have no cached "
                "hidden states; fill the cache first (mmgpt-data features, with the training overrides) or train "
                "with feature_cache.mode=off")
        lengths = [len(v.tokens) if isinstance(v, Hidden) else 0 for v in values]
        N = max(1, max(lengths))
        out = torch.zeros(len(values), N, self.hidden_size)  # (B, N, H)
        mask = torch.zeros(len(values), N, dtype=torch.bool)  # (B, N)
        for i, (v, n) in enumerate(zip(values, lengths)):
            if n:
                out[i, :n] = v.tokens
                mask[i, :n] = True if v.mask is None else v.mask
        return out, mask, torch.tensor([isinstance(v, Hidden) for v in values])


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
