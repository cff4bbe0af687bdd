"""The plateau schedule (``model/scheduler@model.module.scheduler=plateau``, MMSA's MulT recipe): stepped once per
epoch on the validation metric it monitors, it lowers the rate after ``patience`` epochs without an improvement."""

from pathlib import Path

import pytest
import torch

from bench.mmsa_data import Shape, write_pickle
from mmgpt.cli.train import train

SHAPE = Shape({"train": 48, "valid": 16, "test": 16}, {"text": 12, "audio": 5, "vision": 6}, (10, 12, 8))


def test_mosi_mmsa_mult_lowers_its_rate_when_the_validation_loss_stalls(compose_cfg, tmp_path):
    path = write_pickle(tmp_path / "unaligned_50.pkl", aligned=False, shape=SHAPE)
    cfg = compose_cfg(["experiment=mosi_mmsa_mult", f"data.root={path}", "trainer.max_epochs=2", "logger=csv",
                       "data.num_workers=0",
                       "model.module.scheduler.patience=0", "model.module.scheduler.threshold=1.0"])  # never better
    assert cfg.model.module.scheduler.type == "plateau" and cfg.model.module.scheduler.monitor == "val/loss"
    results = train(cfg)
    state = torch.load(Path(results["run_dir"]) / "checkpoints" / "last.ckpt", weights_only=False)
    (plateau,) = state["lr_schedulers"]
    assert plateau["last_epoch"] == 2 and plateau["monitor"] == "val/loss"
    # two epochs, none better: the rate fell by 10x after each (2e-3 -> 2e-5)
    assert [g["lr"] for g in state["optimizer_states"][0]["param_groups"]] == pytest.approx([2e-5] * 2)
