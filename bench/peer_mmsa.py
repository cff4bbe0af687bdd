"""mmgpt's classic fusions side by side with the MMSA toolkit's own TFN, LMF, MulT, EF-LSTM and LF-DNN, on the same
synthetic CMU-MOSI pickle and seeds, interleaved (MMSA run, mmgpt run, MMSA run, ...) so machine load hits both.

    python -m bench.peer_mmsa [--quick | --mosi] [--exact] [--seeds 1111 1112] [--max-epochs 6]
        [--patience 3] [--models TFN LMF] [--model-seeds MulT=3]

1. Writes ``aligned_50.pkl`` and ``unaligned_50.pkl`` in MMSA's layout with a planted audio x vision interaction
   (:mod:`bench.mmsa_data`) and checks that MMSA's loader and mmgpt's ``data=mosi`` read identical arrays.
2. For each seed and each pair, trains MMSA's model through MMSA's own pieces (``get_config_regression`` for its
   hyperparameters, ``MMDataLoader``, ``AMIO``, ``ATIO``'s trainer ``do_train`` / ``do_test``: what ``MMSA_run``
   does per seed, minus its ``torch.cuda.set_device``, which fails on a machine without a GPU), then mmgpt's
   ``mmgpt-train experiment=mosi model/fusion=<fusion>`` on the same file with the same seed. Both stop when the
   validation L1 loss / MAE has not improved for ``--patience`` epochs (MMSA's ``early_stop``, 8 by default) or at
   ``--max-epochs``, and both are tested on their best validation epoch.
3. Writes ``bench/results/peer_mmsa.{json,md}``: test Acc-2 (both conventions), F1, MAE, Corr, Acc-7 (mean +- std
   over seeds), epochs, wall seconds per epoch (training, validation and checkpointing) and training samples/s
   (the training passes only, from the second epoch on: the first epoch's warm-up left out on both sides), and
   whether each mmgpt metric is within or better than the peer's seed range.

The pairs (peer -> mmgpt): TFN -> tensor, LMF -> low_rank, MulT -> mult, LF-DNN -> late on the unaligned file,
EF-LSTM -> early on the aligned file (MMSA's EF-LSTM needs aligned data). mmgpt runs its own architecture (the
README's "mmgpt vs MMSA" table lists what differs). With ``--exact`` mmgpt runs ``experiment=mosi_mmsa_<model>``
instead: MMSA's own architecture and recipe for TFN, LMF, LF-DNN, EF-LSTM and MulT (the same trainable parameter
count, tests/test_mmsa_exact.py: MMSA's weights loaded into it give MMSA's outputs); its results go to
``peer_mmsa_exact``. Those experiments start from the initial weights MMSA's own model draws at the run's seed
(``model.init``, :mod:`mmgpt.peers.mmsa`); before each pair the script checks, tensor for tensor, that mmgpt's start
is the one of MMSA's run, so that a pair differs only in training (batch order, dropout masks, padding).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib
import json
import logging
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("TQDM_DISABLE", "1")  # MMSA's trainers draw a tqdm bar per pass

import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402

from bench.common import compose_train_config, save  # noqa: E402
from bench.mmsa_data import BENCH, MOSI, QUICK, compare_loaders, mmsa_args, write_pickle  # noqa: E402

log = logging.getLogger("bench.peer_mmsa")

#: MMSA model -> (mmgpt fusion, the file both read).
PAIRS: dict[str, tuple[str, str]] = {
    "TFN": ("tensor", "unaligned"), "LMF": ("low_rank", "unaligned"), "MulT": ("mult", "unaligned"),
    "LF_DNN": ("late", "unaligned"), "EF_LSTM": ("early", "aligned"),
}
#: our metric name -> MMSA's metricsTop key (both on the test split of the best validation epoch).
METRICS: dict[str, str] = {"acc2": "Has0_acc_2", "f1": "Has0_F1_score", "acc2_nonzero": "Non0_acc_2",
                           "f1_nonzero": "Non0_F1_score", "mae": "MAE", "corr": "Corr", "acc7": "Mult_acc_7"}
LOWER_IS_BETTER = {"mae"}


@dataclass
class Run:
    """One training: its test metrics, epochs run, and the clocks."""

    side: str  # "MMSA" or "mmgpt"
    model: str  # MMSA's model name or mmgpt's fusion
    seed: int
    metrics: dict[str, float]
    epochs: int
    fit_s: float  # the whole fit: training passes, validation, checkpoints
    train_s: float  # the training passes only
    train_samples: int  # samples seen by the training passes (all epochs)
    epoch_train_s: list[float] = field(default_factory=list)  # each epoch's training pass
    epoch_samples: list[int] = field(default_factory=list)

    @property
    def s_per_epoch(self) -> float:
        return self.fit_s / max(1, self.epochs)

    @property
    def samples_per_s(self) -> float:
        """Training samples per second from the second epoch on: the first epoch's warm-up (allocations, first
        calls) is left out on both sides, so that a run that stops earlier is not charged it over fewer epochs.
        Runs saved without per-epoch clocks (or of one epoch): over every epoch."""
        if len(self.epoch_train_s) >= 2 and sum(self.epoch_train_s[1:]) > 0:
            return sum(self.epoch_samples[1:]) / sum(self.epoch_train_s[1:])
        return self.train_samples / self.train_s if self.train_s > 0 else float("nan")


class _EpochCap(Exception):
    """Raised by :class:`TimedLoader` when MMSA's trainer starts an epoch past the cap (MMSA's loop has none)."""


class TimedLoader:
    """MMSA's training DataLoader, timed: each full pass over it is one epoch of MMSA's ``do_train`` loop.

    The clock runs from the loop asking for the first batch to the loop asking for one past the last, so it covers
    loading, forward, backward and the optimizer step of every batch, as mmgpt's Throughput callback does.
    """

    def __init__(self, loader: Any, max_epochs: int) -> None:
        self.loader, self.max_epochs = loader, max_epochs
        self.epochs, self.seconds, self.samples = 0, 0.0, 0
        self.epoch_seconds: list[float] = []
        self.epoch_samples: list[int] = []

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        if self.epochs >= self.max_epochs:
            raise _EpochCap
        self.epochs += 1
        t0, n = time.perf_counter(), 0
        for batch in self.loader:
            n += len(batch["index"])
            yield batch
        took = time.perf_counter() - t0
        self.seconds += took
        self.samples += n
        self.epoch_seconds.append(took)
        self.epoch_samples.append(n)


class _ReduceLROnPlateau(torch.optim.lr_scheduler.ReduceLROnPlateau):
    """torch's scheduler without the ``verbose`` argument MMSA's MulT trainer passes (removed in torch 2.7)."""

    def __init__(self, *args: Any, verbose: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)


def mmsa_setup(model: str, path: Path, seed: int, **overrides: Any) -> tuple[Any, dict[str, Any], Any]:
    """MMSA's config, loaders and freshly initialised model (``AMIO``) for ``seed``, as ``MMSA_run`` makes them."""
    from MMSA.data_loader import MMDataLoader
    from MMSA.models import AMIO
    from MMSA.utils import setup_seed

    args = mmsa_args(model, path, **overrides)
    setup_seed(seed)
    loaders = MMDataLoader(args, num_workers=0)  # sets args.feature_dims from the file
    return args, loaders, AMIO(args).to(args.device)


def run_mmsa(model: str, path: Path, seed: int, *, max_epochs: int, patience: int, work: Path) -> Run:
    """Train and test MMSA's ``model`` on ``path`` with MMSA's config, loader, model and trainer."""
    from MMSA.trains import ATIO

    mult_trainer = importlib.import_module("MMSA.trains.singleTask.MULT")  # the module (the package exports the class)
    mult_trainer.ReduceLROnPlateau = _ReduceLROnPlateau  # the one change MMSA needs to run on torch >= 2.7
    args, loaders, net = mmsa_setup(model, path, seed, early_stop=patience,
                                    model_save_path=work / f"{model}-{seed}.pth")
    timed = TimedLoader(loaders["train"], max_epochs)
    loaders["train"] = timed
    trainer = ATIO().getTrain(args)
    t0 = time.perf_counter()
    try:
        trainer.do_train(net, loaders)
    except _EpochCap:
        pass
    fit_s = time.perf_counter() - t0
    net.load_state_dict(torch.load(args.model_save_path, weights_only=True))
    results = trainer.do_test(net, loaders["test"], mode="TEST")
    metrics = {ours: float(results[theirs]) for ours, theirs in METRICS.items()}
    return Run("MMSA", model, seed, metrics, timed.epochs, fit_s, timed.seconds, timed.samples,
               timed.epoch_seconds, timed.epoch_samples)


class FitClock(pl.Callback):
    """The wall time of ``trainer.fit`` and the training-pass time of each epoch (from mmgpt's Throughput)."""

    last: FitClock | None = None

    def __init__(self) -> None:
        self.fit_s, self.train_s, self.samples = 0.0, 0.0, 0
        self.epoch_train_s: list[float] = []
        self.epoch_samples: list[int] = []
        self._t0 = 0.0
        FitClock.last = self

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from mmgpt.training.callbacks import Throughput

        clock = next(c for c in trainer.callbacks if isinstance(c, Throughput))
        # Throughput has paused its clock for this epoch (its hook runs first: callbacks are in key order)
        self.train_s += clock._elapsed
        self.samples += clock._samples
        self.epoch_train_s.append(clock._elapsed)
        self.epoch_samples.append(clock._samples)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.fit_s = time.perf_counter() - self._t0


#: MMSA model -> mmgpt's experiment with its architecture and recipe (``--exact``).
EXACT: dict[str, str] = {model: f"mosi_mmsa_{model.lower()}" for model in PAIRS}


def mmgpt_side(model: str, exact: bool) -> str:
    """The name mmgpt's run of the pair of ``model`` goes by: its fusion, or its experiment with ``--exact``."""
    return EXACT[model] if exact else PAIRS[model][0]


def check_same_start(model: str, path: Path, seed: int, steps: int | None = None) -> None:
    """Raise unless mmgpt's ``experiment=mosi_mmsa_<model> seed=<seed>`` starts from the weights of MMSA's run of
    ``model`` for ``seed`` (its model built after its ``setup_seed``), every tensor equal."""
    import copy

    from hydra.utils import instantiate

    from mmgpt.cli.train import build_module
    from mmgpt.peers.mmsa import copy_mmsa_weights

    overrides = [f"experiment={EXACT[model]}", f"data.root={path}", f"seed={seed}"]
    if model == "EF_LSTM" and steps is not None:
        overrides.append(f"model.fusion.steps={steps}")
    cfg = compose_train_config(overrides)
    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.setup("fit")
    ours = build_module(cfg, datamodule).net
    args, _, theirs = mmsa_setup(model, path, seed)
    expected = copy.deepcopy(ours)
    copy_mmsa_weights(model, expected, theirs.Model, args.feature_dims)
    want = expected.state_dict()
    differ = [k for k, v in ours.state_dict().items() if not torch.equal(v, want[k])]
    if differ:
        raise RuntimeError(f"{model} seed {seed}: mmgpt's start differs from MMSA's in {differ[:5]}")


def run_mmgpt(side: str, path: Path, seed: int, *, max_epochs: int, patience: int, work: Path,
              steps: int | None = None, extra: Sequence[str] = ()) -> Run:
    """``mmgpt-train experiment=mosi model/fusion=<side>`` on ``path``, in this process; ``experiment=<side>`` when
    ``side`` is one of :data:`EXACT` (``steps``: the aligned file's, for the EF-LSTM's BatchNorm over the steps;
    ``extra``: more overrides)."""
    from omegaconf import open_dict

    from mmgpt.cli.train import train

    choice = [f"experiment={side}"] if side in EXACT.values() else ["experiment=mosi", f"model/fusion={side}"]
    if side == EXACT["EF_LSTM"] and steps is not None:
        choice.append(f"model.fusion.steps={steps}")
    cfg = compose_train_config([
        *choice, f"data.root={path}", f"seed={seed}",
        f"trainer.max_epochs={max_epochs}", f"callbacks.early_stopping.patience={patience}", "logger=csv",
        "callbacks.progress=null", "trainer.enable_progress_bar=false",
        "+callbacks.zz_fit_clock._target_=bench.peer_mmsa.FitClock", *extra,
    ])
    with open_dict(cfg):
        cfg.paths.output_dir = str(work / f"{side}-{seed}")
    results = train(cfg)
    from bench.peer_mmsa import FitClock as clocks  # the class Hydra instantiated (this file may run as __main__)

    clock = clocks.last
    assert clock is not None
    metrics = {k: float(results["test"][f"test/{k}"]) for k in METRICS}
    return Run("mmgpt", side, seed, metrics, int(results["epochs"]), clock.fit_s, clock.train_s, clock.samples,
               clock.epoch_train_s, clock.epoch_samples)


@dataclass
class Summary:
    """A model's runs over the seeds: mean, std, min and max of every metric, and the clocks."""

    runs: list[Run] = field(default_factory=list)

    def values(self, key: str) -> list[float]:
        return [r.metrics[key] for r in self.runs]

    def mean(self, key: str) -> float:
        return statistics.fmean(self.values(key))

    def std(self, key: str) -> float:
        return statistics.pstdev(self.values(key))  # MMSA_run reports np.std (population)

    def cell(self, key: str) -> str:
        scale = 1 if key == "mae" or key == "corr" else 100
        return f"{self.mean(key) * scale:.2f} ± {self.std(key) * scale:.2f}" if key != "mae" and key != "corr" \
            else f"{self.mean(key):.3f} ± {self.std(key):.3f}"

    def clock(self, attr: str) -> float:
        return statistics.median(getattr(r, attr) for r in self.runs)


#: Slack of the range check: MMSA's ``metricsTop`` rounds every metric to 4 decimals (70/171 = 0.409357 is reported
#: as 0.4094), so a value of mmgpt's within half of that last digit is the same value.
SPREAD_TOLERANCE = 5e-5


def within_spread(ours: Summary, peer: Summary, key: str) -> bool:
    """mmgpt's mean is inside the peer's seed range [min, max] or better than all of it."""
    values = peer.values(key)
    if key in LOWER_IS_BETTER:
        return ours.mean(key) <= max(values) + SPREAD_TOLERANCE
    return ours.mean(key) >= min(values) - SPREAD_TOLERANCE


def table(summaries: dict[str, dict[str, Summary]], seeds: list[int], exact: bool = False) -> str:
    header = ("| model | acc2 (%) | f1 (%) | acc2_nonzero (%) | f1_nonzero (%) | MAE | Corr | Acc-7 (%) | epochs | "
              "s/epoch | train samples/s | mmgpt/MMSA samples/s |")
    lines = [header, "|" + "---|" * 12]
    verdicts = []
    for model, (_, data) in PAIRS.items():
        fusion = mmgpt_side(model, exact)
        if model not in summaries["MMSA"] or fusion not in summaries["mmgpt"]:
            continue
        peer, ours = summaries["MMSA"][model], summaries["mmgpt"][fusion]
        ratio = statistics.median(o.samples_per_s / p.samples_per_s for o, p in zip(ours.runs, peer.runs)
                                  if o.seed == p.seed)
        runs = f"{len(peer.runs)} seed{'s' if len(peer.runs) > 1 else ''}"
        for label, s, r in ((f"MMSA {model} ({data}, {runs})", peer, ""), (f"mmgpt `{fusion}`", ours, f"{ratio:.2f}x")):
            cells = [s.cell(k) for k in METRICS]
            lines.append(f"| {label} | {' | '.join(cells)} | {s.clock('epochs'):.0f} | {s.clock('s_per_epoch'):.2f} "
                         f"| {s.clock('samples_per_s'):.0f} | {r} |")
        missed = [k for k in METRICS if not within_spread(ours, peer, k)]
        verdict = f"outside the peer's range on {', '.join(missed)}" if missed else \
            "within or better than the peer's seed range on every metric"
        verdicts.append(f"- `{fusion}` vs {model}: {verdict}; training throughput {ratio:.2f}x the peer's "
                        "(median of the per-seed ratios)")
    steady = all(len(r.epoch_train_s) >= 2 for side in summaries.values() for m in side.values() for r in m.runs)
    per = ("training samples/s from each run's second epoch on (the first epoch's warm-up left out on both sides)"
           if steady else "training samples/s over every epoch")
    return "\n".join([*lines, "", f"Seeds: {', '.join(map(str, seeds))}. Epochs, s/epoch and samples/s: medians "
                      f"over seeds; {per}.", "", *verdicts])


def report(runs: list[Run], *, command: str, shape: Any, problems: dict[str, list[str]], seeds: list[int],
           wall: float, name: str, exact: bool = False, load: str = "machine load not recorded",
           machine: dict[str, Any] | None = None) -> None:
    """The side-by-side table of ``runs`` into ``bench/results/<name>.{json,md}``."""
    summaries: dict[str, dict[str, Summary]] = {"MMSA": {}, "mmgpt": {}}
    for run in runs:
        summaries[run.side].setdefault(run.model, Summary()).runs.append(run)
    loaders = "MMSA's and mmgpt's loaders read identical arrays from both files." if not any(problems.values()) \
        else f"Loader differences: {json.dumps(problems)}"
    title = "mmgpt with MMSA's architectures vs MMSA's reference implementations" if exact else \
        "mmgpt vs MMSA's reference implementations"
    sides = ("mmgpt runs `experiment=mosi_mmsa_<model>`: MMSA's own architecture and recipe for TFN, LMF, LF_DNN, "
             "EF_LSTM and MulT (the same trainable parameter count), started from the initial weights MMSA's own "
             "model draws at the run's seed (`model.init`; checked tensor for tensor against MMSA's run before each "
             "pair), so the two runs of a seed differ only in training: batch order, dropout masks, padding. ") \
        if exact else ""
    md = (f"## {title} (same data, same seeds)\n\n{sides}`{command}`: synthetic MOSI of "
          f"{shape.sizes} samples, features {shape.dims}, stored steps text/audio/vision {shape.steps}; "
          f"{wall / 60:.1f} min in all, one torch thread for both sides, the two sides' runs alternated; "
          f"{load}. {loaders} Test metrics of each run's best validation epoch, mean ± std over "
          f"seeds (MMSA's convention, np.std); MAE and Corr as numbers, the rest in %.\n\n"
          f"{table(summaries, seeds, exact)}\n")
    kept = {"machine": machine} if machine else {}  # a rewritten table keeps the facts of the machine that ran it
    save(name, {**kept, "command": command, "shape": asdict(shape), "loader_problems": problems, "wall_s": wall,
                "seeds": seeds, "exact": exact, "load": load,
                "runs": [asdict(r) for r in runs]}, md)


def report_again(name: str) -> None:
    """Rewrite ``bench/results/<name>.md`` from the runs its ``.json`` holds (after a change to the table)."""
    from bench.common import RESULTS_DIR
    from bench.mmsa_data import Shape

    saved = json.loads((RESULTS_DIR / f"{name}.json").read_text())
    shape = saved["shape"]
    report([Run(**r) for r in saved["runs"]], command=saved["command"], problems=saved["loader_problems"],
           shape=Shape(shape["sizes"], shape["dims"], tuple(shape["steps"])), wall=saved["wall_s"],
           seeds=saved.get("seeds") or sorted({r["seed"] for r in saved["runs"]}), name=name,
           exact=bool(saved.get("exact", False)), load=saved.get("load", "machine load not recorded"),
           machine=saved.get("machine"))


def _seed_caps(specs: list[str], parser: argparse.ArgumentParser) -> dict[str, int]:
    """``["MulT=3"]`` -> ``{"MulT": 3}``; a malformed entry or an unknown model is a usage error."""
    caps: dict[str, int] = {}
    for spec in specs:
        model, _, count = spec.partition("=")
        if model not in PAIRS or not count.isdigit() or int(count) < 1:
            parser.error(f"--model-seeds {spec!r}: expected MODEL=N with MODEL one of {list(PAIRS)} and N >= 1")
        caps[model] = int(count)
    return caps


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small file and 2 epochs (a smoke run, minutes)")
    parser.add_argument("--mosi", action="store_true", help="MOSI's own sizes and steps (hours on a CPU)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1111, 1112])
    parser.add_argument("--max-epochs", type=int, default=6)
    parser.add_argument("--patience", type=int, default=3, help="epochs without a better validation loss (MMSA: 8)")
    parser.add_argument("--models", nargs="+", default=None, choices=list(PAIRS),
                        help="default: all five")
    parser.add_argument("--model-seeds", nargs="+", default=[], metavar="MODEL=N",
                        help="run MODEL on the first N seeds only (MulT=3: its epochs take 20x LMF's)")
    parser.add_argument("--steps", type=int, nargs=3, default=None, metavar=("TEXT", "AUDIO", "VISION"),
                        help="stored steps per modality (default: the chosen shape's, bench.mmsa_data)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads for both sides (1: on a shared, loaded CPU more threads spin and wait)")
    parser.add_argument("--exact", action="store_true",
                        help="mmgpt runs experiment=mosi_mmsa_<model> (MMSA's architectures); into peer_mmsa_exact")
    parser.add_argument("--data", type=Path, default=None, help="where to write the pickles (default: a temp dir)")
    parser.add_argument("--report-only", action="store_true", help="rewrite the table from the saved runs")
    args = parser.parse_args(argv)
    caps = _seed_caps(args.model_seeds, parser)
    if args.models is None:
        args.models = list(PAIRS)
    name = "peer_mmsa" + ("_exact" if args.exact else "") + \
        ("_quick" if args.quick else "")
    if args.report_only:
        return report_again(name)
    if args.quick:
        args.max_epochs, args.patience = 2, 2
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    command = " ".join(["python -m bench.peer_mmsa", *(["--quick"] if args.quick else []),
                        *(["--mosi"] if args.mosi else []), *(["--exact"] if args.exact else []),
                        "--seeds", *map(str, args.seeds),
                        f"--max-epochs {args.max_epochs} --patience {args.patience}",
                        *(["--model-seeds", *args.model_seeds] if args.model_seeds else []),
                        *([f"--steps {' '.join(map(str, args.steps))}"] if args.steps else []),
                        f"--threads {args.threads}"])
    work = Path(tempfile.mkdtemp(prefix="peer_mmsa_"))
    shape = QUICK if args.quick else MOSI if args.mosi else BENCH
    if args.steps:
        shape = dataclasses.replace(shape, steps=tuple(args.steps))
    files = {kind: write_pickle((args.data or work / "data") / f"{kind}_50.pkl", aligned=kind == "aligned",
                                shape=shape) for kind in ("aligned", "unaligned")}
    problems = {kind: compare_loaders(path, aligned=kind == "aligned") for kind, path in files.items()}
    print("loaders:", problems, flush=True)
    runs: list[Run] = []
    started = time.perf_counter()
    load_at_start = os.getloadavg()[1]
    for i, seed in enumerate(args.seeds):
        for j, model in enumerate(args.models):
            if i >= caps.get(model, len(args.seeds)):
                continue
            kind = PAIRS[model][1]
            if args.exact:
                check_same_start(model, files[kind], seed, steps=shape.steps[0])
            ours = functools.partial(run_mmgpt, steps=shape.steps[0])  # aligned: the text's steps
            sides = [(model, run_mmsa), (mmgpt_side(model, args.exact), ours)]
            for side, fn in sides if (i + j) % 2 == 0 else reversed(sides):  # alternate who goes first
                run = fn(side, files[kind], seed, max_epochs=args.max_epochs, patience=args.patience, work=work)
                runs.append(run)
                print(f"{run.side} {run.model} seed {seed}: {run.epochs} epochs, {run.s_per_epoch:.2f} s/epoch, "
                      f"{run.samples_per_s:.0f} samples/s, " + " ".join(f"{k}={v:.4f}" for k, v in run.metrics.items()),
                      flush=True)
                # after every run: a partial table survives
                load = (f"5-minute load average of this {os.cpu_count()}-CPU machine {load_at_start:.1f} at the start, "
                        f"{os.getloadavg()[1]:.1f} at the last run's end")
                report(runs, command=command, shape=shape, problems=problems, seeds=args.seeds,
                       wall=time.perf_counter() - started, name=name, exact=args.exact, load=load)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
