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

from mmgpt.datamodules.feature_cache.cache import (
    DTYPES,
    MASK_NAMESPACE,
    NAMESPACE,
    SPLITS,
    VERSION,
    CachedFeatures,
    FeatureCache,
    FeatureCacheMiss,
    FeatureMiss,
    Hidden,
    content_key,
)
from mmgpt.datamodules.feature_cache.fill import (
    FillFeatureCache,
    FillReport,
    cached_processors,
    fill,
    install,
    why_not_cached,
)

__all__ = ["DTYPES", "MASK_NAMESPACE", "NAMESPACE", "SPLITS", "VERSION", "CachedFeatures", "FeatureCache",
           "FeatureCacheMiss", "FeatureMiss", "FillFeatureCache", "FillReport", "Hidden", "cached_processors",
           "content_key", "fill", "install", "why_not_cached"]
