"""Manifest folders: parsing, class lists, path safety, the validation report, on_error policies, batches."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from mmgpt.datamodules import decode as decode_module
from mmgpt.datamodules.manifest import (
    ManifestDataModule,
    ManifestError,
    MediaFiles,
    check_folder,
    read_index,
)
from mmgpt.datamodules.options import DataOptions
from mmgpt.datamodules.processors import declared_processors
from tests.datamodules.conftest import FolderFactory, good_rows, write_rows


def module(root: Path, **kw) -> ManifestDataModule:
    kw.setdefault("image_size", 16)
    kw.setdefault("batch_size", 4)
    return ManifestDataModule(str(root), **kw)


def where(problems) -> list[tuple[str, int | None]]:
    return [(p.file, p.line) for p in problems]


# --- reading rows and class lists -------------------------------------------------------------------------------

def test_class_list_from_sorted_train_labels_and_ints_sort_numerically(make_folder: FolderFactory) -> None:
    rows = [{"text": "a", "label": lab} for lab in (10, 2, 2, 1)]
    root = make_folder(train=rows, val=[{"text": "b", "label": 2}])
    index = read_index(root)
    assert index.class_names == ["1", "2", "10"] and not index.problems
    assert [r.label for r in index.rows["train"]] == ["10", "2", "2", "1"]
    assert [r.id for r in index.rows["val"]] == ["val:1"]  # rows without an id are named by split and line

    write_rows(root / "train.jsonl", [{"text": "a", "label": s} for s in ("b", "a", "c")])
    write_rows(root / "val.jsonl", [{"text": "a", "label": "a"}])
    assert read_index(root).class_names == ["a", "b", "c"]


def test_labels_txt_fixes_the_order_and_rejects_unknown_labels(make_folder: FolderFactory) -> None:
    root = make_folder(train=[{"text": "x", "label": "dog"}, {"text": "y", "label": "cat"}],
                       val=[{"text": "z", "label": "dog"}, {"text": "w", "label": "bird"}],
                       labels=["dog", "cat", "fish"])
    index = read_index(root)
    assert index.class_names == ["dog", "cat", "fish"]
    assert [str(p) for p in index.problems] == ["val.jsonl:2: label 'bird' is not in the class list (from labels.txt)"]
    assert len(index.rows["val"]) == 1


def test_row_problems_name_file_line_and_key(make_folder: FolderFactory) -> None:
    train = [
        {"id": "a", "text": "ok", "label": "x"},
        '{"id": "b", "text": "missing brace", "label": "x"',
        {"id": "c", "text": "t", "label": "x", "colour": "red"},
        {"id": "d", "text": "t"},
        {"id": "e", "text": "t", "label": 1.5},
        {"id": "f", "label": "x"},
        {"id": "a", "text": "dup", "label": "x"},
        "[1, 2]",
        {"id": "g", "text": 3, "label": "x"},
        {"id": "h", "text": "ok", "label": "y"},
    ]
    root = make_folder(train=train, val=[{"text": "v", "label": "x"}])
    index = read_index(root)
    messages = {p.line: p.message for p in index.problems}
    assert sorted(messages) == [2, 3, 4, 5, 6, 7, 8, 9]
    assert "malformed JSON" in messages[2]
    assert "unknown key(s) ['colour']" in messages[3]
    assert messages[4] == "missing label"
    assert "expected a string or an integer" in messages[5]
    assert "no modality" in messages[6]
    assert "duplicate id 'a' (first on line 1)" in messages[7]
    assert "expected a JSON object" in messages[8]
    assert "text 3" in messages[9]
    assert all(p.file == "train.jsonl" and not p.fatal for p in index.problems)
    assert [r.id for r in index.rows["train"]] == ["a", "h"]


def test_invalid_utf8_line_is_reported(make_folder: FolderFactory) -> None:
    root = make_folder(train=[{"text": "ok", "label": "x"}], val=[{"text": "ok", "label": "x"}])
    with open(root / "train.jsonl", "ab") as f:
        f.write(b'{"text": "\xff\xfe", "label": "x"}\n')
    assert [str(p) for p in read_index(root).problems][0].startswith("train.jsonl:2: not valid UTF-8")


def test_missing_and_empty_splits_are_fatal(make_folder: FolderFactory) -> None:
    root = make_folder(train=[{"text": "ok", "label": "x"}])
    (root / "test.jsonl").write_text("\n\n")
    problems = read_index(root).problems
    assert {(p.file, p.fatal) for p in problems} == {("val.jsonl", True), ("test.jsonl", True)}
    assert any("empty split" in p.message for p in problems)


def test_csv_split_with_header_and_empty_cells(make_folder: FolderFactory) -> None:
    root = make_folder(train=[{"text": "a", "label": "x"}])
    (root / "val.csv").write_text('id,text,image,audio,label\nv1,"hello, world",img/red.png,,x\nv2,,,wav/mono8k.wav,x\n'
                                  "v3,too,many,fields,x,y\n")
    index = read_index(root)
    rows = index.rows["val"]
    assert [(r.id, r.text, r.image, r.audio) for r in rows] == [("v1", "hello, world", "img/red.png", None),
                                                                ("v2", None, None, "wav/mono8k.wav")]
    assert where(index.problems) == [("val.csv", 4)]
    (root / "val.csv").write_text("id,text,picture,label\n1,a,b,x\n")
    assert [(p.file, p.line, p.fatal) for p in read_index(root).problems] == [("val.csv", 1, True)]


def test_both_jsonl_and_csv_for_a_split_is_fatal(make_folder: FolderFactory) -> None:
    root = make_folder(train=[{"text": "a", "label": "x"}], val=[{"text": "a", "label": "x"}])
    (root / "val.csv").write_text("text,label\na,x\n")
    assert [p.fatal for p in read_index(root).problems] == [True]


# --- the validation pass ----------------------------------------------------------------------------------------

def bad_folder(make_folder: FolderFactory) -> Path:
    train = good_rows(8) + [
        {"id": "missing", "text": "t", "image": "img/nope.png", "label": "cat"},  # line 9
        {"id": "corrupt", "image": "img/corrupt.png", "audio": "wav/mono8k.wav", "label": "cat"},  # line 10
        {"id": "empty-audio", "text": "t", "audio": "wav/empty.wav", "label": "dog"},  # line 11
        {"id": "escape", "text": "t", "image": "../outside.png", "label": "dog"},  # line 12
        '{"id": "broken"',  # line 13
        {"id": "bad-wav", "text": "t", "audio": "wav/corrupt.wav", "image": "img/empty.png", "label": "dog"},  # 14
    ]
    val = good_rows(4) + [{"id": "v-unknown", "text": "t", "label": "bird"}]  # line 5
    return make_folder(train=train, val=val)


def test_check_reports_every_problem_with_file_and_line(make_folder: FolderFactory) -> None:
    root = bad_folder(make_folder)
    report = check_folder(root, MediaFiles(declared_processors(None, DataOptions(image_size=16))))
    assert report.bad_rows == [("train.jsonl", 9), ("train.jsonl", 10), ("train.jsonl", 11), ("train.jsonl", 12),
                               ("train.jsonl", 13), ("train.jsonl", 14), ("val.jsonl", 5)]
    text = [str(p) for p in report.problems]
    assert "train.jsonl:9: image 'img/nope.png': missing file" in text
    assert any(t.startswith("train.jsonl:10: image 'img/corrupt.png': cannot decode image") for t in text)
    assert "train.jsonl:11: audio 'wav/empty.wav': empty audio: no samples" in text
    assert any(t.startswith("train.jsonl:12: image: path '../outside.png' escapes the folder") for t in text)
    # Both files of row 14 are reported, not just the first.
    assert sum(t.startswith("train.jsonl:14:") for t in text) == 2
    assert [len(report.samples[s]) for s in ("train", "val")] == [8, 4]
    assert not report.fatal and not report.ok
    formatted = report.format()
    assert all(t in formatted for t in text) and "train: 8 usable samples, 6 bad rows" in formatted


def test_paths_outside_the_folder_need_an_opt_in(make_folder: FolderFactory, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere.wav"
    (tmp_path / "data" / "wav").mkdir(parents=True, exist_ok=True)
    from tests.datamodules.conftest import write_wav

    write_wav(outside)
    rows = [{"text": "a", "audio": "../elsewhere.wav", "label": "x"},
            {"text": "b", "audio": str(outside), "label": "x"},
            {"text": "c", "audio": "wav/./../wav/mono8k.wav", "label": "x"}]  # stays inside: fine
    root = make_folder(train=rows, val=[{"text": "v", "label": "x"}])
    refused = check_folder(root, MediaFiles(declared_processors(None, DataOptions(image_size=16))))
    assert refused.bad_rows == [("train.jsonl", 1), ("train.jsonl", 2)] and not refused.fatal
    assert [str(p) for p in refused.problems][1].startswith("train.jsonl:2: audio: absolute path")
    allowed = check_folder(root, MediaFiles(declared_processors(None, DataOptions(image_size=16))),
                           allow_outside_root=True)
    assert allowed.ok and len(allowed.samples["train"]) == 3


def test_on_error_raise_stops_with_the_full_report(make_folder: FolderFactory, tmp_path: Path) -> None:
    dm = module(bad_folder(make_folder), report_dir=str(tmp_path / "run"))
    with pytest.raises(ManifestError) as e:
        dm.setup("fit")
    message = str(e.value)
    for line in ("train.jsonl:9:", "train.jsonl:13:", "val.jsonl:5:", "data.on_error=skip"):
        assert line in message
    saved = json.loads((tmp_path / "run/data_report.json").read_text())
    assert len(saved["skipped_rows"]) == 7 and saved["on_error"] == "raise"


def test_on_error_skip_trains_without_bad_rows_and_says_which(make_folder: FolderFactory, tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    dm = module(bad_folder(make_folder), on_error="skip", report_dir=str(tmp_path / "run"))
    with caplog.at_level(logging.WARNING, logger="mmgpt.datamodules.manifest"):
        dm.setup("fit")
    assert (len(dm.splits["train"]), len(dm.splits["val"])) == (8, 4)
    assert "skipped 7 row(s) in total: train.jsonl:9, train.jsonl:10" in caplog.text
    assert "val.jsonl:5: label 'bird' is not in the class list" in caplog.text
    saved = json.loads((tmp_path / "run/data_report.json").read_text())
    assert saved["skipped_rows"][-1] == "val.jsonl:5" and saved["samples"] == {"train": 8, "val": 4}
    ids = {b for batch in dm.train_dataloader() for b in batch.ids}
    assert ids == {f"s{i}" for i in range(8)}


def test_fatal_problems_raise_even_with_skip(make_folder: FolderFactory) -> None:
    root = make_folder(train=[{"text": "a", "image": "img/nope.png", "label": "x"}], val=[{"text": "v", "label": "x"}])
    with pytest.raises(ManifestError, match="train.jsonl: no usable rows"):
        module(root, on_error="skip").setup("fit")
    (root / "val.jsonl").unlink()
    with pytest.raises(ManifestError, match="missing split"):
        module(root, on_error="skip").setup("fit")


# --- batches ----------------------------------------------------------------------------------------------------

def test_batches_carry_presence_masks_labels_and_padding(make_folder: FolderFactory) -> None:
    rows = good_rows(10)
    root = make_folder(train=rows, val=rows[:5], labels=["dog", "cat"])
    dm = module(root, max_text_length=8, max_audio_seconds=1.0, batch_size=10)
    assert dm.class_names == ["dog", "cat"] and dm.num_classes == 2  # known before setup: sizes the head
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    assert batch.ids == [r["id"] for r in rows[:5]]
    assert batch.labels.tolist() == [1, 0, 1, 0, 1]  # cat = 1, dog = 0 from labels.txt
    assert batch.inputs["image"].shape == (5, 3, 16, 16)
    assert batch.present["image"].tolist() == [r["image"] is not None for r in rows[:5]]
    assert batch.present["audio"].tolist() == [r["audio"] is not None for r in rows[:5]]
    assert batch.present["text"].tolist() == [r["text"] is not None for r in rows[:5]]
    assert batch.inputs["text"].shape[1] == 8  # "sample number 0" truncated to the token limit
    train = next(iter(dm.train_dataloader()))
    lengths = dict(zip(train.ids, train.masks["audio"].sum(1).tolist()))
    assert lengths["s0"] == 4000 and lengths["s6"] == 8000  # 0.5 s at 8 kHz; 3 s cropped to 1 s
    assert lengths["s8"] == 0 and train.inputs["audio"].shape[1] == 8000
    assert torch.isfinite(train.inputs["image"]).all()


def test_no_decoding_after_setup_and_warm_cache_decodes_nothing(make_folder: FolderFactory, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_folder(train=good_rows(10), val=good_rows(4))
    cold = module(root, cache_dir=str(tmp_path / "cache"))
    cold.setup("fit")
    assert cold.report is not None and cold.report.decoded == 8  # distinct files, each decoded once

    def boom(*args, **kwargs):
        raise AssertionError("decoded again")

    monkeypatch.setattr(decode_module, "load_image", boom)
    monkeypatch.setattr(decode_module, "load_audio", boom)
    for _ in range(2):  # two epochs
        assert sum(b.batch_size for b in cold.train_dataloader()) == 10
    warm = module(root, cache_dir=str(tmp_path / "cache"))
    warm.setup("fit")  # would raise through `boom` if anything were decoded
    assert warm.report is not None and warm.report.decoded == 0
    first = next(iter(warm.val_dataloader()))
    assert torch.equal(first.inputs["audio"], next(iter(cold.val_dataloader())).inputs["audio"])


def test_num_train_limits_samples_but_checks_every_row(make_folder: FolderFactory) -> None:
    root = make_folder(train=good_rows(10) + [{"text": "t", "image": "img/nope.png", "label": "cat"}],
                       val=good_rows(4))
    with pytest.raises(ManifestError, match="train.jsonl:11"):
        module(root, num_train=3).setup("fit")
    dm = module(root, num_train=3, on_error="skip")
    dm.setup("fit")
    assert len(dm.splits["train"]) == 3


def test_bad_options_are_refused(make_folder: FolderFactory) -> None:
    root = make_folder(train=good_rows(2), val=good_rows(2))
    with pytest.raises(ValueError, match="on_error='ignore'"):
        module(root, on_error="ignore")
    with pytest.raises(ValueError, match="modality_dropout.video"):
        module(root, modality_dropout={"video": 0.5})


def test_worker_processes_deliver_the_same_batches(make_folder: FolderFactory) -> None:
    root = make_folder(train=good_rows(8), val=good_rows(8))
    inline = module(root, batch_size=8)
    inline.setup("fit")
    workers = module(root, batch_size=8, num_workers=1, pin_memory=False)
    workers.setup("fit")
    for _ in range(2):  # persistent workers serve a second epoch too
        a, b = next(iter(inline.val_dataloader())), next(iter(workers.val_dataloader()))
        assert a.ids == b.ids and torch.equal(a.inputs["audio"], b.inputs["audio"])
        assert torch.equal(a.present["image"], b.present["image"])


def test_reports_replace_links_left_in_the_report_folder_instead_of_writing_through_them(
        make_folder: FolderFactory, tmp_path: Path) -> None:
    """A report folder from elsewhere may hold links named like mmgpt's reports: they are replaced, and the files
    they point at are left as they were (issue 21, item 5)."""
    run = tmp_path / "run"
    run.mkdir()
    targets = {name: tmp_path / f"outside-{name}" for name in ("data_report.json", "decode_failures.txt")}
    for name, target in targets.items():
        target.write_text("keep me\n")
        (run / name).symlink_to(target)
    dm = module(bad_folder(make_folder), on_error="skip", report_dir=str(run))
    dm.setup("fit")
    assert all(target.read_text() == "keep me\n" for target in targets.values())
    assert not (run / "data_report.json").is_symlink() and not (run / "decode_failures.txt").is_symlink()
    assert json.loads((run / "data_report.json").read_text())["samples"] == {"train": 8, "val": 4}


def test_a_url_root_or_an_empty_folder_is_a_user_error_not_a_traceback(tmp_path: Path) -> None:
    """``data=manifest data.root=s3://bucket/x`` was read as the local folder ``./s3:/bucket/x``, and the
    ManifestError of an empty folder (a plain ValueError) reached the user as a traceback."""
    from mmgpt.cli.common import user_errors
    from mmgpt.errors import UserError

    with pytest.raises(UserError, match=r"data\.root=s3://bucket/x: data=manifest reads a local folder"):
        ManifestDataModule(root="s3://bucket/x")
    dm = ManifestDataModule(root=str(tmp_path))
    with pytest.raises(SystemExit, match=r"(?s)^error: manifest folder: .*missing split"):
        user_errors(lambda: dm.num_classes)()
