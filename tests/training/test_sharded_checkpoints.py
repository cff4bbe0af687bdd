"""Sharded checkpoint folders (trainer=fsdp): atomic swap into place, and resume=auto after a crash mid-save."""

from pathlib import Path

import pytest
import torch

from mmgpt.training.checkpointing import find_resume_checkpoint
from mmgpt.training.distributed import is_sharded_checkpoint, save_atomically


def _fake_sharded(path: Path, step: int) -> None:
    """A complete folder as far as the checks go: shards' index, one shard, Lightning's meta.pt."""
    path.mkdir(parents=True)
    (path / ".metadata").write_bytes(b"index")
    (path / "__0_0.distcp").write_bytes(b"shard")
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
