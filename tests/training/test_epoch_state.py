"""The training epoch's metric state travels in checkpoints: a run resumed mid-epoch logs the epoch metrics
(``train/acc``, ``train/f1``, ``train/loss_epoch``) of the uninterrupted run, exactly."""

import pytorch_lightning as pl
from hydra.utils import instantiate
from pytorch_lightning.loggers.logger import Logger

from mmgpt.cli.train import build_module
from mmgpt.training.callbacks import RestoreLoaderPosition, RngStateInCheckpoint
from mmgpt.training.epoch_state import EpochMetricsInCheckpoint

RANDOM = ["experiment=smoke", "model.dropout=0.2", "data.augment=true", "data.modality_dropout.audio=0.3"]
EPOCH_KEYS = ("train/acc", "train/f1", "train/loss_epoch")


class Recorder(Logger):
    """Keeps every logged row in memory."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[int | None, dict[str, float]]] = []

    @property
    def name(self) -> str:
        return "recorder"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.rows.append((step, dict(metrics)))

    def epoch_rows(self) -> list[dict[str, float]]:
        """The rows holding the training epoch metrics, one per epoch."""
        return [{k: m[k] for k in EPOCH_KEYS} for _, m in self.rows if "train/loss_epoch" in m]


def _fit(compose_cfg, tmp_path, ckpt_path=None, save=False, epoch_state=True) -> Recorder:
    """2 epochs of 4 steps (smoke data), a checkpoint after every step when ``save``."""
    cfg = compose_cfg(RANDOM)
    pl.seed_everything(0)
    dm = instantiate(cfg.data, _convert_="all")
    module = build_module(cfg, dm)
    callbacks: list[pl.Callback] = [RngStateInCheckpoint(), RestoreLoaderPosition()]
    if epoch_state:
        callbacks.append(EpochMetricsInCheckpoint())
    if save:
        callbacks.append(pl.callbacks.ModelCheckpoint(dirpath=tmp_path, filename="step{step}", save_top_k=-1,
                                                      every_n_train_steps=1, auto_insert_metric_name=False))
    recorder = Recorder()
    pl.Trainer(accelerator="cpu", max_epochs=2, logger=recorder, log_every_n_steps=1, enable_checkpointing=save,
               enable_progress_bar=False, num_sanity_val_steps=0, limit_val_batches=0, callbacks=callbacks,
               enable_model_summary=False).fit(module, datamodule=dm, ckpt_path=ckpt_path, weights_only=True)
    return recorder


def test_resumed_mid_epoch_logs_the_uninterrupted_runs_epoch_metrics(compose_cfg, tmp_path):
    full = _fit(compose_cfg, tmp_path, save=True).epoch_rows()
    assert len(full) == 2
    resumed = _fit(compose_cfg, tmp_path, ckpt_path=tmp_path / "step6.ckpt").epoch_rows()  # 2 steps into epoch 2
    assert resumed == full[1:]  # the epoch it finishes, with the same values, bit for bit
    # what the callback fixes: resumed without it, the second epoch's metrics cover only its last 2 batches
    resumed = _fit(compose_cfg, tmp_path, ckpt_path=tmp_path / "step6.ckpt", epoch_state=False).epoch_rows()
    assert resumed[0]["train/loss_epoch"] != full[1]["train/loss_epoch"]


def test_a_checkpoint_from_an_earlier_epoch_restores_nothing(compose_cfg):
    callback = EpochMetricsInCheckpoint()
    callback.load_state_dict({"epoch": 0, "batches": 2, "per_rank": [{"logged": {}, "metrics": {}}]})
    loop = type("L", (), {"batch_progress": type("P", (), {"current": type("C", (), {"completed": 0})()})()})()
    trainer = type("T", (), {"current_epoch": 1, "world_size": 1, "global_rank": 0,
                             "fit_loop": type("F", (), {"epoch_loop": loop})()})()
    callback.on_train_start(trainer, None)
    assert callback._to_restore is None
