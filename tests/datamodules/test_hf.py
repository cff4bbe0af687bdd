"""data=hf: a save_to_disk folder and a Parquet folder with Image and Audio columns, streaming and not; every
row exactly once per epoch over 2 ranks x 2 workers; mid-epoch resume; clear errors for bad columns."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from mmgpt.datamodules.hf import HFDataError, HFDataModule
from mmgpt.datamodules.hf import source as hf_source
from mmgpt.datamodules.resumable import SeededCollate, StreamLoader
from mmgpt.datamodules.shards.partition import padding_batches
from tests.helpers.hf import CLASSES, parquet_folder, save_to_disk_folder

COLUMNS = {"text": "question", "image": "img", "audio": "sound", "label": "answer", "id": "uid"}


@pytest.fixture(scope="module")
def disk(tmp_path_factory) -> Path:
    return save_to_disk_folder(tmp_path_factory.mktemp("hf") / "disk")


@pytest.fixture(scope="module")
def parquet(tmp_path_factory) -> Path:
    return parquet_folder(tmp_path_factory.mktemp("hf") / "pq", sizes={"train": 22, "validation": 4})


def _dm(path: Path, **kw) -> HFDataModule:
    options = {"columns": COLUMNS, "batch_size": 4, "num_workers": 0, "image_size": 16, "shuffle": False}
    return HFDataModule(path=str(path), **{**options, **kw})


@pytest.mark.parametrize("streaming", [False, True])
@pytest.mark.parametrize("fmt", ["disk", "parquet"])
def test_image_audio_text_columns_decoded_through_the_processors(disk, parquet, fmt, streaming):
    dm = _dm(disk if fmt == "disk" else parquet, streaming=streaming)
    assert dm.class_names == CLASSES and dm.modalities == {"audio": "audio", "image": "image", "text": "text"}
    batches = list(dm.val_dataloader())
    ids = [i for b in batches for i in b.ids]
    assert ids == [f"r{i}" for i in (range(10, 14) if fmt == "disk" else range(22, 26))]
    b = batches[0]
    assert b.inputs["image"].shape == (4, 3, 16, 16) and b.inputs["text"].dtype == torch.long
    assert b.labels.tolist() == [int(i[1:]) % 2 for i in b.ids]
    lengths = b.masks["audio"].sum(1).tolist()  # WAV and FLAC bytes decoded by soundfile, 400 + 40 i samples
    assert lengths == [400 + 40 * int(i[1:]) for i in b.ids]
    assert b.present["image"].all() and b.present["audio"].all()
    first = next(iter(dm.train_dataloader()))
    assert first.inputs["image"][0].std() > 0


def test_features_column_and_any_modality_name(disk):
    dm = _dm(disk, columns={"steps": "feats", "photo": "img", "label": "answer"})
    assert dm.modalities == {"photo": "image", "steps": "features"}
    b = next(iter(dm.val_dataloader()))
    assert b.inputs["steps"].shape[-1] == 3
    assert b.masks["steps"].sum(1).tolist() == [1 + i % 3 for i in range(10, 14)]


@pytest.fixture(scope="module")
def even_parquet(tmp_path_factory) -> Path:
    """24 training rows in row groups of 4: pieces of 2 rows deal evenly to 2 ranks x 2 workers."""
    return parquet_folder(tmp_path_factory.mktemp("hf") / "even", sizes={"train": 24, "validation": 4},
                          rows_per_group=4)


def _rank_batches(dm: HFDataModule, rank: int, epoch: int, streaming: bool) -> list[list[str]]:
    ds = dm.make_dataset("train", rank=rank, world_size=2)
    if streaming:
        ds.set_epoch(epoch)
        loader = DataLoader(ds, batch_size=4, num_workers=2, collate_fn=SeededCollate(dm.collate))
    else:
        from mmgpt.datamodules.resumable import EpochSampler, ResumableLoader

        sampler = EpochSampler(ds, shuffle=True, seed=0, rank=rank, world_size=2)
        sampler.set_epoch(epoch)
        loader = ResumableLoader(ds, sampler=sampler, batch_size=4, num_workers=2, collate_fn=dm.collate)
    return [batch.ids for batch in loader]


@pytest.mark.parametrize("streaming", [False, True])
def test_every_row_once_per_epoch_across_two_ranks_and_two_workers(even_parquet, streaming):
    dm = _dm(even_parquet, streaming=streaming, shuffle=True, piece_rows=2)
    for epoch in range(3):  # the order changes between epochs, the coverage must not
        seen = Counter(i for rank in range(2) for b in _rank_batches(dm, rank, epoch, streaming) for i in b)
        assert len(seen) == 24 and set(seen.values()) == {1}, seen


def test_uneven_streams_give_every_rank_as_many_batches_repeating_a_few_rows(parquet):
    """22 rows in pieces that deal unevenly: DDP needs the same number of batches on every rank (a rank that runs
    out would leave the other waiting), so the short rank repeats rows, as DistributedSampler does."""
    dm = _dm(parquet, streaming=True, shuffle=True, piece_rows=2)
    padded = 0
    for epoch in range(4):
        per_rank = [_rank_batches(dm, rank, epoch, True) for rank in range(2)]
        assert len(per_rank[0]) == len(per_rank[1]), epoch
        seen = Counter(i for batches in per_rank for b in batches for i in b)
        assert set(seen) == {f"r{i}" for i in range(22)}
        padded += sum(seen.values()) - 22
        for rank in range(2):
            ds = dm.make_dataset("train", rank=rank, world_size=2)
            assert sum(ds.batches_per_worker(epoch, 2)) == len(per_rank[rank])
    assert padded > 0  # the fixture does deal unevenly in some epoch, so the padding was exercised


def _epoch_ids(dm: HFDataModule, num_workers: int, state: dict, rank: int = 0, world: int = 1) -> list[list[str]]:
    loader = StreamLoader(dm.make_dataset("train", rank=rank, world_size=world), batch_size=4,
                          num_workers=num_workers, collate_fn=dm.collate)
    loader.load_state_dict(state)
    return [batch.ids for batch in loader]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_streaming_resumes_mid_epoch_with_exactly_the_remaining_batches(parquet, num_workers):
    dm = _dm(parquet, streaming=True, shuffle=True, piece_rows=3)
    full = _epoch_ids(dm, num_workers, {"epoch": 1, "batches": 0})
    assert sorted(sum(full, [])) == sorted(f"r{i}" for i in range(22))
    for consumed in (1, 3, len(full) - 1):
        assert _epoch_ids(dm, num_workers, {"epoch": 1, "batches": consumed}) == full[consumed:], consumed


def test_a_padded_rank_resumes_mid_epoch_exactly(parquet):
    dm = _dm(parquet, streaming=True, shuffle=True, piece_rows=2)
    streams = [dm.make_dataset("train", rank=r, world_size=2) for r in range(2)]
    rank, epoch = next((r, e) for e in range(6) for r in range(2)
                       if padding_batches(streams[r]._epoch_pieces(e), streams[r].sizes, r, 2, 2, 4) > 0)  # batch 4
    full = _epoch_ids(dm, 2, {"epoch": epoch, "batches": 0}, rank, 2)
    for consumed in (1, len(full) - 1):
        assert _epoch_ids(dm, 2, {"epoch": epoch, "batches": consumed}, rank, 2) == full[consumed:], consumed


def test_num_train_limits_both_modes(parquet):
    for streaming in (False, True):
        dm = _dm(parquet, streaming=streaming, num_train=7)
        assert sum(b.batch_size for b in dm.train_dataloader()) == 7


def test_bad_column_names_and_absent_modalities_are_named(disk):
    with pytest.raises(HFDataError, match=r"data.columns.text='questoin': .* has no such column \(columns: .*question"):
        _dm(disk, columns={"text": "questoin", "label": "answer"})
    with pytest.raises(HFDataError, match=r"data.modalities.poster: declared, but .* has no column 'poster'"):
        _dm(disk, columns={"text": "question", "label": "answer"}, modalities={"text": "text", "poster": "image"})
    with pytest.raises(HFDataError, match=r"data.splits.val='dev': .* has no such split"):
        _dm(disk, splits={"val": "dev"})
    with pytest.raises(HFDataError, match=r"data.label_type='regression'"):
        _dm(disk, label_type="regression")


def test_label_types(disk, tmp_path):
    import datasets

    ds = datasets.Dataset.from_dict({"t": ["a b", "c", "d"], "score": [-1.5, 0.0, 2.25],
                                     "tags": [["x"], ["y", "x"], []], "word": ["cat", "dog", "cat"]})
    ds.to_parquet(str(tmp_path / "train.parquet"))
    reg = HFDataModule(path=str(tmp_path / "train.parquet"), columns={"text": "t", "label": "score"}, batch_size=3,
                       num_workers=0, shuffle=False)
    assert reg.label_type == "float" and reg.class_names == ["score"]
    assert next(iter(reg.train_dataloader())).ids == [0, 1, 2]
    multi = HFDataModule(path=str(tmp_path / "train.parquet"), columns={"text": "t", "label": "tags"},
                         label_type="multilabel", num_workers=0)
    assert multi.class_names == ["x", "y"]
    assert [multi.make_dataset("train")[i]["label"] for i in range(3)] == [[1, 0], [1, 1], [0, 0]]
    words = HFDataModule(path=str(tmp_path / "train.parquet"), columns={"text": "t", "label": "word"}, num_workers=0)
    assert words.class_names == ["cat", "dog"] and words.make_dataset("train")[1]["label"] == 1


def test_a_hub_id_without_a_network_fails_at_once_in_one_line(monkeypatch):
    monkeypatch.setattr(hf_source, "hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(HFDataError) as e:
        HFDataModule(path="someone/some_dataset", num_workers=0)
    assert "data.path=someone/some_dataset: not a local file or folder, and the Hugging Face Hub" in str(e.value)
    assert "\n" not in str(e.value)
    with pytest.raises(HFDataError, match="no such file or folder"):
        HFDataModule(path="/no/such/folder", num_workers=0)


def test_undecodable_image_is_named_by_split_row_and_column(tmp_path):
    import datasets

    ds = datasets.Dataset.from_dict({"img": [{"bytes": b"not an image", "path": None}], "label": [0]},
                                    features=datasets.Features({"img": datasets.Image(),
                                                                "label": datasets.ClassLabel(names=["a"])}))
    ds.to_parquet(str(tmp_path / "train.parquet"))
    dm = HFDataModule(path=str(tmp_path), columns={"image": "img"}, num_workers=0, batch_size=1)
    with pytest.raises(HFDataError, match=r"\[train\]: row 0, column 'img'"):
        next(iter(dm.train_dataloader()))


def test_mmgpt_data_check_reads_every_row(disk, tmp_path, capsys):
    import datasets

    from mmgpt.cli.data import main as data_main

    assert data_main(["check", str(disk), "--columns", "text=question,image=img,audio=sound,label=answer"]) == 0
    out = capsys.readouterr().out
    assert "train (train) 10 rows, val (validation) 4 rows, test (test) 3 rows" in out
    assert "audio (audio), image (image), text (text)" in out and "label: answer (class: no, yes)" in out
    bad = datasets.Dataset.from_dict(
        {"img": [{"bytes": b"junk", "path": None}, None], "label": [0, 1]},
        features=datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])}))
    bad.to_parquet(str(tmp_path / "train.parquet"))
    assert data_main(["check", str(tmp_path / "train.parquet"), "--columns", "image=img"]) == 1
    out = capsys.readouterr().out
    assert "[train]: row 0, column 'img'" in out and "1 problems" in out
    assert data_main(["check", str(disk), "--columns", "text=nope"]) == 1
    assert "data.columns.text='nope'" in capsys.readouterr().err


def test_training_on_hf_data_through_the_config(disk, compose_cfg):
    from mmgpt.cli.train import train

    cfg = compose_cfg(["experiment=smoke", "data=hf", f"data.path={disk}", "data.num_workers=0", "logger=csv",
                       "debug=fdr", "data.columns={text: question, image: img, audio: sound, label: answer}",
                       "data.streaming=true", "data.batch_size=4"])
    results = train(cfg)
    assert results["global_step"] == 1 and "val/acc" in results["val"]


@pytest.mark.slow
def test_ddp_sim_streams_hf_data_with_validation_every_epoch(parquet, tmp_path):
    """Two CPU processes x two loader workers on streamed Parquet pieces that deal unevenly (a rank without
    validation rows of its own): no rank waits for another (this hung before the padding), and every epoch
    validates."""
    import csv
    import os
    import subprocess
    import sys

    env = {**os.environ, "MMGPT_LOG_DIR": str(tmp_path), "CI": "1"}
    args = ["experiment=smoke", "trainer=ddp_sim", "data=hf", f"data.path={parquet}", "data.streaming=true",
            "data.piece_rows=2", "data.num_workers=2", "data.batch_size=4", "logger=csv", "trainer.max_epochs=2",
            "data.columns={text: question, image: img, audio: sound, label: answer}"]
    proc = subprocess.run([str(Path(sys.executable).parent / "mmgpt-train"), *args], env=env, capture_output=True,
                          text=True, timeout=500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (metrics,) = tmp_path.glob("train/runs/*/metrics.csv")
    epochs = {row["epoch"] for row in csv.DictReader(metrics.open()) if row.get("val/acc")}
    assert {"0", "1"} <= epochs


@pytest.mark.parametrize("case", ["split outside", "absolute split", "data file outside", "state not an object"])
def test_a_saved_folder_from_elsewhere_never_reads_outside_it(disk, tmp_path, case):
    """dataset_dict.json and state.json are data: a split or data file named outside the folder is refused in one
    line naming the file and key (issue 21, item 5)."""
    import json
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(disk, folder)
    listing = json.loads((folder / "dataset_dict.json").read_text())
    split = listing["splits"][0]
    state_file = folder / split / "state.json"
    state = json.loads(state_file.read_text())
    if case == "split outside":
        listing["splits"][0] = f"../{split}"
    elif case == "absolute split":
        listing["splits"][0] = str(disk / split)
    elif case == "data file outside":
        state["_data_files"][0]["filename"] = f"../../{disk.name}/{split}/{state['_data_files'][0]['filename']}"
    (folder / "dataset_dict.json").write_text(json.dumps(listing))
    state_file.write_text("[]" if case == "state not an object" else json.dumps(state))
    with pytest.raises(HFDataError) as refused:
        hf_source.open_source(str(folder))
    message = str(refused.value)
    where = "state.json" if case in ("data file outside", "state not an object") else "dataset_dict.json"
    assert where in message.split(":")[0] and "\n" not in message
    if case != "state not an object":
        assert message.endswith("is not a name inside the folder; refused")
