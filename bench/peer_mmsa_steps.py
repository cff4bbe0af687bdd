"""Where the time of ``bench.peer_mmsa --exact``'s training passes goes, measured in one process so that machine load
hits every side alike: per epoch, alternating,

* ``MMSA``: MMSA's model in MMSA's loop (its loader, Adam, L1 loss; for MulT its trainer's accumulation over
  ``update_epochs`` batches and clipping after every backward), without the trainer's per-batch extras;
* ``bare``: mmgpt's ``experiment=mosi_mmsa_<model>`` network in a hand-written loop over mmgpt's loader (fused Adam,
  the config's accumulation and clipping);
* ``mmgpt-train``: the same run through ``mmgpt-train`` (Lightning, default callbacks), its Throughput callback's
  per-epoch rate, the first epoch of each fit left out (warm-up; the other two sides' warm-up epochs are too);
* the training loaders alone, in ms per batch: MMSA's, mmgpt's, and mmgpt's with its batched rows path switched off.

    python -m bench.peer_mmsa_steps [--models lmf lf_dnn mult] [--rounds 3]

Prints training samples/s (medians) and the ratios to MMSA; writes ``bench/results/peer_mmsa_steps.json``.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from bench.common import compose_train_config, save  # noqa: E402
from bench.mmsa_data import BENCH, mmsa_args, write_pickle  # noqa: E402


def _train_epoch(batches: Any, loss_of: Any, size_of: Any, params: list[torch.nn.Parameter],
                 opt: torch.optim.Optimizer, *, every: int = 1, clip: float | None = None,
                 scale: float = 1.0) -> float:
    """One training pass as MMSA's trainers make it, in samples/s: zero the gradients at the start of each group of
    ``every`` batches, backward ``scale`` x the loss, clip the running gradients by value after every backward
    (``clip``), step after each full group (MMSA's MulT trainer: ``update_epochs``, ``grad_clip``)."""
    n, t = 0, time.perf_counter()
    for i, b in enumerate(batches):
        if i % every == 0:
            opt.zero_grad()
        (scale * loss_of(b)).backward()
        if clip is not None:
            torch.nn.utils.clip_grad_value_(params, clip)
        if (i + 1) % every == 0:
            opt.step()
        n += size_of(b)
    return n / (time.perf_counter() - t)


def _mmsa(model: str, path: Path) -> Any:
    from MMSA.data_loader import MMDataLoader
    from MMSA.models import AMIO

    args = mmsa_args(model, path)
    loader = MMDataLoader(args, num_workers=0)["train"]
    net = AMIO(args)
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=args.learning_rate)
    every = int(args.get("update_epochs", 1)) if model == "mult" else 1  # only MMSA's MulT trainer accumulates
    clip = float(args.grad_clip) if model == "mult" and float(args.get("grad_clip", -1.0)) != -1.0 else None

    def loss_of(b: Any) -> torch.Tensor:
        return F.l1_loss(net(b["text"], b["audio"], b["vision"])["M"].view(-1), b["labels"]["M"].view(-1))

    def epoch() -> float:
        net.train()
        return _train_epoch(loader, loss_of, lambda b: len(b["index"]), params, opt, every=every, clip=clip)
    return epoch


def _bare(overrides: list[str]) -> Any:
    from hydra.utils import instantiate

    from mmgpt.cli.train import build_module

    cfg = compose_train_config(overrides)
    dm = instantiate(cfg.data, _convert_="all")
    dm.setup("fit")
    module = build_module(cfg, dm)
    net, objective = module.net, next(iter(module.objectives.values()))
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=float(cfg.model.module.optimizer.lr), fused=True)
    every = int(cfg.trainer.get("accumulate_grad_batches") or 1)
    limit = cfg.model.module.get("clip_value_each_backward")
    clip = float(limit) / every if limit else None  # as MultimodalModule.on_after_backward, on 1/every of the loss

    def epoch() -> float:
        net.train()
        return _train_epoch(dm.train_dataloader(), lambda b: objective(net, b).loss, lambda b: b.batch_size,
                            params, opt, every=every, clip=clip, scale=1.0 / every)
    return epoch


def _loaders(model: str, path: Path, overrides: list[str]) -> dict[str, Any]:
    """One pass over the training loader, in ms per batch: MMSA's, mmgpt's (a batch's rows gathered at once) and
    mmgpt's one sample at a time (:meth:`mmgpt.datamodules.base.ProcessedDataset.rows` switched off)."""
    from hydra.utils import instantiate
    from MMSA.data_loader import MMDataLoader

    from mmgpt.datamodules.base import ProcessedDataset

    theirs = MMDataLoader(mmsa_args(model, path), num_workers=0)["train"]
    dm = instantiate(compose_train_config(overrides).data, _convert_="all")
    dm.setup("fit")
    ours = dm.train_dataloader()

    def timed(loader: Any, rows: bool = True) -> Any:
        def one() -> float:
            gather = ProcessedDataset.rows
            if not rows:
                ProcessedDataset.rows = lambda self, indices: None  # type: ignore[method-assign]
            try:
                t, n = time.perf_counter(), sum(1 for _ in loader)
                return (time.perf_counter() - t) * 1e3 / n
            finally:
                ProcessedDataset.rows = gather  # type: ignore[method-assign]
        return one
    return {"MMSA": timed(theirs), "mmgpt": timed(ours), "mmgpt, per sample": timed(ours, rows=False)}


def _fit(overrides: list[str], epochs: int) -> list[float]:
    from omegaconf import open_dict

    from mmgpt.cli.train import train
    from mmgpt.training.callbacks import Throughput

    cfg = compose_train_config([*overrides, "seed=1111", f"trainer.max_epochs={epochs}", "logger=csv",
                                "callbacks.progress=null", "trainer.enable_progress_bar=false",
                                f"callbacks.early_stopping.patience={epochs}"])
    with open_dict(cfg):
        cfg.paths.output_dir = tempfile.mkdtemp(prefix="peer_mmsa_steps_")
    rates: list[float] = []
    hook = Throughput.on_train_epoch_end

    def record(self: Throughput, trainer: Any, pl_module: Any) -> None:
        hook(self, trainer, pl_module)
        rates.append(self.history[-1])
    Throughput.on_train_epoch_end = record  # type: ignore[method-assign]
    try:
        train(cfg)
    finally:
        Throughput.on_train_epoch_end = hook  # type: ignore[method-assign]
    return rates[1:]


def measure(model: str, rounds: int, epochs: int, work: Path) -> dict[str, Any]:
    aligned = model == "ef_lstm"
    path = write_pickle(work / f"{'aligned' if aligned else 'unaligned'}_50.pkl", aligned=aligned, shape=BENCH)
    overrides = [f"experiment=mosi_mmsa_{model}", f"data.root={path}",
                 *([f"model.fusion.steps={BENCH.steps[0]}"] if aligned else [])]
    mmsa, bare, loaders = _mmsa(model, path), _bare(overrides), _loaders(model, path, overrides)
    rates: dict[str, list[float]] = {"MMSA": [], "bare": [], "mmgpt-train": []}
    loading: dict[str, list[float]] = {k: [] for k in loaders}
    mmsa(), bare(), [one() for one in loaders.values()]  # warm-up
    for _ in range(rounds):
        for _ in range(epochs - 1):
            rates["MMSA"].append(mmsa())
            rates["bare"].append(bare())
            for k, one in loaders.items():
                loading[k].append(one())
        rates["mmgpt-train"] += _fit(overrides, epochs)
    medians = {k: statistics.median(v) for k, v in rates.items()}
    return {"model": model, "samples_per_s": medians,
            "vs_mmsa": {k: v / medians["MMSA"] for k, v in medians.items()}, "runs": rates,
            "loader_ms_per_batch": {k: statistics.median(v) for k, v in loading.items()}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["lmf", "lf_dnn", "ef_lstm"],
                        choices=["tfn", "lmf", "lf_dnn", "ef_lstm", "mult"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=6, help="epochs per mmgpt-train fit")
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="peer_mmsa_steps_"))
    results = []
    for model in args.models:
        r = measure(model, args.rounds, args.epochs, work)
        results.append(r)
        print(model, " ".join(f"{k} {v:.0f} samples/s ({r['vs_mmsa'][k]:.2f}x)" for k, v in r["samples_per_s"].items()),
              flush=True)
    command = f"python -m bench.peer_mmsa_steps --models {' '.join(args.models)} --rounds {args.rounds}"
    lines = ["| model | MMSA's loop (samples/s) | mmgpt's network, bare loop | `mmgpt-train` | loader ms/batch: "
             "MMSA / mmgpt / mmgpt per sample |", "|---|---|---|---|---|"]
    for r in results:
        rate, ratio, ms = r["samples_per_s"], r["vs_mmsa"], r["loader_ms_per_batch"]
        lines.append(f"| {r['model']} | {rate['MMSA']:.0f} | {rate['bare']:.0f} ({ratio['bare']:.2f}x) | "
                     f"{rate['mmgpt-train']:.0f} ({ratio['mmgpt-train']:.2f}x) | {ms['MMSA']:.1f} / "
                     f"{ms['mmgpt']:.1f} / {ms['mmgpt, per sample']:.1f} |")
    md = ("## Where the training time of `bench.peer_mmsa --exact` goes\n\n"
          f"`{command}`: in one process, alternating epoch by epoch, MMSA's model in MMSA's loop, mmgpt's "
          "`experiment=mosi_mmsa_<model>` network in a hand-written loop over mmgpt's loader (fused Adam), and "
          f"`mmgpt-train` ({args.epochs}-epoch fits, its Throughput callback's per-epoch rate); each side's first "
          "epoch left out; medians of the training samples/s. The bare loop is the network and the data pipeline; "
          "what `mmgpt-train` adds on top is Lightning's per-step machinery (hooks, logging, the optimizer closure, "
          "the non-finite guard). The loader columns time one pass over each training loader alone: MMSA's, mmgpt's "
          "(a batch's rows gathered at once, `collate_rows`) and mmgpt's one sample at a time.\n\n"
          + "\n".join(lines) + "\n")
    save("peer_mmsa_steps", {"command": command, "results": results}, md)


if __name__ == "__main__":
    main()
