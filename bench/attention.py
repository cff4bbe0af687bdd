"""SDPA attention vs a naive softmax(QK^T)V, forward + backward: time and peak memory per sequence length.

    python -m bench.attention [--lengths 256 512 1024 2048 4096] [--dim 256] [--heads 4]

Times are medians of interleaved repeats in one process; peak memory is measured in a fresh process per case
(CPU: growth of the maximum resident set; GPU: the CUDA allocator's peak).
"""

from __future__ import annotations

import argparse
import json
import math

import torch
import torch.nn.functional as F

from bench.common import interleaved, peak_memory_during, run_child, save


def naive(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # (B, H, T, T) materialised
    mask = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
    return scores.masked_fill(~mask, float("-inf")).softmax(-1) @ v


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


IMPLS = {"sdpa": sdpa, "naive": naive}


def inputs(T: int, dim: int, heads: int, device: str) -> tuple[torch.Tensor, ...]:
    g = torch.Generator(device="cpu").manual_seed(0)
    return tuple(
        torch.randn(1, heads, T, dim // heads, generator=g).to(device).requires_grad_() for _ in range(3)
    )


def step(impl, qkv) -> None:
    impl(*qkv).sum().backward()


def child(impl: str, T: int, dim: int, heads: int, device: str) -> None:
    step(IMPLS[impl], inputs(64, dim, heads, device))  # load kernels before measuring
    qkv = inputs(T, dim, heads, device)
    print(json.dumps({"peak_mb": peak_memory_during(lambda: step(IMPLS[impl], qkv))}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--lengths", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096])
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--child", nargs=2, metavar=("IMPL", "T"))
    args = p.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.child:
        child(args.child[0], int(args.child[1]), args.dim, args.heads, device)
        return

    rows = []
    for T in args.lengths:
        qkv = inputs(T, args.dim, args.heads, device)
        times = interleaved({k: (lambda f=f, qkv=qkv: step(f, qkv)) for k, f in IMPLS.items()}, repeats=args.repeats)
        mem = {k: run_child("bench.attention", ["--child", k, str(T), "--dim", str(args.dim), "--heads",
                                                   str(args.heads)])["peak_mb"] for k in IMPLS}
        rows.append({"T": T, "time_s": times, "peak_mb": mem})
        print(f"T={T}: {times} {mem}", flush=True)

    md = [
        "## Attention: SDPA vs naive softmax(QK^T)V",
        "",
        f"Causal self-attention forward + backward, batch 1, dim {args.dim}, {args.heads} heads, on {device}. "
        "Command: `python -m bench.attention`.",
        "",
        "| seq len | SDPA ms | naive ms | naive / SDPA time | SDPA peak MB | naive peak MB |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        t, m = r["time_s"], r["peak_mb"]
        md.append(f"| {r['T']} | {t['sdpa'] * 1e3:.1f} | {t['naive'] * 1e3:.1f} | {t['naive'] / t['sdpa']:.2f}x | "
                  f"{m['sdpa']:.0f} | {m['naive']:.0f} |")
    save("attention", {"device": device, "dim": args.dim, "heads": args.heads, "rows": rows}, "\n".join(md))


if __name__ == "__main__":
    main()
