"""The two DataLoaders that resume in the middle of an epoch, exactly where a checkpoint was taken.

Lightning saves the state of a training DataLoader that has ``state_dict``/``load_state_dict`` in each checkpoint
and restores it on resume. Both loaders here record the epoch and how many batches the model has trained on:

* :class:`ResumableLoader`, over a map-style dataset: after a restore its next pass regenerates that epoch's
  order and skips those batches. :class:`EpochSampler` makes the order a pure function of (seed, epoch), split
  across DDP ranks like ``DistributedSampler``.
* :class:`StreamLoader`, over a :class:`StreamingDataset` (tar shards): it tells the dataset the epoch before
  workers fork; after a restore each worker skips, undecoded, what it had delivered (:func:`delivered_before`).

Data randomness (augmentation in the dataset, modality dropout in the collate function) is a pure function of
(seed, epoch, sample index) too: each sample is loaded, and each batch collated, under :func:`mmgpt.training.rng.seeded`
with a seed derived from those. So a batch is the same whether it is built in the training process or in any of
N workers, before or after a resume, and loading data never draws from the training process's generators.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple, Protocol

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, IterableDataset, default_collate

from mmgpt.training.rng import mix_seed, mix_seeds, preserved_rng, seed_all, seeded

#: Turns a list of samples into a batch.
Collator = Callable[[list[Any]], Any]


class SampleKey(NamedTuple):
    """What :class:`EpochSampler` yields: a dataset index and the seed of that sample's randomness this epoch."""

    index: int
    seed: int


class EpochSampler(DistributedSampler):
    """``DistributedSampler`` (seeded per-epoch order split across ranks) that can start part-way into an epoch.

    Being a ``DistributedSampler``, Lightning keeps it instead of injecting its own (which always shuffles
    training data); on a single process it is used with ``rank=0, world_size=1``. It yields
    :class:`SampleKey` s (index + per-sample seed), which :class:`ResumableLoader` unpacks.

    Args:
        dataset: the map-style dataset.
        shuffle: permute per epoch with ``seed + epoch``.
        seed: shuffling and data-randomness seed, the same on every rank.
        rank: this process's rank; world_size: number of ranks.
    """

    def __init__(self, dataset: Dataset, shuffle: bool, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        super().__init__(dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        self.start = 0  # samples of this rank's share to skip (resuming mid-epoch); reset after one pass

    def __iter__(self) -> Iterator[SampleKey]:  # type: ignore[override]
        start, self.start = self.start, 0
        indices = list(itertools.islice(super().__iter__(), start, None))
        for i, seed in zip(indices, mix_seeds(self.seed, self.epoch, last=indices)):
            yield SampleKey(i, seed)


class KeyedDataset(Dataset):
    """Loads ``dataset[key.index]`` with the global generators seeded by ``key.seed``; returns ``(key, sample)``."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: SampleKey) -> tuple[SampleKey, Any]:
        if not self.draws_randomness:
            return key, self.dataset[key.index]
        with seeded(key.seed):
            return key, self.dataset[key.index]

    @property
    def draws_randomness(self) -> bool:
        """Whether loading a sample can draw random numbers (the dataset's ``draws_randomness``; True if it does
        not say). When it cannot, samples are loaded without seeding: seeding the three global generators costs
        more per sample than loading pre-extracted features."""
        return getattr(self.dataset, "draws_randomness", True)

    def __getitems__(self, keys: Sequence[SampleKey]) -> list[tuple[SampleKey, Any]] | KeyedRows:
        """A batch's samples, each under its own seed; the caller's generator states are saved once per batch.
        A dataset that draws nothing and can gather the batch's rows at once (its ``rows``) hands them over as
        :class:`KeyedRows`."""
        if not self.draws_randomness:
            gather = getattr(self.dataset, "rows", None)
            rows = gather([key.index for key in keys]) if gather is not None else None
            if rows is not None:
                return KeyedRows(list(keys), rows)
            return [(key, self.dataset[key.index]) for key in keys]
        out = []
        with preserved_rng():
            for key in keys:
                seed_all(key.seed)
                out.append((key, self.dataset[key.index]))
        return out


class KeyedRows(NamedTuple):
    """A batch gathered at once (:class:`~mmgpt.datamodules.collate.Rows`) with the keys of its samples."""

    keys: list[SampleKey]
    rows: Any


class SeededCollate:
    """Collates ``(key, sample)`` pairs (or :class:`KeyedRows`) with the global generators seeded by the batch's
    keys."""

    def __init__(self, collate_fn: Collator) -> None:
        self.collate_fn = collate_fn

    def __call__(self, pairs: Sequence[tuple[SampleKey, Any]] | KeyedRows) -> Any:
        if isinstance(pairs, KeyedRows):
            keys, samples = pairs.keys, pairs.rows
        else:
            keys, samples = [k for k, _ in pairs], [sample for _, sample in pairs]
        with seeded(mix_seed(keys[0].seed, len(keys))):
            return self.collate_fn(samples)


class ResumableLoader(DataLoader):
    """A DataLoader over an :class:`EpochSampler` whose position Lightning checkpoints and restores.

    Args:
        dataset: the map-style dataset (wrapped so that each sample's randomness is seeded; see the module doc).
        sampler: the :class:`EpochSampler` over it.
        collate_fn: turns a list of samples into a batch (default: torch's ``default_collate``).
        consumed: returns how many batches of the current epoch the model has trained on. The loader itself
            has handed out more (Lightning fetches ahead), so the datamodule passes the trainer's own count.
        **kwargs: as for ``DataLoader`` (``batch_size``, ``num_workers``...); not ``shuffle`` or ``generator``.
    """

    def __init__(self, dataset: Dataset, *, sampler: EpochSampler, collate_fn: Collator | None = None,
                 consumed: Callable[[], int] | None = None, **kwargs: Any) -> None:
        if not isinstance(sampler, EpochSampler):
            raise TypeError(f"ResumableLoader needs an EpochSampler, got {type(sampler).__name__}")
        super().__init__(KeyedDataset(dataset), sampler=sampler,
                         collate_fn=SeededCollate(collate_fn or default_collate), **kwargs)
        self.consumed = consumed
        self._yielded = 0
        self._skip = 0

    def __iter__(self) -> Iterator[Any]:
        skip, self._skip = self._skip, 0
        self.sampler.start = skip * self.batch_size
        self._yielded = skip
        # The loader draws its workers' base seed from this generator instead of the global one, so creating an
        # iterator (at each epoch start, and once more after a resume) leaves the training process's draws alone.
        self.generator = torch.Generator().manual_seed(mix_seed(self.sampler.seed, self.sampler.epoch))
        for batch in super().__iter__():
            self._yielded += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.sampler.epoch, "batches": self.consumed() if self.consumed else self._yielded}

    def load_state_dict(self, state: dict[str, int]) -> None:
        epoch, batches = state["epoch"], state["batches"]
        if batches >= len(self):  # saved at the epoch's end: the next one starts from its beginning
            epoch, batches = epoch + 1, 0
        self.sampler.set_epoch(epoch)
        self._skip = batches


def resumable_loader(dataset: Dataset, *, shuffle: bool, seed: int, batch_size: int, collate_fn: Collator,
                     num_workers: int = 0, trainer: Any = None, **kwargs: Any) -> ResumableLoader:
    """A :class:`ResumableLoader` over this process's share of ``dataset`` (all of it outside DDP).

    Our own sampler rather than the one Lightning injects: Lightning's automatic ``DistributedSampler`` always
    shuffles training data, and this one also resumes mid-epoch exactly. With ``shuffle=False``, N processes see
    exactly the samples one process would, in the same steps.

    Args:
        trainer: the Lightning trainer of a training loader (its count of batches trained on this epoch is the
            position saved in checkpoints); None for evaluation loaders.
        **kwargs: more ``DataLoader`` arguments (e.g. ``pin_memory``).
    """
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    rank, world = (torch.distributed.get_rank(), torch.distributed.get_world_size()) if distributed else (0, 1)
    sampler = EpochSampler(dataset, shuffle=shuffle, seed=seed, rank=rank, world_size=world)
    return ResumableLoader(dataset, sampler=sampler, batch_size=batch_size, collate_fn=collate_fn,
                           num_workers=num_workers, persistent_workers=num_workers > 0,
                           consumed=batches_trained(trainer), **kwargs)


def batches_trained(trainer: Any) -> Callable[[], int] | None:
    """The ``consumed`` callback of a training loader: the trainer's count of batches trained on this epoch.

    A loader hands out more batches than that (Lightning fetches ahead), so this, not the loader's own count, is
    the position to save. None without a trainer (evaluation loaders, loaders used outside Lightning).
    """
    if trainer is None:
        return None
    return lambda: trainer.fit_loop.epoch_loop.batch_progress.current.processed


class StreamingDataset(Protocol):
    """What :class:`StreamLoader` needs of an iterable dataset (see :class:`mmgpt.datamodules.shards.ShardDataset`).

    It yields ``(SampleKey, sample)`` pairs, each sample's randomness seeded by its key, like :class:`KeyedDataset`.
    """

    seed: int
    resume: tuple[int, int] | None

    def set_epoch(self, epoch: int) -> None: ...

    def resume_at(self, epoch: int, batches: int) -> None: ...

    def batches_per_worker(self, epoch: int, num_workers: int) -> list[int]: ...


def delivered_before(batches_per_worker: Sequence[int], consumed: int) -> tuple[list[int], int]:
    """Where a multi-worker DataLoader over an iterable dataset stands after ``consumed`` batches of an epoch.

    The loader takes one batch from each worker in turn, skipping workers whose stream has ended. Given how many
    batches each worker yields this epoch, returns how many each had delivered and which worker delivers next.
    """
    delivered = [0] * len(batches_per_worker)
    left, rounds = consumed, max(batches_per_worker, default=0)
    for t in range(rounds):
        for w, n in enumerate(batches_per_worker):
            if n > t:
                if left == 0:
                    return delivered, w
                delivered[w] += 1
                left -= 1
    return delivered, 0


def resumed_reader(batches_per_worker: Sequence[int], worker: int, consumed: int, batch_size: int) -> tuple[int, int]:
    """``(role, samples to skip)`` of loader worker ``worker`` when an epoch resumes after ``consumed`` batches.

    The worker takes over the part of the worker whose batch comes next (so worker 0 yields the batch the epoch
    continues with) and skips, undecoded, the samples that part had delivered (:func:`delivered_before`).
    """
    delivered, first = delivered_before(batches_per_worker, consumed)
    role = (worker + first) % len(batches_per_worker)
    return role, delivered[role] * batch_size


class StreamLoader(DataLoader):
    """A DataLoader over a :class:`StreamingDataset` that tells it the epoch each time a pass starts (before
    workers fork), and whose position Lightning checkpoints and restores (like :class:`ResumableLoader`).

    Args:
        dataset: the streaming dataset; it yields ``(SampleKey, sample)`` pairs.
        collate_fn: turns a list of samples into a batch (run under the batch's seed, see :class:`SeededCollate`).
        consumed: returns how many batches of the current epoch the model has trained on (the trainer's count).
        **kwargs: as for ``DataLoader``.
    """

    def __init__(self, dataset: IterableDataset, *, collate_fn: Collator | None = None,
                 consumed: Callable[[], int] | None = None, **kwargs: Any) -> None:
        super().__init__(dataset, collate_fn=SeededCollate(collate_fn or default_collate), **kwargs)
        self.consumed = consumed
        self._epoch = -1
        self._resume_epoch: int | None = None

    def __iter__(self) -> Iterator[Any]:
        # A generator: this runs at the first batch, after Lightning has restored a resumed position (it may
        # create the iterator before it does).
        if self._resume_epoch is not None:
            self._epoch, self._resume_epoch = self._resume_epoch, None
        else:
            self._epoch += 1
        self.dataset.set_epoch(self._epoch)
        # Workers' base seed from the loader's own generator, not the global one: creating an iterator (each
        # epoch, and again after a resume) must not shift the training process's random draws.
        self.generator = torch.Generator().manual_seed(mix_seed(self.dataset.seed, self._epoch))
        yield from super().__iter__()

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self._epoch, "batches": self.consumed() if self.consumed else 0}

    def load_state_dict(self, state: dict[str, int]) -> None:
        epoch, batches = state["epoch"], state["batches"]
        self.dataset.resume_at(epoch, batches)
        if batches >= sum(self.dataset.batches_per_worker(epoch, self.num_workers)):  # saved at the epoch's end
            epoch, batches = epoch + 1, 0
            self.dataset.resume = None
        self._resume_epoch = epoch
