"""MMSA's gradient accumulation (``model.module.clip_value_each_backward``, ``drop_incomplete_accumulation``; used by
``experiment=mosi_mmsa_mult``): the running gradient is clipped after every batch's backward, and an epoch's last
incomplete group gets no optimizer step."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch

from bench.mmsa_data import Shape, write_pickle
from mmgpt.cli.train import train

# 50 training samples in batches of 10: 5 batches per epoch, groups of 2 -> 2 full groups and 1 incomplete one
SHAPE = Shape({"train": 50, "valid": 10, "test": 10}, {"text": 12, "audio": 5, "vision": 6}, (10, 12, 8))


class LargestGradient(pl.Callback):
    """The largest |gradient| entry seen just before each optimizer step (after the group's last backward)."""

    seen: list[float] = []

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer) -> None:
        LargestGradient.seen.append(max(float(p.grad.abs().max()) for p in pl_module.parameters()
                                        if p.grad is not None))


def _fit(compose_cfg, tmp_path: Path, *extra: str) -> tuple[int, list[float]]:
    path = write_pickle(tmp_path / "unaligned_50.pkl", aligned=False, shape=SHAPE)
    LargestGradient.seen = []
    cfg = compose_cfg(["experiment=mosi_mmsa_lf_dnn", f"data.root={path}", "data.batch_size=10",
                       "trainer.max_epochs=2", "trainer.accumulate_grad_batches=2", "trainer.gradient_clip_val=0",
                       "logger=csv", "callbacks.progress=null",
                       f"+callbacks.zz_largest._target_={__name__}.LargestGradient", *extra])
    results = train(cfg)
    state = torch.load(Path(results["run_dir"]) / "checkpoints" / "last.ckpt", weights_only=False)
    steps = {int(s["step"]) for s in state["optimizer_states"][0]["state"].values()}
    assert len(steps) == 1
    return steps.pop(), list(LargestGradient.seen)


def test_lightning_steps_on_the_incomplete_group_and_mmsas_recipe_drops_it(compose_cfg, tmp_path):
    steps, _ = _fit(compose_cfg, tmp_path / "a")
    assert steps == 2 * 3  # per epoch: batches 2, 4 and the lone 5th
    steps, _ = _fit(compose_cfg, tmp_path / "b", "model.module.drop_incomplete_accumulation=true")
    assert steps == 2 * 2


def test_clipping_after_every_backward_bounds_the_running_sum(compose_cfg, tmp_path):
    limit = 1e-3
    _, free = _fit(compose_cfg, tmp_path / "a")
    assert max(free) > limit  # the bound below is not met by chance
    _, clipped = _fit(compose_cfg, tmp_path / "b", f"model.module.clip_value_each_backward={limit}")
    # Lightning scales each batch's loss by 1/2: the running gradient is the sum / 2, clipped to limit / 2
    assert limit / 2 * 0.99 <= max(clipped) <= limit / 2 * (1 + 1e-6)  # float32
