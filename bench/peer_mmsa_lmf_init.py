"""Why some LMF runs never learn, on either side: MMSA's own LMF trainer, run from MMSA's initial weights and from
mmgpt's, seed by seed.

MMSA's LMF trainer leaves the rank weights and the bias out of its optimizer (``list(model.parameters())[:3]`` and
``[5:]``), and ``experiment=mosi_mmsa_lmf`` freezes them likewise: they keep their xavier-normal initial values
for good. Each seed here trains MMSA's LMF with MMSA's trainer, loader and batch order twice: once from the weights
MMSA draws for the seed, once from the weights mmgpt's own initialisation draws for it (``seed_everything(seed)``,
then the network of ``experiment=mosi_mmsa_lmf model.init=null``, mapped into MMSA's model; the experiment itself
now starts from MMSA's draw, ``model.init``). The table gives each start's largest rank weight and the
test MAE / Corr it ends at, and counts the runs that end at the constant predictor's MAE (the median of the
training labels): whether a run learns follows its start, not the trainer.

    python -m bench.peer_mmsa_lmf_init [--seeds 1111-1190] [--data DIR] [--report-only | --law-seeds 1111-1310]

Writes ``bench/results/peer_mmsa_lmf_init.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.common import RESULTS_DIR as RESULTS  # noqa: E402
from bench.common import compose_train_config, save  # noqa: E402
from bench.mmsa_data import BENCH, write_pickle  # noqa: E402
from bench.peer_mmsa import METRICS, mmsa_setup  # noqa: E402
from mmgpt.peers.mmsa import SUBNET_LAYERS, SUBNETS, TEXT_LAYERS, renamed  # noqa: E402

#: a run "never learned" when its test MAE is within this of the constant predictor's
STUCK_MARGIN = 0.01


def mmgpt_initial_lmf(path: Path, seed: int) -> torch.nn.Module:
    """mmgpt's network of ``experiment=mosi_mmsa_lmf`` as mmgpt's own initialisation starts it for ``seed``."""
    import pytorch_lightning as pl
    from hydra.utils import instantiate

    from mmgpt.cli.train import build_module

    cfg = compose_train_config(["experiment=mosi_mmsa_lmf", f"data.root={path}", f"seed={seed}", "model.init=null"])
    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.setup("fit")
    pl.seed_everything(seed, workers=True)
    return build_module(cfg, datamodule).net


def load_into_mmsa(ours: torch.nn.Module, theirs: torch.nn.Module) -> None:
    """mmgpt's LMF weights into MMSA's LMF (the inverse of :func:`mmgpt.peers.mmsa.copy_mmsa_weights`)."""
    with torch.no_grad():
        for mine, peer in SUBNETS.items():
            names = TEXT_LAYERS if mine == "language" else SUBNET_LAYERS
            inverse = {b: a for a, b in names.items()}
            getattr(theirs, peer).load_state_dict(renamed(ours.encoders[mine].state_dict(), inverse), strict=True)
        for mine, peer in (("acoustic", "audio"), ("visual", "video"), ("language", "text")):
            getattr(theirs, f"{peer}_factor").copy_(torch.roll(ours.fusion.factors[mine], shifts=1, dims=1))
        theirs.fusion_weights.copy_(ours.fusion.rank_weights)
        theirs.fusion_bias.copy_(ours.fusion.bias.view(1, -1))


def run(path: Path, seed: int, start: str, work: Path) -> dict[str, Any]:
    """MMSA's LMF trained by MMSA's trainer for ``seed``, from MMSA's (``start="MMSA"``) or mmgpt's weights."""
    from MMSA.trains import ATIO

    ours = mmgpt_initial_lmf(path, seed) if start == "mmgpt" else None
    args, loaders, net = mmsa_setup("LMF", path, seed, model_save_path=work / f"lmf-{start}-{seed}.pth")
    if ours is not None:
        load_into_mmsa(ours, net.Model)
    largest = float(net.Model.fusion_weights.detach().abs().max())
    trainer = ATIO().getTrain(args)
    trainer.do_train(net, loaders)
    net.load_state_dict(torch.load(args.model_save_path, weights_only=True))
    results = trainer.do_test(net, loaders["test"], mode="TEST")
    return {"seed": seed, "start": start, "largest_rank_weight": largest,
            **{k: float(results[METRICS[k]]) for k in ("mae", "corr", "acc2")}}


def constant_mae(path: Path) -> float:
    """Test MAE of predicting the median training label for every sample."""
    import pickle

    with open(path, "rb") as f:
        data = pickle.load(f)  # noqa: S301 (the file this script wrote)
    median = float(np.median(data["train"]["regression_labels"]))
    return float(np.mean(np.abs(np.asarray(data["test"]["regression_labels"]) - median)))


def rank_weight_law(path: Path, seeds: list[int]) -> dict[str, Any]:
    """The initial rank weights each side draws for ``seeds`` (no training), and a two-sample Kolmogorov-Smirnov
    test of their law: all the weights, and each seed's largest one."""
    from scipy.stats import ks_2samp

    draws: dict[str, list[list[float]]] = {"MMSA": [], "mmgpt": []}
    for seed in seeds:
        draws["mmgpt"].append(mmgpt_initial_lmf(path, seed).fusion.rank_weights.detach().view(-1).tolist())
        draws["MMSA"].append(mmsa_setup("LMF", path, seed)[2].Model.fusion_weights.detach().view(-1).tolist())
    a, b = np.asarray(draws["MMSA"]), np.asarray(draws["mmgpt"])
    return {"seeds": f"{seeds[0]}-{seeds[-1]}", "draws": draws,
            "ks_p_all": float(ks_2samp(a.ravel(), b.ravel()).pvalue),
            "ks_p_largest": float(ks_2samp(np.abs(a).max(1), np.abs(b).max(1)).pvalue)}


def seeds_arg(text: str) -> list[int]:
    """``1111`` or a range ``1111-1190`` (both ends included)."""
    first, _, last = text.partition("-")
    return list(range(int(first), int(last or first) + 1))


def report(saved: dict[str, Any]) -> str:
    """The results section of a saved run (``bench/results/peer_mmsa_lmf_init.json``)."""
    rows, floor = saved["runs"], saved["constant_mae"]
    lines = ["| seed | start | largest rank weight | test MAE | test Corr | learned |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['seed']} | {r['start']} | {r['largest_rank_weight']:.2f} | {r['mae']:.3f} | {r['corr']:.3f} | "
              f"{'no' if r['stuck'] else 'yes'} |" for r in rows]
    summary, counts = [], []
    for start in ("MMSA", "mmgpt"):
        mine = [r for r in rows if r["start"] == start]
        stuck = [r for r in mine if r["stuck"]]
        learned = [r for r in mine if not r["stuck"]]
        counts.append([len(stuck), len(learned)])
        summary.append(
            f"- from {start}'s weights: {len(stuck)} of {len(mine)} runs never learned"
            + (f" (largest rank weight {max(r['largest_rank_weight'] for r in stuck):.2f} at most)" if stuck else "")
            + (f"; the others reached MAE {statistics.fmean(r['mae'] for r in learned):.3f} on average, largest rank "
               f"weight {min(r['largest_rank_weight'] for r in learned):.2f} at least" if learned else ""))
    from scipy.stats import fisher_exact

    p = float(fisher_exact(counts).pvalue)
    summary.append(f"- the two rates of runs that never learn, by Fisher's exact test (two-sided): p = {p:.2f}")
    law = saved.get("law")
    if law:
        summary.append(f"- the rank weights each side draws for seeds {law['seeds']} (no training), two-sample "
                       f"Kolmogorov-Smirnov: all weights p = {law['ks_p_all']:.2f}, each seed's largest "
                       f"p = {law['ks_p_largest']:.2f} (`--law-seeds {law['seeds']}`)")
    return (f"## LMF: whether a run learns follows its initial weights\n\n`{saved['command']}`: MMSA's LMF trained by "
            f"MMSA's own trainer (loader, batch order, dropout of the seed) from MMSA's initial weights and from "
            f"mmgpt's (`experiment=mosi_mmsa_lmf` as built for the seed); synthetic MOSI of {BENCH.sizes} samples; "
            f"{saved['minutes']:.1f} min. \"Never learned\": test MAE within {STUCK_MARGIN} of the constant "
            f"predictor's ({floor:.3f}). The rank weights are never trained (MMSA's parameter slicing).\n\n"
            + "\n".join(summary) + "\n\n" + "\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=seeds_arg, nargs="+", default=[seeds_arg("1111-1120")],
                        help="seeds or ranges (1111-1190)")
    parser.add_argument("--data", type=Path, default=None, help="where to write the pickle (default: a temp dir)")
    parser.add_argument("--report-only", action="store_true", help="rewrite the section from the saved results")
    parser.add_argument("--law-seeds", type=seeds_arg, default=None,
                        help="only compare the laws of the initial rank weights over these seeds (e.g. 1111-1310), "
                             "added to the saved results")
    args = parser.parse_args(argv)
    if args.law_seeds:
        saved = json.loads((RESULTS / "peer_mmsa_lmf_init.json").read_text())
        work = Path(tempfile.mkdtemp(prefix="peer_mmsa_lmf_init_"))
        saved["law"] = rank_weight_law(write_pickle(work / "unaligned_50.pkl", aligned=False, shape=BENCH),
                                       args.law_seeds)
        save("peer_mmsa_lmf_init", saved, report(saved))
        return
    if args.report_only:
        saved = json.loads((RESULTS / "peer_mmsa_lmf_init.json").read_text())
        save("peer_mmsa_lmf_init", saved, report(saved))
        return
    seeds = [s for group in args.seeds for s in group]
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="peer_mmsa_lmf_init_"))
    path = write_pickle((args.data or work) / "unaligned_50.pkl", aligned=False, shape=BENCH)
    floor = constant_mae(path)
    rows, started = [], time.perf_counter()
    for seed in seeds:
        for start in ("MMSA", "mmgpt"):
            row = run(path, seed, start, work)
            row["stuck"] = row["mae"] >= floor - STUCK_MARGIN
            rows.append(row)
            print(f"seed {seed} from {start}'s weights: largest rank weight {row['largest_rank_weight']:.2f}, "
                  f"test MAE {row['mae']:.3f}, Corr {row['corr']:.3f}{' (never learned)' if row['stuck'] else ''}",
                  flush=True)
    command = "python -m bench.peer_mmsa_lmf_init --seeds " + " ".join(
        f"{g[0]}-{g[-1]}" if len(g) > 1 else str(g[0]) for g in args.seeds)
    saved = {"command": command, "constant_mae": floor, "runs": rows,
             "minutes": (time.perf_counter() - started) / 60}
    save("peer_mmsa_lmf_init", saved, report(saved))


if __name__ == "__main__":
    main()
