"""``mmgpt-eval ckpt_path=PATH``: evaluate a checkpoint, on all modalities and on every subset of them.

The checkpoint is opened by mmgpt's safe loader (:mod:`mmgpt.training.safe_load`): the network is rebuilt from
registered parts only, and the stored data config may name only mmgpt's datamodules. Besides
``eval_results.json`` the evaluation writes ``predictions_<split>.npz`` (ids, labels, scores and logits of every
sample, all modalities present as the data has them), the reference ``mmgpt.load(...).predict`` is tested against.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

import mmgpt.cli  # noqa: F401  (registers the config schemas)
from mmgpt.cli.app import with_version
from mmgpt.cli.common import (
    build_datamodule,
    feature_cache_callbacks,
    metrics_of,
    rank_zero,
    user_errors,
    write_json,
)
from mmgpt.config import CONFIG_DIR, check_targets
from mmgpt.errors import UserError
from mmgpt.secrets import config_secrets, scrub
from mmgpt.stamp import current_command, run_stamp, spec_libraries
from mmgpt.training.evaluation import evaluate_subsets, modality_subsets
from mmgpt.training.lit_module import MultimodalModule
from mmgpt.training.predictions import SavePredictions
from mmgpt.training.progress import progress_bar
from mmgpt.training.safe_load import read_checkpoint, safe_data_config, stored_run_config

log = logging.getLogger("mmgpt.eval")

__all__ = ["evaluate", "format_report", "modality_subsets"]


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate ``cfg.ckpt_path`` on ``cfg.split``; write ``eval_results.json`` into the run directory."""
    ckpt_path = Path(cfg.ckpt_path)
    if cfg.split not in ("val", "test"):
        raise UserError(f"split={cfg.split!r}: expected 'val' or 'test'")
    plugins = list(cfg.get("plugins") or [])
    module = MultimodalModule.load_from_checkpoint(ckpt_path, map_location="cpu", plugins=plugins)
    out_dir = Path(cfg.paths.output_dir)
    if cfg.data is not None:  # the user's own data config: checked like mmgpt-train's
        check_targets(cfg.data, "data")
        data_cfg = OmegaConf.to_container(cfg.data, resolve=True)
    else:
        run_cfg = stored_run_config(read_checkpoint(ckpt_path), ckpt_path)
        if not run_cfg or "data" not in run_cfg:
            raise UserError(f"{ckpt_path} stores no data config; pass one, e.g. data=synthetic")
        data_cfg = safe_data_config(run_cfg["data"], ckpt_path, out_dir)
    datamodule = build_datamodule(data_cfg, module.hparams.net)  # the processors the checkpoint's encoders declare
    if list(datamodule.class_names) != list(module.hparams.class_names or datamodule.class_names):
        raise UserError(
            f"the data's classes {list(datamodule.class_names)} differ from the checkpoint's "
            f"{list(module.hparams.class_names)}"
        )
    cache = feature_cache_callbacks(cfg.feature_cache, datamodule, module, splits=(cfg.split,))  # as in training
    saver = SavePredictions(str(out_dir))  # predictions_<split>.npz of the evaluation on all modalities
    trainer: pl.Trainer = instantiate(cfg.trainer, logger=False, callbacks=[progress_bar(), *cache, saver])
    run = trainer.validate if cfg.split == "val" else trainer.test

    metrics = metrics_of(run(module, datamodule=datamodule, verbose=False))
    trainer.callbacks.remove(saver)  # the subsets' evaluations below are not these predictions
    results: dict[str, Any] = {"ckpt_path": str(ckpt_path), "split": cfg.split, "metrics": metrics,
                               "stamp": scrub(run_stamp(current_command(), spec_libraries(module.hparams.net)),
                                                config_secrets(cfg))}
    if cfg.subsets:
        results["subsets"] = evaluate_subsets(trainer, module, datamodule, cfg.split, module.net.modalities)
    if rank_zero():
        write_json(out_dir / "eval_results.json", results)
        print(format_report(results))
        log.info("eval results: %s", out_dir / "eval_results.json")
    return results


def format_report(results: dict[str, Any]) -> str:
    """A plain-text table of the overall metrics and the per-subset metrics."""
    split = results["split"]
    lines = [f"checkpoint: {results['ckpt_path']}", f"split: {split}"]
    lines += [f"  {k:<12} {v:.4f}" for k, v in sorted(results["metrics"].items())]
    if results.get("subsets"):
        # Whatever metrics the task logs (acc/f1/loss for classification, token_acc/ppl/... for captioning).
        names = sorted({k for m in results["subsets"].values() for k in m})
        lines.append(f"{'modalities':<20} " + " ".join(f"{n:>10}" for n in names))
        for subset, m in results["subsets"].items():
            lines.append(f"{subset:<20} " + " ".join(f"{m[n]:>10.4f}" if n in m else f"{'-':>10}" for n in names))
    return "\n".join(lines)


@with_version("mmgpt-eval")
@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="eval")
@user_errors
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
