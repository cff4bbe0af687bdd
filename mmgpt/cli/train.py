"""``mmgpt-train``: train a multimodal Transformer. All behaviour comes from the Hydra config (conf/train.yaml).

:func:`train` is the recipe, readable top to bottom: check the config, build data, model, callbacks, loggers and
trainer, fit, evaluate the best checkpoint, write ``results.json``. Resuming, the run directory's files and the
results are named helpers below it.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.utilities.exceptions import SIGTERMException
from torch import nn

import mmgpt.cli  # noqa: F401  (registers the config schemas)
from mmgpt.cli.app import with_version
from mmgpt.cli.common import (
    build_datamodule,
    explicit_overrides,
    feature_cache_callbacks,
    finish_wandb,
    hydra_choice,
    instantiate_group,
    metrics_of,
    peak_memory,
    rank_zero,
    relaunchable_job,
    show_config,
    user_errors,
    write_json,
)
from mmgpt.cli.slurm import register_launcher_plugin, requeued_slurm_job
from mmgpt.config import (
    CONFIG_DIR,
    ConfigKeyError,
    apply_backbones,
    apply_objectives,
    check_model_specs,
    check_targets,
    resolved,
)
from mmgpt.registry import fit_to_data, import_plugins
from mmgpt.secrets import config_secrets, is_secret_key, redacted, scrub
from mmgpt.stamp import current_command, run_stamp, spec_libraries
from mmgpt.stored_config import checkpoint_string
from mmgpt.training.callbacks import (
    FlushLogsWithCheckpoint,
    RestoreLoaderPosition,
    RngStateInCheckpoint,
    RunConfigInCheckpoint,
    Throughput,
)
from mmgpt.training.checkpointing import check_resume_compatible, find_resume_checkpoint
from mmgpt.training.distributed import layer_classes
from mmgpt.training.epoch_state import EpochMetricsInCheckpoint
from mmgpt.training.finetune import LoadReport, init_from_checkpoint, parameter_counts, trainable_by_part
from mmgpt.training.lit_module import MultimodalModule
from mmgpt.training.loggers import prepare_metrics_csv
from mmgpt.training.safe_load import read_checkpoint
from mmgpt.training.tracking import dashboard_hparams, label_run, log_final, reset_peak_memory

log = logging.getLogger("mmgpt.train")

#: exit status of a run stopped by SIGTERM (128 + 15, as a shell reports a process killed by it): not 0, so a
#: scheduler or script never takes an interrupted run for a finished one
EXIT_SIGTERM = 143

#: Callbacks that resuming and evaluation rely on (listed, with why, in conf/callbacks/default.yaml).
REQUIRED_CALLBACKS = (RunConfigInCheckpoint, RngStateInCheckpoint, FlushLogsWithCheckpoint, RestoreLoaderPosition,
                      EpochMetricsInCheckpoint)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train, validate and test as configured; write ``results.json`` into the run directory and return it."""
    check_config(cfg)
    if cfg.get("print_config", True) and rank_zero():
        show_config(cfg)
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    reset_peak_memory()  # tracking: this run's peak, not the multirun process's
    pl.seed_everything(cfg.seed, workers=True)

    net = OmegaConf.to_container(cfg.model.net, resolve=True)
    datamodule = build_datamodule(cfg.data, net, explicit=explicit_overrides("data."))  # encoders' processors
    module = build_module(cfg, datamodule)
    check_primary_metric(cfg, module)
    init_report = init_from_checkpoint(module.net, cfg.init_from) if cfg.get("init_from") else None  # fine-tuning
    resume = resume_state(cfg, out_dir, module)
    callbacks = build_callbacks(cfg) + feature_cache(cfg, datamodule, module, init_report)
    loggers = build_loggers(cfg, resume)
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    stamp = scrub(run_stamp(current_command(), spec_libraries(module.hparams["net"])), config_secrets(cfg))
    record_run(cfg, out_dir, loggers, resume, stamp)

    try:
        t0 = time.perf_counter()
        if cfg.train:
            fit(trainer, module, datamodule, resume, out_dir)
        best = best_checkpoint(trainer, out_dir)
        val = metrics_of(trainer.validate(module, datamodule=datamodule, ckpt_path=best, verbose=False))
        test = test_metrics(cfg, trainer, module, datamodule, best)
        results = assemble_results(cfg, trainer, module, val, test, best, init_report, time.perf_counter() - t0)
        results["stamp"] = stamp
        if rank_zero():
            write_results(cfg, out_dir, results, loggers)
        return results
    finally:
        finish_wandb(loggers)


def check_config(cfg: DictConfig) -> None:
    """Everything that can be checked before anything is built: keys, typed specs, the objectives shorthand."""
    for group in ("fusion", "decoder"):  # `model.fusion=late` where `model/fusion=late` was meant
        if isinstance(cfg.model.get(group), str):
            raise ConfigKeyError(f"model.{group}={cfg.model[group]!r}: to choose a {group}, use the config group "
                                 f"with a slash: model/{group}={cfg.model[group]}")
    import_plugins(cfg.get("plugins"))
    apply_backbones(cfg)  # encoders.text=hf:DIR -> the encoder config the long form composes
    check_targets(cfg)
    apply_objectives(cfg)
    check_model_specs(cfg)


def build_module(cfg: DictConfig, datamodule: pl.LightningDataModule) -> MultimodalModule:
    """The LightningModule of ``cfg.model.module`` around the network spec ``cfg.model.net``, sized for the data."""
    module = instantiate(
        cfg.model.module,
        net=network_spec(cfg, datamodule),
        num_classes=datamodule.num_classes,
        class_names=list(datamodule.class_names),
        _recursive_=False,
    )
    apply_speedups(module.net, compile=cfg.model.get("compile", False),
                   activation_checkpointing=cfg.model.get("activation_checkpointing", False))
    return module


def check_primary_metric(cfg: DictConfig, module: MultimodalModule) -> None:
    """``primary_metric`` must be a metric the objectives log (or ``loss``), and ``mode`` max or min."""
    name, mode = cfg.primary_metric.name, cfg.primary_metric.mode
    if mode not in ("max", "min"):
        raise ConfigKeyError(f"primary_metric.mode={mode!r}: expected max (higher is better) or min")
    logged = sorted({"loss", *(k for metrics in module.val_metrics.values() for k in metrics)})
    if name not in logged:
        raise ConfigKeyError(f"primary_metric.name={name!r}: the task's objectives log no such metric (they log: "
                             f"{', '.join(logged)}); each conf/task/*.yaml sets its primary metric")


def network_spec(cfg: DictConfig, datamodule: pl.LightningDataModule) -> dict[str, Any]:
    """``cfg.model.net`` as a plain dict, fitted to the data (:func:`mmgpt.registry.fit_to_data`)."""
    net = OmegaConf.to_container(cfg.model.net, resolve=True)
    assert isinstance(net, dict)
    declared = data_modalities(datamodule)
    if declared:  # a datamodule on the shared base: its declared modalities decide the encoders' kinds and sizes
        net = fit_to_data(net, declared)
    return net


def data_modalities(datamodule: pl.LightningDataModule) -> dict[str, dict[str, Any]]:
    """name -> ``{"kind", "dim"}`` of the modalities ``datamodule`` declares (its processors)."""
    processors = getattr(datamodule, "processors", None) or {}
    return {name: {"kind": p.kind, "dim": getattr(p, "dim", None)} for name, p in processors.items()}


def apply_speedups(net: nn.Module, compile: bool, activation_checkpointing: bool) -> None:
    """Optionally recompute Transformer blocks in backward (less memory) and ``torch.compile`` the network.

    Both act in place and keep parameter names, so checkpoints load into a plain network.
    """
    if activation_checkpointing:
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import apply_activation_checkpointing

        layers = layer_classes(net)  # the Transformer blocks and every pretrained backbone's layer class
        apply_activation_checkpointing(net, check_fn=lambda m: isinstance(m, layers))
    if compile:
        net.compile()


def build_callbacks(cfg: DictConfig) -> list[pl.Callback]:
    """The ``callbacks`` group, in key order; the required ones must be among them."""
    callbacks = instantiate_group(cfg.callbacks)
    for required in REQUIRED_CALLBACKS:
        if not any(isinstance(cb, required) for cb in callbacks):
            raise ConfigKeyError(f"callbacks: {required.__name__} is required (resume and evaluation depend on it); "
                                 "keep the entries of conf/callbacks/default.yaml's last section")
    for cb in callbacks:
        if isinstance(cb, RunConfigInCheckpoint):
            cb.config = resolved(cfg)  # what mmgpt-eval rebuilds the data from
    return callbacks


def feature_cache(cfg: DictConfig, datamodule: pl.LightningDataModule, module: MultimodalModule,
                  init_report: LoadReport | None) -> list[pl.Callback]:
    """The frozen-feature cache (``feature_cache``): frozen backbones' modalities read cached hidden states, and a
    callback fills what is missing on the training device before the first batch (every rank its share, then a
    barrier). See :func:`mmgpt.cli.common.feature_cache_callbacks`."""
    return feature_cache_callbacks(cfg.feature_cache, datamodule, module, init_report)


@dataclass
class ResumeState:
    """Where a resumed run continues from: the checkpoint, its global step and its wandb run id."""

    ckpt_path: Path
    global_step: int
    wandb_id: str | None


def resume_state(cfg: DictConfig, out_dir: Path, module: MultimodalModule) -> ResumeState | None:
    """The checkpoint to continue from (``ckpt_path``, or ``resume=auto``'s newest good one), checked to fit."""
    path = resume_checkpoint(cfg, out_dir)
    if path is None:
        return None
    saved = read_checkpoint(path)
    check_resume_compatible(saved, module.hparams["net"], path)
    # the wandb id goes into the logger's config: a plain string, never an interpolation to resolve
    return ResumeState(path, int(saved.get("global_step", 0)), checkpoint_string(saved, "wandb_id", path))


def resume_checkpoint(cfg: DictConfig, out_dir: Path) -> Path | None:
    """The checkpoint to resume from: ``ckpt_path`` if given; with ``resume=auto`` the run directory's newest one."""
    if cfg.ckpt_path:
        path = Path(cfg.ckpt_path)
        if not path.exists():  # a file, or a sharded checkpoint's folder (trainer=fsdp)
            raise FileNotFoundError(f"ckpt_path={cfg.ckpt_path}: no such checkpoint file")
        return path
    if cfg.get("resume") == "auto":
        found = find_resume_checkpoint(out_dir)
        log.info("resume=auto: %s",
                 f"continuing from {found}" if found else f"no checkpoint in {out_dir}, starting fresh")
        return found
    if cfg.get("resume") not in (None, "auto"):
        raise ConfigKeyError(f"resume={cfg.resume!r}: expected null or 'auto' "
                             "(use ckpt_path=PATH for a given checkpoint)")
    return None


def build_loggers(cfg: DictConfig, resume: ResumeState | None) -> list[Any]:
    """The ``logger`` group; a resumed run continues the same wandb run."""
    if resume is not None and resume.wandb_id and cfg.logger and "wandb" in cfg.logger:
        with open_dict(cfg):
            cfg.logger.wandb.id = resume.wandb_id
    return instantiate_group(cfg.logger)


def record_run(cfg: DictConfig, out_dir: Path, loggers: list[Any], resume: ResumeState | None,
               stamp: dict[str, Any] | None = None) -> None:
    """The run directory's config.yaml and metrics.csv, the loggers' hyperparameters (with the run ``stamp``:
    commit, versions, command, host, devices) and run labels."""
    if rank_zero():  # a resumed run continues metrics.csv; a fresh one never appends to another run's
        prepare_metrics_csv(out_dir / "metrics.csv", None if resume is None else resume.global_step)
        OmegaConf.save(OmegaConf.create(resolved(cfg)), out_dir / "config.yaml")
        redact_hydra_files(cfg, out_dir / ".hydra")
    run_config = resolved(cfg)
    if stamp is not None:
        run_config["stamp"] = stamp
    for lg in loggers:
        lg.log_hyperparams(run_config)
    label_run(loggers, fusion=fusion_name(cfg), seed=int(cfg.seed))  # tracking: wandb tags + config


def redact_hydra_files(cfg: DictConfig, folder: Path) -> None:
    """Hydra's copies of the config and the command line (``.hydra/``) without credentials (see :func:`redacted`),
    when any was given in the config or on the command line."""
    config = OmegaConf.to_container(cfg, resolve=False)
    if (folder / "config.yaml").is_file() and redacted(config) != config:
        OmegaConf.save(OmegaConf.create(redacted(config)), folder / "config.yaml")
    secrets = config_secrets(cfg)  # a `data.storage_options={key: ..., secret: ...}` override holds them as text
    overrides = folder / "overrides.yaml"
    if overrides.is_file():
        given = OmegaConf.to_container(OmegaConf.load(overrides))
        kept = scrub([o for o in given if not is_secret_key(str(o).split("=", 1)[0])], secrets)
        if kept != given:
            OmegaConf.save(OmegaConf.create(kept), overrides)
    hydra_file = folder / "hydra.yaml"  # hydra.overrides.task and hydra.job.override_dirname
    if secrets and hydra_file.is_file():
        OmegaConf.save(OmegaConf.create(scrub(OmegaConf.to_container(OmegaConf.load(hydra_file)), secrets)),
                       hydra_file)


def fit(trainer: pl.Trainer, module: MultimodalModule, datamodule: pl.LightningDataModule,
        resume: ResumeState | None, out_dir: Path) -> None:
    """``trainer.fit``, from the resume checkpoint if any; an interruption says how to continue."""
    if resume is not None:  # a resumed run's checkpoint directory is expected to hold checkpoints
        warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume and resume.ckpt_path, weights_only=True)
    except SIGTERMException:  # Lightning stops on SIGTERM with a SystemExit that carries no status: exit 0
        _how_to_continue(out_dir)
        raise SystemExit(EXIT_SIGTERM) from None
    except (KeyboardInterrupt, SystemExit) as e:
        _how_to_continue(out_dir, getattr(e, "code", None))
        raise
    if trainer.interrupted:
        _how_to_continue(out_dir)
        raise SystemExit(130)


def best_checkpoint(trainer: pl.Trainer, out_dir: Path) -> str | None:
    """The best checkpoint of this run, found in ``out_dir`` (also when the run directory was copied or moved)."""
    path = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    if not path:
        return None
    here = out_dir / "checkpoints" / Path(path).name
    return str(here) if here.is_file() else path


def test_metrics(cfg: DictConfig, trainer: pl.Trainer, module: MultimodalModule,
                 datamodule: pl.LightningDataModule, best: str | None) -> dict[str, float]:
    """Test metrics of the best checkpoint; empty when ``test=false`` or the data has no test split (said so)."""
    if not cfg.test:
        return {}
    has_split = getattr(datamodule, "has_split", None)
    if has_split is not None and not has_split("test"):
        log.info("the data has no test split: test stage skipped (results.json has val metrics only)")
        return {}
    return metrics_of(trainer.test(module, datamodule=datamodule, ckpt_path=best, verbose=False))


def assemble_results(cfg: DictConfig, trainer: pl.Trainer, module: MultimodalModule, val: dict[str, float],
                     test: dict[str, float], best: str | None, init_report: LoadReport | None,
                     wall_time_s: float) -> dict[str, Any]:
    """What ``results.json`` holds: metrics, sizes, speed, memory and where the run's files are."""
    throughput = next((c for c in trainer.callbacks if isinstance(c, Throughput)), None)
    return {
        "fusion": fusion_name(cfg),
        "fusion_type": str(cfg.model.fusion.type),
        "seed": int(cfg.seed),
        "val": val,
        "test": test,
        "params": module.net.param_counts(),
        "params_trainable": parameter_counts(module)[0],
        "params_by_part": trainable_by_part(module.net),  # trainable / frozen (/ adapters) per encoder and part
        "init_from": None if init_report is None else {
            "path": str(cfg.init_from), "loaded": len(init_report.loaded), "missing": init_report.missing,
            "unexpected": init_report.unexpected, "mismatched": sorted(init_report.mismatched)},
        "train_samples_per_sec": throughput.steady_rate if throughput else None,  # training steps only
        "val_samples_per_sec": throughput.val_rate if throughput else None,
        "wall_time_s": wall_time_s,
        "epochs": trainer.current_epoch,
        "global_step": trainer.global_step,
        "world_size": trainer.world_size,
        "best_ckpt": best,
        "run_dir": str(Path(cfg.paths.output_dir)),
        **peak_memory(),
    }


def write_results(cfg: DictConfig, out_dir: Path, results: dict[str, Any], loggers: list[Any]) -> None:
    """``results.json``, the dashboards' summary and HParams, and where to find everything."""
    write_json(out_dir / "results.json", results)
    hparams = dashboard_hparams(cfg, results["fusion"])
    hparams.update({f"trainable/{part}": c["trainable"] for part, c in results["params_by_part"].items()})
    log_final(loggers, results, hparams)  # tracking: summary, HParams
    log.info("val %s | test %s", _fmt(results["val"]), _fmt(results["test"]))
    log.info("results: %s", out_dir / "results.json")
    log.info("metrics: %s", out_dir / "metrics.csv")
    if results["best_ckpt"]:
        log.info("best checkpoint: %s", results["best_ckpt"])


def fusion_name(cfg: DictConfig) -> str:
    """The ``model/fusion`` option (``early``...), or the fusion's registered type outside a Hydra app."""
    return hydra_choice("model/fusion") or str(cfg.model.fusion.type)


def _how_to_continue(out_dir: Path, exit_code: object = None) -> None:
    if not rank_zero():
        return
    job = requeued_slurm_job(exit_code)
    if job:  # the scheduler starts it again by itself: nothing for the user to do
        log.warning("training was interrupted; SLURM requeued job %s, which continues from its newest checkpoint "
                    "in %s when it starts again (if its command has resume=auto)", job, out_dir)
    else:
        log.warning("training was interrupted; continue it from its newest checkpoint with the same command plus: "
                    "resume=auto hydra.run.dir=%s", out_dir)


def _fmt(metrics: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items()))


register_launcher_plugin()  # hydra/launcher=slurm, from an editable install too


@with_version("mmgpt-train")
@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
@user_errors
def main(cfg: DictConfig) -> float | None:
    with relaunchable_job(Path(cfg.paths.output_dir)):  # multirun x DDP: each sweep point launches its own ranks
        results = train(cfg)
    return results["val"].get(f"val/{cfg.primary_metric.name}")


if __name__ == "__main__":
    main()
