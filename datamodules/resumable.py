"""A DataLoader that can resume in the middle of an epoch, exactly where a checkpoint was taken.

Lightning saves the state of a training DataLoader that has ``state_dict``/``load_state_dict`` in each checkpoint
and restores it on resume; :class:`ResumableLoader` records the epoch and how many batches it has handed out, and
after a restore its next pass regenerates that epoch's order and skips those batches. :class:`EpochSampler`
makes the order a pure function of (seed, epoch), split across DDP ranks like ``DistributedSampler``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

from torch.utils.data import DataLoader, Dataset, DistributedSampler


class EpochSampler(DistributedSampler):
    """``DistributedSampler`` (seeded per-epoch order split across ranks) that can start part-way into an epoch.

    Being a ``DistributedSampler``, Lightning keeps it instead of injecting its own (which always shuffles
    training data); on a single process it is used with ``rank=0, world_size=1``.

    Args:
        dataset: the map-style dataset.
        shuffle: permute per epoch with ``seed + epoch``.
        seed: shuffling seed, the same on every rank.
        rank: this process's rank; world_size: number of ranks.
    """

    def __init__(self, dataset: Dataset, shuffle: bool, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        super().__init__(dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        self.start = 0  # samples of this rank's share to skip (resuming mid-epoch); reset after one pass

    def __iter__(self) -> Iterator[int]:
        start, self.start = self.start, 0
        return itertools.islice(super().__iter__(), start, None)


class ResumableLoader(DataLoader):
    """A DataLoader over an :class:`EpochSampler` whose position Lightning checkpoints and restores.

    Args:
        consumed: returns how many batches of the current epoch the model has trained on. The loader itself
            has handed out more (Lightning fetches ahead), so the datamodule passes the trainer's own count.
        *args, **kwargs: as for ``DataLoader``; ``sampler`` must be an :class:`EpochSampler`.
    """

    def __init__(self, *args: Any, consumed: Callable[[], int] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.sampler, EpochSampler):
            raise TypeError("ResumableLoader needs an EpochSampler")
        self.consumed = consumed
        self._yielded = 0
        self._skip = 0

    def __iter__(self) -> Iterator[Any]:
        skip, self._skip = self._skip, 0
        self.sampler.start = skip * self.batch_size
        self._yielded = skip
        for batch in super().__iter__():
            self._yielded += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.sampler.epoch, "batches": self.consumed() if self.consumed else self._yielded}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.sampler.set_epoch(state["epoch"])
        self._skip = state["batches"]
