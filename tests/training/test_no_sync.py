"""No host-device synchronisation per training step caused by mmgpt.

On CPU: a real training run with the default callbacks, in which every host read of a tensor (``.item()``,
``bool()``, ``float()``, ``.tolist()``, ``.cpu()``, ``.numpy()``) is recorded with its call stack while a training
step runs (from the first ``on_train_batch_start`` to the last ``on_train_batch_end`` hook of the step: the
LightningModule's step and logging, clipping, the optimizer step and every callback's per-step hooks). None may
come from mmgpt's code. Logging intervals are set beyond the run, so no step is one at which values are read on
purpose. On a GPU: the guard, clipping and a fused optimizer step under ``torch.cuda.set_sync_debug_mode("error")``.
"""

from __future__ import annotations

import traceback
from pathlib import Path
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate

import mmgpt
from mmgpt.cli.common import instantiate_group
from mmgpt.cli.train import build_module
from mmgpt.training.callbacks import NonFiniteGuard, Throughput
from mmgpt.training.optim import grad_norm

MMGPT = str(Path(mmgpt.__file__).resolve().parent)
REPO = str(Path(mmgpt.__file__).resolve().parent.parent)
HOST_READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__")


def _is_mmgpt(filename: str) -> bool:
    path = str(Path(filename).resolve())  # mmgpt/datamodules is a link to datamodules/
    return path.startswith(MMGPT) or path.startswith(f"{REPO}/datamodules/")


class _Recorder:
    """Patches the host-read methods of ``torch.Tensor``; records the mmgpt frames that call them while on."""

    def __init__(self, ours=_is_mmgpt) -> None:
        self.on = False
        self.reads: list[str] = []
        self.ours = ours

    def __enter__(self) -> _Recorder:
        self.saved = {name: getattr(torch.Tensor, name) for name in HOST_READS}
        for name, original in self.saved.items():
            setattr(torch.Tensor, name, self._wrap(name, original))
        return self

    def __exit__(self, *exc) -> None:
        for name, original in self.saved.items():
            setattr(torch.Tensor, name, original)

    def _wrap(self, name, original):
        def read(tensor, *args, **kwargs):
            if self.on:
                frames = [f for f in traceback.extract_stack()[:-1] if self.ours(f.filename)]
                if frames:
                    where = " <- ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(frames))
                    self.reads.append(f"Tensor.{name} from {where}")
            return original(tensor, *args, **kwargs)

        return read


@pytest.mark.slow  # minutes on 2 CPUs: in CI's slow run (make test-slow)
def test_training_steps_read_nothing_back_to_the_host(compose_cfg, tmp_path):
    cfg = compose_cfg(["experiment=smoke", "data.num_train=192", "trainer.max_epochs=2",
                       "trainer.log_every_n_steps=1000", "+callbacks.progress.every_n_steps=1000",
                       "callbacks.step_checkpoint.every_n_train_steps=1000"])
    pl.seed_everything(0)
    dm = instantiate(cfg.data, _convert_="all")
    module = build_module(cfg, dm)
    recorder = _Recorder()

    class StepStarts(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            recorder.on = True

    class StepEnds(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            recorder.on = False

    callbacks = instantiate_group(cfg.callbacks)
    assert {type(c) for c in callbacks} >= {NonFiniteGuard, Throughput}
    trainer = instantiate(cfg.trainer, callbacks=[StepStarts(), *callbacks, StepEnds()],
                          logger=instantiate_group(cfg.logger))
    with recorder:
        trainer.fit(module, datamodule=dm)
    assert trainer.global_step == 12
    assert not recorder.reads, "host reads in training steps:\n" + "\n".join(sorted(set(recorder.reads)))


def test_the_recorder_catches_a_host_read_in_a_step(compose_cfg):
    """The check above can fail: a guard that reads its flag every step is caught (here the guard's code is in
    this file, so the recorder is told to count this file's frames)."""

    class SyncingGuard(NonFiniteGuard):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            super().on_before_optimizer_step(trainer, pl_module, optimizer)
            bool(torch.isfinite(grad_norm(trainer, optimizer)))

    cfg = compose_cfg(["experiment=smoke"])
    dm = instantiate(cfg.data, _convert_="all")
    module = build_module(cfg, dm)
    recorder = _Recorder(ours=lambda filename: Path(filename).resolve() == Path(__file__).resolve())

    class Window(pl.Callback):
        def on_train_batch_start(self, *args):
            recorder.on = True

        def on_train_batch_end(self, *args):
            recorder.on = False

    trainer = pl.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, num_sanity_val_steps=0, limit_val_batches=0,
                         callbacks=[Window(), SyncingGuard()])
    with recorder:
        trainer.fit(module, datamodule=dm)
    assert any("on_before_optimizer_step" in r and "__bool__" in r for r in recorder.reads)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_guard_clipping_and_fused_step_do_not_sync_the_device():
    """The per-step path of NonFiniteGuard + clipping + a fused AdamW step runs under sync debug mode 'error',
    also on a NaN step, which it drops on the device; the flags are read at the check (outside the mode)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.GELU(), torch.nn.Linear(64, 8)).cuda()
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3, fused=True)
    trainer = SimpleNamespace(global_step=0, current_epoch=0, world_size=1, log_every_n_steps=10,
                              optimizers=[optimizer])
    guard, throughput = NonFiniteGuard("skip"), Throughput()
    batch = SimpleNamespace(batch_size=16, ids=list(range(16)))
    x = torch.randn(16, 64, device="cuda")
    before_bad = after_bad = None
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step in range(5):
            guard.on_train_batch_start(trainer, net, batch, step)
            throughput.on_train_batch_start(trainer, net, batch, step)
            loss = net(x).square().mean() * (float("nan") if step == 3 else 1.0)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if step == 3:
                before_bad = [p.detach().clone() for p in net.parameters()]
            guard.on_before_optimizer_step(trainer, net, optimizer)
            params = [p for g in optimizer.param_groups for p in g["params"]]
            torch.nn.utils.clip_grads_with_norm_(params, 1.0, grad_norm(trainer, optimizer))
            optimizer.step()
            if step == 3:
                after_bad = [p.detach().clone() for p in net.parameters()]
            trainer.global_step += 1
            throughput.on_train_batch_end(trainer, net, None, batch, step)
            guard.on_train_batch_end(trainer, net, None, batch, step)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(torch.equal(a, b) for a, b in zip(before_bad, after_bad))
    guard._check(trainer, net)
    assert guard.skipped == 1
    assert float(optimizer.state[params[0]]["step"]) == 4.0


def test_rich_progress_bar_reads_the_logged_values_at_the_logging_interval_only(compose_cfg):
    from mmgpt.training.progress import IntervalRichProgressBar

    reads = []

    class Counting(IntervalRichProgressBar):
        def _update_metrics(self, trainer, pl_module):
            if trainer.training and not self._skip_metrics:
                reads.append(trainer.global_step)
            super()._update_metrics(trainer, pl_module)

    cfg = compose_cfg(["experiment=smoke"])
    dm = instantiate(cfg.data, _convert_="all")
    module = build_module(cfg, dm)
    pl.Trainer(accelerator="cpu", max_steps=4, logger=False, enable_checkpointing=False, num_sanity_val_steps=0,
               limit_val_batches=0, log_every_n_steps=2, callbacks=[Counting()]).fit(module, datamodule=dm)
    assert reads[:2] == [2, 4]
