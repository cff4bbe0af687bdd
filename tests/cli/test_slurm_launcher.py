"""The SLURM launcher without a cluster: resources derived from the trainer, the partition check, the state lines,
the pending reasons that cancel a sweep, and the failed-jobs line. tests/cli/test_slurm.py runs it on a real SLURM."""

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from mmgpt.cli import slurm
from mmgpt.cli.slurm import Partition, WatchedSlurmLauncher, check_request
from mmgpt.config import CONFIG_DIR
from mmgpt.errors import UserError


def _launcher(*overrides: str):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
    return cfg.hydra.launcher


@pytest.mark.parametrize(("overrides", "expected"), [
    # (nodes, tasks per node, GPUs per node, CPUs per task, mem_gb)
    (["hydra/launcher=slurm", "experiment=smoke"], (1, 1, None, 1, 4)),
    (["hydra/launcher=slurm", "trainer=ddp_sim"], (1, 2, None, 1, 8)),  # 2 CPU processes: 2 tasks, no GPU
    (["hydra/launcher=slurm", "trainer=gpu"], (1, 1, 1, 1, 4)),
    (["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2"], (2, 4, 4, 1, 16)),
    (["hydra/launcher=slurm", "data=hateful_memes"], (1, 1, None, 3, 4)),  # 2 loader workers
    (["hydra/launcher=slurm_cpu", "trainer=gpu"], (1, 1, None, 1, 2)),
    (["hydra/launcher=slurm", "hydra.launcher.cpus_per_task=6", "hydra.launcher.mem_gb=20"], (1, 1, None, 6, 20)),
])
def test_the_request_follows_the_trainer(overrides, expected):
    launcher = _launcher(*overrides)
    got = (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node, launcher.cpus_per_task, launcher.mem_gb)
    assert got == expected
    assert launcher._target_ == "hydra_plugins.mmgpt_slurm.MmgptSlurmLauncher"


def test_gpu_ddp_with_devices_auto_asks_for_a_number():
    launcher = _launcher("hydra/launcher=slurm", "trainer=ddp")
    with pytest.raises(Exception, match=r"trainer.devices=auto: on SLURM a GPU job asks for a number of GPUs"):
        OmegaConf.to_container(launcher, resolve=True)


@pytest.mark.parametrize(("devices", "processes"), [(2, 2), ("2", 2), ("0,1", 2), ("1,", 1), ([0, 3], 2)])
def test_processes_per_node_reads_every_form_of_trainer_devices(devices, processes):
    assert slurm.processes_per_node("cpu", devices) == processes


@pytest.mark.parametrize("devices", ["two", 0])
def test_a_device_count_slurm_cannot_run_is_one_line(devices):
    with pytest.raises(UserError, match=f"trainer.devices={devices}"):
        slurm.processes_per_node("cpu", devices)


def test_memory_per_node_keeps_fractions_of_a_gb():
    assert (slurm.mem_gb(2, 1.5), slurm.mem_gb(1, 1.5), slurm.mem_gb(4, 8)) == (3, 2, 32)


SMALL = Partition(name="cpu", nodes=1, cpus=2, mem_mb=20000, gpus=0, time_limit="infinite")


@pytest.mark.parametrize(("params", "message"), [
    ({"tasks_per_node": 1, "cpus_per_task": 8}, r"cpus_per_task=8 = 8 CPUs per node is more than partition cpu"),
    ({"tasks_per_node": 2, "cpus_per_task": 2}, r"tasks_per_node=2 x cpus_per_task=2 = 4 CPUs"),
    ({"mem_gb": 64}, r"mem_gb=64 per node is more than partition cpu \(sinfo: 1 node\(s\) of 2 CPUs, 20000 MB"),
    ({"gpus_per_node": 1}, r"gpus_per_node=1 .* choose a GPU partition"),
    ({"nodes": 2}, r"nodes=2 \(trainer.num_nodes\) is more than partition cpu"),
])
def test_a_request_the_partition_cannot_hold_is_refused_in_one_line(params, message):
    with pytest.raises(UserError, match=message) as e:
        check_request({"nodes": 1, "tasks_per_node": 1, "cpus_per_task": 1, "mem_gb": 4, **params}, SMALL)
    assert "\n" not in str(e.value)


def test_a_request_that_fits_passes():
    check_request({"nodes": 1, "tasks_per_node": 2, "cpus_per_task": 1, "mem_gb": 8, "gpus_per_node": None}, SMALL)


def test_sinfo_lines_are_read(monkeypatch):
    out = "cpu*|1|2|21000|(null)|infinite\ngpu|4|64|512000+|gpu:8(S:0-1),gpu:a100:8|2-00:00:00\n"
    monkeypatch.setattr(slurm.subprocess, "run", lambda *a, **k: type("P", (), {"stdout": out})())
    assert slurm.read_partition(None) == Partition("cpu", 1, 2, 21000, 0, "infinite")
    assert slurm.read_partition("gpu").gpus == 16 and slurm.read_partition("gpu").mem_mb == 512000


def test_a_partition_of_two_kinds_of_node_is_read_whole(monkeypatch):
    """sinfo writes one line per kind of node: only the first was read, so a partition whose first line is its CPU
    nodes refused a GPU job ("gpus_per_node=4 is more than partition mixed has") that its GPU nodes can hold."""
    out = "mixed|6|32|128000|(null)|1-00:00:00\nmixed|2|64|512000|gpu:4|1-00:00:00\nother|1|2|100|gpu|infinite\n"
    monkeypatch.setattr(slurm.subprocess, "run", lambda *a, **k: type("P", (), {"stdout": out})())
    mixed = slurm.read_partition("mixed")
    assert mixed == Partition("mixed", 8, 64, 512000, 4, "1-00:00:00")
    check_request({"nodes": 2, "tasks_per_node": 4, "cpus_per_task": 8, "mem_gb": 64, "gpus_per_node": 4}, mixed)
    assert slurm.read_partition("other") is None  # a GRES without a count: not checked, rather than a traceback


class FakeJob:
    def __init__(self, job_id: str, folder: Path, result: object = 0.5) -> None:
        self.job_id = job_id
        self.paths = type("Paths", (), {"stdout": folder / f"{job_id}_0_log.out",
                                        "result_pickle": folder / f"{job_id}_result.pkl"})()
        self._result = result

    def results(self):
        if isinstance(self._result, Exception):
            raise self._result
        return [type("Ret", (), {"return_value": self._result})()]


def replay(monkeypatch, jobs: list[FakeJob], timeline: list[dict]) -> None:
    """``job_states`` answers each poll with the next entry of ``timeline`` (then the last one again); a job reported
    COMPLETED has written its result."""
    steps, last = iter(timeline), {}

    def states(ids):
        last.update(next(steps, last))
        for job in jobs:
            if last.get(job.job_id, ("",))[0] == "COMPLETED":
                job.paths.result_pickle.touch()
        return dict(last)

    monkeypatch.setattr(slurm, "job_states", states)


def test_state_changes_are_printed_once_each_and_a_failed_job_fails_the_sweep(tmp_path, monkeypatch, caplog):
    error = ("Job (task=0) failed during processing with trace:\n----------------------\nTraceback (most recent "
             "call last):\n  File x\nValueError: boom\n\n----------------------\nYou can check full logs with "
             "'job.stderr(0)' and 'job.stdout(0)'or at paths:\n  - /logs/7_1_0_log.err\n  - /logs/7_1_0_log.out")
    jobs = [FakeJob("7_0", tmp_path), FakeJob("7_1", tmp_path, RuntimeError(error))]  # as submitit words it
    replay(monkeypatch, jobs, [
        {"7_0": ("PENDING", "Resources"), "7_1": ("PENDING", "Priority")},
        {"7_0": ("PENDING", "Resources"), "7_1": ("PENDING", "Priority")},  # no change: no line
        {"7_0": ("RUNNING", ""), "7_1": ("RUNNING", "")},
        {"7_0": ("COMPLETED", ""), "7_1": ("FAILED", "NonZeroExitCode")},
    ])
    launcher = WatchedSlurmLauncher(partition=None)
    launcher.poll_s = 0
    with caplog.at_level(logging.INFO, logger="mmgpt.slurm"):
        launcher._watch(jobs)
        with pytest.raises(SystemExit, match=r"^error: 1 of 2 SLURM jobs failed: 7_1 \(FAILED: ValueError: boom\)"):
            launcher._collect(jobs, {"7_0": "model/fusion=early", "7_1": "model/fusion=late"})
    lines = [r.getMessage() for r in caplog.records]
    assert sum("job 7_0 PENDING (Resources)  log: " in line for line in lines) == 1
    assert any(line.startswith("job 7_1 FAILED (NonZeroExitCode)") for line in lines)
    table = next(line for line in lines if "SLURM sweep results" in line)
    assert "7_0  COMPLETED  0.5000  model/fusion=early" in table
    assert "7_1  FAILED     failed  model/fusion=late" in table


def test_a_job_that_can_never_start_cancels_the_sweep(tmp_path, monkeypatch):
    jobs = [FakeJob("9_0", tmp_path), FakeJob("9_1", tmp_path)]
    monkeypatch.setattr(slurm, "job_states", lambda ids: {"9_0": ("PENDING", "PartitionConfig"),
                                                         "9_1": ("PENDING", "Priority")})
    cancelled = []
    monkeypatch.setattr(WatchedSlurmLauncher, "_cancel", staticmethod(lambda js: cancelled.extend(js)))
    with pytest.raises(SystemExit, match=r"^error: SLURM job 9_0 can never start: PartitionConfig .*cancelled$"):
        WatchedSlurmLauncher(partition="cpu")._watch(jobs)
    assert cancelled == jobs


def test_nodes_down_or_reserved_make_a_job_wait_not_fail(tmp_path, monkeypatch, caplog):
    """ReqNodeNotAvail (nodes down, drained, or reserved for maintenance) ends when the nodes return."""
    jobs = [FakeJob("8_0", tmp_path)]
    replay(monkeypatch, jobs, [{"8_0": ("PENDING", "ReqNodeNotAvail, UnavailableNodes:node[1-2]")},
                               {"8_0": ("RUNNING", "")}, {"8_0": ("COMPLETED", "")}])
    monkeypatch.setattr(WatchedSlurmLauncher, "_cancel", staticmethod(lambda js: pytest.fail("cancelled")))
    launcher = WatchedSlurmLauncher(partition="cpu")
    launcher.poll_s = 0
    with caplog.at_level(logging.INFO, logger="mmgpt.slurm"):
        launcher._watch(jobs)
    waits = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(waits) == 1 and "down, drained or reserved" in waits[0] and "scancel 8_0" in waits[0]


def test_not_a_slurm_job_is_never_requeued(monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    assert slurm.requeued_slurm_job() is None


def test_submitits_exit_after_requeueing_is_a_requeue(monkeypatch):
    """submitit exits with -1 right after `scontrol requeue` (whose SIGTERM may cut an scontrol query short)."""
    monkeypatch.setenv("SLURM_JOB_ID", "41")
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    assert slurm.requeued_slurm_job(-1) == "41"


def test_a_failed_sweep_point_fails_its_job(monkeypatch):
    """Hydra returns a job's exception as a value; inside a SLURM job it is raised, so the job ends FAILED."""
    from hydra.core.utils import JobReturn, JobStatus

    failed, done = JobReturn(), JobReturn()
    failed.status, failed._return_value = JobStatus.FAILED, ValueError("bad data")
    done.status, done._return_value = JobStatus.COMPLETED, 0.5
    # the plugin's class it derives from (Hydra's plugin scan may have imported the plugin module again since)
    monkeypatch.setattr(WatchedSlurmLauncher.__bases__[0], "__call__", lambda self, *a, **k: k["ret"])
    assert WatchedSlurmLauncher()(ret=done) is done
    with pytest.raises(ValueError, match="bad data"):
        WatchedSlurmLauncher()(ret=failed)


def printed_outside_the_repository(code: str, cwd: Path) -> str:
    """What ``python -c code`` prints run from ``cwd``, without PYTHONPATH: as an installed mmgpt runs elsewhere."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.strip()


def test_hydra_knows_the_launcher_plugin_outside_the_repository(tmp_path):
    """An editable install maps hydra_plugins.mmgpt_slurm through setuptools' import hook, which Hydra's scan of the
    hydra_plugins namespace does not list: away from the repository's root, `mmgpt-train -m hydra/launcher=slurm`
    failed with "Unknown plugin class" before mmgpt.cli.train registered it."""
    code = ("import mmgpt.cli.train; from hydra.core.plugins import Plugins; "
            "print('hydra_plugins.mmgpt_slurm.MmgptSlurmLauncher' in Plugins.instance().class_name_to_class)")
    assert printed_outside_the_repository(code, tmp_path) == "True"


def test_the_launcher_plugin_imports_first_as_a_slurm_job_unpickling_it_does(tmp_path):
    """A SLURM job unpickles the launcher, so hydra_plugins.mmgpt_slurm is imported before mmgpt.cli.train: no
    circular import (registering the plugin from mmgpt.cli itself made one)."""
    code = ("import hydra_plugins.mmgpt_slurm as p, mmgpt.cli.train; from hydra.core.plugins import Plugins; "
            "print(p.MmgptSlurmLauncher.__name__ in str(Plugins.instance().class_name_to_class))")
    assert printed_outside_the_repository(code, tmp_path) == "True"
