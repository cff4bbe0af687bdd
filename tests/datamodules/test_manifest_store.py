"""The manifest datamodule on the media store: data.check=full|headers|off, on-demand reads, failures in training."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from mmgpt.datamodules.manifest import (
    DecodeError,
    ManifestDataModule,
    ManifestError,
    MediaFiles,
    check_folder,
)
from mmgpt.datamodules.manifest.check import Sample
from mmgpt.datamodules.options import DataOptions
from mmgpt.datamodules.processors import declared_processors
from tests.datamodules.conftest import FolderFactory, good_rows, write_png, write_rows, write_wav


def module(root: Path, **kw) -> ManifestDataModule:
    kw.setdefault("image_size", 16)
    kw.setdefault("batch_size", 4)
    return ManifestDataModule(str(root), **kw)


def broken_headers(root: Path) -> None:
    """A PNG cut inside its header and a WAV whose fmt chunk names an unknown audio format."""
    png = write_png(root / "img/ok.png", (30, 20)).read_bytes()
    (root / "img/cut.png").write_bytes(png[:20])
    data = bytearray(write_wav(root / "wav/ok.wav", 0.5, 8000).read_bytes())
    data[20:22] = (0x7777).to_bytes(2, "little")
    (root / "wav/wrong.wav").write_bytes(bytes(data))


def test_check_headers_reports_broken_headers_without_decoding(make_folder: FolderFactory, tmp_path: Path) -> None:
    rows = good_rows(8) + [{"id": "cut", "text": "t", "image": "img/cut.png", "label": "cat"},  # line 9
                           {"id": "wrong", "text": "t", "audio": "wav/wrong.wav", "label": "dog"}]  # line 10
    root = make_folder(train=rows, val=good_rows(4))
    broken_headers(root)
    with pytest.raises(ManifestError) as err:
        module(root, check="headers", cache_dir=str(tmp_path / "c")).setup("fit")
    assert "train.jsonl:9: image 'img/cut.png': cannot decode image" in str(err.value)
    assert "train.jsonl:10: audio 'wav/wrong.wav': cannot decode audio" in str(err.value)
    dm = module(root, check="headers", on_error="skip", cache_dir=str(tmp_path / "c"))
    dm.setup("fit")
    assert dm.report is not None and dm.report.decoded == 0 and len(dm.splits["train"]) == 8
    full = module(root, cache_dir=str(tmp_path / "c"), on_error="skip")  # full decodes: same verdict
    full.setup("fit")
    assert full.report is not None and full.report.bad_rows == dm.report.bad_rows


def test_check_headers_then_training_reads_what_full_would(make_folder: FolderFactory, tmp_path: Path) -> None:
    root = make_folder(train=good_rows(8), val=good_rows(4))
    lazy = module(root, check="headers", cache_dir=str(tmp_path / "lazy"), batch_size=8)
    lazy.setup("fit")
    full = module(root, cache_dir=str(tmp_path / "full"), batch_size=8)
    full.setup("fit")
    for _ in range(2):  # the second pass reads what the first decoded
        a, b = next(iter(lazy.val_dataloader())), next(iter(full.val_dataloader()))
        assert a.ids == b.ids and torch.equal(a.inputs["audio"], b.inputs["audio"])
        assert torch.equal(a.inputs["image"], b.inputs["image"])
    assert lazy.media is not None and lazy.media.decoded > 0  # decoded on demand, by the dataset


@pytest.mark.parametrize("workers", [0, 1])
def test_check_off_with_skip_counts_a_file_that_fails_during_training(make_folder: FolderFactory, tmp_path: Path,
                                                                      workers: int) -> None:
    rows = good_rows(8) + [{"id": "corrupt", "text": "t", "image": "img/corrupt.png", "label": "cat"}]  # line 9
    root = make_folder(train=rows, val=good_rows(4))
    (root / "img/corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    dm = module(root, check="off", on_error="skip", num_workers=workers, pin_memory=False,
                report_dir=str(tmp_path / "report"))
    dm.setup("fit")
    assert dm.report is not None and dm.report.ok and len(dm.splits["train"]) == 9  # nothing checked up front
    assert sum(b.batch_size for b in dm.train_dataloader()) == 8  # the failing sample is left out of its batch
    failures = dm.decode_failures
    assert len(failures) == 1 and failures[0].startswith("train.jsonl:9: image 'img/corrupt.png': cannot decode image")
    assert (tmp_path / "report/decode_failures.txt").read_text().count("\n") == 1


def test_check_off_with_raise_stops_at_the_failing_file(make_folder: FolderFactory) -> None:
    rows = good_rows(4) + [{"id": "gone", "text": "t", "image": "img/nope.png", "label": "cat"}]  # line 5
    root = make_folder(train=rows, val=good_rows(4))
    dm = module(root, check="off", batch_size=8)
    dm.setup("fit")
    with pytest.raises(DecodeError, match=r"train.jsonl:5: image 'img/nope.png': missing file"):
        next(iter(dm.train_dataloader()))


def test_samples_hold_paths_and_the_check_streams_with_progress(make_folder: FolderFactory) -> None:
    root = make_folder(train=good_rows(10), val=good_rows(4))
    calls: list[tuple[int, int]] = []
    report = check_folder(root, MediaFiles(declared_processors(None, DataOptions(image_size=16))), chunk=3,
                          progress=lambda done, total: calls.append((done, total)))
    assert report.ok and all(isinstance(s, Sample) and not isinstance(s.image, torch.Tensor)
                             for s in report.samples["train"])
    totals = {t for _, t in calls}
    assert len(totals) == 1 and calls[-1][0] == calls[-1][1] > 0  # every media reference counted once
    assert [d for d, _ in calls] == sorted(d for d, _ in calls) and len(calls) == 4 + 2  # ceil(10/3) + ceil(4/3)


def test_bad_check_option_is_refused(make_folder: FolderFactory) -> None:
    root = make_folder(train=good_rows(2), val=good_rows(2))
    with pytest.raises(ValueError, match="data.check='fast'"):
        module(root, check="fast")
    with pytest.raises(ValueError, match="data.memory_cache_mb=-1"):
        module(root, memory_cache_mb=-1)


def test_a_truncated_store_segment_is_rebuilt_by_the_next_check(make_folder: FolderFactory, tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    root = make_folder(train=good_rows(8), val=good_rows(4))
    module(root, cache_dir=str(tmp_path / "c")).setup("fit")
    (seg,) = (tmp_path / "c/media-store").glob("seg-*.bin")
    seg.write_bytes(seg.read_bytes()[: seg.stat().st_size // 2])
    with caplog.at_level(logging.WARNING):
        again = module(root, cache_dir=str(tmp_path / "c"))
        again.setup("fit")
    assert "truncated shard" in caplog.text
    assert again.report is not None and again.report.ok and again.report.decoded > 0
    assert sum(b.batch_size for b in again.train_dataloader()) == 8


def test_datasets_pickle_for_spawned_workers(make_folder: FolderFactory, tmp_path: Path) -> None:
    import pickle

    root = make_folder(train=good_rows(4), val=good_rows(2))
    dm = module(root, cache_dir=str(tmp_path / "c"))
    dm.setup("fit")
    copy = pickle.loads(pickle.dumps(dm.splits["train"]))
    a, b = dm.splits["train"][1], copy[1]
    assert a is not None and b is not None and a["id"] == b["id"] and torch.equal(a["audio"], b["audio"])


def test_a_check_that_keeps_nothing_decodes_every_file_and_stores_none(make_folder: FolderFactory) -> None:
    root = make_folder(train=good_rows(6) + [{"id": "bad", "text": "t", "image": "img/corrupt.png", "label": "cat"}],
                       val=good_rows(2))
    (root / "img/corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    media = MediaFiles(declared_processors(None, DataOptions(image_size=16)), keep=False)
    report = check_folder(root, media)
    assert report.bad_rows == [("train.jsonl", 7)] and report.decoded > 0 and len(media.store) == 0


def test_rows_stay_in_their_split_files(make_folder: FolderFactory, tmp_path: Path) -> None:
    """The check keeps a few bytes per row (offsets in arrays), not a parsed row object per sample (~540 bytes)."""
    import tracemalloc

    from mmgpt.datamodules.manifest.check import SampleTable
    from mmgpt.datamodules.manifest.rows import RowTable

    n = 10_000
    root = make_folder(train=good_rows(4), val=good_rows(2))
    write_rows(root / "train.jsonl", [{"id": f"r{i}", "text": f"a caption of row {i}", "label": ("cat", "dog")[i % 2],
                                       "caption": f"caption {i}"} for i in range(n)])
    media = MediaFiles(declared_processors(None, DataOptions(image_size=16)), keep=False)
    tracemalloc.start()
    try:
        report = check_folder(root, media)
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    train = report.samples["train"]
    assert report.ok and len(train) == n
    assert isinstance(train, SampleTable) and isinstance(train.rows, RowTable)
    assert held / n < 64, f"{held / n:.0f} bytes held per row"
    s = train[1234]  # read back from the file on demand
    assert (s.row.id, s.row.text, s.row.caption, s.row.where) == ("r1234", "a caption of row 1234", "caption 1234",
                                                                  "train.jsonl:1235")
    assert [r.id for r in train[n - 2 :].rows] == [f"r{n - 2}", f"r{n - 1}"]
    write_rows(root / "train.jsonl", [{"id": "other", "text": "t", "label": "cat"}])  # changed under the table
    from mmgpt.datamodules.manifest.rows import RowsChanged

    with pytest.raises(RowsChanged, match="train.jsonl changed"):
        SampleTable(train.rows.take(np.arange(3)), train.root)[0]


def _ddp_rank(rank: int, root: Path, cache: Path, init: Path, out) -> None:  # noqa: ANN001
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=2)
    try:
        dm = module(root, cache_dir=str(cache))
        prepared = 0
        if rank == 0:  # what Lightning does: prepare_data on local rank 0, a barrier, then setup on every rank
            dm.prepare_data()
            assert dm.media is not None
            prepared = dm.media.decoded
        dist.barrier()
        dm.setup("fit")
        assert dm.media is not None and dm.report is not None
        first = dm.splits["train"][0]
        media = dm.media
        dm.prepare_data()  # Lightning calls it again before test: nothing left to do
        assert dm.media is media
        out.put((rank, prepared, dm.media.decoded, dm.report.decoded, float(first["image"].sum())))
    finally:
        dist.destroy_process_group()


def test_ddp_ranks_decode_once_in_prepare_data_and_read_the_store(make_folder: FolderFactory, tmp_path: Path) -> None:
    import multiprocessing as mp

    root = make_folder(train=good_rows(8), val=good_rows(4))
    # spawn, not fork: a process forked from this one after other tests trained (threads, torch's thread pool)
    # can fail in torch's thread-pool setup when it decodes on threads of its own.
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_ddp_rank, args=(r, root, tmp_path / "cache", tmp_path / "pg", out)) for r in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    results = sorted(out.get(timeout=5) for _ in procs)
    (_, prepared0, decoded0, report0, image0), (_, prepared1, decoded1, report1, image1) = results
    assert prepared0 == decoded0 > 0 and report0 == prepared0  # rank 0 decoded in prepare_data; setup reused it
    assert decoded1 == 0 and report1 == 0  # rank 1 only read the store
    assert image0 == image1
    assert 0 < len(list((tmp_path / "cache/media-store").glob("seg-*.bin"))) <= 1  # one copy on disk


def test_rows_on_disk_keep_named_modalities_and_read_them_from_the_store(tmp_path: Path) -> None:
    from mmgpt.datamodules.manifest.rows import RowTable
    from tests.helpers.modalities import FOUR, four_modality_folder

    root = four_modality_folder(tmp_path / "four")
    dm = module(root, modalities=FOUR, cache_dir=str(tmp_path / "cache"), num_workers=0)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.report is not None and dm.media is not None
    train = dm.report.samples["train"]
    assert isinstance(train.rows, RowTable) and len(train) == 12
    assert train.rows.has("photo").tolist() == [i % 5 != 1 for i in range(12)]
    assert train.rows.has("vision_feats").tolist() == [i % 5 != 2 for i in range(12)]
    row = train[2].row  # read back from the split file: named values only, the missing one absent
    assert row.values == {"poster": "img/train2_poster.png", "photo": "img/train2_photo.png", "text": "bad 2"}
    decoded = dm.media.decoded
    item = dm.splits["train"][1]
    assert item["photo"] is None and item["poster"] is not None and item["vision_feats"] is not None
    assert item["label"] == 1 and dm.media.decoded == decoded  # read by store entry: nothing decoded again
    batch = next(iter(dm.train_dataloader()))
    assert set(batch.inputs) >= {"poster", "photo", "text", "vision_feats"}


@pytest.mark.parametrize("label_type", ["float", "multilabel"])
def test_rows_on_disk_keep_typed_labels(make_folder: FolderFactory, tmp_path: Path, label_type: str) -> None:
    from mmgpt.datamodules.manifest.index import read_index

    labels = {"float": [0.5, -2, 3.25, 0.5], "multilabel": [["b", "a"], [], ["b"], "a|c"]}[label_type]
    rows = [{"id": f"r{i}", "text": f"t {i}", "label": label} for i, label in enumerate(labels)]
    root = make_folder(train=rows, val=rows[:2])
    index = read_index(root, label_type=label_type)
    assert not index.problems
    table = index.rows["train"]
    if label_type == "float":
        assert table.labels is None and table.label.dtype == np.float64  # values, no string per row
        assert [r.label for r in table] == ["0.5", "-2.0", "3.25", "0.5"] and index.class_names == ["target"]
    else:
        assert [r.labels() for r in table] == [["b", "a"], [], ["b"], ["a", "c"]]
        assert index.class_names == ["a", "b", "c"]
    dm = module(root, label_type=label_type, num_workers=0)
    dm.setup("fit")
    got = [dm.splits["train"][i]["label"] for i in range(4)]
    want = {"float": [0.5, -2.0, 3.25, 0.5], "multilabel": [[1, 1, 0], [0, 0, 0], [0, 1, 0], [1, 0, 1]]}
    assert got == want[label_type]
