"""``model.module.loss_mean_over``: the epoch's ``val/loss`` over samples (mmgpt's default) or as the mean of the
batches' means (MMSA's trainers, whose early stopping and plateau schedule watch it; the ``mosi_mmsa_*`` configs)."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from hydra.errors import InstantiationException

from bench.mmsa_data import Shape, write_pickle
from mmgpt.cli.train import train

# 10 validation samples in batches of 4: 4, 4 and 2, so the two means differ
SHAPE = Shape({"train": 16, "valid": 10, "test": 6}, {"text": 12, "audio": 5, "vision": 6}, (10, 12, 8))


class BatchLosses(pl.Callback):
    """Each validation batch's L1 and size (from the step's predictions) and the logged epoch ``val/loss``."""

    batches: list[tuple[float, int]] = []
    logged: list[float] = []

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if not trainer.sanity_checking and not BatchLosses.logged:  # the first epoch's pass only
            preds = outputs["logits"].view(-1)
            BatchLosses.batches.append((float((preds - batch.labels).abs().mean()), len(preds)))

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking and not BatchLosses.logged:
            BatchLosses.logged.append(float(trainer.callback_metrics["val/loss"]))


@pytest.mark.parametrize("over", ["samples", "batches"])
def test_val_loss_is_the_mean_over_samples_or_over_batches(compose_cfg, tmp_path, over):
    path = write_pickle(tmp_path / "unaligned_50.pkl", aligned=False, shape=SHAPE)
    BatchLosses.batches, BatchLosses.logged = [], []
    train(compose_cfg(["experiment=mosi_mmsa_lf_dnn", f"data.root={path}", "data.batch_size=4",
                       "trainer.max_epochs=1", "logger=csv", "callbacks.progress=null",
                       f"model.module.loss_mean_over={over}", f"+callbacks.zz_losses._target_={__name__}.BatchLosses"]))
    losses = torch.tensor([b[0] for b in BatchLosses.batches])
    sizes = torch.tensor([b[1] for b in BatchLosses.batches], dtype=torch.float32)
    assert sizes.tolist() == [4, 4, 2]
    by_batch, by_sample = float(losses.mean()), float((losses * sizes).sum() / sizes.sum())
    assert abs(by_batch - by_sample) > 1e-4  # the test can tell them apart
    want = by_batch if over == "batches" else by_sample
    assert BatchLosses.logged == [pytest.approx(want, abs=1e-6)]


def test_an_unknown_mean_is_refused_by_name(compose_cfg, tmp_path):
    path = write_pickle(tmp_path / "unaligned_50.pkl", aligned=False, shape=SHAPE)
    with pytest.raises(InstantiationException, match="loss_mean_over: 'tokens' is not one of samples, batches"):
        train(compose_cfg(["experiment=mosi_mmsa_lf_dnn", f"data.root={path}", "trainer.max_epochs=1",
                           "logger=csv", "callbacks.progress=null", "model.module.loss_mean_over=tokens"]))
