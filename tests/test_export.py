"""``mmgpt-export``: the folder loads and predicts as the checkpoint does (bit for bit), carries no pickles, and a
crafted folder (a ``_target_`` or an interpolation in its JSON, a pickle posing as safetensors) is refused in one
line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mmgpt
from mmgpt.exported import ExportError, export
from tests.datamodules.conftest import good_rows, make_folder, media  # noqa: F401  (fixtures)
from tests.helpers.predict import assert_same_as_eval, train_and_eval

PICKLE_MAGIC = (b"\x80", b"PK\x03\x04")  # a pickle's protocol byte, torch.save's zip archive


def assert_no_pickles(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            assert path.suffix not in (".bin", ".pt", ".pth", ".pkl", ".ckpt"), path
            assert not path.read_bytes()[:4].startswith(PICKLE_MAGIC), path


def refused(folder: Path) -> str:
    with pytest.raises(ExportError) as e:
        mmgpt.load(folder)
    assert "\n" not in str(e.value) and str(folder) in str(e.value)
    return str(e.value)


def test_export_loads_predicts_identically_and_refuses_crafted_folders(compose_cfg, make_folder,  # noqa: F811
                                                                       tmp_path: Path, monkeypatch) -> None:
    root = make_folder(train=good_rows(16), val=good_rows(10), test=good_rows(4))
    ckpt, saved = train_and_eval(compose_cfg, root, tmp_path, "model/fusion=late")
    out = export(ckpt, tmp_path / "exported")
    assert {p.name for p in out.iterdir()} == {"model.safetensors", "mmgpt.json", "README.md"}
    assert_no_pickles(out)
    card = (out / "README.md").read_text()
    assert "val/acc" in card and "Run stamp: commit" in card and "late" in card
    assert_same_as_eval(mmgpt.load(out), root, saved)

    manifest = json.loads((out / "mmgpt.json").read_text())
    for name, change in {
        "target": lambda m: m["net"]["fusion"].update(_target_="os.system"),
        "interpolation": lambda m: m["class_names"].__setitem__(0, "${oc.env:HOME}"),
        "unknown_part": lambda m: m["net"]["fusion"].update(type="not_a_fusion"),
        "processor_outside": lambda m: m.update(processors={"text": "../../elsewhere"}),
        "processor_not_a_path": lambda m: m.update(processors={"text": ["x"]}),
        "processor_of_no_encoder": lambda m: m.update(processors={"smell": "processors/smell"}),
        "version_not_a_number": lambda m: m.update(format_version="one"),
        "no_num_classes": lambda m: m.pop("num_classes"),
    }.items():
        crafted = tmp_path / name
        shutil.copytree(out, crafted)
        m = json.loads(json.dumps(manifest))
        change(m)
        (crafted / "mmgpt.json").write_text(json.dumps(m))
        refused(crafted)
    posing = tmp_path / "pickle"
    shutil.copytree(out, posing)
    torch.save({"w": torch.zeros(2)}, posing / "model.safetensors")  # a pickle (zip) under the safetensors name
    assert "not a safetensors file" in refused(posing)

    cli = subprocess.run([sys.executable, "-m", "mmgpt.cli.app", "export", ckpt, str(out)], capture_output=True,
                         text=True)
    assert cli.returncode == 1 and cli.stderr.strip().count("\n") == 0 and "not empty" in cli.stderr

    # A folder missing a file is named for what it lacks (not "a sharded checkpoint", not "a pickle").
    no_weights, no_spec = tmp_path / "no_weights", tmp_path / "no_spec"
    shutil.copytree(out, no_weights)
    (no_weights / "model.safetensors").unlink()
    assert "model.safetensors: missing" in refused(no_weights)
    shutil.copytree(out, no_spec)
    (no_spec / "mmgpt.json").unlink()
    assert "mmgpt.json is missing" in refused(no_spec)

    # --overwrite replaces an earlier export only: it deleted any folder, e.g. the run holding the checkpoint.
    run_dir = Path(ckpt).parent.parent
    kept = sorted(p.relative_to(run_dir) for p in run_dir.rglob("*"))
    for target, why in ((run_dir, "not an earlier mmgpt export"), (Path(ckpt), "not a folder")):
        with pytest.raises(ExportError, match=why):
            export(ckpt, target, overwrite=True)
    assert sorted(p.relative_to(run_dir) for p in run_dir.rglob("*")) == kept
    assert export(ckpt, out, overwrite=True) == out and (out / "model.safetensors").is_file()

    # An export that fails midway leaves the earlier one as it was and no partial folder beside it.
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr("mmgpt.exported._save_weights", full_disk)
    for target, overwrite in ((out, True), (tmp_path / "fresh", False)):
        with pytest.raises(OSError, match="No space left"):
            export(ckpt, target, overwrite=overwrite)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not (tmp_path / "fresh").exists() and not list(tmp_path.glob(".*partial*"))


@pytest.mark.slow
def test_export_hf_backbone_by_reference_and_included(compose_cfg, make_folder, tmp_path: Path) -> None:  # noqa: F811
    from tests.helpers.backbones import make_bert

    bert = make_bert(tmp_path / "bert")
    root = make_folder(train=good_rows(16), val=good_rows(10), test=good_rows(4))
    ckpt, saved = train_and_eval(compose_cfg, root, tmp_path, "model/fusion=early", f"encoders.text=hf:{bert}")
    referenced = export(ckpt, tmp_path / "ref")
    included = export(ckpt, tmp_path / "inc", include_backbones=True)
    for out in (referenced, included):
        assert_no_pickles(out)
        assert (out / "processors" / "text" / "tokenizer_config.json").is_file()  # the backbone's own tokenizer
        assert_same_as_eval(mmgpt.load(out), root, saved)
    ref = json.loads((referenced / "mmgpt.json").read_text())
    assert ref["backbones"]["encoders.text"]["name_or_path"] == str(bert) and len(
        ref["backbones"]["encoders.text"]["sha256"]) == 64
    assert (included / "backbones" / "text" / "model.safetensors").is_file()
    moved = tmp_path / "moved"  # the included folder stands alone: the original backbone can go
    shutil.copytree(included, moved)
    shutil.rmtree(bert)
    assert_same_as_eval(mmgpt.load(moved), root, saved)
    with pytest.raises(mmgpt.errors.UserError):  # by reference, the backbone must be where it says
        mmgpt.load(referenced)
