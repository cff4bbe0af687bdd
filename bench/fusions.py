"""Training throughput and peak memory per fusion at equal width/depth, and how they grow with sequence length.

    python -m bench.fusions [--text-lengths 32 128 512] [--batch 32]

Every fusion uses the default config (same encoders, same `model.dim`; the fusions' default depths give
comparable parameter counts). The sequence grows through the text: T text tokens plus 16 image patches and
26 audio frames (1 s at 8 kHz). Samples/s is one training step (forward, backward, AdamW) on a fixed random
batch, medians of interleaved repeats; peak memory is measured in a fresh process per case.
"""

from __future__ import annotations

import argparse
import json

import torch

from bench.common import interleaved, peak_memory_during, run_child, save
from mmgpt import presets
from mmgpt.batch import MultimodalBatch
from mmgpt.datamodules.synthetic.generator import classes_for

FUSIONS = ("early", "late", "cross_attention")


def make(fusion: str, T: int, batch: int):
    """(the network of ``model/fusion=<fusion>`` with T text tokens, one training step of it)."""
    num_classes = len(classes_for())  # the synthetic set's classes
    net = presets.build(fusion, num_classes, presets.Sizes(max_text_length=T)).train()
    g = torch.Generator().manual_seed(0)
    b = MultimodalBatch(
        inputs={"text": torch.randint(0, 256, (batch, T), generator=g), "image": torch.randn(batch, 3, 32, 32),
                "audio": torch.randn(batch, 8000) * 0.1},
        masks={"text": torch.ones(batch, T, dtype=torch.bool), "audio": torch.ones(batch, 8000, dtype=torch.bool)},
        labels=torch.randint(0, num_classes, (batch,), generator=g),
    )
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(net(b).logits, b.labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return net, step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--text-lengths", type=int, nargs="+", default=[32, 128, 512])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--child", nargs=2, metavar=("FUSION", "T"))
    args = p.parse_args()
    if args.child:
        _, step = make(args.child[0], int(args.child[1]), args.batch)
        step()  # warm-up: optimizer state allocated, kernels loaded
        print(json.dumps({"peak_mb": peak_memory_during(step)}))
        return

    rows = []
    for T in args.text_lengths:
        built = {f: make(f, T, args.batch) for f in FUSIONS}
        times = interleaved({f: s for f, (_, s) in built.items()}, repeats=args.repeats)
        for f, (net, _) in built.items():
            mem = run_child("bench.fusions", ["--child", f, str(T), "--batch", str(args.batch)])["peak_mb"]
            rows.append({"fusion": f, "T": T, "params": net.param_counts()["total"],
                         "samples_per_s": args.batch / times[f], "peak_mb": mem})
            print(rows[-1], flush=True)

    md = [
        "## Fusion strategies: training throughput and memory vs sequence length",
        "",
        f"Default config (`model.dim=64`), batch {args.batch}, one training step (forward, backward, AdamW); the "
        "sequence grows through the text (T tokens) next to 16 image patches and 26 audio frames. "
        "Command: `python -m bench.fusions`. Peak MB on CPU is the growth of the resident set during one step "
        "after a warm-up step: small tensors reuse freed heap, so the small-T figures understate; the large-T "
        "ones (mmap-backed tensors) are the meaningful comparison. On a GPU it is the CUDA allocator's peak.",
        "",
        "| fusion | params | text tokens T | samples/s | peak MB (step) |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in sorted(rows, key=lambda r: (r["fusion"], r["T"])):
        md.append(f"| {r['fusion']} | {r['params']:,} | {r['T']} | {r['samples_per_s']:.0f} | {r['peak_mb']:.0f} |")
    save("fusions", {"batch": args.batch, "rows": rows}, "\n".join(md))


if __name__ == "__main__":
    main()
