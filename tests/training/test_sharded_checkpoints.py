"""Sharded checkpoint folders (trainer=fsdp): atomic swap into place, and resume=auto after a crash mid-save."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mmgpt.training.checkpointing import find_resume_checkpoint
from mmgpt.training.distributed import is_sharded_checkpoint, save_atomically


def _fake_sharded(path: Path, step: int) -> None:
    """A complete folder: shards' index, one shard (torch.distributed.checkpoint's format), Lightning's meta.pt."""
    import torch.distributed.checkpoint as dcp

    with pytest.warns(UserWarning, match="single process"):
        dcp.save({"state_dict": {"w": torch.full((2,), float(step))}}, checkpoint_id=path, no_dist=True)
    torch.save({"global_step": step, "hyper_parameters": {}}, path / "meta.pt")


def test_save_atomically_replaces_the_folder_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "last.ckpt"
    _fake_sharded(target, 1)
    save_atomically(lambda tmp: _fake_sharded(tmp, 2), target, is_rank_zero=True, barrier=lambda: None)
    assert torch.load(target / "meta.pt", weights_only=True)["global_step"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_a_save_that_fails_midway_leaves_the_previous_folder(tmp_path):
    target = tmp_path / "last.ckpt"
    _fake_sharded(target, 1)

    def crash(tmp: Path) -> None:
        tmp.mkdir()
        (tmp / "__0_0.distcp").write_bytes(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        save_atomically(crash, target, is_rank_zero=True, barrier=lambda: None)
    assert torch.load(target / "meta.pt", weights_only=True)["global_step"] == 1


def test_resume_auto_skips_half_written_folders_and_restores_one_caught_between_renames(tmp_path):
    ckpts = tmp_path / "checkpoints"
    _fake_sharded(ckpts / "step0000004.ckpt", 4)
    (ckpts / "step0000006.ckpt").mkdir()  # killed before anything was written: not a checkpoint
    (ckpts / "step0000006.ckpt" / "__0_0.distcp").write_bytes(b"half")
    _fake_sharded(ckpts / ".last.ckpt.old", 5)  # killed after moving last.ckpt aside, before the new one came
    (ckpts / ".last.ckpt.tmp").mkdir()  # ... whose temporary folder is incomplete
    found = find_resume_checkpoint(tmp_path)
    assert found == ckpts / "last.ckpt" and is_sharded_checkpoint(found)
    assert not (ckpts / ".last.ckpt.old").exists() and not (ckpts / ".last.ckpt.tmp").exists()


def test_a_sharded_checkpoints_index_is_read_without_running_code(tmp_path):
    """The index (.metadata) of torch.distributed.checkpoint is a pickle: mmgpt reads it with a restricted
    unpickler, so a crafted index is refused and nothing it names is called."""
    import os
    import pickle

    import torch
    import torch.distributed.checkpoint as dcp

    from mmgpt.errors import CheckpointError
    from mmgpt.training.distributed import META_FILE, consolidate

    folder = tmp_path / "step.ckpt"
    weights = {"w": torch.randn(3, 4), "b": torch.arange(5.0)}
    dcp.save({"state_dict": weights}, checkpoint_id=folder, no_dist=True)
    torch.save({"global_step": 3}, folder / META_FILE)
    out = consolidate(folder)
    torch.testing.assert_close(out["state_dict"], weights)
    assert out["global_step"] == 3

    marker = tmp_path / "ran"

    class Crafted:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (folder / ".metadata").write_bytes(pickle.dumps(Crafted()))
    with pytest.raises(CheckpointError, match=r"step\.ckpt: cannot read .*posix\.system; refused"):
        consolidate(folder)
    assert not marker.exists()


# -- a stranger's sharded checkpoint: its index and byte entries are read as data only (issue 21, item 2) ----------
class _Marker:
    """Pickles to a call of ``os.system`` that creates ``path``: unpickled without restriction, it runs."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.path}",))


def _dcp_folder(folder: Path) -> Path:
    """A sharded checkpoint folder as torch.distributed.checkpoint writes it: tensors and byte entries (optimizer
    hyperparameters), plus Lightning's meta.pt."""
    import torch.distributed.checkpoint as dcp

    from mmgpt.training.distributed import META_FILE

    state = {"state_dict": {"w": torch.randn(3, 4)},
             "optimizer_0": {"param_groups": [{"lr": 0.1, "betas": (0.9, 0.99), "params": ["w"]}]}}
    with pytest.warns(UserWarning, match="single process"):
        dcp.save(state, checkpoint_id=folder, no_dist=True)
    torch.save({"global_step": 3}, folder / META_FILE)
    return folder


def plant_byte_entry(folder: Path, value: object, fqn: str | None = None) -> str:
    """Replace one byte entry of a sharded checkpoint by ``torch.save(value)``: the new bytes are appended to its
    data file and the index entry pointed at them (the rest of the folder is as it was). Returns the entry's name."""
    import io
    import pickle

    from torch.distributed.checkpoint.metadata import BytesStorageMetadata

    metadata = pickle.loads((folder / ".metadata").read_bytes())
    names = [k for k, v in metadata.state_dict_metadata.items() if isinstance(v, BytesStorageMetadata)]
    fqn = fqn or names[0]
    index = next(k for k in metadata.storage_data if k.fqn == fqn)
    info = metadata.storage_data[index]
    buffer = io.BytesIO()
    torch.save(value, buffer)
    data = folder / info.relative_path
    info.offset, info.length = data.stat().st_size, len(buffer.getvalue())
    with open(data, "ab") as f:
        f.write(buffer.getvalue())
    (folder / ".metadata").write_bytes(pickle.dumps(metadata))
    return fqn


def _edit_index(folder: Path, edit) -> None:
    import pickle

    metadata = pickle.loads((folder / ".metadata").read_bytes())
    (folder / ".metadata").write_bytes(pickle.dumps(edit(metadata)))


def _first_record(metadata):
    return next(iter(metadata.storage_data.values()))


def _convert(folder: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mmgpt.training.distributed", str(folder), str(out)],
                          capture_output=True, text=True, timeout=300)


def test_a_crafted_byte_entry_is_refused_in_one_line_and_never_run(tmp_path):
    from mmgpt.training.distributed import consolidate
    from mmgpt.training.safe_load import CheckpointError, read_checkpoint

    folder = _dcp_folder(tmp_path / "step.ckpt")
    assert consolidate(folder)["optimizer_states"][0]["param_groups"][0]["betas"] == (0.9, 0.99)  # plain data reads
    marker = tmp_path / "ran"
    fqn = plant_byte_entry(folder, _Marker(marker))
    for read in (consolidate, read_checkpoint):
        with pytest.raises(CheckpointError, match=rf"step\.ckpt: .*byte entry '{fqn}' .*posix\.system.*refused"):
            read(folder)
    proc = _convert(folder, tmp_path / "out.ckpt")
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "refused" in proc.stderr and "Traceback" not in proc.stderr
    assert not marker.exists() and not (tmp_path / "out.ckpt").exists()


@pytest.mark.parametrize("case", ["a dict", "a missing data file", "a path outside", "an absolute path",
                                  "past the end", "a negative offset", "no storage table"])
def test_a_malformed_index_is_one_line_not_an_assertion(tmp_path, capsys, case):
    from torch.distributed.checkpoint.metadata import Metadata

    from mmgpt.training.distributed import consolidate, main
    from mmgpt.training.safe_load import CheckpointError

    folder = _dcp_folder(tmp_path / "ckpts" / "step.ckpt")
    (tmp_path / "ckpts" / "outside.distcp").write_bytes((folder / "__0_0.distcp").read_bytes())

    def record(**changes):
        def edit(metadata: Metadata) -> Metadata:
            for key, value in changes.items():
                setattr(_first_record(metadata), key, value)
            return metadata
        return edit

    edits = {
        "a dict": lambda m: {"state_dict_metadata": {}, "storage_data": {}},
        "a missing data file": record(relative_path="__9_0.distcp"),
        "a path outside": record(relative_path="../outside.distcp"),
        "an absolute path": record(relative_path=str(tmp_path / "ckpts" / "outside.distcp")),
        "past the end": record(length=1 << 40),
        "a negative offset": record(offset=-8),
        "no storage table": lambda m: Metadata(m.state_dict_metadata, None, None),
    }
    _edit_index(folder, edits[case])
    with pytest.raises(CheckpointError, match=r"step\.ckpt: cannot read the sharded checkpoint \(.*refused\)$"):
        consolidate(folder)
    with pytest.raises(SystemExit) as exit_:  # the conversion command, in this process
        main([str(folder), str(tmp_path / "out.ckpt")])
    err = capsys.readouterr().err
    assert exit_.value.code == 1 and len(err.strip().splitlines()) == 1 and "refused" in err
    assert not (tmp_path / "out.ckpt").exists()


def test_the_conversion_command_names_a_folder_that_is_not_a_sharded_checkpoint(tmp_path, capsys):
    from mmgpt.training.distributed import main

    with pytest.raises(SystemExit) as exit_:
        main([str(tmp_path), str(tmp_path / "out.ckpt")])
    assert exit_.value.code == 1
    assert capsys.readouterr().err == (f"error: {tmp_path}: a folder, but not a complete sharded checkpoint "
                                       "(.metadata and meta.pt)\n")


@pytest.mark.slow  # one trainer=fsdp_sim run (~1 min on the shared machine)
def test_a_real_sharded_checkpoint_with_one_crafted_byte_entry_runs_nothing_in_eval_or_conversion(tmp_path):
    """A real tiny FSDP run's last.ckpt evaluates as written (its byte entries are plain data); with one byte entry
    replaced by a pickled call, mmgpt-eval and the conversion command each end in one line and nothing runs."""
    import os

    from mmgpt.training.distributed import consolidate

    run = tmp_path / "run"
    env = {**os.environ, "MMGPT_LOG_DIR": str(tmp_path), "CI": "1", "WANDB_MODE": "offline"}
    subprocess.run([str(Path(sys.executable).parent / "mmgpt-train"), "experiment=smoke", "logger=csv", "test=false",
                    "trainer=fsdp_sim", "trainer.devices=1", "trainer.max_steps=2", "trainer.limit_val_batches=1",
                    f"hydra.run.dir={run}"], env=env, check=True, capture_output=True, timeout=600)
    folder = run / "checkpoints" / "last.ckpt"
    assert is_sharded_checkpoint(folder) and consolidate(folder)["optimizer_states"]
    marker = tmp_path / "ran"
    fqn = plant_byte_entry(folder, _Marker(marker), "optimizer_0.param_groups.0.lr")
    evaluated = subprocess.run([sys.executable, "-m", "mmgpt.cli.evaluate", f"ckpt_path={folder}", "subsets=false",
                                f"hydra.run.dir={tmp_path / 'eval'}"], env=env, capture_output=True, text=True,
                               timeout=300)
    converted = _convert(folder, tmp_path / "out.ckpt")
    for proc in (evaluated, converted):
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        assert proc.returncode == 1 and "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-2000:]
        assert lines[-1].startswith(f"error: {folder}: cannot read the sharded checkpoint (the byte entry '{fqn}'")
        assert lines[-1].endswith("refused)")
    assert not marker.exists() and not (tmp_path / "out.ckpt").exists()
