"""bf16 training step time, tokens/s and MFU per fusion at ViT-B / BERT-base shapes (dim 768, 12 layers).

    python -m bench.gpu_step --out DIR [--fusions early late cross_attention] [--batch 32] [--steps 10]
    python -m bench.gpu_step --out DIR --smoke      # tiny shapes on whatever device there is (CI dry run)

Every encoder has 12 layers of width 768 with 12 heads (the fusion keeps its configured depth); inputs are
224x224 images in 16x16 patches (196 tokens, as ViT-B/16), 128 text tokens (BERT-base's usual length) and
1 s of audio. One step = forward of the classification objective, backward, AdamW (fused on CUDA), all
under bf16 autocast with fp32 weights. FLOPs per step are counted by ``torch.utils.flop_counter`` on one
real step (matrix products and attention, forward and backward), so MFU = FLOPs / step time / the device's
dense bf16 peak (``--peak-tflops``; defaults known for H100/H200 SXM and A100). Writes ``gpu_step.json`` and
``gpu_step.md`` into ``--out`` after each fusion, so a time-out keeps the fusions already measured.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from bench.common import compose_train_config, machine
from mmgpt.batch import MultimodalBatch

#: Dense bf16 tensor-core peak (TFLOP/s) by device name fragment, from the vendors' data sheets.
PEAK_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0}
BIG = ["model.dim=768", "model.num_heads=12", "model.encoder_layers=12", "model.mlp_ratio=4.0",
       "data.image_size=224", "model.net.encoders.image.patch_size=16", "data.max_text_length=128"]
SMALL = ["model.dim=32", "model.num_heads=2", "model.encoder_layers=1", "data.image_size=32"]


def random_batch(cfg, batch: int, device: torch.device) -> MultimodalBatch:
    """A batch of the configured shapes (random content: the step's cost does not depend on it)."""
    g = torch.Generator().manual_seed(0)
    t, s, n = int(cfg.data.max_text_length), int(cfg.data.image_size), int(cfg.data.sample_rate)
    b = MultimodalBatch(
        inputs={"text": torch.randint(0, 256, (batch, t), generator=g),
                "image": torch.randn(batch, 3, s, s, generator=g),
                "audio": torch.randn(batch, n, generator=g) * 0.3},
        masks={"text": torch.ones(batch, t, dtype=torch.bool), "audio": torch.ones(batch, n, dtype=torch.bool)},
        labels=torch.randint(0, 15, (batch,), generator=g), ids=list(range(batch)))
    return b.to(device)


def measure(fusion: str, args: argparse.Namespace, device: torch.device) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    from mmgpt.cli.train import build_module

    cfg = compose_train_config([f"model/fusion={fusion}", *(SMALL if args.smoke else BIG)])
    data = SimpleNamespace(num_classes=15, class_names=[str(i) for i in range(15)])
    module = build_module(cfg, data).to(device).train()
    net, objectives = module.net, list(module.objectives.values())
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4, fused=device.type == "cuda")
    batch = random_batch(cfg, args.batch, device)
    dtype = torch.bfloat16

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype):
            loss = sum(o.weight * o(net, batch).loss for o in objectives)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    with torch.no_grad(), torch.autocast(device.type, dtype=dtype):
        tokens = sum(out.tokens.shape[0] * out.tokens.shape[1] for out in net.encode(batch).values())
    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / args.steps
    peak = next((v for k, v in PEAK_TFLOPS.items() if k in machine()["gpu"]), None) if args.peak_tflops is None \
        else args.peak_tflops
    return {
        "fusion": fusion, "batch": args.batch, "params": sum(p.numel() for p in net.parameters()),
        "encoder_tokens_per_step": tokens, "step_ms": dt * 1e3, "tokens_per_s": tokens / dt,
        "samples_per_s": args.batch / dt, "tflop_per_step": flops / 1e12, "achieved_tflops": flops / dt / 1e12,
        "mfu": None if peak is None else flops / dt / (peak * 1e12),
        "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None,
    }


def markdown(rows: list[dict], args: argparse.Namespace) -> str:
    m = machine()
    lines = [f"## bf16 training step at {'tiny (smoke) shapes' if args.smoke else 'dim 768 / 12 layers'}", "",
             f"Device: {m['gpu']} (torch {m['torch']}), batch {args.batch}, mean of {args.steps} steps after "
             f"{args.warmup} warm-up. Command: `python -m bench.gpu_step`.", "",
             "| fusion | params | tokens / step | ms / step | tokens / s | TFLOP / step | TFLOP/s | MFU | peak GiB |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        mfu = "n/a" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
        mem = "n/a" if r["peak_mem_gib"] is None else f"{r['peak_mem_gib']:.1f}"
        lines.append(f"| {r['fusion']} | {r['params'] / 1e6:.1f} M | {r['encoder_tokens_per_step']} | "
                     f"{r['step_ms']:.1f} | {r['tokens_per_s']:,.0f} | {r['tflop_per_step']:.2f} | "
                     f"{r['achieved_tflops']:.1f} | {mfu} | {mem} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--fusions", nargs="+", default=["early", "late", "cross_attention"])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--peak-tflops", type=float, default=None)
    p.add_argument("--smoke", action="store_true", help="tiny shapes, 1 step: checks the code path anywhere")
    args = p.parse_args()
    if args.smoke:
        args.batch, args.steps, args.warmup = 2, 1, 0
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    for fusion in args.fusions:
        rows.append(measure(fusion, args, device))
        (args.out / "gpu_step.json").write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2))
        (args.out / "gpu_step.md").write_text(markdown(rows, args))
        print(f"{fusion}: {rows[-1]['step_ms']:.1f} ms/step, {rows[-1]['tokens_per_s']:,.0f} tokens/s", flush=True)


if __name__ == "__main__":
    main()
