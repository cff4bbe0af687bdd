"""WebDataset shards: written from a manifest folder, streamed exactly once per epoch across ranks and workers."""

import io
import json
import shutil
import tarfile
from collections import Counter
from pathlib import Path

import pytest
import webdataset as wds
from torch.utils.data import DataLoader

from mmgpt.datamodules.resumable import SeededCollate
from mmgpt.datamodules.shards import (
    ShardDataModule,
    ShardError,
    StreamLoader,
    delivered_before,
    read_tar,
    worker_shards,
    write_shards,
)
from tests.helpers.folders import export_and_shard


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory) -> Path:
    return export_and_shard(tmp_path_factory.mktemp("shards"), num_train=48, samples_per_shard=6)


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
            for batch in DataLoader(ds, batch_size=4, num_workers=2, collate_fn=SeededCollate(dm.collate)):
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
    cfg = compose_cfg(["experiment=smoke", "data=shards", f"data.root={tmp_path / 'cli'}", "data.batch_size=8",
                       "data.num_workers=0", "logger=csv", "debug=fdr"])
    results = train(cfg)
    assert results["global_step"] == 1 and "val/acc" in results["val"]


def test_delivery_order_of_workers_with_uneven_streams():
    # round-robin over workers with 3, 1 and 2 batches: w0 w1 w2 | w0 w2 | w0
    assert delivered_before([3, 1, 2], 0) == ([0, 0, 0], 0)
    assert delivered_before([3, 1, 2], 4) == ([2, 1, 1], 2)
    assert delivered_before([3, 1, 2], 5) == ([2, 1, 2], 0)
    assert delivered_before([3, 1, 2], 6) == ([3, 1, 2], 0)


@pytest.fixture(scope="module")
def uneven_shards(tmp_path_factory) -> Path:
    """50 samples in 9 shards (the last one of 2): two workers stream 26 and 24 samples."""
    return export_and_shard(tmp_path_factory.mktemp("uneven"), num_train=50, samples_per_shard=6, seed=1)


def _epoch_ids(dm: ShardDataModule, num_workers: int, epoch: int, state: dict | None = None) -> list[list[str]]:
    loader = StreamLoader(dm.dataset("train"), batch_size=4, num_workers=num_workers, collate_fn=dm.collate)
    if state is None:
        loader.load_state_dict({"epoch": epoch, "batches": 0})
    else:
        loader.load_state_dict(state)
    return [batch.ids for batch in loader]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_streaming_resumes_mid_epoch_with_exactly_the_remaining_batches(uneven_shards, num_workers):
    dm = ShardDataModule(str(uneven_shards), batch_size=4, num_workers=num_workers, shuffle=True)
    full = _epoch_ids(dm, num_workers, epoch=1)
    assert sorted(i for b in full for i in b) == sorted({i for b in full for i in b}) and len(sum(full, [])) == 50
    # mid-epoch, and past the point where the shorter worker's stream has ended
    for consumed in (1, 5, len(full) - 2, len(full) - 1):
        assert _epoch_ids(dm, num_workers, 1, {"epoch": 1, "batches": consumed}) == full[consumed:], consumed


def test_a_position_saved_at_the_end_of_an_epoch_resumes_at_the_next(uneven_shards):
    dm = ShardDataModule(str(uneven_shards), batch_size=4, num_workers=0, shuffle=True)
    full = _epoch_ids(dm, 0, epoch=1)
    assert _epoch_ids(dm, 0, 0, {"epoch": 0, "batches": len(_epoch_ids(dm, 0, 0))}) == full


def _rank_epoch(dm: ShardDataModule, rank: int, num_workers: int, state: dict) -> list[list[str]]:
    loader = StreamLoader(dm.dataset("train", rank=rank, world_size=2), batch_size=4, num_workers=num_workers,
                          collate_fn=dm.collate)
    loader.load_state_dict(state)
    return [batch.ids for batch in loader]


@pytest.fixture(scope="module")
def two_shards(tmp_path_factory) -> Path:
    """12 training samples in 2 shards: fewer shards than 2 ranks x 2 workers."""
    return export_and_shard(tmp_path_factory.mktemp("two"), num_train=12, samples_per_shard=6)


@pytest.mark.parametrize(("folder", "num_workers"), [("uneven_shards", 0), ("uneven_shards", 2), ("two_shards", 2)])
def test_every_rank_yields_as_many_batches_when_the_shards_do_not_divide_evenly(folder, num_workers, request):
    """DDP steps in lockstep: a rank with fewer batches (here: 9 shards of unequal size, or no shard at all for
    rank 1's readers) used to leave the other rank waiting for ever. The short rank repeats samples, as
    DistributedSampler pads; every sample is still read, and a resumed epoch continues exactly."""
    dm = ShardDataModule(str(request.getfixturevalue(folder)), batch_size=4, num_workers=num_workers, shuffle=True)
    epochs = [_rank_epoch(dm, rank, num_workers, {"epoch": 1, "batches": 0}) for rank in range(2)]
    assert len(epochs[0]) == len(epochs[1]) > 0
    total = 50 if folder == "uneven_shards" else 12
    assert len({i for rank in epochs for b in rank for i in b}) == total
    short = min(range(2), key=lambda r: len({i for b in epochs[r] for i in b}))
    for consumed in (1, len(epochs[short]) - 1):
        assert _rank_epoch(dm, short, num_workers, {"epoch": 1, "batches": consumed}) == epochs[short][consumed:]


def test_shards_without_sample_counts_refuse_a_mid_epoch_resume(uneven_shards, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(uneven_shards, old)
    meta = json.loads((old / "shards.json").read_text())
    for split in meta["splits"].values():
        del split["sizes"]  # as written before the counts were recorded
    (old / "shards.json").write_text(json.dumps(meta))
    with pytest.raises(ShardError, match="no sample count"):
        _epoch_ids(ShardDataModule(str(old), batch_size=4, num_workers=0), 0, 1, {"epoch": 1, "batches": 3})


def test_num_train_streams_only_the_first_samples(uneven_shards):
    dm = ShardDataModule(str(uneven_shards), batch_size=4, num_workers=0, shuffle=False, num_train=15, num_val=4)
    ids = [i for b in _epoch_ids(dm, 0, epoch=0) for i in b]
    everything = [i for b in _epoch_ids(ShardDataModule(str(uneven_shards), batch_size=4, num_workers=0,
                                                        shuffle=False), 0, epoch=0) for i in b]
    assert ids == everything[:15]
    assert sum(b.batch_size for b in dm.val_dataloader()) == 4


def test_shard_refuses_missing_and_undecodable_files_by_file_and_line_and_writes_nothing(shard_dir, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(shard_dir.parent / "folder", bad)
    rows = (bad / "train.jsonl").read_text().splitlines()
    first, second = json.loads(rows[0]), json.loads(rows[1])
    (bad / first["image"]).unlink()
    (bad / second["audio"]).write_bytes(b"")
    with pytest.raises(ShardError) as err:
        write_shards(bad, tmp_path / "out")
    message = str(err.value)
    assert "train.jsonl:1" in message and "train.jsonl:2" in message and "nothing written" in message
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_sample_that_fails_to_decode_while_streaming_names_its_shard_and_id(tmp_path):
    out = tmp_path / "s"
    out.mkdir()
    with wds.TarWriter(str(out / "train-000000.tar")) as sink:
        sink.write({"__key__": "00000000_x", "json": json.dumps({"id": "x1", "text": "t", "label": "a"}),
                    "audio.wav": b"not a wav"})
    (out / "shards.json").write_text(json.dumps({"class_names": ["a"], "splits": {"train": {
        "shards": ["train-000000.tar"], "samples": 1, "sizes": [1]}}}))
    dm = ShardDataModule(str(out), batch_size=1, num_workers=0)
    with pytest.raises(ShardError, match=r"train-000000.tar: sample 'x1' \(00000000_x.audio.wav\): cannot decode"):
        next(iter(dm.train_dataloader()))


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT])
def test_the_tar_reader_groups_members_as_webdataset_does(tmp_path, shard_dir, fmt):
    def by_webdataset(path):
        return [{k: v for k, v in s.items() if k != "__url__" and k != "__local_path__"}
                for s in wds.WebDataset([str(path)], shardshuffle=False, empty_check=False)]

    def ours(path):
        return [{k: v for k, v in s.items() if k != "__url__"} for s in read_tar(str(path))]

    written = shard_dir / "train-000000.tar"
    assert ours(written) == by_webdataset(written) and len(ours(written)) == 6
    path = tmp_path / "t.tar"
    long = "x" * (150 if fmt != tarfile.USTAR_FORMAT else 90)  # past 100 characters: a pax or GNU long name
    with tarfile.open(path, "w", format=fmt) as tar:
        for name in ["a1.json", "a1.image.png", "sub/dir/b2.json", f"{long}.json", f"{long}.audio.wav", "big.bin"]:
            data = bytes(range(256)) * 3000 if name == "big.bin" else name.encode() * 3
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1.5  # a fractional mtime: pax headers for every member
            tar.addfile(info, io.BytesIO(data))
    assert ours(path) == by_webdataset(path)
    assert [s["__key__"] for s in ours(path)] == ["a1", "sub/dir/b2", long, "big"]
    damaged = bytearray(path.read_bytes())
    damaged[0:10] = b"#" * 10  # in the first header: its checksum no longer matches
    (tmp_path / "bad.tar").write_bytes(bytes(damaged))
    with pytest.raises(ShardError, match="bad.tar: not a tar file, or damaged"):
        ours(tmp_path / "bad.tar")


# -- shards from elsewhere are read as data, inside their folder (issue 21, item 5) ---------------------------------
@pytest.mark.parametrize("name", ["../escape.json", "/abs/escape.json", "sub/../../escape.json"])
def test_a_member_with_an_absolute_or_parent_name_is_refused_in_one_line(shard_dir, tmp_path, name):
    """The reader never extracts anything; a crafted member name is still refused, naming the shard and member."""
    shard = tmp_path / "crafted.tar"
    shutil.copy(shard_dir / "train-000000.tar", shard)
    with tarfile.open(shard, "a") as tar:
        info = tarfile.TarInfo(name)
        info.size = 2
        tar.addfile(info, io.BytesIO(b"{}"))
    with pytest.raises(ShardError) as refused:
        list(read_tar(str(shard)))
    assert str(refused.value) == (f"{shard}: the member {name!r} has an absolute or '..' name; refused (members are "
                                  "named <key>.<ext>; nothing is extracted)")
    assert not (tmp_path / "escape.json").exists()


def test_a_member_size_past_the_end_is_refused_before_it_is_read(shard_dir, tmp_path):
    """A header claiming a huge member is 'truncated' at once (no attempt to read or allocate that much)."""
    data = bytearray((shard_dir / "train-000000.tar").read_bytes())
    data[124:136] = b"\x80" + (1 << 60).to_bytes(11, "big")  # GNU base-256 size field
    data[148:156] = b" " * 8
    data[148:155] = f"{sum(data[:512]):06o}\0".encode()
    shard = tmp_path / "huge.tar"
    shard.write_bytes(bytes(data))
    with pytest.raises(ShardError, match=r"huge\.tar: truncated \(a member ends past the end of the file\)"):
        list(read_tar(str(shard)))


@pytest.mark.parametrize("case", ["shard outside", "absolute shard", "shard in a subfolder", "sizes of strings",
                                  "class names not a list", "splits a list", "not an object"])
def test_a_crafted_shards_json_is_refused_naming_the_key(shard_dir, tmp_path, case):
    folder = tmp_path / "copy"
    shutil.copytree(shard_dir, folder)
    meta = json.loads((folder / "shards.json").read_text())
    train = meta["splits"]["train"]
    edits = {
        "shard outside": ("splits.train.shards[0]", lambda: train["shards"].__setitem__(0, "../train-000000.tar")),
        "absolute shard": ("splits.train.shards[0]",
                           lambda: train["shards"].__setitem__(0, str(shard_dir / "train-000000.tar"))),
        "shard in a subfolder": ("splits.train.shards[1]", lambda: train["shards"].__setitem__(1, "a/b.tar")),
        "sizes of strings": ("splits.train.sizes", lambda: train.__setitem__("sizes", ["6"] * len(train["sizes"]))),
        "class names not a list": ("class_names", lambda: meta.__setitem__("class_names", "a b")),
        "splits a list": ("splits", lambda: meta.__setitem__("splits", [train])),
    }
    if case == "not an object":
        key, text = "the top level", "[]"
    else:
        key, edit = edits[case]
        edit()
        text = json.dumps(meta)
    (folder / "shards.json").write_text(text)
    with pytest.raises(ShardError) as refused:
        ShardDataModule(str(folder), batch_size=2, num_workers=0)
    message = str(refused.value)
    assert message.startswith(f"{folder / 'shards.json'}: {key}: ") and message.endswith("; refused"), message


def test_shard_into_an_existing_file_or_a_non_empty_folder_is_one_line(tmp_path: Path) -> None:
    """`mmgpt-data shard DIR OUT` with OUT an existing file ended in a NotADirectoryError traceback."""
    (tmp_path / "afile").write_text("keep")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("keep")
    with pytest.raises(ShardError, match=r"afile exists and is not a folder"):
        write_shards(tmp_path / "folder", tmp_path / "afile", samples_per_shard=4)
    with pytest.raises(ShardError, match=r"full is not empty"):
        write_shards(tmp_path / "folder", tmp_path / "full", samples_per_shard=4)
    assert (tmp_path / "afile").read_text() == "keep" and (tmp_path / "full" / "keep.txt").read_text() == "keep"
