"""Training callbacks: the non-finite guard, throughput, and what a checkpoint carries for an exact resume."""

import time

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


def poisoned_module(compose_cfg, bad_step: int, overrides: tuple[str, ...] = ()):
    """A tiny module whose loss becomes NaN on training step ``bad_step`` only."""
    cfg = compose_cfg(["experiment=smoke", *overrides])
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


def _optimizer_state(optimizer) -> list[dict[str, torch.Tensor]]:
    return [{k: v.detach().clone() for k, v in optimizer.state[p].items()}
            for group in optimizer.param_groups for p in group["params"] if p in optimizer.state]


def test_skip_drops_exactly_the_bad_update(compose_cfg):
    """Weights, optimizer moments and the optimizer's step count after the NaN step are those before it."""
    module, dm = poisoned_module(compose_cfg, bad_step=2)
    snapshots, states = {}, {}

    class Snap(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            snapshots[batch_idx] = [p.detach().clone() for p in pl_module.parameters()]
            states[batch_idx] = _optimizer_state(trainer.optimizers[0])

    guard = NonFiniteGuard("skip")
    t = trainer(guard, Snap())
    t.fit(module, datamodule=dm)
    assert guard.skipped == 1 and t.global_step == 4
    assert all(torch.equal(a, b) for a, b in zip(snapshots[2], snapshots[3])), "the NaN step changed weights"
    assert not all(torch.equal(a, b) for a, b in zip(snapshots[1], snapshots[2])), "good steps must update"
    assert all(torch.isfinite(p).all() for p in module.parameters())
    before, after = states[2], states[3]
    assert len(before) == len(after) > 0 and all(s.keys() == {"step", "exp_avg", "exp_avg_sq"} for s in after)
    for a, b in zip(before, after):
        for key in a:
            assert torch.equal(a[key], b[key]), f"the NaN step changed the optimizer's {key}"
    assert float(after[0]["step"]) == 2.0
    assert float(_optimizer_state(t.optimizers[0])[0]["step"]) == 3.0  # 4 steps, one dropped


def test_stop_stops_within_one_logging_interval_naming_the_step(compose_cfg):
    """Flags are read every log_every_n_steps: a NaN at step 2 stops the run at step 5, naming step 2, with the
    weights of before the NaN step (every non-finite update was dropped meanwhile)."""
    module, dm = poisoned_module(compose_cfg, bad_step=2, overrides=("data.num_train=512",))  # 16 steps/epoch
    seen = []

    class Steps(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append(trainer.global_step)

    t = pl.Trainer(accelerator="cpu", max_steps=12, max_epochs=-1, logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, num_sanity_val_steps=0, limit_val_batches=0, log_every_n_steps=5,
                   callbacks=[NonFiniteGuard("stop"), Steps()])
    with pytest.raises(NonFiniteError, match=r"at step 2 .*sample ids \['train-.*noticed at step 5"):
        t.fit(module, datamodule=dm)
    assert max(seen) == 4  # steps 0..4 ran: stopped at the first read after the bad step
    assert all(torch.isfinite(p).all() for p in module.parameters())


def test_a_non_fused_optimizer_is_checked_every_step(compose_cfg, caplog):
    """Without found_inf the guard falls back to a host read per step (and says so), still dropping the update."""
    module, dm = poisoned_module(compose_cfg, bad_step=1)
    module.hparams.optimizer["fused"] = False
    with caplog.at_level("WARNING"), pytest.raises(NonFiniteError, match=r"at step 1 .*noticed at step 1"):
        trainer(NonFiniteGuard("stop")).fit(module, datamodule=dm)
    assert "not fused" in caplog.text


def test_guard_rejects_unknown_action():
    with pytest.raises(ValueError):
        NonFiniteGuard("ignore")


def test_throughput_steady_rate_skips_the_first_epoch():
    t = Throughput()
    t.history = [10.0, 100.0, 110.0]
    assert t.steady_rate == pytest.approx(105.0)
    t.history = [42.0]
    assert t.steady_rate == 42.0


def _smoke(compose_cfg, *overrides: str):
    cfg = compose_cfg(["experiment=smoke", *overrides])
    pl.seed_everything(0)
    dm = instantiate(cfg.data, _convert_="all")
    return build_module(cfg, dm), dm


def test_throughput_leaves_out_a_slow_validation_pass(compose_cfg):
    """Validation that sleeps 5 s per pass must not lower the training figure; it is timed on its own."""
    module, dm = _smoke(compose_cfg)
    validation_step = module.validation_step

    def slow_validation_step(batch, batch_idx):
        time.sleep(5.0)
        return validation_step(batch, batch_idx)

    module.validation_step = slow_validation_step
    steps = []

    class StepTimes(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            steps.append(time.perf_counter() - self.t0)

    throughput = Throughput()
    t = pl.Trainer(accelerator="cpu", max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                   num_sanity_val_steps=0, limit_val_batches=1, callbacks=[throughput, StepTimes()])
    t.fit(module, datamodule=dm)
    assert len(throughput.history) == 2 and len(throughput.val_history) == 2
    counted = 128 / throughput.history[-1]  # seconds the training figure counts for the 4 steps of epoch 2
    assert sum(steps[4:]) <= counted < sum(steps[4:]) + 2.5, (counted, steps)  # the batches' loading, not 5 s
    assert throughput.val_rate <= 32 / 5.0  # one batch of 32 in >= 5 s


def test_throughput_of_a_run_resumed_mid_epoch(compose_cfg, tmp_path):
    """Resumed mid-epoch, Lightning calls no on_train_epoch_start: the rest of that epoch is still timed from its
    first batch (it used to be timed from the clock's origin: ~0.01 samples/s)."""
    module, dm = _smoke(compose_cfg)
    save = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, filename="step{step}", save_top_k=-1, every_n_train_steps=2,
                                        auto_insert_metric_name=False)
    full = Throughput()
    kwargs = dict(accelerator="cpu", logger=False, enable_progress_bar=False, num_sanity_val_steps=0,
                  limit_val_batches=0, enable_model_summary=False)
    pl.Trainer(max_steps=4, callbacks=[full, save, RestoreLoaderPosition()], **kwargs).fit(module, datamodule=dm)
    module, dm = _smoke(compose_cfg)
    resumed = Throughput()
    pl.Trainer(max_steps=4, enable_checkpointing=False, callbacks=[resumed, RestoreLoaderPosition()],
               **kwargs).fit(module, datamodule=dm, ckpt_path=tmp_path / "step2.ckpt", weights_only=True)
    assert len(resumed.history) == 1  # steps 2 and 3 of the first epoch
    assert resumed.steady_rate > 0.1 * full.steady_rate, (resumed.history, full.history)


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


@pytest.mark.slow  # minutes on 2 CPUs: in CI's slow run (make test-slow)
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
