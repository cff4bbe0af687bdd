"""The LightningModule: objectives composed with weights, metrics per split, optimisation and logging.

The network is built from its typed spec (``net``, :class:`mmgpt.registry.NetworkSpec`) by
:func:`mmgpt.registry.build_network`; objectives, optimizer and schedule are registered parts too. The specs are
saved in the checkpoint's hyperparameters with the number and names of classes, so a checkpoint rebuilds its model
without YAML, and only from parts mmgpt registered (:meth:`MultimodalModule.load_from_checkpoint`). With no
``objectives`` the module is the plain classifier (cross-entropy, ``acc``/``f1``).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from pytorch_lightning.plugins.precision import MixedPrecision, Precision
from torch import Tensor, nn
from torch.optim import Optimizer

from mmgpt import registry
from mmgpt.batch import MultimodalBatch
from mmgpt.encoders.backbone import BackboneEncoder
from mmgpt.encoders.tuning import held_in_eval
from mmgpt.errors import CheckpointError
from mmgpt.lora import add_lora
from mmgpt.model import ModelOutput, MultimodalTransformer
from mmgpt.objectives import Classification, Objective
from mmgpt.peers import init_like
from mmgpt.training import backbone_checkpoints, fast_log
from mmgpt.training.distributed import clip_grad_norm_, consolidate, is_sharded, shard_module
from mmgpt.training.finetune import freeze as freeze_parts
from mmgpt.training.finetune import parameter_counts, trainable_by_part
from mmgpt.training.optim import Plateau, grad_norm, param_groups
from mmgpt.training.safe_load import module_hparams, read_checkpoint

fast_log.install()  # self.log without Lightning's per-call walk of the logged entry (mmgpt.training.fast_log)
log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


def _plain(cfg: Any) -> Any:
    return OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else cfg


def build_objectives(specs: Mapping[str, Any] | None, num_classes: int, label_smoothing: float,
                     class_names: list[str] | None = None) -> dict[str, Objective]:
    """Build the objective specs (name -> ``{type: <registered objective>, weight, ...}``); weight 0 is left out.

    A ``num_classes: null`` entry is filled in with ``num_classes``, ``class_names: null`` with ``class_names``.
    None gives the plain classifier.
    """
    if specs is None:
        return {"classify": Classification(num_classes=num_classes, label_smoothing=label_smoothing)}
    out: dict[str, Objective] = {}
    for name in sorted(specs):
        node = dict(specs[name])
        if "num_classes" in node and node["num_classes"] is None:
            node["num_classes"] = num_classes
        if "class_names" in node and node["class_names"] is None:
            node["class_names"] = list(class_names or [])
        if float(node.get("weight", 1.0)) == 0.0:
            continue
        out[name] = registry.build(node, f"model.module.objectives.{name}", "objective")
    if not out:
        raise ValueError("every objective has weight 0: nothing to train")
    return out


class MultimodalModule(pl.LightningModule):
    """Trains a :class:`~mmgpt.model.MultimodalTransformer` on a weighted sum of objectives.

    Args:
        net: the network spec (:class:`mmgpt.registry.NetworkSpec` as a dict); the head gets ``num_classes``.
        num_classes: number of classes C.
        optimizer: spec of a registered optimizer (``{type: adamw, lr: ...}``), built with parameter groups.
            ``weight_decay`` is applied to matrices only.
        scheduler: spec of a registered schedule, built with (optimizer, total_steps), stepped per optimizer step
            (``plateau``: per epoch, on its validation metric); None for constant.
        label_smoothing: cross-entropy label smoothing of the default classification objective.
        class_names: names of the classes, in index order (saved so evaluation maps names the same way).
        objectives: name -> objective spec (``type`` with a ``weight``); None: classification only.
        eval_generation_batches: validation/test batches on which objectives also run their costlier
            evaluation (caption generation) each epoch.
        freeze: network parts whose parameters are not trained (``encoders.image``, ``fusion``, ``decoder``...).
        lora: keyword arguments of :func:`mmgpt.lora.add_lora` (``rank``, ``alpha``, ``parts``, ``targets``) to
            add LoRA adapters to attention projections, or None. Applied after ``freeze``, so adapters train.
        clip_value_each_backward: with gradient accumulation, clip the accumulated gradient to
            [-v, v] after every batch's backward, as MMSA's trainers do with the sum of the group's gradients
            (Lightning's ``gradient_clip_val`` clips once, before the step); None: off. The limit is divided by
            ``trainer.accumulate_grad_batches``, since Lightning scales each batch's loss by its inverse.
        drop_incomplete_accumulation: an epoch's last group of fewer than ``accumulate_grad_batches`` batches
            gets no optimizer step (MMSA's trainers drop it; Lightning steps on it).
        loss_mean_over: what the epoch's ``{split}/loss`` averages over: ``samples`` (each batch's loss weighted
            by its size) or ``batches`` (the mean of the batches' losses, as MMSA's trainers report the loss that
            their early stopping and schedules watch; a smaller last batch then weighs as much as a full one).
        init: start from a peer's initial weights, ``{peer, model, seed}`` (:func:`mmgpt.peers.init_like`): the
            weights MMSA's own model draws at that seed; None: mmgpt's initialisation. Applied before ``freeze``.
    """

    def __init__(
        self,
        net: Mapping[str, Any],
        num_classes: int,
        optimizer: Mapping[str, Any],
        scheduler: Mapping[str, Any] | None = None,
        label_smoothing: float = 0.0,
        class_names: list[str] | None = None,
        objectives: Mapping[str, Any] | None = None,
        eval_generation_batches: int = 2,
        freeze: list[str] | None = None,
        lora: Mapping[str, Any] | None = None,
        clip_value_each_backward: float | None = None,
        drop_incomplete_accumulation: bool = False,
        loss_mean_over: str = "samples",
        init: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if loss_mean_over not in ("samples", "batches"):
            raise ValueError(f"model.module.loss_mean_over: {loss_mean_over!r} is not one of samples, batches")
        net, optimizer, scheduler, class_names = _plain(net), _plain(optimizer), _plain(scheduler), _plain(class_names)
        objectives, freeze, lora, init = _plain(objectives), _plain(freeze), _plain(lora), _plain(init)
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
        self.save_hyperparameters()
        self.net: MultimodalTransformer = registry.build_network(net, num_classes)
        if init:
            init_like(self.net, init)
            log.info("initial weights: %s's %s at seed %s", init["peer"], init["model"], init["seed"])
        if freeze:
            frozen = freeze_parts(self.net, freeze)
            log.info("frozen %d parameter tensors under %s", len(frozen), list(freeze))
        if lora:
            add_lora(self.net, **lora)
        self.objectives = nn.ModuleDict(build_objectives(objectives, num_classes, label_smoothing, class_names))
        if not any(o.uses_head for o in self.objectives.values()):
            freeze_parts(self.net, ["head"])  # unused (e.g. captioning): DDP must not wait for its gradients
        # One metric dict per split ("train" cannot be a ModuleDict key: it is nn.Module.train).
        for split in SPLITS:
            setattr(self, f"{split}_metrics", nn.ModuleDict({n: o.make_metrics() for n, o in self.objectives.items()}))
        names = [k for o in self.train_metrics.values() for k in o]
        if len(names) != len(set(names)):
            raise ValueError(f"objectives log metrics under the same name: {sorted(names)}")
        for part, n in self.net.param_counts().items():
            log.info("parameters %-16s %10d", part, n)
        for part, c in trainable_by_part(self.net).items():
            if c["frozen"] or "adapters" in c:  # a frozen or pretrained part: say what trains in it
                extra = "".join(f", {k} {v}" for k, v in c.items() if k not in ("trainable", "frozen"))
                log.info("trainable %-16s %10d (frozen %d%s)", part, c["trainable"], c["frozen"], extra)
        if any(isinstance(m, BackboneEncoder) and held_in_eval(m) for m in self.net.modules()):
            # frozen backbone parts stay in eval mode on purpose (BackboneEncoder.train); Lightning would warn
            warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")
        trainable, total = parameter_counts(self)
        log.info("trainable parameters %d of %d (%.1f%%)", trainable, total, 100.0 * trainable / max(total, 1))

    @classmethod
    def load_from_checkpoint(  # type: ignore[override]
        cls, checkpoint_path: str | Path, map_location: str | torch.device = "cpu", plugins: list[str] | None = None
    ) -> MultimodalModule:
        """Rebuild a trained module from ``checkpoint_path`` safely: the one loader every command goes through.

        The checkpoint is read and its specs checked by :mod:`mmgpt.training.safe_load` (only parts mmgpt registered
        are built); ``plugins`` imports the user's modules that register parts of their own (the user's choice). A
        sharded checkpoint is consolidated in memory; a slim one's backbones are re-read and checked against their
        hashes.
        """
        registry.import_plugins(plugins)
        ckpt = read_checkpoint(checkpoint_path)
        module = cls(**module_hparams(ckpt, checkpoint_path))
        state = ckpt.get("state_dict")
        if Path(checkpoint_path).is_dir():
            # the index (.metadata) is read with a restricted unpickler, the shards with weights_only=True
            log.info("%s is a sharded checkpoint: consolidating it in memory", checkpoint_path)
            state = consolidate(checkpoint_path)["state_dict"]
        if not isinstance(state, Mapping):
            raise CheckpointError(f"{checkpoint_path}: the checkpoint holds no state_dict")
        omitted = backbone_checkpoints.restore(ckpt, module, checkpoint_path)  # a slim checkpoint's backbones
        try:
            module.load_state_dict(state, strict=not omitted)
        except RuntimeError as e:
            raise CheckpointError(f"{checkpoint_path}: its weights do not fit the network it describes "
                                  f"({str(e).splitlines()[0]})") from e
        return module.to(map_location)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Slim checkpoints: pretrained backbone tensors unchanged since they were read are left out, each
        backbone's identity is recorded (:mod:`mmgpt.training.backbone_checkpoints`)."""
        omitted = backbone_checkpoints.slim(checkpoint, self)
        if omitted:
            log.debug("checkpoint: %d unchanged backbone tensors left out", omitted)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A slim checkpoint (resume, or ``ckpt_path`` of validate/test): the backbones were re-read when this
        module was built; their hashes are checked and only the stored tensors are loaded over them."""
        source = getattr(self._trainer, "ckpt_path", None) or "the checkpoint"
        self.strict_loading = not backbone_checkpoints.restore(checkpoint, self, source)

    def forward(self, batch: MultimodalBatch) -> ModelOutput:
        return self.net(batch)

    def _step(self, batch: MultimodalBatch, split: str, batch_idx: int = 0) -> tuple[Tensor, Tensor | None]:
        """The weighted loss, and the head's outputs (B, C) of the objective that uses it, if any (a regression's
        (B,) predictions as (B, 1), so that its per-sample predictions are saved too)."""
        bs = batch.batch_size
        logits: Tensor | None = None
        on_step = split == "train"  # values are averaged over DDP ranks (sync_dist), not rank 0's alone
        all_metrics: nn.ModuleDict = getattr(self, f"{split}_metrics")
        total: Tensor | None = None
        for name, objective in self.objectives.items():
            out = objective(self.net, batch)
            if objective.uses_head and logits is None and out.preds is not None and out.preds.dim() in (1, 2):
                logits = out.preds if out.preds.dim() == 2 else out.preds[:, None]  # (B, C)
            total = objective.weight * out.loss if total is None else total + objective.weight * out.loss
            metrics = all_metrics[name]
            objective.update(metrics, out)
            if split != "train" and batch_idx < self.hparams.eval_generation_batches:
                with torch.no_grad():
                    objective.evaluate(self.net, batch, metrics)
            if len(self.objectives) > 1:
                self.log(f"{split}/{name}_loss", out.loss, on_step=on_step, on_epoch=True, batch_size=bs,
                         sync_dist=True)
            for key, value in out.values.items():
                self.log(f"{split}/{key}", value, on_step=on_step, on_epoch=True, batch_size=bs, sync_dist=True)
        assert total is not None
        weight = 1 if self.hparams.get("loss_mean_over") == "batches" else bs  # the epoch value's weights
        self.log(f"{split}/loss", total, on_step=on_step, on_epoch=True, prog_bar=True, batch_size=weight,
                 sync_dist=True)
        return total, logits

    def _log_metric_objects(self, split: str, metrics: nn.ModuleDict, prog_bar: bool = False) -> None:
        """Log the metric objects that have seen data this epoch (generation metrics are not computed in
        training), ``on_epoch`` only: Lightning computes them at the epoch's end and resets them."""
        for key, metric in metrics.items():
            if metric.update_called:
                self.log(f"{split}/{key}", metric, on_step=False, on_epoch=True, prog_bar=prog_bar)

    def on_train_epoch_end(self) -> None:
        """The training metric objects, logged once per epoch rather than from a step: each ``self.log`` costs
        about a millisecond of Lightning's bookkeeping, a few percent of a small model's step. Lightning calls this
        after the callbacks that monitor nothing (``Throughput`` has stopped its clock) and before those that
        monitor a metric, so early stopping and checkpointing still see the values."""
        for name in self.objectives:
            self._log_metric_objects("train", self.train_metrics[name])

    def on_validation_epoch_end(self) -> None:
        """The validation metric objects, once per pass (as :meth:`on_train_epoch_end`); checkpointing and early
        stopping read them after this hook."""
        for name in self.objectives:
            self._log_metric_objects("val", self.val_metrics[name], prog_bar=True)

    def on_test_epoch_end(self) -> None:
        for name in self.objectives:
            self._log_metric_objects("test", self.test_metrics[name])

    def training_step(self, batch: MultimodalBatch, batch_idx: int) -> Tensor:
        return self._step(batch, "train", batch_idx)[0]

    def validation_step(self, batch: MultimodalBatch, batch_idx: int) -> dict[str, Tensor]:
        """Returns the class logits, for callbacks (``SavePredictions``): under FSDP2 only the steps may run
        the network, so callbacks take what the step computed instead of running it again."""
        return self._eval_outputs(self._step(batch, "val", batch_idx)[1])

    def test_step(self, batch: MultimodalBatch, batch_idx: int) -> dict[str, Tensor]:
        return self._eval_outputs(self._step(batch, "test", batch_idx)[1])

    @staticmethod
    def _eval_outputs(logits: Tensor | None) -> dict[str, Tensor]:
        return {} if logits is None else {"logits": logits.detach()}

    def configure_model(self) -> None:
        """Under FSDP2 (``ModelParallelStrategy``: ``trainer=fsdp`` / ``fsdp_sim``), shard per Transformer block.

        Other strategies leave the module as it is. Called again by ``validate``/``test`` after ``fit``: a
        module already sharded is left alone.
        """
        mesh = self.device_mesh
        if mesh is None or is_sharded(self):
            return
        dp_mesh = mesh["data_parallel"] if mesh.mesh_dim_names and "data_parallel" in mesh.mesh_dim_names else mesh
        units = shard_module(self, mesh=dp_mesh, forward_methods=("training_step", "validation_step", "test_step"))
        log.info("FSDP2: %d layer units + the root, sharded over %d processes", units, dp_mesh.size())

    def on_after_backward(self) -> None:
        limit = self.hparams.get("clip_value_each_backward")
        if limit:
            params = [p for p in self.parameters() if p.grad is not None]
            torch.nn.utils.clip_grad_value_(params, float(limit) / self.trainer.accumulate_grad_batches)

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        """Lightning's step, or, for an epoch's last incomplete accumulation group under
        ``drop_incomplete_accumulation``, only the batch's forward and backward (its closure): the group's
        gradients are then zeroed at the start of the next group, unused."""
        every = self.trainer.accumulate_grad_batches
        if self.hparams.get("drop_incomplete_accumulation") and every > 1 and (batch_idx + 1) % every:
            if optimizer_closure is not None:
                optimizer_closure()
            return
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)

    def configure_gradient_clipping(self, optimizer: Optimizer, gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        """Norm clipping with the step's total gradient norm, computed once (:func:`~mmgpt.training.optim.grad_norm`,
        shared with ``NonFiniteGuard``). Sharded parameters (FSDP2) clip by the total norm over every rank's shards
        (Lightning's FSDP1 plugin refuses to clip); value clipping and precision plugins that clip their own way (a
        ``GradScaler``, DeepSpeed) go through Lightning's default."""
        if is_sharded(self) and gradient_clip_val and (gradient_clip_algorithm or "norm") == "norm":
            clip_grad_norm_(self.parameters(), float(gradient_clip_val))
            return
        plugin = self.trainer.precision_plugin
        plain = type(plugin).clip_gradients is Precision.clip_gradients or (
            isinstance(plugin, MixedPrecision) and plugin.scaler is None)
        if gradient_clip_val and gradient_clip_algorithm in (None, "norm") and plain and (
                type(plugin).clip_grad_by_norm is Precision.clip_grad_by_norm):
            params = [p for group in optimizer.param_groups for p in group["params"]]
            torch.nn.utils.clip_grads_with_norm_(params, gradient_clip_val, grad_norm(self.trainer, optimizer))
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def configure_optimizers(self) -> dict[str, Any]:
        spec = dict(self.hparams.optimizer)
        weight_decay = spec.pop("weight_decay", 0.0)
        if spec.get("fused") and is_sharded(self) and self.device.type == "cpu":
            # torch has no DTensor (FSDP2) rule for the fused CPU kernels: the plain loop, same update
            log.info("sharded parameters on CPU: %s without fused=True", spec["type"])
            spec["fused"] = False
        groups = param_groups(self, weight_decay, spec.get("lr"))  # backbones' lr_mult groups among them
        optimizer = registry.build(spec, "model.module.optimizer", "optimizer", params=groups)
        if self.hparams.scheduler is None:
            return {"optimizer": optimizer}
        total = int(self.trainer.estimated_stepping_batches)
        scheduler = registry.build(self.hparams.scheduler, "model.module.scheduler", "scheduler", optimizer=optimizer,
                                   total_steps=total)
        if isinstance(scheduler, Plateau):  # stepped on a validation metric after each epoch's validation
            return {"optimizer": optimizer,
                    "lr_scheduler": {"scheduler": scheduler, "interval": "epoch", "monitor": scheduler.monitor}}
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
