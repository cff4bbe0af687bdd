"""Which shards each reader streams: an exact partition over DDP ranks x loader workers, and split limits."""

from __future__ import annotations

import itertools
import math
from collections.abc import Hashable, Mapping, Sequence
from typing import TypeVar

P = TypeVar("P", bound=Hashable)  # a shard path, or a piece of a Hugging Face split


def worker_shards(shards: Sequence[P], rank: int, world_size: int, worker: int, num_workers: int) -> list[P]:
    """The shards one data-loading worker of one rank reads: an exact partition over all ranks x workers."""
    return list(shards[rank * num_workers + worker :: world_size * num_workers])


def _own_batches(pieces: Sequence[P], sizes: Mapping[P, int], rank: int, world_size: int, num_workers: int,
                 batch_size: int) -> list[int]:
    return [math.ceil(sum(sizes[p] for p in worker_shards(pieces, rank, world_size, w, num_workers)) / batch_size)
            for w in range(num_workers)]


def padding_batches(pieces: Sequence[P], sizes: Mapping[P, int], rank: int, world_size: int, num_workers: int,
                    batch_size: int) -> int:
    """Batches ``rank``'s worker 0 adds so that every rank yields as many batches as the longest one.

    DDP steps in lockstep: a rank with fewer batches (fewer or smaller pieces than the others, or none when there
    are fewer pieces than ranks x workers) would leave the others waiting for ever. Like ``DistributedSampler``
    (``drop_last=False``), the extra batches repeat samples of the split, from its first piece on
    (:func:`reader_runs`).
    """
    n = max(1, num_workers)
    totals = [sum(_own_batches(pieces, sizes, r, world_size, n, batch_size)) for r in range(world_size)]
    return max(totals) - totals[rank]


def dealt_batches(pieces: Sequence[P], sizes: Mapping[P, int], rank: int, world_size: int, num_workers: int,
                  batch_size: int) -> list[int]:
    """How many batches each of ``num_workers`` workers (1 for none) of ``rank`` yields in a pass over ``pieces``
    (in this pass's order), the padding (:func:`padding_batches`) included."""
    n = max(1, num_workers)
    batches = _own_batches(pieces, sizes, rank, world_size, n, batch_size)
    batches[0] += padding_batches(pieces, sizes, rank, world_size, n, batch_size)
    return batches


def reader_runs(pieces: Sequence[P], sizes: Mapping[P, int | None], rank: int, world_size: int, worker: int,
                num_workers: int, batch_size: int) -> list[tuple[P, int | None]]:
    """What one worker of one rank reads in a pass: ``(piece, samples from its start)`` for its own pieces (None:
    all of it), then for worker 0 the padding (:func:`padding_batches`), the split's samples from the first on.
    Every piece's size must be known when there is more than one rank."""
    runs = [(p, sizes.get(p)) for p in worker_shards(pieces, rank, world_size, worker, num_workers)]
    if worker != 0 or world_size == 1:
        return runs
    pad = padding_batches(pieces, sizes, rank, world_size, num_workers, batch_size) * batch_size  # type: ignore[arg-type]
    for p in itertools.cycle(pieces) if pad else ():
        runs.append((p, min(sizes[p], pad)))  # type: ignore[type-var]
        pad -= runs[-1][1]  # type: ignore[operator]
        if pad <= 0:
            break
    return runs


def first_samples(shards: list[str], sizes: dict[str, int], limit: int) -> tuple[list[str], dict[str, int]]:
    """The shards holding the first ``limit`` samples (in the order written), the last one's count cut to fit."""
    kept: list[str] = []
    left = limit
    for shard in shards:
        if left <= 0:
            break
        kept.append(shard)
        left -= sizes[shard]
    cut = dict(sizes)
    if kept and left < 0:
        cut[kept[-1]] += left
    return kept, {s: cut[s] for s in kept}
