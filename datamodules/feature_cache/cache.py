"""The frozen-feature cache's storage side: content keys, :class:`FeatureCache` (a DiskStore namespace) and the
:class:`CachedFeatures` processor that reads it (see :mod:`mmgpt.datamodules.feature_cache`).

Legend: B batch, N tokens, H backbone hidden size.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mmgpt.datamodules.disk_store import DiskStore, SourceId
from mmgpt.datamodules.processors import Processor
from mmgpt.errors import UserError

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

    def get(self, fingerprint: str, key: SourceId, hidden_size: int | None = None) -> Hidden | None:
        """The cached hidden states of a sample, or None (not cached, or an entry that is not (N, ``hidden_size``)
        floating-point hidden states with an (N,) bool mask: a foreign or damaged entry is computed again)."""
        hit = self.store.lookup(NAMESPACE, fingerprint, key)
        if hit is None or hit.error is not None:
            return None
        tokens = self.store.read(hit)  # (N, H)
        mask_hit = self.store.lookup(MASK_NAMESPACE, fingerprint, key)
        mask = self.store.read(mask_hit) if mask_hit is not None and mask_hit.error is None else None
        width_ok = tokens.ndim == 2 and (hidden_size is None or tokens.shape[1] == hidden_size)
        if not width_ok or tokens.dtype.kind != "f" or (
                mask is not None and (mask.dtype != np.bool_ or mask.shape != tokens.shape[:1])):
            log.warning("feature cache %s: an entry of shape %s (%s) is not hidden states of width %s; computing it "
                        "again", self.root, tokens.shape, tokens.dtype, hidden_size)
            return None
        return Hidden(torch.from_numpy(tokens).float(), None if mask is None else torch.from_numpy(mask))

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
        hit = self.cache.get(self.key, key, self.hidden_size)
        if hit is None:  # filled by another process since this one loaded the index?
            self.cache.refresh()
            hit = self.cache.get(self.key, key, self.hidden_size)
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


