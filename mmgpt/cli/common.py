"""Pieces shared by the entry points: building loggers and callbacks, run metadata, result files."""

from __future__ import annotations

import functools
import json
import logging
import os
import resource
import sys
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from mmgpt.errors import UserError

log = logging.getLogger(__name__)
P = ParamSpec("P")
R = TypeVar("R")


def user_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Report a :class:`~mmgpt.errors.UserError` (or a missing file) as one line and exit 1, not a traceback.

    ``MMGPT_TRACEBACK=1`` re-raises, for debugging.
    """

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            cause = _user_cause(e)
            if cause is None or os.environ.get("MMGPT_TRACEBACK"):
                raise
            raise SystemExit(f"error: {cause}") from None

    return wrapper


def _user_cause(e: BaseException) -> BaseException | None:
    """The :class:`UserError` (or missing file) ``e`` is, or was raised from: Hydra's ``instantiate`` wraps what a
    constructor raises (e.g. a part of the network that cannot be loaded) in its own exception."""
    from omegaconf.errors import MissingMandatoryValue

    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, (UserError, FileNotFoundError)):
            return e
        if isinstance(e, MissingMandatoryValue):  # a `???` the command line did not fill (ckpt_path, data.root)
            key = getattr(e, "full_key", None) or str(e).splitlines()[0].rsplit(": ", 1)[-1]
            return UserError(f"{key}: missing; give it on the command line ({key}=...)")
        seen.add(id(e))
        e = e.__cause__  # type: ignore[assignment]
    return None


def take_override(args: Sequence[str], key: str) -> tuple[str | None, list[str]]:
    """Remove every ``key=value`` from ``args``: the last value (None when absent; as written, quotes included) and
    the other arguments. The one parser of a command's own arguments (``report=DIR``, ``tune=N``...) and of the
    overrides a comparison takes apart (``model/fusion=...``, ``seed=...``)."""
    values = [a.split("=", 1)[1] for a in args if a.startswith(f"{key}=")]
    return (values[-1] if values else None), [a for a in args if not a.startswith(f"{key}=")]


@contextmanager
def logging_restored() -> Iterator[None]:
    """Afterwards, the root logger has its handlers and level of before: a Hydra job run in this process points
    logging at its run directory's log file, which must not outlive the job."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        for handler in root.handlers[:]:
            if handler not in handlers:
                root.removeHandler(handler)
                handler.close()
        for handler in handlers:
            if handler not in root.handlers:
                root.addHandler(handler)
        root.setLevel(level)


def instantiate_group(cfg: DictConfig | None) -> list[Any]:
    """Instantiate every ``_target_`` entry of a dict-of-configs group (``logger``, ``callbacks``), in key order."""
    if not cfg:
        return []
    return [instantiate(node) for _, node in sorted(cfg.items()) if isinstance(node, DictConfig) and "_target_" in node]


def explicit_overrides(prefix: str = "data.") -> set[str]:
    """The keys under ``prefix`` set on the command line of the running Hydra app (``data.sample_rate=8000`` ->
    ``sample_rate``); empty outside Hydra."""
    if not HydraConfig.initialized():
        return set()
    keys = (o.split("=", 1)[0].lstrip("+~") for o in HydraConfig.get().overrides.task)
    return {k[len(prefix):] for k in keys if k.startswith(prefix)}


def build_datamodule(data_cfg: DictConfig | Mapping[str, Any], net: Mapping[str, Any],
                     explicit: Collection[str] = ()) -> pl.LightningDataModule:
    """The datamodule of ``data_cfg`` (a ``_target_`` config) with the processors the network's encoders declare
    (:func:`mmgpt.datamodules.processors.build_processors`): preprocessing travels with the encoders."""
    from mmgpt.datamodules.encoder_processors import build_processors  # the entry point is the edge: imported here

    data = OmegaConf.to_container(data_cfg, resolve=True) if isinstance(data_cfg, DictConfig) else dict(data_cfg)
    processors = build_processors(net, data, explicit=explicit)
    return instantiate(data_cfg, _convert_="all", processors=processors)


def use_feature_cache(fc: Any, datamodule: pl.LightningDataModule, module: pl.LightningModule,
                      init_report: Any = None) -> dict[str, Any]:
    """Give ``datamodule`` the cached processors of every modality whose frozen backbone's hidden states can be
    cached (the ``feature_cache`` config node ``fc``); returns them by modality. Nothing when ``fc.mode=off`` or no
    encoder is a backbone (the scratch path imports nothing for it).

    Not cached: the text modality when an objective or the decoder reads its token ids, and a backbone whose weights
    ``init_from`` replaced (their hash no longer names them).
    """
    from mmgpt.encoders.backbone import BackboneEncoder
    from mmgpt.objectives import CausalLM, MaskedLM

    if fc.mode not in ("auto", "off"):
        raise UserError(f"feature_cache.mode={fc.mode!r}: expected auto or off")
    net = module.net
    if fc.mode == "off" or not any(isinstance(e, BackboneEncoder) for e in net.encoders.values()):
        return {}
    if not hasattr(datamodule, "replace_processors"):
        log.info("feature cache: %s has no processors to replace; not cached", type(datamodule).__name__)
        return {}
    from mmgpt.datamodules.feature_cache import install  # the entry point is the edge: imported here

    exclude = set()
    if net.decoder is not None or any(isinstance(o, (CausalLM, MaskedLM)) for o in module.objectives.values()):
        exclude.add(net.text_modality)  # they read the text's token ids
    if init_report is not None:
        exclude |= {m for m in net.encoders if any(k.startswith(f"encoders.{m}.backbone.") for k in init_report.loaded)}
    return install(datamodule, net, root=fc.dir, dtype=fc.dtype, exclude=exclude)


def feature_cache_callbacks(fc: Any, datamodule: pl.LightningDataModule, module: pl.LightningModule,
                            init_report: Any = None, splits: tuple[str, ...] = ("train", "val", "test"),
                            ) -> list[pl.Callback]:
    """:func:`use_feature_cache`, and the callback that fills the cache (``splits``) on the device before the first
    batch."""
    processors = use_feature_cache(fc, datamodule, module, init_report)
    if not processors:
        return []
    from mmgpt.datamodules.feature_cache import FillFeatureCache

    return [FillFeatureCache(processors, batch_size=fc.batch_size, splits=splits)]


def hydra_choice(group: str) -> str | None:
    """The option chosen for a config group in the running Hydra app (e.g. ``model/fusion`` -> ``late``)."""
    if not HydraConfig.initialized():
        return None
    return HydraConfig.get().runtime.choices.get(group)


def peak_memory() -> dict[str, Any]:
    """Peak memory of this process: CUDA allocator peak when on GPU, else the process's maximum resident set."""
    if torch.cuda.is_available() and torch.cuda.max_memory_allocated() > 0:
        return {"peak_memory_mb": torch.cuda.max_memory_allocated() / 2**20, "peak_memory_kind": "cuda_allocated"}
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"peak_memory_mb": rss_mb, "peak_memory_kind": "cpu_max_rss"}


def metrics_of(results: list[dict[str, float]] | None) -> dict[str, float]:
    """Flatten Lightning's ``validate``/``test`` return value into ``{"val/acc": 0.97, ...}``."""
    out: dict[str, float] = {}
    for d in results or []:
        out.update({k: float(v) for k, v in d.items()})
    return out


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` atomically (temp file + rename), so readers never see a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
    tmp.replace(path)


def finish_wandb(loggers: list[Any]) -> None:
    """Close wandb runs so each Hydra job (and each multirun point) is its own run."""
    from pytorch_lightning.loggers import WandbLogger

    if any(isinstance(lg, WandbLogger) for lg in loggers):
        import wandb

        wandb.finish()


def rank_zero() -> bool:
    return pl.utilities.rank_zero_only.rank == 0


_DDP_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


@contextmanager
def ddp_env_restored() -> Iterator[None]:
    """Afterwards, the DDP environment variables are as before and no process group is left, so that the next
    training job of this process launches its own ranks (Lightning's launcher reads both to decide)."""
    saved_env = {k: os.environ.get(k) for k in _DDP_ENV}
    try:
        yield
    finally:
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


@contextmanager
def relaunchable_job(run_dir: Path) -> Iterator[None]:
    """Let Lightning's DDP launcher start the other ranks of *this* job of a multirun (``trainer=ddp_sim``).

    The launcher re-runs ``sys.argv`` plus ``hydra.run.dir=<HydraConfig run.dir>`` in each new process. Inside a
    multirun that would be the whole sweep, so for the duration of the job the command line becomes this job's
    overrides in run mode, and ``run.dir`` its directory. Afterwards the DDP environment variables and the process
    group are cleared (:func:`ddp_env_restored`), so that the next job launches its own processes. Outside a
    multirun this does nothing.
    """
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        yield
        return
    hc = HydraConfig.get()
    saved_argv, saved_run_dir = sys.argv, hc.run.dir
    sys.argv = [sys.argv[0], *(str(o) for o in hc.overrides.task), "hydra.mode=RUN"]
    with read_write(hc), open_dict(hc):
        hc.run.dir = str(run_dir)
    try:
        with ddp_env_restored():
            yield
    finally:
        sys.argv = saved_argv
        with read_write(hc), open_dict(hc):
            hc.run.dir = saved_run_dir


#: The order of the config tree's top-level branches (the rest follow in key order).
_TREE_ORDER = ("data", "model", "trainer", "callbacks", "logger", "paths")


def config_tree(cfg: DictConfig, *, color: bool) -> str:
    """The resolved config as a tree: one branch per top-level group (data, model, trainer...), its YAML inside;
    Hydra's own node left out. ``color``: with terminal colours and box lines, else plain text."""
    import io

    from rich.console import Console
    from rich.syntax import Syntax
    from rich.tree import Tree

    plain = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k != "hydra"}
    order = [k for k in _TREE_ORDER if k in plain] + sorted(k for k in plain if k not in _TREE_ORDER)
    tree = Tree("config", guide_style="dim" if color else "")
    for key in order:
        value = plain[key]
        text = OmegaConf.to_yaml(value).rstrip() if isinstance(value, (dict, list)) else str(value)
        tree.add(key).add(Syntax(text, "yaml", theme="ansi_dark") if color else text)
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=color, color_system="auto" if color else None, width=120,
                      safe_box=not color)
    console.print(tree)
    return buf.getvalue()


def show_config(cfg: DictConfig) -> None:
    """Print the resolved config as a tree at the start of a run: coloured on a terminal, plain text in logs
    (the run directory's log file and a non-terminal output get the plain tree through the logger); credentials
    under ``storage_options`` are shown as REDACTED."""
    from mmgpt.secrets import config_secrets, scrub

    secrets = config_secrets(cfg)
    if secrets:
        cfg = OmegaConf.create(scrub({k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items()
                                      if k != "hydra"}, secrets))
    if sys.stdout.isatty():
        sys.stdout.write(config_tree(cfg, color=True))
        sys.stdout.flush()
    else:
        log.info("config:\n%s", config_tree(cfg, color=False))
