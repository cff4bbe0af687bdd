"""Benchmark: samples/s the manifest dataloader delivers vs samples/s the model trains, per epoch.

Writes (or reuses) a manifest folder of PNG + WAV files, runs the validation/decoding pass cold (empty cache) and
warm (on-disk cache), iterates the training loader for a few epochs on its own, then trains the model on the same
datamodule and reads the training rate from :class:`mmgpt.callbacks.Throughput`. Appends a report to
``bench/RESULTS-dataloader.md``.

    python bench/dataloader.py                       # exports 4000/500/500 synthetic samples to a temp folder
    python bench/dataloader.py --root DIR --fusion late --train-batches 30
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import open_dict

from datamodules.manifest.export import export_synthetic
from mmgpt.callbacks import Throughput
from mmgpt.cli.train import build_module
from mmgpt.config import CONFIG_DIR, register_schemas

RESULTS = Path(__file__).with_name("RESULTS-dataloader.md")


def loader_rate(dm: pl.LightningDataModule) -> tuple[float, int]:
    """(samples/s, samples) of one full pass over the training loader."""
    t0 = time.perf_counter()
    n = sum(batch.batch_size for batch in dm.train_dataloader())
    return n / (time.perf_counter() - t0), n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=None, help="a manifest folder (default: export synthetic)")
    parser.add_argument("--num-train", type=int, default=4000, help="training samples to export (no --root)")
    parser.add_argument("--fusion", default="early")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-workers", type=int, default=1)
    parser.add_argument("--loader-epochs", type=int, default=3)
    parser.add_argument("--train-epochs", type=int, default=2, help="training epochs (the rate is from epoch 2 on)")
    parser.add_argument("--train-batches", type=int, default=20, help="batches per training epoch")
    parser.add_argument("--no-write", action="store_true", help="print only, do not append to the results file")
    args = parser.parse_args()

    register_schemas()
    work = Path(tempfile.mkdtemp(prefix="mmgpt-bench-"))
    root = args.root
    if root is None:
        root = work / "folder"
        t0 = time.perf_counter()
        export_synthetic(root, num_train=args.num_train, num_val=500, num_test=500)
        print(f"exported synthetic folder {root} in {time.perf_counter() - t0:.1f}s")
    overrides = [f"data=manifest", f"data.root={root}", f"model/fusion={args.fusion}", f"data.batch_size={args.batch_size}",
                 f"data.num_workers={args.num_workers}", f"data.cache_dir={work / 'cache'}", "data.report_dir=null"]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(work / "run")

    timings: dict[str, float] = {}
    for phase in ("cold", "warm"):  # the second datamodule reads the on-disk cache the first one wrote
        dm = instantiate(cfg.data, _convert_="all")
        t0 = time.perf_counter()
        dm.setup("fit")
        timings[phase] = time.perf_counter() - t0
        timings[f"{phase}_decoded"] = dm.report.decoded
    n_files = int(timings["cold_decoded"])
    rates = []
    for epoch in range(1, args.loader_epochs + 1):
        rate, n = loader_rate(dm)
        rates.append(rate)
        print(f"loader epoch {epoch}: {rate:,.0f} samples/s ({n} samples)")

    pl.seed_everything(0)
    module = build_module(cfg, dm)
    throughput = Throughput()
    trainer = pl.Trainer(accelerator="auto", devices=1, max_epochs=args.train_epochs, limit_train_batches=args.train_batches,
                         limit_val_batches=0, num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[throughput])
    trainer.fit(module, datamodule=dm)
    train_rate = throughput.steady_rate or float("nan")
    for epoch, r in enumerate(throughput.history, start=1):
        print(f"train epoch {epoch}: {r:,.1f} samples/s")

    steady_loader = min(rates[1:] or rates)
    ratio = steady_loader / train_rate
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores visible, torch threads {torch.get_num_threads()})"
    lines = [
        f"## {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}: {root.name if args.root else f'synthetic export, {args.num_train} train'}, fusion={args.fusion}",
        "",
        f"- command: `python bench/dataloader.py {' '.join(f'--{k.replace(chr(95), chr(45))} {v}' for k, v in vars(args).items() if v not in (None, False) and k != 'no_write')}`",
        f"- machine: {device}, {platform.python_implementation()} {platform.python_version()}, torch {torch.__version__}",
        f"- validation + decoding pass: cold {timings['cold']:.1f}s ({n_files} files decoded, {n_files / timings['cold']:,.0f} files/s), "
        f"warm on-disk cache {timings['warm']:.1f}s ({int(timings['warm_decoded'])} files decoded)",
        f"- loader samples/s by epoch (batch {args.batch_size}, {args.num_workers} workers): "
        + ", ".join(f"{r:,.0f}" for r in rates),
        f"- training samples/s (model default, fusion {args.fusion}, {args.train_batches} batches/epoch, from epoch 2): {train_rate:,.1f}",
        f"- loader / training from epoch 2 on (slowest loader epoch): **{ratio:,.1f}x** (target >= 5x)",
        "",
    ]
    report = "\n".join(lines)
    print(report)
    if not args.no_write:
        header = "" if RESULTS.exists() else "# Dataloader vs training throughput (bench/dataloader.py)\n\nMeasured, appended by the script.\n\n"
        with open(RESULTS, "a", encoding="utf-8") as f:
            f.write(header + report + "\n")


if __name__ == "__main__":
    main()
