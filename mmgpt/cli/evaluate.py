"""``mmgpt-eval ckpt_path=PATH``: evaluate a checkpoint, on all modalities and on every subset of them."""

from __future__ import annotations

import io
import itertools
import logging
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

import mmgpt.cli  # noqa: F401  (registers the config schemas)
from mmgpt.cli.common import metrics_of, rank_zero, write_json
from mmgpt.config import CONFIG_DIR, check_targets
from mmgpt.training.checkpointing import load_checkpoint
from mmgpt.training.distributed import is_sharded_checkpoint
from mmgpt.training.lit_module import MultimodalClassifier
from mmgpt.training.progress import progress_bar

log = logging.getLogger("mmgpt.eval")


def load_run_config(ckpt_path: str | Path) -> dict[str, Any] | None:
    """The resolved run config stored in a checkpoint by :class:`~mmgpt.training.callbacks.RunConfigInCheckpoint`."""
    ckpt = load_checkpoint(ckpt_path)  # a file, or a sharded checkpoint's metadata
    return (ckpt.get("mmgpt") or {}).get("config")


def load_module(ckpt_path: Path) -> MultimodalClassifier:
    """The module of a checkpoint file, or of a sharded checkpoint folder (``trainer=fsdp``), consolidated here."""
    if ckpt_path.is_dir():
        from mmgpt.training.distributed import consolidate

        log.info("%s is a sharded checkpoint: consolidating it in memory", ckpt_path)
        buffer = io.BytesIO()
        torch.save(consolidate(ckpt_path), buffer)
        buffer.seek(0)
        return MultimodalClassifier.load_from_checkpoint(buffer, map_location="cpu")
    return MultimodalClassifier.load_from_checkpoint(ckpt_path, map_location="cpu")


def modality_subsets(modalities: tuple[str, ...]) -> list[frozenset[str]]:
    """Every non-empty subset, largest first: (a, b, c), (a, b), (a, c), (b, c), (a), (b), (c)."""
    return [frozenset(c) for r in range(len(modalities), 0, -1) for c in itertools.combinations(modalities, r)]


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate ``cfg.ckpt_path`` on ``cfg.split``; write ``eval_results.json`` into the run directory."""
    ckpt_path = Path(cfg.ckpt_path)
    if not (ckpt_path.is_file() or is_sharded_checkpoint(ckpt_path)):
        raise FileNotFoundError(f"ckpt_path={cfg.ckpt_path}: no such checkpoint file (or sharded checkpoint folder)")
    if cfg.split not in ("val", "test"):
        raise ValueError(f"split={cfg.split!r}: expected 'val' or 'test'")
    module = load_module(ckpt_path)
    if cfg.data is not None:
        data_cfg = cfg.data
    else:
        run_cfg = load_run_config(ckpt_path)
        if run_cfg is None:
            raise ValueError(f"{ckpt_path} stores no data config; pass one, e.g. data=synthetic")
        data_cfg = OmegaConf.create(run_cfg["data"])
    check_targets(data_cfg, "data")
    datamodule = instantiate(data_cfg, _convert_="all")
    if list(datamodule.class_names) != list(module.hparams.class_names or datamodule.class_names):
        raise ValueError(
            f"the data's classes {list(datamodule.class_names)} differ from the checkpoint's "
            f"{list(module.hparams.class_names)}"
        )
    trainer: pl.Trainer = instantiate(cfg.trainer, logger=False, callbacks=[progress_bar()])
    run = trainer.validate if cfg.split == "val" else trainer.test

    metrics = metrics_of(run(module, datamodule=datamodule, verbose=False))
    results: dict[str, Any] = {"ckpt_path": str(ckpt_path), "split": cfg.split, "metrics": metrics}
    if cfg.subsets:
        subsets: dict[str, dict[str, float]] = {}
        for keep in modality_subsets(module.net.modalities):
            module.eval_modalities = keep
            m = metrics_of(run(module, datamodule=datamodule, verbose=False))
            subsets["+".join(sorted(keep))] = {k.split("/", 1)[1]: v for k, v in m.items()}
        module.eval_modalities = None
        results["subsets"] = subsets
    if rank_zero():
        out_dir = Path(cfg.paths.output_dir)
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


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="eval")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
