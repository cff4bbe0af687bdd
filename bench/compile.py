"""torch.compile vs eager: training-step time of the default model, and the one-off compile time.

    python -m bench.compile [--fusion early] [--batch 64]
"""

from __future__ import annotations

import argparse
import time

import torch

from bench.common import interleaved, machine, save
from bench.fusions import make


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--fusion", default="early")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--text-length", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()

    _, eager = make(args.fusion, args.text_length, args.batch)
    module, compiled_step = make(args.fusion, args.text_length, args.batch)
    module.net.compile()  # in place: the step's net(batch) calls now go through torch.compile
    B, T = args.batch, args.text_length

    t0 = time.perf_counter()
    compiled_step()
    compile_s = time.perf_counter() - t0
    times = interleaved({"eager": eager, "compiled": compiled_step}, repeats=args.repeats)
    device = machine()["gpu"] if torch.cuda.is_available() else "cpu"
    md = "\n".join([
        "## torch.compile vs eager",
        "",
        f"`model/fusion={args.fusion}`, batch {B}, text length {T}, one training step on {device}. "
        f"Command: `python -m bench.compile --fusion {args.fusion}`.",
        "",
        "| mode | ms / step |",
        "|---|---:|",
        f"| eager | {times['eager'] * 1e3:.1f} |",
        f"| torch.compile | {times['compiled'] * 1e3:.1f} |",
        f"| **speed-up eager / compiled** | **{times['eager'] / times['compiled']:.2f}x** |",
        "",
        f"First compiled step (compilation included): {compile_s:.1f} s.",
    ])
    save("compile", {"fusion": args.fusion, "times_s": times, "compile_s": compile_s}, md)


if __name__ == "__main__":
    main()
