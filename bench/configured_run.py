"""The run users launch vs bare Lightning vs a hand-written loop doing the same work, per fusion, interleaved.

    python -m bench.configured_run [--fusions early late cross_attention] [--steps 30] [--rounds 10] [--tag after]

Three loops over the same model, the same datamodule (``data=synthetic``, batch 64, loaded in the main process as
the default config does) and the same initial weights, alternated round by round in one process:

- **plain**: a hand-written PyTorch loop doing what a default run does per step: the module's objectives and
  training metrics, backward, clipping at ``trainer.gradient_clip_val`` (keeping the norm it computes), the
  non-finite check on that norm (found_inf on a fused optimizer, read at logging intervals), the optimizer and
  schedule steps, the step values written to CSV and TensorBoard every ``trainer.log_every_n_steps`` steps and a
  progress line every 50 steps.
- **bare**: ``pl.Trainer`` with logging, checkpointing, progress and every callback off.
- **configured**: the Trainer ``mmgpt-train`` builds (``build_callbacks``, ``build_loggers`` and ``cfg.trainer`` of
  :mod:`mmgpt.cli.train`: the callbacks of ``conf/callbacks/default.yaml``, CSV + TensorBoard, progress lines).

Each loop is timed from the start of step ``--warmup`` to the end of the last step, so set-up, the sanity check,
the end-of-epoch validation and checkpoint are outside the window (those are not per-step costs). Ratios are taken
per round (configured / plain, bare / plain) and the median and the range over rounds are reported.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import logging
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
import torch

from bench.common import RESULTS_DIR, build_classifier, save
from mmgpt import registry
from mmgpt.config import resolved
from mmgpt.training.optim import param_groups

log = logging.getLogger("bench.configured_run")
PROGRESS_EVERY = 50  # LineProgressBar's default (conf/callbacks/default.yaml progress)


def _clock() -> tuple[float, float]:
    """(wall, this process's CPU time): CPU time hardly moves with other jobs' load on a shared machine."""
    return time.perf_counter(), time.process_time()


class _Window(pl.Callback):
    """Wall and CPU time from the start of training step ``warmup`` to the end of the last training step."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.t0 = self.t1 = (0.0, 0.0)
        self.steps = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.warmup:
            self.t0 = _clock()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.t1 = _clock()
        self.steps = batch_idx + 1 - self.warmup

    @property
    def per_step(self) -> tuple[float, float]:
        return tuple((b - a) / self.steps for a, b in zip(self.t0, self.t1))


def plain_loop(module, dm, cfg, out_dir: Path, warmup: int) -> tuple[float, float]:
    """A default run's per-step work, written by hand. Returns (wall, CPU) seconds per step after ``warmup``."""
    from torch.utils.tensorboard import SummaryWriter

    net = module.net
    module.train()
    spec = dict(module.hparams.optimizer)  # the module's optimizer and schedule, as configure_optimizers builds them
    wd = spec.pop("weight_decay", 0.0)
    optimizer = registry.build(spec, "model.module.optimizer", "optimizer", params=param_groups(module, wd))
    fused = all(g.get("fused") for g in optimizer.param_groups)
    loader = dm.train_dataloader()
    scheduler = registry.build(module.hparams.scheduler, "model.module.scheduler", "scheduler", optimizer=optimizer,
                               total_steps=len(loader))
    clip, every = float(cfg.trainer.gradient_clip_val), int(cfg.trainer.log_every_n_steps)
    writer = SummaryWriter(str(out_dir / "tensorboard"))
    rows = (out_dir / "metrics.csv").open("w", newline="")
    table = csv.writer(rows)
    bad_steps: list[tuple[int, torch.Tensor]] = []
    t0 = (0.0, 0.0)
    it = iter(loader)
    nxt = next(it, None)  # fetch one ahead, as Lightning's data fetcher does
    step = 0
    while nxt is not None:
        batch, nxt = nxt, next(it, None)
        if step == warmup:
            t0 = _clock()
        loss = 0.0
        values = {}
        for name, objective in module.objectives.items():  # the module's own objectives and training metrics
            out = objective(net, batch)
            loss = loss + objective.weight * out.loss
            objective.update(module.train_metrics[name], out)
            values.update({f"train/{k}": v.detach() for k, v in out.values.items()})
        values["train/loss"] = loss.detach()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
        bad = ~torch.isfinite(norm)
        if fused:
            optimizer.found_inf = bad.float()  # the fused kernel drops a non-finite update on the device
        bad_steps.append((step, bad))
        optimizer.step()
        scheduler.step()
        step += 1
        if step % every == 0:  # the logging interval: the one host sync of the interval
            flags = torch.stack([b for _, b in bad_steps]).tolist()
            if any(flags):
                raise FloatingPointError(f"non-finite gradients at step {bad_steps[flags.index(True)][0]}")
            bad_steps.clear()
            scalars = {k: float(v) for k, v in values.items()}
            for k, v in scalars.items():
                writer.add_scalar(k, v, step)
            table.writerow([step, *scalars.values()])
        if step % PROGRESS_EVERY == 0:
            log.info("step %d loss %.4f", step, float(values["train/loss"]))
    t1 = _clock()
    epoch = {f"train/{k}": float(m.compute()) for ms in module.train_metrics.values() for k, m in ms.items()}
    table.writerow([step, *epoch.values()])
    rows.close()
    writer.close()
    return tuple((b - a) / (step - warmup) for a, b in zip(t0, t1))


def bare_lightning(module, dm, cfg, out_dir: Path, warmup: int) -> tuple[float, float]:
    window = _Window(warmup)
    trainer = pl.Trainer(
        accelerator=cfg.trainer.accelerator, devices=1, max_epochs=1, precision=cfg.trainer.precision,
        gradient_clip_val=cfg.trainer.gradient_clip_val, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
        callbacks=[window], default_root_dir=str(out_dir),
    )
    trainer.fit(module, datamodule=dm)
    return window.per_step


def configured_lightning(module, dm, cfg, out_dir: Path, warmup: int) -> tuple[float, float]:
    """The Trainer as ``mmgpt.cli.train.train`` builds it (its callbacks, loggers and ``cfg.trainer``)."""
    from hydra.utils import instantiate as build

    from mmgpt.cli.train import build_callbacks, build_loggers

    cfg = copy.deepcopy(cfg)
    cfg.paths.output_dir = str(out_dir)
    window = _Window(warmup)
    loggers = build_loggers(cfg, None)
    trainer = build(cfg.trainer, callbacks=[*build_callbacks(cfg), window], logger=loggers or False)
    for lg in loggers:
        lg.log_hyperparams(resolved(cfg))
    trainer.fit(module, datamodule=dm)
    return window.per_step


SYNCS = """### Host-device syncs per training step that remain (default config, on a GPU)

mmgpt's own per-step code reads nothing back to the host (`tests/training/test_no_sync.py`: on CPU every
`.item()`/`bool()`/`float()`/`.tolist()`/`.cpu()` during a training step is recorded and none may come from
mmgpt's code; on a GPU the guard, clipping and the fused optimizer step run under
`torch.cuda.set_sync_debug_mode("error")`, a `gpu` test not yet run on a GPU). The non-finite flags, the
progress bar's values and the logged values are read every `trainer.log_every_n_steps` steps (10), at epoch end
and before checkpoints. What remains per step, found by reading Lightning 2.6 and torchmetrics 1.9 (not yet
measured on a GPU):

- **torchmetrics training metrics** (`train/acc`, `train/f1` of the classify objective): their update counts
  classes with `torch.bincount`, which on CUDA reads the input's maximum back (one sync per metric per step)
  unless `torch.use_deterministic_algorithms(True)` (torchmetrics then counts without it). Not fixed: computing
  training accuracy without torchmetrics, or updating training metrics at the logging interval only, would.
  (Their argument checks, which read tensors back on every update, are off: `validate_args=False`.)
- **Under DDP**: Lightning broadcasts a SIGTERM flag from rank 0 every step and reads it (`.item()`,
  `_TrainingEpochLoop._broadcast_sigterm_tensor`), not configurable; and the per-step `train/loss` is logged with
  `sync_dist=True`, an all-reduce per step (a collective on the device, no host read with NCCL).
- Avoided by configuration: Lightning's rich progress bar reads its values (`.item()`) every step; mmgpt's
  (`IntervalRichProgressBar`) and the plain-line bar (non-terminal runs) read them at the logging interval only.
"""

LOOPS = {"plain": plain_loop, "bare": bare_lightning, "configured": configured_lightning}


def measure(fusion: str, steps: int, rounds: int, warmup: int) -> dict[str, list[float]]:
    torch.manual_seed(0)
    module, dm, cfg = build_classifier([f"model/fusion={fusion}", f"data.num_train={steps * 64}", "data.num_val=64",
                                        "data.num_test=64", "trainer.max_epochs=1"])
    init = copy.deepcopy(module.state_dict())
    times: dict[str, list[float]] = {f"{k}_{c}": [] for k in LOOPS for c in ("wall", "cpu")}
    with tempfile.TemporaryDirectory(prefix="mmgpt-bench-") as tmp:
        for r in range(rounds + 1):  # round 0 warms up and is dropped
            for name, loop in LOOPS.items():
                m = copy.deepcopy(module)
                m.load_state_dict(init)
                dm.trainer = None
                wall, cpu = loop(m, dm, cfg, Path(tmp) / f"{fusion}-{name}-{r}", warmup)
                if r:
                    times[f"{name}_wall"].append(wall)
                    times[f"{name}_cpu"].append(cpu)
            if r:
                log.warning("%s round %d: %s", fusion, r, {k: f"{v[-1] * 1e3:.1f}ms" for k, v in times.items()})
    return times


def _git_commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                         cwd=Path(__file__).parent)
    dirty = subprocess.run(["git", "status", "--porcelain", "-uno"], capture_output=True, text=True,
                           cwd=Path(__file__).parent)
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def summary(times: dict[str, list[float]]) -> dict[str, float]:
    """Median ms/step per loop and clock; median, min and max over rounds of the per-round ratios to plain."""
    out = {f"{k}_ms": statistics.median(v) * 1e3 for k, v in times.items()}
    for k in ("bare", "configured"):
        for c in ("wall", "cpu"):
            ratios = [a / b for a, b in zip(times[f"{k}_{c}"], times[f"plain_{c}"])]
            out[f"{k}_{c}_ratio"] = statistics.median(ratios)
            out[f"{k}_{c}_ratio_min"], out[f"{k}_{c}_ratio_max"] = min(ratios), max(ratios)
    return out


def table(results: dict[str, dict], title: str) -> list[str]:
    lines = [title, "", "| fusion | clock | plain ms/step | bare ms/step | configured ms/step | bare / plain | "
             "configured / plain |", "|---|---|---:|---:|---:|---:|---:|"]
    for fusion, r in results.items():
        s = r["summary"]
        for c in ("cpu", "wall"):
            lines.append(
                f"| {fusion} | {c} | {s[f'plain_{c}_ms']:.1f} | {s[f'bare_{c}_ms']:.1f} | "
                f"{s[f'configured_{c}_ms']:.1f} | "
                f"{s[f'bare_{c}_ratio']:.3f}x ({s[f'bare_{c}_ratio_min']:.2f}-{s[f'bare_{c}_ratio_max']:.2f}) | "
                f"**{s[f'configured_{c}_ratio']:.3f}x** ({s[f'configured_{c}_ratio_min']:.2f}-"
                f"{s[f'configured_{c}_ratio_max']:.2f}) |")
    return lines


def render(data: dict, name: str) -> str:
    """The BENCHMARKS.md section of a results file's data (with the ``before`` results beside it, if saved)."""
    md = [
        "## The configured run vs bare Lightning vs a hand-written loop",
        "",
        f"Default model and data (batch 64, `data.num_workers=0`), {data['threads']} torch thread(s), {data['steps']} "
        f"training steps per loop per round (the first {data['warmup']} untimed), median over {data['rounds']} "
        f"interleaved rounds, ratios per round with their range over rounds in brackets. Command: "
        f"`{data['command']}`. **plain**: a hand-written loop doing a default run's per-step work (objectives, "
        "training metrics, clipping, non-finite check, schedule, the step values to CSV + TensorBoard every "
        "`log_every_n_steps`, a progress line every 50 steps); **bare**: `pl.Trainer` with logging, checkpoints, "
        "progress and callbacks off; **configured**: the Trainer `mmgpt-train` builds (`build_callbacks`, "
        "`build_loggers` and `cfg.trainer` as in `mmgpt.cli.train`: default callbacks, CSV + TensorBoard, progress). "
        "The machine (2 cores) was shared with other jobs (load average 5-17 during these runs): interleaving the "
        "three loops round by round cancels slow drifts of that load, and the **cpu** rows (this process's CPU "
        "time, which other processes' load changes far less than wall time) are the ones to judge by; the **wall** "
        "rows show what the load left in wall-clock time.",
        "",
    ]
    fusions = {k: v for k, v in data.items() if isinstance(v, dict) and "summary" in v}
    before = RESULTS_DIR / "configured_run_before.json"
    if name == "configured_run" and before.exists():
        old = json.loads(before.read_text())
        md += table({k: v for k, v in old.items() if isinstance(v, dict) and "summary" in v},
                    f"**Before** (commit {old.get('commit', '?')}; `{old.get('command', '?')}`):")
        md += [""] + table(fusions, f"**After** (commit {data['commit']}):")
    else:
        md += table(fusions, f"Commit {data['commit']}:")
    return "\n".join([*md, "", SYNCS])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fusions", nargs="+", default=["early", "late", "cross_attention"])
    p.add_argument("--steps", type=int, default=30, help="training steps per loop per round")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2, help="steps at the start of each loop left out of the timing")
    p.add_argument("--tag", default="", help="suffix of the results file (e.g. 'before')")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (1: on a shared machine, several multi-threaded processes stall each other)")
    p.add_argument("--render", action="store_true", help="only rewrite the .md section from the saved .json")
    args = p.parse_args()
    name = "configured_run" + (f"_{args.tag}" if args.tag else "")
    if args.render:
        md = render(json.loads((RESULTS_DIR / f"{name}.json").read_text()), name)
        (RESULTS_DIR / f"{name}.md").write_text(md.rstrip() + "\n")
        print(md)
        return
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("mmgpt").setLevel(logging.WARNING)
    results = {}
    for fusion in args.fusions:
        times = measure(fusion, args.steps, args.rounds, args.warmup)
        results[fusion] = {"seconds_per_step": times, "summary": summary(times)}
    cmd = (f"python -m bench.configured_run --fusions {' '.join(args.fusions)} --steps {args.steps} "
           f"--rounds {args.rounds} --threads {args.threads}" + (f" --tag {args.tag}" if args.tag else ""))
    data = {**results, "command": cmd, "commit": _git_commit(), "steps": args.steps, "rounds": args.rounds,
            "warmup": args.warmup, "threads": args.threads}
    save(name, data, render(data, name))


if __name__ == "__main__":
    main()
