"""Training callbacks: the non-finite guard and throughput."""

import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate

from mmgpt.callbacks import NonFiniteError, NonFiniteGuard, Throughput
from mmgpt.cli.train import build_module


def poisoned_module(compose_cfg, bad_step: int):
    """A tiny module whose loss becomes NaN on training step ``bad_step`` only."""
    cfg = compose_cfg(["experiment=smoke"])
    dm = instantiate(cfg.data, _convert_="all")
    module = build_module(cfg, dm)
    calls = {"n": 0}

    def hook(mod, args, output):
        if mod.training:
            calls["n"] += 1
            if calls["n"] == bad_step + 1:
                return output * float("nan")
        return output

    module.net.head.register_forward_hook(hook)
    return module, dm


def trainer(*callbacks, steps: int = 4) -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, num_sanity_val_steps=0, limit_val_batches=0, callbacks=list(callbacks))


def test_stop_names_the_step_and_the_samples(compose_cfg):
    module, dm = poisoned_module(compose_cfg, bad_step=2)
    with pytest.raises(NonFiniteError, match=r"step 2 .*sample ids \['train-"):
        trainer(NonFiniteGuard("stop")).fit(module, datamodule=dm)


def test_skip_drops_exactly_the_bad_update(compose_cfg):
    module, dm = poisoned_module(compose_cfg, bad_step=2)
    snapshots = {}

    class Snap(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            snapshots[batch_idx] = [p.detach().clone() for p in pl_module.parameters()]

    guard = NonFiniteGuard("skip")
    t = trainer(guard, Snap())
    t.fit(module, datamodule=dm)
    assert guard.skipped == 1 and t.global_step == 4
    assert all(torch.equal(a, b) for a, b in zip(snapshots[2], snapshots[3])), "the NaN step changed weights"
    assert not all(torch.equal(a, b) for a, b in zip(snapshots[1], snapshots[2])), "good steps must update"
    assert all(torch.isfinite(p).all() for p in module.parameters())


def test_guard_rejects_unknown_action():
    with pytest.raises(ValueError):
        NonFiniteGuard("ignore")


def test_throughput_steady_rate_skips_the_first_epoch():
    t = Throughput()
    t.history = [10.0, 100.0, 110.0]
    assert t.steady_rate == pytest.approx(105.0)
    t.history = [42.0]
    assert t.steady_rate == 42.0
