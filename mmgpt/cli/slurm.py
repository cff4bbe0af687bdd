"""SLURM through hydra-submitit-launcher, as a cluster user meets it (``hydra/launcher=slurm``).

* The job's resources follow the trainer (``conf/hydra/launcher/slurm.yaml``): one task per training process,
  GPUs only on a GPU accelerator, CPUs for the loader's workers, memory per task (:func:`register_resolvers`).
* :class:`WatchedSlurmLauncher` checks the request against the partition before submitting (one line naming the
  limit), prints one line per change of each job's state (id, state, pending reason, log file), cancels the sweep
  when a job waits for something the partition can never give, and ends with a table of results; the command
  exits non-zero when any job failed.
"""

from __future__ import annotations

import logging
import math
import os
import re
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher
from omegaconf import OmegaConf

from mmgpt.errors import UserError

log = logging.getLogger("mmgpt.slurm")

GPU_ACCELERATORS = ("gpu", "cuda")
#: Pending reasons that no amount of waiting resolves: the request exceeds what the partition (or account) allows.
NEVER_STARTS = ("PartitionConfig", "PartitionNodeLimit", "PartitionTimeLimit", "BadConstraints", "InvalidAccount",
                "InvalidQOS", "QOSMaxCpuPerJobLimit", "QOSMaxMemoryPerJob", "AssocMaxCpuPerJobLimit")
#: Pending reasons that end when nodes come back (down, drained or reserved for maintenance): the job waits, and the
#: line says why and how to give up.
NODES_AWAY = ("ReqNodeNotAvail",)
ACTIVE_STATES = ("PENDING", "RUNNING", "COMPLETING", "CONFIGURING", "REQUEUED", "RESIZING", "SUSPENDED")
#: States of a job that has ended for good (a pre-empted or requeued job goes back to PENDING instead).
ENDED_STATES = ("FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE")


# --- resources from the trainer (resolvers used by conf/hydra/launcher/slurm*.yaml) ---------------------------------

def processes_per_node(accelerator: Any, devices: Any) -> int:
    """The training processes Lightning starts per node: one per device (``trainer.devices``).

    ``devices=auto`` means one process on CPU; on a GPU it would mean "every GPU SLURM gives", which the job
    request cannot know, so it must be a number there.
    """
    if isinstance(devices, (list, tuple)) or OmegaConf.is_list(devices):
        return len(devices)
    if str(devices) in ("auto", "-1"):
        if str(accelerator) in GPU_ACCELERATORS:
            raise UserError(f"trainer.devices={devices}: on SLURM a GPU job asks for a number of GPUs per node; "
                            "give it, e.g. trainer.devices=4")
        return 1
    text = str(devices).strip()
    if "," in text:  # Lightning's device list as a string, "0,1" (or "0,"): the devices named
        return len([d for d in text.split(",") if d.strip()])
    try:
        count = int(text)
    except ValueError:
        raise UserError(f"trainer.devices={devices}: expected a number of devices, a list of them or auto") from None
    if count < 1:
        raise UserError(f"trainer.devices={devices}: a SLURM job needs at least one process per node")
    return count


def gpus_per_node(accelerator: Any, devices: Any) -> int | None:
    """GPUs to ask SLURM for: one per process on a GPU accelerator, none (no ``--gpus-per-node``) otherwise."""
    return processes_per_node(accelerator, devices) if str(accelerator) in GPU_ACCELERATORS else None


def cpus_per_task(num_workers: Any) -> int:
    """One CPU for the training process and one per dataloader worker."""
    return 1 + int(num_workers or 0)


def mem_gb(tasks: Any, gb_per_task: Any) -> int:
    """Memory per node in GB: ``gb_per_task`` for each of the node's tasks (SLURM's ``--mem`` is per node)."""
    total = float(tasks) * float(gb_per_task)  # 1.5 GB x 2 tasks is 3 GB; SLURM's --mem takes whole GB here
    return max(1, math.ceil(total))


def register_resolvers() -> None:
    """The ``mmgpt_slurm_*`` resolvers the launcher configs use."""
    for name, fn in (("processes", processes_per_node), ("gpus", gpus_per_node), ("cpus", cpus_per_task),
                     ("mem_gb", mem_gb)):
        OmegaConf.register_new_resolver(f"mmgpt_slurm_{name}", fn, replace=True)


def requeued_slurm_job(exit_code: object = None) -> str | None:
    """This process's SLURM job id if the job has been requeued while it runs, so SLURM starts it again by itself;
    None outside SLURM or otherwise.

    submitit requeues its job on the time-out / pre-emption signal and then exits with status -1 (``exit_code``);
    after ``scontrol requeue`` or a pre-emption (SIGTERM) SLURM's count of the job's restarts is above the count
    it started with (``SLURM_RESTART_COUNT``).
    """
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return None
    if exit_code == -1 and os.environ.get("SUBMITIT_EXECUTOR") == "slurm":
        return job
    try:
        out = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    restarts = re.search(r"\bRestarts=(\d+)", out)
    return job if restarts and int(restarts.group(1)) > int(os.environ.get("SLURM_RESTART_COUNT") or 0) else None


def register_launcher_plugin() -> None:
    """Put ``hydra_plugins.mmgpt_slurm.MmgptSlurmLauncher`` (``hydra/launcher=slurm``) in Hydra's plugin registry.

    Hydra instantiates only launchers its scan of the ``hydra_plugins`` namespace found (``pkgutil.walk_packages``).
    An editable install (``pip install -e .``, as ``make install`` does) maps ``hydra_plugins.mmgpt_slurm`` through
    setuptools' import hook, which that scan does not list: ``mmgpt-train -m hydra/launcher=slurm`` failed with
    "Unknown plugin class" (only ``python -c`` from the repository's root, ``hydra_plugins/`` on its path, found it).
    Called where ``mmgpt.cli.train`` is imported, not from ``mmgpt.cli``: ``hydra_plugins.mmgpt_slurm`` imports
    ``mmgpt.cli``, so registering there imported the plugin module half-initialised (a SLURM job unpickling the
    launcher failed with a circular ImportError).
    """
    from hydra.core.plugins import Plugins

    from hydra_plugins.mmgpt_slurm import MmgptSlurmLauncher

    Plugins.instance().register(MmgptSlurmLauncher)


# --- what the partition offers ----------------------------------------------------------------------------------------

@dataclass
class Partition:
    """A partition's size as ``sinfo`` reports it (the largest node, when they differ)."""

    name: str
    nodes: int
    cpus: int
    mem_mb: int
    gpus: int
    time_limit: str


def read_partition(name: str | None) -> Partition | None:
    """``sinfo``'s view of partition ``name`` (the default partition when None); None when sinfo cannot tell."""
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%P|%D|%c|%m|%G|%l"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    found: Partition | None = None
    for line in out.stdout.splitlines():  # one line per kind of node: a partition of CPU and GPU nodes has two
        try:
            part, nodes, cpus, mem, gres, limit = line.split("|")
            default = part.endswith("*")
            if not ((name is None and default) or part.rstrip("*") == name):
                continue
            gpus = sum(int(g.split("(")[0].split(":")[-1]) for g in gres.split(",") if g.startswith("gpu"))
            kind = Partition(part.rstrip("*"), int(nodes), int(cpus.rstrip("+")), int(mem.rstrip("+")), gpus, limit)
        except ValueError:  # a line sinfo wrote in another form (a GRES without a count): not a size to check
            return None
        if found is None:
            found = kind
        else:  # the partition's nodes in all, and the largest node of each resource
            found = Partition(found.name, found.nodes + kind.nodes, max(found.cpus, kind.cpus),
                              max(found.mem_mb, kind.mem_mb), max(found.gpus, kind.gpus), found.time_limit)
    return found


def check_request(params: dict[str, Any], partition: Partition) -> None:
    """Refuse, in one line naming the limit, a request no node of ``partition`` can hold."""
    tasks, cpus = int(params.get("tasks_per_node") or 1), int(params.get("cpus_per_task") or 1)
    where = f"partition {partition.name} (sinfo: {partition.nodes} node(s) of {partition.cpus} CPUs, " \
            f"{partition.mem_mb} MB, {partition.gpus} GPUs)"
    if int(params.get("nodes") or 1) > partition.nodes:
        raise UserError(f"hydra.launcher.nodes={params['nodes']} (trainer.num_nodes) is more than {where} has")
    if tasks * cpus > partition.cpus:
        raise UserError(f"hydra.launcher.tasks_per_node={tasks} x cpus_per_task={cpus} = {tasks * cpus} CPUs per "
                        f"node is more than {where} has; lower hydra.launcher.cpus_per_task (or data.num_workers)")
    mem = params.get("mem_gb")
    if mem is not None and float(mem) * 1024 > partition.mem_mb:
        raise UserError(f"hydra.launcher.mem_gb={mem} per node is more than {where} has; lower it")
    gpus = int(params.get("gpus_per_node") or 0)
    if gpus > partition.gpus:
        raise UserError(f"hydra.launcher.gpus_per_node={gpus} (trainer.accelerator=gpu, trainer.devices) is more "
                        f"than {where} has; choose a GPU partition (hydra.launcher.partition=...) or trainer=cpu")


# --- the jobs' states while they run ----------------------------------------------------------------------------------

def job_states(job_ids: Sequence[str]) -> dict[str, tuple[str, str]]:
    """job id -> (state, reason): ``squeue`` for jobs in the queue, ``sacct`` for the others."""
    states: dict[str, tuple[str, str]] = {}
    mains = sorted({j.split("_")[0] for j in job_ids})
    try:
        acct = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "JobID,State,Reason", "-j", ",".join(mains)],
                              capture_output=True, text=True, timeout=30).stdout
        queue = subprocess.run(["squeue", "-r", "-h", "-o", "%i|%T|%r", "-j", ",".join(mains)],
                               capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return states
    for line in acct.splitlines() + queue.splitlines():  # the queue's view, when it has one, wins
        fields = line.split("|")
        if len(fields) == 3 and fields[0] in job_ids:
            state, reason = fields[1].split(" ")[0], fields[2]
            states[fields[0]] = (state, "" if reason in ("None", "") else reason)
    return states


class WatchedSlurmLauncher(SlurmLauncher):
    """hydra-submitit-launcher's SLURM launcher that says what the jobs are doing and fails loudly.

    Submits one job per sweep point (a job array) as the plugin does, then follows them instead of blocking in
    silence. Jobs run :meth:`SlurmLauncher.__call__` and are requeued through its ``checkpoint`` as before.
    """

    #: seconds between two looks at the queue (``squeue`` / ``sacct``)
    poll_s: float = 3.0

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        import submitit
        from hydra.core.singleton import Singleton
        from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

        assert self.config is not None
        partition = read_partition(self.params.get("partition"))
        if partition is not None:
            _user_exit(check_request, self.params, partition)
        own = ("submitit_folder", "max_num_timeout")  # the executor's, not the job's
        executor = submitit.AutoExecutor(cluster="slurm", folder=self.params["submitit_folder"],
                                         slurm_max_num_timeout=self.params["max_num_timeout"])
        shared = set(OmegaConf.structured(BaseQueueConf).keys())  # submitit's names without the slurm_ prefix
        executor.update_parameters(**{k if k in shared else f"slurm_{k}": v for k, v in self.params.items()
                                      if k not in own})
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        numbers = list(range(initial_job_idx, initial_job_idx + len(job_overrides)))
        n = len(numbers)
        jobs = executor.map_array(self, [list(o) for o in job_overrides], ["hydra.sweep.dir"] * n, numbers,
                                  [f"job_id_for_{i}" for i in numbers], [Singleton.get_state()] * n)
        overrides = {job.job_id: " ".join(filter_overrides(o)) for job, o in zip(jobs, job_overrides)}
        log.info("submitted %d SLURM job(s) from %s: %s", n, sweep_dir, " ".join(j.job_id for j in jobs))
        self._watch(jobs)
        return self._collect(jobs, overrides)

    def __call__(self, *args: Any, **kwargs: Any) -> JobReturn:
        """Run one sweep point inside its SLURM job. A failed point fails the job: Hydra hands the failure back as
        a value, so the job would end ``COMPLETED`` in ``sacct``; raised here, it ends ``FAILED`` (non-zero exit),
        and submitit still stores the error for :meth:`_collect`."""
        ret = super().__call__(*args, **kwargs)
        if ret.status is JobStatus.FAILED:
            raise ret._return_value
        return ret

    def _watch(self, jobs: list[Any]) -> None:
        """One line per change of a job's (state, reason) until every job has written its result."""
        seen: dict[str, tuple[str, str]] = {}
        waiting, gone, finished = list(jobs), set(), {}
        while waiting:
            states = job_states([j.job_id for j in jobs])
            for job in jobs:
                now = states.get(job.job_id)
                if now is not None and now != seen.get(job.job_id):
                    seen[job.job_id] = now
                    state, reason = now
                    log.info("job %s %s%s  log: %s", job.job_id, state, f" ({reason})" if reason else "",
                             job.paths.stdout)
                    if state == "PENDING" and reason.split(",")[0] in NODES_AWAY:
                        log.warning("job %s waits for nodes that are down, drained or reserved (`sinfo -R`, "
                                    "`scontrol show reservation`); it starts when they return, or scancel %s",
                                    job.job_id, job.job_id)
                    if state == "PENDING" and reason.split(",")[0] in NEVER_STARTS:
                        self._cancel(jobs)
                        raise SystemExit(f"error: SLURM job {job.job_id} can never start: {reason} (the request "
                                         f"exceeds what partition {self.params.get('partition') or '(default)'} "
                                         "allows; see `scontrol show partition`); the sweep's jobs were cancelled")
            # done: a result written and the job left the queue (or not yet, a minute after); given up: a job that
            # ended without a result (cancelled, killed) and still has after another poll
            ended = {j.job_id for j in waiting if _gone(states.get(j.job_id))}
            for job in waiting:
                if job.paths.result_pickle.exists():
                    finished.setdefault(job.job_id, time.monotonic())
            waiting = [j for j in waiting if j.job_id not in ended & gone and not (
                j.job_id in finished and (states.get(j.job_id, ("",))[0] not in ACTIVE_STATES
                                          or time.monotonic() - finished[j.job_id] > 60))]
            gone = ended
            if waiting:
                time.sleep(self.poll_s)

    @staticmethod
    def _cancel(jobs: list[Any]) -> None:
        subprocess.run(["scancel", *sorted({j.job_id.split("_")[0] for j in jobs})], capture_output=True, timeout=30)

    def _collect(self, jobs: list[Any], overrides: dict[str, str]) -> list[JobReturn]:
        """The jobs' returns, a table of them, and a one-line error naming the failed jobs (exit status 1)."""
        states = job_states([j.job_id for j in jobs])
        returns: list[JobReturn] = []
        rows, failed = [], []
        for job in jobs:
            state = states.get(job.job_id, ("UNKNOWN", ""))[0]
            try:
                ret = job.results()[0]
                value = ret.return_value
                returns.append(ret)
                rows.append((job.job_id, state, _fmt(value), overrides[job.job_id], str(job.paths.stdout)))
            except Exception as e:  # noqa: BLE001 - a failed job: its error, one line of it, goes in the table
                reason = _last_line(str(e))
                failed.append(f"{job.job_id} ({state}: {reason})")
                rows.append((job.job_id, state, "failed", overrides[job.job_id], str(job.paths.stdout)))
        log.info("SLURM sweep results (sweep dir %s):\n%s", self.config.hydra.sweep.dir if self.config else "?",
                 _table(("job", "state", "value", "overrides", "log"), rows))
        if failed:
            raise SystemExit(f"error: {len(failed)} of {len(jobs)} SLURM jobs failed: {'; '.join(failed)} "
                             "(their logs are in the table above)")
        return returns


def _user_exit(fn: Any, *args: Any) -> None:
    try:
        fn(*args)
    except UserError as e:
        raise SystemExit(f"error: {e}") from None


def _gone(state: tuple[str, str] | None) -> bool:
    """A job that ended without writing a result (cancelled, killed by the node) will never write one."""
    return state is not None and state[0] in ENDED_STATES


def _last_line(text: str) -> str:
    """The exception line of a job's error: submitit puts the job's traceback between two dashed lines, the log
    paths after it."""
    text = text.split("\n----------------------\nYou can check full logs")[0]
    lines = [line.strip() for line in text.strip().splitlines() if line.strip() and set(line.strip()) != {"-"}]
    return lines[-1][:300] if lines else "no result"


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in [header, *rows])


def job_dirs(sweep_dir: Path) -> list[Path]:
    """The sweep points' run directories (``0``, ``1``...) of a sweep directory."""
    return sorted(p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit())
