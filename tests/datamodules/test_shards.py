"""WebDataset shards: written from a manifest folder, streamed exactly once per epoch across ranks and workers."""

from collections import Counter
from pathlib import Path

import pytest
from torch.utils.data import DataLoader

from datamodules.manifest.export import export_synthetic
from datamodules.shards import ShardDataModule, ShardError, worker_shards, write_shards


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("shards")
    export_synthetic(base / "folder", num_train=48, num_val=12, num_test=6, seed=0)
    write_shards(base / "folder", base / "out", samples_per_shard=6)
    return base / "out"


def test_partition_is_exact():
    shards = [f"s{i}" for i in range(10)]
    parts = [worker_shards(shards, r, 2, w, 3) for r in range(2) for w in range(3)]
    assert sorted(s for p in parts for s in p) == shards


def test_every_sample_once_per_epoch_across_two_ranks_and_two_workers(shard_dir):
    dm = ShardDataModule(str(shard_dir), batch_size=4, num_workers=2, shuffle=True)
    for epoch_orders in range(2):  # two epochs: the shuffled shard order changes, coverage must not
        seen: Counter = Counter()
        for rank in range(2):
            ds = dm.dataset("train", rank=rank, world_size=2)
            ds.set_epoch(epoch_orders)
            for batch in DataLoader(ds, batch_size=4, num_workers=2, collate_fn=dm.collate):
                seen.update(batch.ids)
        assert len(seen) == 48 and set(seen.values()) == {1}


def test_streamed_batches_are_complete(shard_dir):
    dm = ShardDataModule(str(shard_dir), batch_size=4, num_workers=0, shuffle=False)
    batch = next(iter(dm.val_dataloader()))
    assert batch.inputs["image"].shape == (4, 3, 32, 32)
    assert batch.present["audio"].all() and batch.present["image"].all() and batch.present["text"].all()
    assert dm.num_classes == 15 and int(batch.labels.max()) < 15


def test_refuses_a_non_empty_output_and_a_missing_folder(shard_dir, tmp_path):
    with pytest.raises(ShardError, match="not empty"):
        write_shards(shard_dir.parent / "folder", shard_dir)
    with pytest.raises(ShardError, match="shards.json"):
        ShardDataModule(str(tmp_path))


def test_shard_command_and_training_on_shards(shard_dir, tmp_path, compose_cfg):
    from mmgpt.cli.data import main as data_main
    from mmgpt.cli.train import train

    assert data_main(["shard", str(shard_dir.parent / "folder"), str(tmp_path / "cli")]) == 0
    assert data_main(["shard", str(shard_dir.parent / "folder"), str(tmp_path / "cli")]) == 1  # not empty
    cfg = compose_cfg(["model.dim=32", "model.num_heads=2", "data=shards", f"data.root={tmp_path / 'cli'}", "data.batch_size=8",
                       "data.num_workers=0", "logger=csv", "debug=fdr"])
    results = train(cfg)
    assert results["global_step"] == 1 and "val/acc" in results["val"]
