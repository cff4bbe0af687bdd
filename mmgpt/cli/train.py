"""``mmgpt-train``: train a multimodal Transformer. All behaviour comes from the Hydra config (conf/train.yaml)."""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

import mmgpt.cli  # noqa: F401  (registers the config schemas)
from mmgpt.training.callbacks import (
    FlushLogsWithCheckpoint,
    RestoreLoaderPosition,
    RngStateInCheckpoint,
    RunConfigInCheckpoint,
    Throughput,
)
from mmgpt.cli.common import (
    finish_wandb,
    hydra_choice,
    instantiate_group,
    metrics_of,
    peak_memory,
    rank_zero,
    relaunchable_job,
    write_json,
)
from mmgpt.training.checkpointing import check_resume_compatible, find_resume_checkpoint, load_checkpoint
from mmgpt.config import CONFIG_DIR, ConfigKeyError, apply_objectives, check_targets, resolved
from mmgpt.training.finetune import init_from_checkpoint, parameter_counts
from mmgpt.layers import Block
from mmgpt.training.lit_module import MultimodalClassifier
from mmgpt.training.loggers import prepare_metrics_csv
from mmgpt.training.tracking import dashboard_hparams, label_run, log_final, reset_peak_memory

log = logging.getLogger("mmgpt.train")


def build_module(cfg: DictConfig, datamodule: pl.LightningDataModule) -> MultimodalClassifier:
    """The LightningModule of ``cfg.model.module`` around ``cfg.model.net``, sized for the datamodule's classes."""
    net = OmegaConf.to_container(cfg.model.net, resolve=True)
    module = instantiate(
        cfg.model.module,
        net=net,
        num_classes=datamodule.num_classes,
        class_names=list(datamodule.class_names),
        _recursive_=False,
    )
    apply_speedups(module.net, compile=cfg.model.get("compile", False),
                   activation_checkpointing=cfg.model.get("activation_checkpointing", False))
    return module


def apply_speedups(net: nn.Module, compile: bool, activation_checkpointing: bool) -> None:
    """Optionally recompute Transformer blocks in backward (less memory) and ``torch.compile`` the network.

    Both act in place and keep parameter names, so checkpoints load into a plain network.
    """
    if activation_checkpointing:
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import apply_activation_checkpointing

        apply_activation_checkpointing(net, check_fn=lambda m: isinstance(m, Block))
    if compile:
        net.compile()


def build_trainer(cfg: DictConfig, run_config: dict[str, Any],
                  extra_callbacks: tuple[pl.Callback, ...] = ()) -> tuple[pl.Trainer, list[pl.Callback], list[Any]]:
    """The Trainer of ``cfg.trainer`` with the configured callbacks and loggers, plus the callbacks every run needs.

    Returns (trainer, callbacks, loggers). ``bench.configured_run`` times the Trainer this builds.
    """
    callbacks = instantiate_group(cfg.callbacks) + [RunConfigInCheckpoint(run_config), RngStateInCheckpoint(),
                                                    FlushLogsWithCheckpoint(), RestoreLoaderPosition(),
                                                    *extra_callbacks]
    loggers = instantiate_group(cfg.logger)
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    return trainer, callbacks, loggers


def resume_checkpoint(cfg: DictConfig, out_dir: Path) -> Path | None:
    """The checkpoint to resume from: ``ckpt_path`` if given; with ``resume=auto`` the run directory's newest good one."""
    if cfg.ckpt_path:
        path = Path(cfg.ckpt_path)
        if not path.is_file():
            raise FileNotFoundError(f"ckpt_path={cfg.ckpt_path}: no such checkpoint file")
        return path
    if cfg.get("resume") == "auto":
        found = find_resume_checkpoint(out_dir)
        log.info("resume=auto: %s", f"continuing from {found}" if found else f"no checkpoint in {out_dir}, starting fresh")
        return found
    if cfg.get("resume") not in (None, "auto"):
        raise ValueError(f"resume={cfg.resume!r}: expected null or 'auto' (use ckpt_path=PATH for a given checkpoint)")
    return None


def fusion_name(cfg: DictConfig) -> str:
    """The ``model/fusion`` option (``early``...), or the fusion class name outside a Hydra app."""
    return hydra_choice("model/fusion") or str(cfg.model.fusion._target_).rsplit(".", 1)[-1]


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train, validate and test as configured; write ``results.json`` into the run directory and return it."""
    for group in ("fusion", "decoder"):  # `model.fusion=late` where `model/fusion=late` was meant
        if isinstance(cfg.model.get(group), str):
            raise ConfigKeyError(f"model.{group}={cfg.model[group]!r}: to choose a {group}, use the config group "
                                 f"with a slash: model/{group}={cfg.model[group]}")
    check_targets(cfg)
    apply_objectives(cfg)
    reset_peak_memory()  # tracking: this run's peak, not the multirun process's
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(cfg.seed, workers=True)
    run_config = resolved(cfg)

    datamodule = instantiate(cfg.data, _convert_="all")
    module = build_module(cfg, datamodule)
    init_report = init_from_checkpoint(module.net, cfg.init_from) if cfg.get("init_from") else None  # fine-tuning
    resume_from = resume_checkpoint(cfg, out_dir)
    if resume_from is not None:
        saved = load_checkpoint(resume_from)
        check_resume_compatible(saved, module.hparams["net"], resume_from)
        wandb_id = (saved.get("mmgpt") or {}).get("wandb_id")
        if wandb_id and cfg.logger and "wandb" in cfg.logger:
            with open_dict(cfg):
                cfg.logger.wandb.id = wandb_id  # the resumed run continues the same wandb run
    if rank_zero():  # a resumed run continues metrics.csv; a fresh one never appends to another run's
        resume_step = None if resume_from is None else int(saved.get("global_step", 0))
        prepare_metrics_csv(out_dir / "metrics.csv", resume_step)
    trainer, callbacks, loggers = build_trainer(cfg, run_config)
    if rank_zero():
        OmegaConf.save(cfg, out_dir / "config.yaml", resolve=True)
    for lg in loggers:
        lg.log_hyperparams(run_config)
    label_run(loggers, fusion=fusion_name(cfg), seed=int(cfg.seed))  # tracking: wandb tags + config

    t0 = time.perf_counter()
    try:
        if cfg.train:
            if resume_from is not None:  # a resumed run's checkpoint directory is expected to hold checkpoints
                warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
            try:
                trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from, weights_only=True)
            except (KeyboardInterrupt, SystemExit):
                _how_to_continue(out_dir)
                raise
            if trainer.interrupted:
                _how_to_continue(out_dir)
                raise SystemExit(130)
        ckpt = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        ckpt = ckpt or None
        val = metrics_of(trainer.validate(module, datamodule=datamodule, ckpt_path=ckpt, verbose=False))
        test = metrics_of(trainer.test(module, datamodule=datamodule, ckpt_path=ckpt, verbose=False)) if cfg.test else {}
        throughput = next((c for c in callbacks if isinstance(c, Throughput)), None)
        results = {
            "fusion": fusion_name(cfg),
            "fusion_target": str(cfg.model.fusion._target_),
            "seed": int(cfg.seed),
            "val": val,
            "test": test,
            "params": module.net.param_counts(),
            "params_trainable": parameter_counts(module)[0],
            "init_from": None if init_report is None else {
                "path": str(cfg.init_from), "loaded": len(init_report.loaded), "missing": init_report.missing,
                "unexpected": init_report.unexpected, "mismatched": sorted(init_report.mismatched)},
            "train_samples_per_sec": throughput.steady_rate if throughput else None,  # training steps only
            "val_samples_per_sec": throughput.val_rate if throughput else None,
            "wall_time_s": time.perf_counter() - t0,
            "epochs": trainer.current_epoch,
            "global_step": trainer.global_step,
            "world_size": trainer.world_size,
            "best_ckpt": ckpt,
            "run_dir": str(out_dir),
            **peak_memory(),
        }
        if rank_zero():
            write_json(out_dir / "results.json", results)
            log_final(loggers, results, dashboard_hparams(cfg, results["fusion"]))  # tracking: summary, HParams
            log.info("val %s | test %s", _fmt(val), _fmt(test))
            log.info("results: %s", out_dir / "results.json")
            log.info("metrics: %s", out_dir / "metrics.csv")
            if ckpt:
                log.info("best checkpoint: %s", ckpt)
        return results
    finally:
        finish_wandb(loggers)


def _how_to_continue(out_dir: Path) -> None:
    if rank_zero():
        log.warning("training was interrupted; continue it from its newest checkpoint with the same command plus: "
                    "resume=auto hydra.run.dir=%s", out_dir)


def _fmt(metrics: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items()))


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def main(cfg: DictConfig) -> float | None:
    with relaunchable_job(Path(cfg.paths.output_dir)):  # multirun x DDP: each sweep point launches its own ranks
        results = train(cfg)
    return results["val"].get("val/acc")


if __name__ == "__main__":
    main()
