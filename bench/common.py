"""Shared helpers for the benchmark scripts: interleaved timing, peak memory in a fresh process, machine facts."""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, str]:
    """What the figures were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return {
        "cpu": cpu,
        "cpu_threads": str(torch.get_num_threads()),
        "gpu": gpu,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "load_avg_1m": f"{os.getloadavg()[0]:.2f}",
    }


def interleaved(fns: dict[str, Callable[[], object]], repeats: int = 5, warmup: int = 1) -> dict[str, float]:
    """Median seconds per call of each function, measured in alternation so machine noise hits all alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    """Resident set size now (Linux), from /proc/self/statm."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_memory_during(fn: Callable[[], object]) -> float:
    """Peak extra memory (MB) while ``fn`` runs: the CUDA allocator's peak on GPU, else sampled CPU RSS growth.

    On CPU a thread samples the resident set every 0.5 ms; large tensors are mmap-backed and returned to the
    system when freed, so the sampled peak follows the live tensors. Run it in a fresh process per case.
    """
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    import threading

    base = current_rss_mb()
    peak = base
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, current_rss_mb())
            time.sleep(0.0005)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        fn()
    finally:
        done.set()
        t.join()
    return max(0.0, max(peak, current_rss_mb()) - base)


def run_child(module: str, args: list[str]) -> dict:
    """Run ``python -m module args`` in a fresh process and parse the JSON it prints last (peak memory per case)."""
    out = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def save(name: str, data: dict, markdown: str) -> None:
    """Write ``results/<name>.json`` and ``results/<name>.md`` (BENCHMARKS.md is assembled from the latter)."""
    RESULTS_DIR.mkdir(exist_ok=True)
    (RESULTS_DIR / f"{name}.json").write_text(json.dumps({"machine": machine(), **data}, indent=2))
    (RESULTS_DIR / f"{name}.md").write_text(markdown.rstrip() + "\n")
    print(markdown)


def compose_train_config(overrides: list[str]):
    """The composed ``conf/train.yaml`` with overrides (outputs under /tmp; no Hydra app needed)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    from mmgpt.config import CONFIG_DIR, register_schemas

    register_schemas()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = "/tmp/mmgpt-bench"
    return cfg


def build_classifier(overrides: list[str]):
    """(LightningModule, datamodule) for a composed config; the datamodule is set up."""
    from hydra.utils import instantiate

    from mmgpt.cli.train import build_module

    cfg = compose_train_config(overrides)
    dm = instantiate(cfg.data, _convert_="all")
    dm.setup("fit")
    return build_module(cfg, dm), dm, cfg
