"""Training callbacks: the non-finite guard, throughput, and what a checkpoint carries for an exact resume."""

import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate

from mmgpt.cli.train import build_module
from mmgpt.training.callbacks import (
    NonFiniteError,
    NonFiniteGuard,
    RestoreLoaderPosition,
    RngStateInCheckpoint,
    Throughput,
)


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


RANDOM = ["experiment=smoke", "model.dropout=0.2", "data.augment=true", "data.modality_dropout.audio=0.3",
          "data.modality_dropout.image=0.3"]


def _fit(compose_cfg, tmp_path, steps: int, ckpt_path=None, save_every: int | None = None) -> torch.nn.Module:
    cfg = compose_cfg(RANDOM)
    pl.seed_everything(0)
    dm = instantiate(cfg.data, _convert_="all")
    module = build_module(cfg, dm)
    callbacks = [RngStateInCheckpoint(), RestoreLoaderPosition()]
    if save_every:
        callbacks.append(pl.callbacks.ModelCheckpoint(dirpath=tmp_path, filename="step{step}", save_top_k=-1,
                                                      every_n_train_steps=save_every, auto_insert_metric_name=False))
    pl.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=bool(save_every),
               enable_progress_bar=False, num_sanity_val_steps=0, limit_val_batches=0, callbacks=callbacks,
               enable_model_summary=False).fit(module, datamodule=dm, ckpt_path=ckpt_path, weights_only=True)
    return module


def test_resuming_mid_epoch_with_dropout_and_data_randomness_repeats_the_uninterrupted_run(compose_cfg, tmp_path):
    """4 steps per epoch; resuming from the checkpoint taken at step 3 (mid-epoch) of a 6-step run ends with the
    weights that run ended with."""
    full = _fit(compose_cfg, tmp_path, steps=6, save_every=3)
    torch.manual_seed(1234)  # whatever state the resuming process is in, the checkpoint's states take over
    resumed = _fit(compose_cfg, tmp_path, steps=6, ckpt_path=tmp_path / "step3.ckpt")
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_rng_states_are_not_restored_onto_another_number_of_processes(caplog):
    callback = RngStateInCheckpoint()
    saved = callback.state_dict()
    callback.load_state_dict({"per_rank": [saved["per_rank"][0]] * 2})
    before = torch.get_rng_state()
    with caplog.at_level("WARNING"):
        callback.on_train_start(type("T", (), {"world_size": 1, "global_rank": 0})(), None)
    assert "2 processes, this run has 1" in caplog.text
    assert torch.equal(torch.get_rng_state(), before)
