"""``mmgpt-data check`` and ``mmgpt-data export-synthetic``."""

from __future__ import annotations

import json
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import torch

from mmgpt.cli.data import main
from mmgpt.datamodules.manifest import ManifestDataModule
from mmgpt.datamodules.synthetic import CLASSES, SyntheticDataModule
from tests.datamodules.conftest import FolderFactory, good_rows, make_folder, media  # noqa: F401  (fixtures)


def test_check_prints_every_problem_and_fails(make_folder: FolderFactory, capsys: pytest.CaptureFixture) -> None:
    train = good_rows(4) + ['{"id": oops}', {"id": "m", "text": "t", "image": "img/gone.png", "label": "cat"},
                            {"id": "e", "text": "t", "audio": "wav/empty.wav", "label": "dog", "extra": 1}]
    root = make_folder(train=train, val=good_rows(2) + [{"text": "t", "label": "cow"}])
    assert main(["check", str(root)]) == 1
    out = capsys.readouterr().out
    assert "train.jsonl:5: malformed JSON" in out
    assert "train.jsonl:6: image 'img/gone.png': missing file" in out
    assert "train.jsonl:7: unknown key(s) ['extra']" in out
    assert "val.jsonl:3: label 'cow' is not in the class list" in out
    assert "train: 4 usable samples, 3 bad rows" in out and "val: 2 usable samples, 1 bad rows" in out
    assert "result: 4 problem(s) in 4 row(s)" in out


def test_check_passes_a_good_folder(make_folder: FolderFactory, capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    root = make_folder(train=good_rows(6), val=good_rows(3))
    assert main(["check", str(root), "--cache-dir", str(tmp_path / "cache")]) == 0
    out = capsys.readouterr().out
    assert "result: OK" in out and "classes (2): cat, dog" in out
    assert len(list((tmp_path / "cache").glob("media-*.pt"))) == 1


def test_export_synthetic_writes_a_folder_that_loads_as_the_synthetic_set(tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "syn"
    assert main(["export-synthetic", str(out), "--num-train", "6", "--num-val", "3", "--num-test", "3"]) == 0
    assert (out / "labels.txt").read_text().split() == list(CLASSES)
    rows = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and (out / rows[0]["image"]).is_file() and (out / rows[0]["audio"]).is_file()
    assert main(["check", str(out)]) == 0

    manifest = ManifestDataModule(str(out), batch_size=6)
    manifest.setup("fit")
    synthetic = SyntheticDataModule(num_train=6, num_val=3, num_test=3, batch_size=6, augment=False)
    synthetic.setup("fit")
    a, b = next(iter(manifest.val_dataloader())), next(iter(synthetic.val_dataloader()))
    assert a.ids == b.ids and torch.equal(a.labels, b.labels) and torch.equal(a.inputs["text"], b.inputs["text"])
    # PNG and 16-bit WAV quantise: within one grey level (/ the 0.25 std) and one PCM step.
    assert (a.inputs["image"] - b.inputs["image"]).abs().max() <= 1 / 255 / 0.25 + 1e-5
    assert torch.equal(a.masks["audio"], b.masks["audio"])
    assert (a.inputs["audio"] - b.inputs["audio"]).abs().max() <= 2 / 32768
    assert manifest.class_names == list(CLASSES)


def test_console_script_is_registered_and_explains_usage(capsys: pytest.CaptureFixture) -> None:
    scripts = {ep.name: ep.value for ep in entry_points(group="console_scripts")}
    assert scripts.get("mmgpt-data") == "mmgpt.cli.data:main"
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "check" in out and "export-synthetic" in out
    with pytest.raises(SystemExit) as e:
        main(["check"])  # no folder given
    assert e.value.code == 2
