"""A training run killed with SIGKILL mid-epoch and restarted with resume=auto ends exactly where an
uninterrupted run ends: same weights, same metrics, with every source of randomness on (image flips and
modality dropout in the data, dropout in the model), so the RNG states and the loader position must both resume.
On one process, on two DDP processes (each rank's RNG states are saved and restored), and streaming tar shards
through two loader workers (the stream's position is restored), from a local folder and from an S3 bucket (moto's
server on the loopback interface)."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.helpers.folders import export_and_shard, newest_step

BIN = Path(sys.executable).parent
# 8 steps per epoch (256 samples / batch 32 on one process; 512 / (2 x 32) on two), 2 epochs; a checkpoint
# after every step; killed at step 11 = 3 steps into the second epoch.
COMMON = ["logger=csv", "trainer.max_epochs=2", "test=false", "callbacks.step_checkpoint.every_n_train_steps=1",
          "model.dropout=0.1"]
RANDOM_DATA = ["data.augment=true", "data.modality_dropout.audio=0.2", "data.modality_dropout.image=0.2"]
SETUPS = {
    "one_process": ["experiment=smoke", "data.num_train=256", *RANDOM_DATA],
    "ddp_sim": ["experiment=smoke", "trainer=ddp_sim", "data.num_train=512", *RANDOM_DATA],
    # streamed from tar shards by 2 loader workers with uneven streams (shards of 48 samples, 256 in all); s3_shards:
    # the same shards in a bucket
    "shards": ["experiment=smoke", "data=shards", "data.num_train=256", "data.num_workers=2", *RANDOM_DATA],
    "s3_shards": ["experiment=smoke", "data=shards", "data.num_train=256", "data.num_workers=2", *RANDOM_DATA],
}
KILL_AT = 11


@pytest.fixture(scope="module")
def shard_root(tmp_path_factory) -> Path:
    return export_and_shard(tmp_path_factory.mktemp("kill_shards"), num_train=256, samples_per_shard=48, num_val=64,
                            num_test=64)


@pytest.fixture(scope="module")
def s3_shard_root(shard_root):
    """The shard folder uploaded to s3://runs/set of a moto server; yields the data.* overrides that read it."""
    pytest.importorskip("moto")
    import s3fs

    from tests.helpers.object_store import S3_ENV, make_bucket, s3_server

    saved = {k: os.environ.get(k) for k in S3_ENV}
    os.environ.update(S3_ENV)  # the training processes inherit them
    with s3_server() as endpoint:
        make_bucket(endpoint, "runs")
        s3fs.S3FileSystem(endpoint_url=endpoint, skip_instance_cache=True).put(str(shard_root), "runs/set",
                                                                              recursive=True)
        yield ["data.root=s3://runs/set", f"data.storage_options={{endpoint_url: '{endpoint}'}}"]
    for k, v in saved.items():
        os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "MMGPT_LOG_DIR": str(tmp_path), "CI": "1", "WANDB_MODE": "offline"}


EPOCH_KEYS = ("val/acc", "train/acc", "train/f1", "train/loss_epoch")


def _val_rows(run_dir: Path) -> list[tuple[str, ...]]:
    """The epoch rows of metrics.csv: validation and the training epoch's metrics (equal after a mid-epoch resume:
    the epoch's metric state is in the checkpoint)."""
    with (run_dir / "metrics.csv").open(newline="") as f:
        return [(r["epoch"], r["step"], *(r.get(k, "") for k in EPOCH_KEYS)) for r in csv.DictReader(f)
                if any(r.get(k) for k in EPOCH_KEYS)]


@pytest.mark.slow
@pytest.mark.parametrize("setup", list(SETUPS))
def test_sigkill_mid_epoch_then_resume_auto_matches_an_uninterrupted_run(tmp_path, setup, request):
    args = [str(BIN / "mmgpt-train"), *COMMON, *SETUPS[setup]]
    if setup == "shards":
        args.append(f"data.root={request.getfixturevalue('shard_root')}")
    if setup == "s3_shards":  # the three runs share one node-local cache, as runs on one node would
        args += [*request.getfixturevalue("s3_shard_root"), f"data.cache_dir={tmp_path / 'cache'}"]
    full_dir, killed_dir = tmp_path / "full", tmp_path / "killed"
    subprocess.run([*args, f"hydra.run.dir={full_dir}"], env=_env(tmp_path), check=True, capture_output=True,
                   timeout=600)

    # Its own process group, so that the kill takes every rank down at once, as a node failure would.
    proc = subprocess.Popen([*args, f"hydra.run.dir={killed_dir}"], env=_env(tmp_path), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 600
    while newest_step((killed_dir / "checkpoints").glob("step*.ckpt")) < KILL_AT and time.time() < deadline:
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed_dir / "results.json").exists()
    ckpt = torch.load(killed_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    rng = next(v for k, v in ckpt["callbacks"].items() if "RngStateInCheckpoint" in k)
    assert len(rng["per_rank"]) == (2 if setup == "ddp_sim" else 1)

    subprocess.run([*args, "resume=auto", f"hydra.run.dir={killed_dir}"], env=_env(tmp_path), check=True,
                   capture_output=True, timeout=600)
    full = json.loads((full_dir / "results.json").read_text())
    resumed = json.loads((killed_dir / "results.json").read_text())
    # 8 steps per epoch; on shards 9 (2 workers stream 144 and 112 samples: 5 + 4 batches of 32)
    assert resumed["global_step"] == full["global_step"] == (18 if "shards" in setup else 16)
    assert resumed["world_size"] == full["world_size"]
    assert resumed["val"] == full["val"]
    # the metric history survives the restart: every validation row, none twice
    assert _val_rows(killed_dir) == _val_rows(full_dir)
    a = torch.load(full_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    b = torch.load(killed_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.slow
def test_sigterm_mid_epoch_exits_143_then_resume_auto_matches_an_uninterrupted_run(tmp_path):
    """SIGTERM (scancel, kill, a pre-emption) is not a success: status 143 and how to continue; resuming then
    ends with the uninterrupted run's weights and epoch metrics."""
    args = [str(BIN / "mmgpt-train"), *COMMON, *SETUPS["one_process"]]
    full_dir, stopped_dir = tmp_path / "full", tmp_path / "stopped"
    full = subprocess.Popen([*args, f"hydra.run.dir={full_dir}"], env=_env(tmp_path), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    proc = subprocess.Popen([*args, f"hydra.run.dir={stopped_dir}"], env=_env(tmp_path), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 600
    while newest_step((stopped_dir / "checkpoints").glob("step*.ckpt")) < KILL_AT and time.time() < deadline:
        assert proc.poll() is None, "the run ended before it could be stopped"
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 143, out[-3000:]
    assert f"with the same command plus: resume=auto hydra.run.dir={stopped_dir}" in out
    assert not (stopped_dir / "results.json").exists()

    subprocess.run([*args, "resume=auto", f"hydra.run.dir={stopped_dir}"], env=_env(tmp_path), check=True,
                   capture_output=True, timeout=1200)
    assert full.wait(timeout=1200) == 0
    assert _val_rows(stopped_dir) == _val_rows(full_dir)
    a = torch.load(full_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    b = torch.load(stopped_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    for k in a:
        assert torch.equal(a[k], b[k]), k
