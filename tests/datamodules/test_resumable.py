"""The resumable loader: each epoch's batches, augmentation and modality dropout included, are a pure function
of (seed, epoch), whether built in the training process or in workers, from the start or after a restore."""

from __future__ import annotations

import pytest
import torch

from mmgpt.batch import MultimodalBatch
from mmgpt.datamodules.resumable import EpochSampler, ResumableLoader, SampleKey
from mmgpt.datamodules.synthetic import SyntheticDataModule


def _datamodule(num_workers: int = 0, seed: int = 0, augment: bool = True) -> SyntheticDataModule:
    dm = SyntheticDataModule(num_train=48, num_val=8, num_test=8, image_size=16, batch_size=8, seed=seed,
                             num_workers=num_workers, augment=augment,
                             modality_dropout={"audio": 0.3, "image": 0.3, "text": 0.3})
    dm.setup("fit")
    return dm


def _epoch(loader: ResumableLoader, epoch: int, skip: int = 0) -> list[MultimodalBatch]:
    loader.load_state_dict({"epoch": epoch, "batches": skip})
    return list(loader)


def _same(a: list[MultimodalBatch], b: list[MultimodalBatch]) -> bool:
    return len(a) == len(b) and all(
        x.ids == y.ids
        and all(torch.equal(x.inputs[m], y.inputs[m]) and torch.equal(x.present[m], y.present[m]) for m in x.inputs)
        for x, y in zip(a, b)
    )


def test_a_pass_is_a_function_of_seed_and_epoch_and_randomness_is_really_used():
    first, again = _datamodule().train_dataloader(), _datamodule().train_dataloader()
    e0, e0_again, e1 = _epoch(first, 0), _epoch(again, 0), _epoch(first, 1)
    assert _same(e0, e0_again)
    assert not _same(e0, e1)
    # augmentation and modality dropout did act: some images are mirrored, some modalities dropped
    plain = _datamodule(augment=False).train_dataloader()
    p0 = _epoch(plain, 0)
    assert any(not torch.equal(a.inputs["image"], b.inputs["image"]) for a, b in zip(e0, p0))
    assert any(not bool(b.present[m].all()) for b in e0 for m in b.present)
    assert not _same(e0, _epoch(_datamodule(seed=1).train_dataloader(), 0))


def test_resuming_part_way_gives_the_remaining_batches_of_an_uninterrupted_pass():
    loader = _datamodule().train_dataloader()
    full = _epoch(loader, 2)
    assert _same(_epoch(loader, 2, skip=4), full[4:])


@pytest.mark.parametrize("num_workers", [2])
def test_workers_build_the_same_batches_as_the_training_process(num_workers: int):
    in_process = _epoch(_datamodule().train_dataloader(), 1)
    assert _same(_epoch(_datamodule(num_workers=num_workers).train_dataloader(), 1), in_process)
    assert _same(_epoch(_datamodule(num_workers=num_workers).train_dataloader(), 1, skip=3), in_process[3:])


def test_loading_data_leaves_the_training_process_generators_alone():
    loader = _datamodule().train_dataloader()
    torch.manual_seed(123)
    before = torch.get_rng_state()
    _epoch(loader, 0)
    assert torch.equal(torch.get_rng_state(), before)


def test_the_sampler_yields_keys_with_per_epoch_sample_seeds_and_splits_ranks():
    data = list(range(10))
    ranks = [EpochSampler(data, shuffle=True, seed=5, rank=r, world_size=2) for r in (0, 1)]
    keys = [list(s) for s in ranks]
    assert all(isinstance(k, SampleKey) for k in keys[0])
    assert sorted(k.index for ks in keys for k in ks) == data
    for s in ranks:
        s.set_epoch(1)
    keys1 = {k.index: k.seed for s in ranks for k in s}
    keys0 = {k.index: k.seed for ks in keys for k in ks}
    assert all(keys0[i] != keys1[i] for i in data)  # new draws for every sample each epoch


def test_a_plain_sampler_is_refused():
    with pytest.raises(TypeError, match="EpochSampler"):
        ResumableLoader([1, 2, 3], sampler=torch.utils.data.SequentialSampler([1, 2, 3]))


class _Draws(torch.utils.data.Dataset):
    """A sample is a random draw: its value shows whether the sample's seed was set."""

    def __init__(self, draws_randomness: bool | None) -> None:
        if draws_randomness is not None:
            self.draws_randomness = draws_randomness

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> float:
        return torch.rand(()).item()


@pytest.mark.parametrize("declared", [True, None])
def test_a_dataset_that_may_draw_is_loaded_under_each_samples_seed(declared, monkeypatch):
    from mmgpt.datamodules.resumable import KeyedDataset

    keyed = KeyedDataset(_Draws(declared))  # None: says nothing, so it counts as drawing
    a = keyed.__getitems__([SampleKey(0, 7), SampleKey(1, 8)])
    b = keyed.__getitems__([SampleKey(0, 7), SampleKey(1, 8)])
    assert a == b and a[0][1] != a[1][1]


def test_a_dataset_that_cannot_draw_is_loaded_without_seeding(monkeypatch):
    """Features and table lookups (draws_randomness False) skip the per-sample seeding of three generators."""
    import mmgpt.datamodules.resumable as resumable
    from mmgpt.datamodules.base import ProcessedDataset
    from mmgpt.datamodules.processors import FeaturesProcessor

    def refuse(seed: int) -> None:
        raise AssertionError("seeded")

    monkeypatch.setattr(resumable, "seed_all", refuse)
    monkeypatch.setattr(resumable, "seeded", refuse)

    class Table:
        draws_randomness = False

        def __call__(self, i: int) -> dict:
            return {"id": i, "label": 0, "feats": [[float(i)] * 3]}

    dataset = ProcessedDataset(range(3), Table(), {"feats": FeaturesProcessor(dim=3)}, train=True)
    assert dataset.draws_randomness is False
    keyed = resumable.KeyedDataset(dataset)
    pairs = keyed.__getitems__([SampleKey(2, 5), SampleKey(0, 6)])
    assert [s["feats"].tolist() for _, s in pairs] == [[[2.0] * 3], [[0.0] * 3]]
    assert keyed[SampleKey(1, 3)][1]["id"] == 1
    # a fields function that says nothing counts as drawing
    assert ProcessedDataset(range(3), lambda i: {}, {"feats": FeaturesProcessor(dim=3)}, train=True).draws_randomness
