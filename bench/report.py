"""Assemble BENCHMARKS.md from the sections the benchmark scripts wrote into bench/results/.

    python -m bench.report          # after running the benchmarks (see `make bench`)
"""

from __future__ import annotations

import json
from pathlib import Path

from bench.common import RESULTS_DIR

ROOT = Path(__file__).resolve().parent.parent
ORDER = ["lightning_overhead", "configured_run", "attention", "fusions", "compile", "dataloader", "remote_loader",
         "memory", "feature_cache", "slim_checkpoint", "peer_mmsa",
         "peer_mmsa_exact", "peer_mmsa_padding", "peer_mmsa_lmf_init", "peer_mmsa_steps"]

HEADER = """# Benchmarks

Every figure below was measured by the script named in its section and is a ratio or a side-by-side measurement
taken in one run (interleaved repeats), so that it holds on a noisy machine. `make bench` re-runs them all and
rewrites this file; raw numbers are in `bench/results/*.json`.
"""

GPU_NOTE = """## GPU figures

No GPU figure has been measured yet: bf16 tokens/s and model FLOPs utilisation per fusion need a CUDA device
(`python -m bench.fusions` and `python -m bench.attention` measure on the GPU when one is visible, and record its
name). Nothing here is an estimate.
"""


def main() -> None:
    parts = [HEADER]
    for name in ORDER:
        md, js = RESULTS_DIR / f"{name}.md", RESULTS_DIR / f"{name}.json"
        if not md.exists():
            parts.append(f"## {name}\n\nNot measured yet: run `python -m bench.{name}`.\n")
            continue
        m = json.loads(js.read_text())["machine"]
        parts.append(md.read_text() + f"\n_Measured {m['date']} on {m['cpu']} ({m['cpu_threads']} threads), GPU: "
                     f"{m['gpu']}, torch {m['torch']}, 1-min load average {m['load_avg_1m']}._\n")
    has_gpu = any(
        json.loads(p.read_text()).get("machine", {}).get("gpu", "none") != "none" for p in RESULTS_DIR.glob("*.json")
    ) if RESULTS_DIR.exists() else False
    if not has_gpu:
        parts.append(GPU_NOTE)
    (ROOT / "BENCHMARKS.md").write_text("\n".join(parts))
    print(f"wrote {ROOT / 'BENCHMARKS.md'}")


if __name__ == "__main__":
    main()
