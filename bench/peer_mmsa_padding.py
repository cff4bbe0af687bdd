"""What MMSA's handling of the padding does to the side-by-side table: mmgpt's TFN, LMF and LF-DNN
(``experiment=mosi_mmsa_<model>``) trained again with ``stored_steps`` set to the file's stored steps, so that, as in
MMSA, the text LSTM runs through the zero padding and audio and vision are averaged over every stored step, zeros
included (mmgpt's default uses the real steps only).

    python -m bench.peer_mmsa_padding [--models tfn lmf lf_dnn]

Reads MMSA's runs and mmgpt's default runs from ``bench/results/peer_mmsa_exact.json`` (``python -m bench.peer_mmsa
--exact ...``), writes the same synthetic file (the same shape and data seed, so the same samples), trains mmgpt
with the same seeds, epoch cap and patience, and writes ``bench/results/peer_mmsa_padding.{json,md}``: the three
side by side and whether each mmgpt variant is within MMSA's seed range on every metric. Both mmgpt variants start
from MMSA's initial weights (``model.init``); the runs are deterministic, so no interleaving is needed for the
metrics (no throughput is reported here).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402

from bench.common import RESULTS_DIR, save  # noqa: E402
from bench.mmsa_data import Shape, write_pickle  # noqa: E402
from bench.peer_mmsa import EXACT, METRICS, Run, Summary, run_mmgpt, within_spread  # noqa: E402

#: mmgpt's model -> MMSA's name in the saved table
MODELS = {"tfn": "TFN", "lmf": "LMF", "lf_dnn": "LF_DNN"}


def padding_overrides(shape: Shape) -> list[str]:
    """``stored_steps`` of the three encoders: the file's stored text, audio and vision steps."""
    text, audio, vision = shape.steps
    return [f"model.net.encoders.language.stored_steps={text}", f"model.net.encoders.acoustic.stored_steps={audio}",
            f"model.net.encoders.visual.stored_steps={vision}"]


def saved_option(command: str, flag: str) -> int:
    found = re.search(rf"{flag} (\d+)", command)
    if found is None:
        raise SystemExit(f"bench/results/peer_mmsa_exact.json: its command has no {flag}: {command}")
    return int(found.group(1))


def report(saved: dict, padded: list[Run], models: list[str], shape: Shape, wall: float, command: str) -> str:
    runs = [Run(**r) for r in saved["runs"]]
    lines = ["| model | acc2 (%) | f1 (%) | acc2_nonzero (%) | f1_nonzero (%) | MAE | Corr | Acc-7 (%) | within MMSA's "
             "seed range |", "|" + "---|" * (len(METRICS) + 2)]
    for model in models:
        peer = Summary([r for r in runs if r.side == "MMSA" and r.model == MODELS[model]])
        real = Summary([r for r in runs if r.side == "mmgpt" and r.model == EXACT[MODELS[model]]])
        ours = Summary([r for r in padded if r.model == EXACT[MODELS[model]]])
        for label, s in ((f"MMSA {MODELS[model]} ({len(peer.runs)} seeds)", peer),
                         (f"mmgpt `{EXACT[MODELS[model]]}`, real steps (default)", real),
                         (f"mmgpt `{EXACT[MODELS[model]]}`, `stored_steps` (MMSA's padding)", ours)):
            missed = [] if s is peer else [k for k in METRICS if not within_spread(s, peer, k)]
            verdict = "" if s is peer else ("every metric" if not missed else "not on " + ", ".join(missed))
            lines.append(f"| {label} | " + " | ".join(s.cell(k) for k in METRICS) + f" | {verdict} |")
    return (f"## MMSA's padding handling in mmgpt's TFN, LMF and LF-DNN\n\n`{command}` ({wall / 60:.1f} min): "
            f"mmgpt's `experiment=mosi_mmsa_<model>` trained again with `stored_steps` = the file's stored steps "
            f"{shape.steps} (text, audio, vision): the text LSTM runs through the zero padding and audio and vision "
            f"are averaged over every stored step, as MMSA does; the default uses the real steps only. MMSA's runs "
            f"and mmgpt's default runs are those of `bench/results/peer_mmsa_exact.json` (same file, seeds, starts, "
            f"epoch cap and patience). Test metrics, mean ± std over seeds; MAE and Corr as numbers, the rest in %."
            f"\n\n" + "\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--report-only", action="store_true", help="rewrite the table from the saved runs")
    args = parser.parse_args(argv)
    saved = json.loads((RESULTS_DIR / "peer_mmsa_exact.json").read_text())
    shape = Shape(saved["shape"]["sizes"], saved["shape"]["dims"], tuple(saved["shape"]["steps"]))
    if args.report_only:
        mine = json.loads((RESULTS_DIR / "peer_mmsa_padding.json").read_text())
        runs = [Run(**r) for r in mine["runs"]]
        models = [m for m in MODELS if any(r.model == EXACT[MODELS[m]] for r in runs)]
        md = report(saved, runs, models, shape, mine["wall_s"], mine["command"])
        (RESULTS_DIR / "peer_mmsa_padding.md").write_text(md)
        return
    max_epochs, patience = saved_option(saved["command"], "--max-epochs"), saved_option(saved["command"], "--patience")
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="peer_mmsa_padding_"))
    path = write_pickle(work / "data" / "unaligned_50.pkl", aligned=False, shape=shape)
    command = "python -m bench.peer_mmsa_padding --models " + " ".join(args.models)
    started, padded = time.perf_counter(), []
    for model in args.models:
        seeds = sorted({r["seed"] for r in saved["runs"] if r["side"] == "MMSA" and r["model"] == MODELS[model]})
        for seed in seeds:
            run = run_mmgpt(EXACT[MODELS[model]], path, seed, max_epochs=max_epochs, patience=patience, work=work,
                            extra=padding_overrides(shape))
            padded.append(run)
            print(f"{model} seed {seed}: {run.epochs} epochs, " +
                  " ".join(f"{k}={v:.4f}" for k, v in run.metrics.items()), flush=True)
    wall = time.perf_counter() - started
    md = report(saved, padded, args.models, shape, wall, command)
    save("peer_mmsa_padding", {"command": command, "shape": saved["shape"], "wall_s": wall,
                               "runs": [asdict(r) for r in padded]}, md)
    print(md)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
