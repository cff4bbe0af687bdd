"""Which shards each reader streams: an exact partition over DDP ranks x loader workers, and split limits."""

from __future__ import annotations


def worker_shards(shards: list[str], rank: int, world_size: int, worker: int, num_workers: int) -> list[str]:
    """The shards one data-loading worker of one rank reads: an exact partition over all ranks x workers."""
    return shards[rank * num_workers + worker :: world_size * num_workers]


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
