"""Dataloader samples/s vs model samples/s, for each data config (synthetic, manifest files, WebDataset shards).

    python -m bench.dataloader [--num-train 4000] [--fusion early] [--steps 12]

The same synthetic samples are served three ways: generated in memory (``data=synthetic``), as PNG + WAV files
listed in a manifest (``data=manifest``, decoded once by the validation pass, then from memory) and as tar shards
streamed and decoded every epoch (``data=shards``), each with its config's default worker count. For each, the
loader rate is a full pass over the training loader on its own (the slower of two passes after a warm-up pass),
and the model rate is training steps (forward, backward, AdamW) over batches already in memory, so neither
includes the other. A ratio >= 1 means the loader keeps up with training; the issue's target is >= 5x.
The manifest row also reports the cold (decode every file) and warm (on-disk cache) validation pass.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import torch
from hydra.utils import instantiate

from bench.common import build_classifier, compose_train_config, save
from bench.lightning_overhead import plain_loop
from mmgpt.datamodules.shards import write_shards
from mmgpt.datamodules.synthetic.export import export_synthetic


def loader_pass(loader) -> tuple[float, int]:
    """(samples/s, samples) of one full pass over ``loader``."""
    t0 = time.perf_counter()
    n = sum(batch.batch_size for batch in loader)
    return n / (time.perf_counter() - t0), n


def measure(name: str, overrides: list[str], steps: int) -> dict:
    torch.manual_seed(0)
    t0 = time.perf_counter()
    module, dm, cfg = build_classifier(overrides)
    setup_s = time.perf_counter() - t0
    passes = [loader_pass(dm.train_dataloader()) for _ in range(3)]
    loader_rate = min(rate for rate, _ in passes[1:])
    it = iter(dm.train_dataloader())
    batches = [next(it) for _ in range(steps)]
    plain_loop(copy.deepcopy(module), batches[:2])  # warm-up
    model_rate = batches[0].batch_size / plain_loop(module, batches)
    row = {"data": name, "workers": int(cfg.data.num_workers), "batch": int(cfg.data.batch_size),
           "samples": passes[0][1], "setup_s": setup_s, "loader_samples_per_s": loader_rate,
           "loader_passes": [rate for rate, _ in passes], "model_samples_per_s": model_rate,
           "ratio": loader_rate / model_rate}
    print(f"{name}: loader {loader_rate:,.0f}/s, model {model_rate:,.0f}/s, ratio {row['ratio']:.1f}x", flush=True)
    return row


def manifest_decode_pass(root: Path, cache: Path) -> dict:
    """Seconds of the manifest validation + decoding pass with an empty on-disk cache, then with it filled."""
    cfg = compose_train_config(["data=manifest", f"data.root={root}", f"data.cache_dir={cache}",
                                "data.report_dir=null"])
    out = {}
    for phase in ("cold", "warm"):
        dm = instantiate(cfg.data, _convert_="all")
        t0 = time.perf_counter()
        dm.setup("fit")
        out[f"{phase}_s"], out[f"{phase}_decoded"] = time.perf_counter() - t0, int(dm.report.decoded)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--num-train", type=int, default=4000)
    p.add_argument("--fusion", default="early")
    p.add_argument("--steps", type=int, default=12, help="training steps timed for the model rate")
    args = p.parse_args()

    work = Path(tempfile.mkdtemp(prefix="mmgpt-bench-"))
    folder, shards = work / "folder", work / "shards"
    t0 = time.perf_counter()
    export_synthetic(folder, num_train=args.num_train, num_val=500, num_test=500)
    write_shards(folder, shards)
    print(f"wrote {folder} and {shards} in {time.perf_counter() - t0:.1f}s", flush=True)
    decode = manifest_decode_pass(folder, work / "cache")

    common = [f"model/fusion={args.fusion}"]
    rows = [
        measure("synthetic", [*common, "data=synthetic", f"data.num_train={args.num_train}"], args.steps),
        measure("manifest", [*common, "data=manifest", f"data.root={folder}", f"data.cache_dir={work / 'cache'}",
                             "data.report_dir=null"], args.steps),
        measure("shards", [*common, "data=shards", f"data.root={shards}"], args.steps),
    ]
    lines = [
        "## Dataloader vs training",
        "",
        f"{args.num_train} synthetic training samples served by each data config (default workers and batch), "
        f"`model/fusion={args.fusion}`. Loader: a full pass over the training loader alone (slower of two passes "
        f"after a warm-up). Model: {args.steps} training steps over batches already in memory. Command: "
        f"`python -m bench.dataloader --num-train {args.num_train} --fusion {args.fusion}`.",
        "",
        "| data | workers | batch | loader samples/s | model samples/s | **loader / model** |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    lines += [f"| {r['data']} | {r['workers']} | {r['batch']} | {r['loader_samples_per_s']:,.0f} | "
              f"{r['model_samples_per_s']:,.0f} | **{r['ratio']:.1f}x** |" for r in rows]
    lines += [
        "",
        f"Manifest validation + decoding pass over {decode['cold_decoded']} files: {decode['cold_s']:.1f} s cold "
        f"({decode['cold_decoded'] / decode['cold_s']:,.0f} files/s), {decode['warm_s']:.1f} s from the on-disk "
        f"cache ({decode['warm_decoded']} files decoded). Shards are decoded while streaming, every epoch.",
    ]
    save("dataloader", {"args": vars(args), "rows": rows, "manifest_decode": decode}, "\n".join(lines))


if __name__ == "__main__":
    main()
