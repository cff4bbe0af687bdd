"""The LightningModule: classification loss, metrics per split, optimisation and logging.

The network is built from its config (``net``), which is saved in the checkpoint's hyperparameters together with
the number and names of classes, so ``MultimodalClassifier.load_from_checkpoint(path)`` needs no YAML.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import Tensor, nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from mmgpt.batch import MultimodalBatch
from mmgpt.model import ModelOutput, MultimodalTransformer
from mmgpt.optim import param_groups

log = logging.getLogger(__name__)


def _plain(cfg: Any) -> Any:
    return OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else cfg


class MultimodalClassifier(pl.LightningModule):
    """Trains a :class:`~mmgpt.model.MultimodalTransformer` to classify samples.

    Args:
        net: config of the network (``_target_`` dicts); ``head.num_classes`` is filled in from ``num_classes``.
        num_classes: number of classes C.
        optimizer: ``_partial_`` config of the optimizer; called with parameter groups. ``weight_decay`` is
            applied to matrices only.
        scheduler: ``_partial_`` config of a schedule, called with (optimizer, total_steps); None for constant.
        label_smoothing: cross-entropy label smoothing.
        class_names: names of the classes, in index order (saved so evaluation maps names the same way).
    """

    def __init__(
        self,
        net: Mapping[str, Any],
        num_classes: int,
        optimizer: Mapping[str, Any],
        scheduler: Mapping[str, Any] | None = None,
        label_smoothing: float = 0.0,
        class_names: list[str] | None = None,
    ) -> None:
        super().__init__()
        net, optimizer, scheduler, class_names = _plain(net), _plain(optimizer), _plain(scheduler), _plain(class_names)
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
        self.save_hyperparameters()
        self.net: MultimodalTransformer = instantiate(net, head={"num_classes": num_classes})
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        metrics = MetricCollection(
            {
                "acc": MulticlassAccuracy(num_classes, average="micro"),
                "f1": MulticlassF1Score(num_classes, average="macro"),
            }
        )
        # One metric object per split ("train" cannot be a ModuleDict key: it is nn.Module.train).
        self.train_metrics = metrics.clone(prefix="train/")
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        #: When set, evaluation marks every other modality absent (missing-modality robustness).
        self.eval_modalities: frozenset[str] | None = None
        for part, n in self.net.param_counts().items():
            log.info("parameters %-16s %10d", part, n)

    def forward(self, batch: MultimodalBatch) -> ModelOutput:
        return self.net(batch)

    def _step(self, batch: MultimodalBatch, split: str) -> Tensor:
        if split != "train" and self.eval_modalities is not None:
            batch = batch.with_modalities(self.eval_modalities)
        out = self.net(batch)
        loss = self.criterion(out.logits.float(), batch.labels)
        metrics: MetricCollection = getattr(self, f"{split}_metrics")
        metrics.update(out.logits.detach(), batch.labels)
        on_step = split == "train"
        self.log(f"{split}/loss", loss, on_step=on_step, on_epoch=True, prog_bar=True, batch_size=batch.batch_size,
                 sync_dist=split != "train")
        self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=split == "val", batch_size=batch.batch_size)
        return loss

    def training_step(self, batch: MultimodalBatch, batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: MultimodalBatch, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: MultimodalBatch, batch_idx: int) -> None:
        self._step(batch, "test")

    def configure_optimizers(self) -> dict[str, Any]:
        opt_cfg = dict(self.hparams.optimizer)
        weight_decay = opt_cfg.pop("weight_decay", 0.0)
        optimizer = instantiate(opt_cfg)(param_groups(self, weight_decay))
        if self.hparams.scheduler is None:
            return {"optimizer": optimizer}
        total = int(self.trainer.estimated_stepping_batches)
        scheduler = instantiate(self.hparams.scheduler)(optimizer, total_steps=total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
