"""mmgpt-train and mmgpt-eval end to end, on tiny configurations."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import open_dict

from mmgpt.cli.evaluate import evaluate
from mmgpt.cli.train import train
from mmgpt.training.lit_module import MultimodalModule

FUSIONS = ["early", "late", "cross_attention"]
BIN = Path(sys.executable).parent


@pytest.mark.parametrize("fusion", FUSIONS)
def test_fast_dev_run(fusion, compose_cfg):
    cfg = compose_cfg(["experiment=smoke", "debug=fdr", f"model/fusion={fusion}", "logger=csv"])
    results = train(cfg)
    assert results["global_step"] == 1
    assert results["fusion_type"] == fusion
    assert {"val/acc", "val/f1", "val/loss"} <= set(results["val"])
    assert {"test/acc", "test/f1", "test/loss"} <= set(results["test"])
    from mmgpt.training.predictions import read_predictions  # the final evaluation's per-sample predictions

    ids, labels, scores = read_predictions(results["run_dir"], "test")
    assert len(ids) == len(labels) == scores.shape[0] > 0 and scores.shape[1] == 15
    assert abs(scores.sum(axis=1) - 1).max() < 1e-5


@pytest.mark.parametrize("fusion", FUSIONS)
def test_short_run_learns_well_above_chance(fusion, compose_cfg):
    cfg = compose_cfg([
        "experiment=smoke", f"model/fusion={fusion}", "logger=csv",
        "data.num_train=768", "data.num_val=256", "trainer.max_epochs=4",
    ])
    results = train(cfg)
    run = Path(cfg.paths.output_dir)
    # 15 classes: uniform guessing gets 0.067 and the most frequent class about 0.11.
    assert results["val"]["val/acc"] > 0.3, results["val"]
    saved = json.loads((run / "results.json").read_text())
    assert saved["val"] == results["val"] and saved["params"]["total"] == sum(
        v for k, v in saved["params"].items() if k != "total"
    )
    assert (run / "metrics.csv").is_file() and (run / "config.yaml").is_file()
    assert (run / "checkpoints" / "last.ckpt").is_file() and saved["best_ckpt"]
    assert saved["train_samples_per_sec"] > 0 and saved["val_samples_per_sec"] > 0
    assert "samples_per_sec" not in saved  # the keys say which figure is which


def test_checkpoint_rebuilds_without_yaml_and_eval_reproduces_val(compose_cfg, tmp_path):
    cfg = compose_cfg(["experiment=smoke", "model/fusion=late", "logger=csv", "trainer.max_epochs=2"])
    results = train(cfg)
    ckpt = results["best_ckpt"]

    module = MultimodalModule.load_from_checkpoint(ckpt, map_location="cpu")
    assert module.hparams.class_names and module.net.head.net[-1].out_features == len(module.hparams.class_names)
    stored = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert stored["mmgpt"]["config"]["model"]["dim"] == cfg.model.dim

    eval_cfg = compose_cfg([f"ckpt_path={ckpt}"], config_name="eval")
    with open_dict(eval_cfg):
        eval_cfg.paths.output_dir = str(tmp_path / "eval")
    out = evaluate(eval_cfg)
    assert out["metrics"]["val/acc"] == pytest.approx(results["val"]["val/acc"], abs=1e-6)
    assert set(out["subsets"]) == {"audio+image+text", "audio+image", "audio+text", "image+text", "audio", "image",
                                   "text"}
    assert out["subsets"]["audio+image+text"]["acc"] == pytest.approx(out["metrics"]["val/acc"], abs=1e-6)
    assert (tmp_path / "eval" / "eval_results.json").is_file()


def _train_subprocess(tmp_path: Path, name: str, *args: str, launcher: list[str] | None = None) -> dict:
    env = {**os.environ, "MMGPT_LOG_DIR": str(tmp_path / name), "CI": "1", "WANDB_MODE": "offline"}
    proc = subprocess.run([*(launcher or []), str(BIN / "mmgpt-train"), *args], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (results_file,) = (tmp_path / name).glob("train/runs/*/results.json")  # exactly one run directory
    return json.loads(results_file.read_text())


@pytest.mark.slow  # minutes on 2 CPUs: in CI's slow run (make test-slow)
def test_ddp_sim_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    """2 CPU processes x batch 16 == 1 process x batch 32: same samples per step, gradients averaged by DDP.

    Plain SGD, because Adam turns the float noise of gradients that are zero in exact arithmetic (attention key
    biases) into full-size steps of random sign, which hides what this test checks.
    """
    common = ["experiment=smoke", "logger=csv", "data.shuffle=false", "data.augment=false", "trainer.max_epochs=1",
              "model.module.optimizer.type=sgd", "~model.module.optimizer.betas",
              "model.module.optimizer.lr=0.1"]
    two = _train_subprocess(tmp_path, "ddp", "trainer=ddp_sim", "data.batch_size=16", *common)
    one = _train_subprocess(tmp_path, "single", "trainer=cpu", "data.batch_size=32", *common)
    assert two["world_size"] == 2 and one["world_size"] == 1
    assert two["global_step"] == one["global_step"] == 4  # 128 samples / global batch 32
    a = torch.load(Path(two["run_dir"]) / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    b = torch.load(Path(one["run_dir"]) / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    params = [k for k in a if k.startswith("net.")]
    assert params and set(a) == set(b)
    for k in params:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4, msg=k)


def test_torchrun_launch_writes_one_run_directory(tmp_path):
    results = _train_subprocess(tmp_path, "torchrun", "trainer=ddp_sim", "experiment=smoke", "logger=csv",
                                launcher=[str(BIN / "torchrun"), "--standalone", "--nproc-per-node", "2"])
    assert results["world_size"] == 2
    assert Path(results["run_dir"]).name.startswith("torchrun-")


def test_misspelt_key_on_the_command_line_is_a_clear_error(tmp_path):
    env = {**os.environ, "MMGPT_LOG_DIR": str(tmp_path)}
    proc = subprocess.run([str(BIN / "mmgpt-train"), "trainer.max_epocs=1"], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode != 0
    assert "Key 'max_epocs' not in 'TrainerSchema'" in proc.stderr and "full_key: trainer.max_epocs" in proc.stderr


def test_resume_auto_continues_the_same_wandb_run(compose_cfg):
    """The wandb run id is stored in the checkpoint; the resumed run logs into the same run (offline here)."""
    from mmgpt.training.tracking import offline_wandb_runs

    first = compose_cfg(["experiment=smoke", "logger=wandb", "trainer.max_epochs=1", "test=false"])
    train(first)
    run = Path(first.paths.output_dir)
    (before,) = offline_wandb_runs(run)
    saved_id = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["mmgpt"]["wandb_id"]
    assert saved_id and before.name.endswith(f"-{saved_id}")

    results = train(compose_cfg(["experiment=smoke", "logger=wandb", "trainer.max_epochs=2", "test=false",
                                 "resume=auto"]))
    assert results["epochs"] == 2
    runs = offline_wandb_runs(run)
    assert len(runs) == 2 and all(p.name.endswith(f"-{saved_id}") for p in runs)  # one wandb run, two sessions
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["mmgpt"]["wandb_id"] == saved_id


def test_run_output_has_no_lightning_adverts(caplog):
    import logging

    from pytorch_lightning.utilities.rank_zero import rank_zero_info

    from mmgpt.cli import quiet_lightning

    quiet_lightning()
    with caplog.at_level(logging.INFO):
        rank_zero_info("\N{ELECTRIC LIGHT BULB} Tip: try installing a product")
        rank_zero_info("GPU available: False")
    assert "Tip:" not in caplog.text and "GPU available" in caplog.text


def test_a_copied_run_directory_uses_its_own_best_checkpoint(compose_cfg, tmp_path):
    import shutil

    cfg = compose_cfg(["experiment=smoke", "logger=csv", "test=false"])
    first = train(cfg)
    original = Path(cfg.paths.output_dir)
    copy = tmp_path / "copied"
    shutil.copytree(original, copy)
    shutil.rmtree(original)  # the run directory was moved: the checkpoint's recorded paths no longer exist
    with open_dict(cfg):
        cfg.paths.output_dir = str(copy)
        cfg.resume = "auto"
    again = train(cfg)
    assert Path(again["best_ckpt"]).parent == copy / "checkpoints"
    assert Path(again["best_ckpt"]).name == Path(first["best_ckpt"]).name
    assert again["val"]["val/acc"] == pytest.approx(first["val"]["val/acc"])


@pytest.mark.parametrize(("command", "overrides", "key"), [
    ("eval", [], "ckpt_path"),
    ("train", ["experiment=smoke", "data=manifest"], "data.root"),
])
def test_a_mandatory_value_left_out_is_one_line_naming_the_key(compose_cfg, command, overrides, key):
    """`mmgpt-eval` without ckpt_path (a `???` in the config) printed OmegaConf's MissingMandatoryValue traceback."""
    from mmgpt.cli.common import user_errors

    cfg = compose_cfg(overrides, config_name=command)
    with pytest.raises(SystemExit) as stop:
        user_errors(evaluate if command == "eval" else train)(cfg)
    assert str(stop.value) == f"error: {key}: missing; give it on the command line ({key}=...)"


def test_credentials_typed_on_the_command_line_stay_out_of_every_run_file(tmp_path):
    """docs/datasets.md: storage_options credentials are left out of config.yaml, .hydra/, the loggers'
    hyperparameters and the checkpoints. Given as the documented `'data.storage_options={...}'` override, they were
    written into .hydra/overrides.yaml and hydra.yaml, the run stamp's command line (results.json, hparams.yaml,
    TensorBoard) and the printed config (train.log)."""
    from tests.helpers.folders import export_and_shard

    shards = export_and_shard(tmp_path, num_train=16, samples_per_shard=8, num_val=8, num_test=4)
    run = tmp_path / "run"
    secret, token = "SECRETVALUE-5f0c1d", "TOKENVALUE-9a1b2c"
    cmd = [str(Path(sys.executable).parent / "mmgpt-train"), "experiment=smoke", "data=shards", f"data.root={shards}",
           "data.num_workers=0", "data.batch_size=8", "trainer.max_epochs=1", "test=false",
           f"data.storage_options={{key: AKIDTESTKEY, secret: {secret}}}", f"+data.storage_options.token={token}",
           f"hydra.run.dir={run}"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=600,
                         env={**os.environ, "WANDB_MODE": "offline"})
    assert out.returncode == 0, out.stderr[-3000:]
    files = [p for p in run.rglob("*") if p.is_file()]
    assert (run / ".hydra" / "hydra.yaml") in files and (run / "results.json") in files
    for p in files:
        for value in (secret, token, "AKIDTESTKEY"):
            assert value.encode() not in p.read_bytes(), p
    assert secret not in out.stdout + out.stderr
    assert "secret: REDACTED" in (run / ".hydra" / "overrides.yaml").read_text()
