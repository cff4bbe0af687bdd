"""The cost of every configuration of a comparison at equal footing, measured once its runs are done.

Every configuration's network is rebuilt from one of its runs' ``config.yaml`` (same architecture, fresh weights:
cost does not depend on the trained values) and measured in this one process on the same batch of the
configured data: parameters, FLOPs per sample (forward and training step, :func:`mmgpt.cli.cost.network_cost`),
peak tensor memory of a training step, forward latency at batch 1 and at batch 64, and training throughput.
Latency and throughput are measured in interleaved rounds across the configurations, so a change of machine load
during the measurement touches all of them alike. The result is ``cost.json`` in the comparison directory; the
report's cost table and Pareto plots are built from it (``mmgpt-compare report=DIR`` does not measure again).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import Tensor, nn

from mmgpt.batch import MultimodalBatch
from mmgpt.cli.common import write_json
from mmgpt.cli.cost import first_samples, interleaved_speed, network_cost, step_memory
from mmgpt.report import varied_by_design
from mmgpt.report.runs import COST, MATCHING, load_runs
from mmgpt.report.summary import group_runs
from mmgpt.report.tuning import read_tuning
from mmgpt.stored_config import run_config
from mmgpt.sweep_folder import read_matching
from mmgpt.training.safe_load import safe_data_config

log = logging.getLogger("mmgpt.compare")

#: The larger batch of the latency figure and of the training throughput.
LARGE_BATCH = 64


def head_loss(out: Any, batch: MultimodalBatch) -> Tensor:
    """The training step measured: the head's output against the batch's labels, whatever the task: cross-entropy
    for class indices (classify, binary), squared error for float targets (regression's (B,), multi-label's
    multi-hot (B, C)). Which loss a task trains with changes a few element-wise operations on (B, C), not the cost
    of the network."""
    if not batch.labels.is_floating_point():
        return nn.functional.cross_entropy(out.logits, batch.labels)
    return nn.functional.mse_loss(out.logits.float(), batch.labels.reshape(out.logits.shape).float())


def _batch(data: dict[str, Any], size: int, device: torch.device) -> MultimodalBatch:
    """One training batch of up to ``size`` samples of the data config ``data`` (augmentation as in training)."""
    data = {**data, "batch_size": size}
    datamodule = instantiate(data, _convert_="all")
    datamodule.prepare_data()
    datamodule.setup("fit")
    return next(iter(datamodule.train_dataloader())).to(device), datamodule


def measure_costs(sweep_dir: Path, rounds: int = 5) -> Path | None:
    """Measure every configuration of the comparison in ``sweep_dir`` and write ``cost.json`` there; None (and
    a warning) when no run has the ``config.yaml`` to rebuild its network from."""
    groups = group_runs(load_runs(sweep_dir),
                        ignore=varied_by_design(read_tuning(sweep_dir), read_matching(sweep_dir / MATCHING)))
    if not groups:
        raise FileNotFoundError(f"{sweep_dir}: no finished run to measure")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    # a run's config.yaml is data: read unresolved and checked (no interpolation), its data config checked below
    saved = {name: (runs[0].run_dir, run_config(runs[0].run_dir)) for name, runs in groups.items()}
    configs = {name: OmegaConf.create(cfg) for name, (_, cfg) in saved.items() if cfg is not None}
    if len(configs) < len(groups):
        log.warning("no config.yaml in the runs of %s: their cost is not measured",
                    ", ".join(sorted(set(groups) - set(configs))))
    if not configs:
        return None
    run_dir, first = next((d, cfg) for d, cfg in saved.values() if cfg is not None)
    data = safe_data_config(first.get("data"), run_dir / "config.yaml", run_dir, where="data")
    batch, datamodule = _batch(data, LARGE_BATCH, device)
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    nets, out = {}, {}
    from mmgpt.cli.train import network_spec
    from mmgpt.registry import build_network

    for name, cfg in configs.items():
        torch.manual_seed(0)
        net = build_network(network_spec(cfg, datamodule), datamodule.num_classes).to(device)
        cost = network_cost(net, batch, head_loss)
        out[name] = {"params": cost.params, "forward_flops": cost.forward_flops,
                     "train_step_flops": cost.train_step_flops,
                     "peak_step_memory_mb": step_memory(net, batch, head_loss) / 2**20}
        nets[name] = net
    speed = interleaved_speed(nets, batch, head_loss, rounds=rounds, large_batch=batch.batch_size)
    for name, s in speed.items():
        out[name].update(latency_b1_ms=s.latency_b1_ms, latency_batch_ms=s.latency_batch_ms,
                         train_samples_per_sec=s.train_samples_per_sec)
    path = sweep_dir / COST
    write_json(path, {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)",
        "threads": torch.get_num_threads(),
        "batch": batch.batch_size,
        "rounds": rounds,
        "memory_kind": "cuda_max_memory_allocated" if device.type == "cuda" else "live_tensor_bytes",
        "load_average_before": load_before[0],
        "load_average_after": os.getloadavg()[0],
        "seconds": time.perf_counter() - t0,
        "configurations": out,
    })
    log.info("cost of %d configurations measured in %.0f s: %s", len(out), time.perf_counter() - t0, path)
    return path


__all__ = ["LARGE_BATCH", "first_samples", "head_loss", "measure_costs"]
