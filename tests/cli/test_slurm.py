"""mmgpt-train against a real SLURM (`make test-slurm` brings up a one-node SLURM with scripts/slurm_up.sh):
the default launcher on a CPU partition, a 2-task DDP job, a job requeued mid-epoch by `scontrol requeue` and one
stopped by its time limit (both end with the weights and epoch metrics of an uninterrupted run), a job whose
retries run out, and a request the partition cannot hold. Skipped when no SLURM answers."""

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.helpers.folders import newest_step

BIN = Path(sys.executable).parent


def _slurm_up() -> bool:
    if not shutil.which("sinfo"):
        return False
    try:
        return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


pytestmark = [pytest.mark.slow, pytest.mark.slurm,
              pytest.mark.skipif(not _slurm_up(), reason="no SLURM here (make test-slurm brings one up)")]

# 8 steps per epoch (256 samples / batch 32), 2 epochs, a checkpoint after every step.
RESUMABLE = ["experiment=smoke", "logger=csv", "data.num_train=256", "trainer.max_epochs=2", "test=false",
             "callbacks.step_checkpoint.every_n_train_steps=1", "model.dropout=0.1", "data.augment=true"]
LONG_RUN = ["experiment=smoke", "logger=csv", "data.num_train=4096", "trainer.max_epochs=50"]
# A 3-minute limit, submitit's signal 60 s before it: SLURM sends it up to 60 s early, so 1 to 2 minutes into each
# run of the job (on a 1-minute limit it can come before Python has set up the handler, and the job just dies).
TIME_LIMIT = ["hydra.launcher.timeout_min=3", "hydra.launcher.signal_delay_s=60"]
EPOCH_KEYS = ("train/acc", "train/f1", "train/loss_epoch", "val/acc")


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "MMGPT_LOG_DIR": str(tmp_path), "CI": "1", "WANDB_MODE": "offline"}


def _sweep(tmp_path: Path, *overrides: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "mmgpt-train"), "-m", "hydra/launcher=slurm", *overrides], env=_env(tmp_path),
                          capture_output=True, text=True, timeout=timeout)


def _job_id(log: Path, deadline: float) -> str:
    while time.time() < deadline:
        found = re.search(r"submitted \d+ SLURM job\(s\) from .*: (\S+)", log.read_text())
        if found:
            return found.group(1)
        time.sleep(0.5)
    raise AssertionError(log.read_text()[-3000:])


def _epoch_rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "metrics.csv").open(newline="") as f:
        return [{k: r[k] for k in EPOCH_KEYS if r.get(k)} for r in csv.DictReader(f)
                if any(r.get(k) for k in EPOCH_KEYS)]


def _same_run(a: Path, b: Path) -> None:
    """Bit-identical weights in last.ckpt and identical logged epoch metrics."""
    assert _epoch_rows(a) == _epoch_rows(b)
    wa = torch.load(a / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")["state_dict"]
    wb = torch.load(b / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")["state_dict"]
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def _start_now(job: str) -> None:
    """A requeued job is held for about 2 minutes (Reason=BeginTime); the tests don't wait for it."""
    subprocess.run(["scontrol", "update", f"jobid={job}", "StartTime=now"], capture_output=True, timeout=30)


def test_default_launcher_runs_a_two_point_sweep_on_a_cpu_partition(tmp_path):
    proc = _sweep(tmp_path, "experiment=smoke", "logger=csv", "debug=fdr", "model/fusion=early,late")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert re.search(r"job \d+_0 RUNNING\s+log: .*/\.submitit/\d+_0/\d+_0_0_log\.out", out), out[-3000:]
    assert re.search(r"\d+_1\s+COMPLETED\s+\S+\s+experiment=smoke logger=csv debug=fdr model/fusion=late", out), out
    for point, fusion in (("0", "early"), ("1", "late")):
        (results,) = tmp_path.glob(f"train/multiruns/*/{point}/results.json")
        assert json.loads(results.read_text())["fusion"] == fusion


def _node_cpus() -> list[int]:
    """CPUs of each node of the cluster."""
    if not _slurm_up():
        return []
    out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %c"], capture_output=True, text=True).stdout
    return [int(c.rstrip("+")) for _, c in dict(line.split() for line in out.splitlines()).items()]


@pytest.mark.skipif(max(_node_cpus() or [2]) < 2, reason="nodes of 1 CPU (the two-node set-up)")
def test_two_task_ddp_job_takes_its_ranks_from_slurm(tmp_path):
    proc = _sweep(tmp_path, "experiment=smoke", "logger=csv", "trainer=ddp_sim")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    (results,) = tmp_path.glob("train/multiruns/*/0/results.json")
    assert json.loads(results.read_text())["world_size"] == 2
    logs = "".join(p.read_text() for p in tmp_path.glob("train/multiruns/*/.submitit/*/*_log.err"))
    assert "MEMBER: 2/2" in logs  # Lightning's second rank is SLURM's second task


def _interrupted_run(tmp_path: Path, interrupt, *overrides: str) -> Path:
    """A SLURM run of RESUMABLE (resume=auto) interrupted by ``interrupt(job)`` after step 5 (mid-epoch), next to
    an uninterrupted run of the same command without SLURM; returns the SLURM run's directory, checked equal."""
    reference = tmp_path / "reference"
    local = subprocess.Popen([str(BIN / "mmgpt-train"), *RESUMABLE, f"hydra.run.dir={reference}"],
                             env=_env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = tmp_path / "sweep.log"
    with log.open("w") as f:
        sweep = subprocess.Popen([str(BIN / "mmgpt-train"), "-m", "hydra/launcher=slurm", "resume=auto", *RESUMABLE,
                                  *overrides], env=_env(tmp_path), stdout=f, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 1200
    job = _job_id(log, deadline)
    while newest_step(tmp_path.glob("train/multiruns/*/0/checkpoints/step*.ckpt")) < 5 and time.time() < deadline:
        assert sweep.poll() is None, log.read_text()[-3000:]
        time.sleep(0.5)
    interrupt(job)
    while sweep.poll() is None and time.time() < deadline:
        if "BeginTime" in subprocess.run(["squeue", "-h", "-j", job, "-o", "%r"], capture_output=True,
                                         text=True).stdout:
            _start_now(job)
        time.sleep(1)
    assert sweep.wait(timeout=60) == 0, log.read_text()[-3000:]
    assert local.wait(timeout=900) == 0
    (run_dir,) = tmp_path.glob("train/multiruns/*/0")
    _same_run(reference, run_dir)
    return run_dir


def test_scontrol_requeue_mid_epoch_ends_as_the_uninterrupted_run(tmp_path):
    def requeue(job: str) -> None:
        subprocess.run(["scontrol", "requeue", job], check=True, timeout=30)

    run_dir = _interrupted_run(tmp_path, requeue)
    logs = "".join(p.read_text() for p in run_dir.parent.glob(".submitit/*/*_log.*"))
    assert "SLURM requeued job" in logs and "with the same command plus" not in logs
    assert "resume=auto: continuing from" in logs


def test_time_limit_expiry_is_requeued_and_ends_as_the_uninterrupted_run(tmp_path):
    """submitit requeues the job on the signal before its time limit, as many times as it takes."""
    run_dir = _interrupted_run(tmp_path, lambda job: None, *TIME_LIMIT, "hydra.launcher.max_num_timeout=20")
    logs = "".join(p.read_text() for p in run_dir.parent.glob(".submitit/*/*_log.*"))
    assert "this job is timed-out" in logs and "Requeued job" in logs
    assert "SLURM requeued job" in logs and "with the same command plus" not in logs


def test_retries_used_up_fail_the_sweep_in_one_line(tmp_path):
    proc = _sweep(tmp_path, *LONG_RUN, *TIME_LIMIT, "hydra.launcher.max_num_timeout=0")
    assert proc.returncode == 1, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert re.fullmatch(r"error: 1 of 1 SLURM jobs failed: \d+ \(\w+: .*timed-out too many times.*\) .*", last), last
    job = re.search(r"failed: (\S+)", last).group(1)
    state = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "State", "-j", job], capture_output=True,
                           text=True).stdout.split()
    assert state and state[-1] != "COMPLETED"


def test_a_request_larger_than_the_node_is_refused_in_one_line(tmp_path):
    started = time.time()
    proc = _sweep(tmp_path, "experiment=smoke", "hydra.launcher.cpus_per_task=64", timeout=300)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("error: hydra.launcher.tasks_per_node=1 x cpus_per_task=64")
    assert "more than partition" in proc.stderr and time.time() - started < 300
    assert not list(tmp_path.glob("train/multiruns/*/.submitit/*"))  # nothing was submitted


@pytest.mark.skipif(len(_node_cpus()) < 2, reason="one SLURM node (MMGPT_SLURM_NODES=2 scripts/slurm_up.sh makes two)")
def test_two_node_ddp_job_of_one_task_per_node(tmp_path):
    proc = _sweep(tmp_path, "experiment=smoke", "logger=csv", "trainer=ddp_sim", "trainer.devices=1",
                  "trainer.num_nodes=2")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    (results,) = tmp_path.glob("train/multiruns/*/0/results.json")
    assert json.loads(results.read_text())["world_size"] == 2
    logs = "".join(p.read_text() for p in tmp_path.glob("train/multiruns/*/.submitit/*/*_log.err"))
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in logs  # the second node's task is the second rank
