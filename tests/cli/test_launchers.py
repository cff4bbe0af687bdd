"""Launching: SLURM via hydra-submitit-launcher (run here with submitit's local executor), multirun x DDP, and
multi-node torchrun (two "nodes" on this machine)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from mmgpt.config import CONFIG_DIR
from tests.helpers.folders import newest_step

BIN = Path(sys.executable).parent


def test_slurm_launcher_config_composes_with_requeue_and_one_task_per_device():
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4",
                                          "trainer.num_nodes=2"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.max_num_timeout > 0  # requeued on time-out / pre-emption
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (2, 4, 4)


def test_submitit_local_executor_runs_a_sweep_job(tmp_path):
    env = {**os.environ, "MMGPT_LOG_DIR": str(tmp_path), "CI": "1", "WANDB_MODE": "offline"}
    proc = subprocess.run(
        [str(BIN / "mmgpt-train"), "-m", "hydra/launcher=slurm_local", "experiment=smoke", "debug=fdr",
         "logger=csv", "model/fusion=late"],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (results,) = tmp_path.glob("train/multiruns/*/0/results.json")
    assert json.loads(results.read_text())["fusion"] == "late"
    assert list(tmp_path.glob("train/multiruns/*/.submitit/*/*_result.pkl"))  # submitit ran and collected the job


@pytest.mark.slow  # minutes on 2 CPUs: in CI's slow run (make test-slow)
def test_multirun_with_ddp_sim_gives_one_directory_per_sweep_point(tmp_path):
    """Each sweep point launches its own 2 DDP processes; the ranks write into that point's directory only."""
    env = {**os.environ, "MMGPT_LOG_DIR": str(tmp_path), "CI": "1", "WANDB_MODE": "offline"}
    proc = subprocess.run(
        [str(BIN / "mmgpt-train"), "-m", "trainer=ddp_sim", "experiment=smoke", "debug=fdr", "logger=csv",
         "model/fusion=early,late"],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (sweep,) = tmp_path.glob("train/multiruns/*")
    points = sorted(p.name for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert points == ["0", "1"]
    for point, fusion in zip(points, ["early", "late"]):
        results = json.loads((sweep / point / "results.json").read_text())
        assert results["world_size"] == 2 and results["fusion"] == fusion
    assert not list(tmp_path.glob("train/runs/*"))  # no stray single-run directories from the child ranks


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_node_torchrun_launch_trains_one_run(tmp_path):
    """The README's multi-node command, with two 'nodes' of one CPU process each on this machine: one torchrun per
    node, a shared c10d rendezvous, ``trainer.num_nodes=2``; both ranks train one run in one directory."""
    env = {**os.environ, "MMGPT_LOG_DIR": str(tmp_path), "CI": "1", "WANDB_MODE": "offline"}
    port = _free_port()
    nodes = [
        subprocess.Popen(
            [str(BIN / "torchrun"), "--nnodes", "2", "--nproc-per-node", "1", "--node-rank", str(rank),
             "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "twonodes",
             str(BIN / "mmgpt-train"), "trainer=ddp_sim", "trainer.devices=1", "trainer.num_nodes=2",
             "experiment=smoke", "logger=csv"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for rank in (0, 1)
    ]
    logs = [node.communicate(timeout=600)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in logs[0] and "GLOBAL_RANK: 1, MEMBER: 2/2" in logs[1]
    (results,) = tmp_path.glob("train/runs/*/results.json")  # one run directory for both nodes
    saved = json.loads(results.read_text())
    assert results.parent.name == "torchrun-twonodes"
    assert saved["world_size"] == 2 and saved["global_step"] == 2  # 128 samples / (2 ranks x 32)


def _pids_running(fragment: str) -> list[int]:
    """Processes whose command line contains ``fragment``."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if fragment in cmdline:
                pids.append(int(proc.name))
    return pids


@pytest.mark.slow
def test_preempted_slurm_job_is_requeued_and_resumes_where_it_stopped(tmp_path):
    """Pre-emption as SLURM delivers it to a submitit job (SIGUSR2), run with submitit's local executor: the launcher
    checkpoints the submission, the job exits to be requeued, the requeued job resumes (resume=auto) from its newest
    step checkpoint and finishes the run."""
    env = {**os.environ, "MMGPT_LOG_DIR": str(tmp_path), "CI": "1", "WANDB_MODE": "offline"}
    sweep = subprocess.Popen(
        [str(BIN / "mmgpt-train"), "-m", "hydra/launcher=slurm_local", "resume=auto", "experiment=smoke",
         "logger=csv", "data.num_train=256", "trainer.max_epochs=2", "test=false",
         "callbacks.step_checkpoint.every_n_train_steps=1"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    deadline = time.time() + 600
    while newest_step(tmp_path.glob("train/multiruns/*/0/checkpoints/step*.ckpt")) < 5 and time.time() < deadline:
        assert sweep.poll() is None, sweep.communicate()[0][-3000:]
        time.sleep(0.2)
    (task,) = _pids_running(f"submitit.core._submit {tmp_path}")  # the job's task (the training process)
    os.kill(task, signal.SIGUSR2)
    out = sweep.communicate(timeout=600)[0]
    assert sweep.returncode == 0, out[-3000:]

    (job_dir,) = tmp_path.glob("train/multiruns/*/0")
    logs = "".join(p.read_text() for p in job_dir.parent.glob(".submitit/*/*_log.*"))
    assert "this job is preempted" in logs and "Requeued job" in logs
    assert "resume=auto: continuing from" in logs
    results = json.loads((job_dir / "results.json").read_text())
    assert results["global_step"] == 16  # 2 epochs of 8 steps, none lost or repeated
