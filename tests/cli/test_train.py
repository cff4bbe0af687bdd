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
from mmgpt.lit_module import MultimodalClassifier

FUSIONS = ["early", "late", "cross_attention"]
BIN = Path(sys.executable).parent


@pytest.mark.parametrize("fusion", FUSIONS)
def test_fast_dev_run(fusion, compose_cfg):
    cfg = compose_cfg(["experiment=smoke", "debug=fdr", f"model/fusion={fusion}", "logger=csv"])
    results = train(cfg)
    assert results["global_step"] == 1
    assert results["fusion_target"].endswith({"early": "EarlyFusion", "late": "LateFusion",
                                              "cross_attention": "CrossAttentionFusion"}[fusion])
    assert {"val/acc", "val/f1", "val/loss"} <= set(results["val"])
    assert {"test/acc", "test/f1", "test/loss"} <= set(results["test"])


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
    assert saved["samples_per_sec"] > 0


def test_checkpoint_rebuilds_without_yaml_and_eval_reproduces_val(compose_cfg, tmp_path):
    cfg = compose_cfg(["experiment=smoke", "model/fusion=late", "logger=csv", "trainer.max_epochs=2"])
    results = train(cfg)
    ckpt = results["best_ckpt"]

    module = MultimodalClassifier.load_from_checkpoint(ckpt, map_location="cpu")
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


def test_ddp_sim_trains_two_processes(tmp_path):
    env = {**os.environ, "MMGPT_LOG_DIR": str(tmp_path), "CI": "1", "WANDB_MODE": "offline"}
    proc = subprocess.run(
        [str(BIN / "mmgpt-train"), "trainer=ddp_sim", "experiment=smoke", "logger=csv"],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (results_file,) = tmp_path.glob("train/runs/*/results.json")
    results = json.loads(results_file.read_text())
    assert results["world_size"] == 2
    # 128 training samples, batch 32 per process, 2 processes: 2 optimizer steps in the one epoch.
    assert results["global_step"] == 2


def test_misspelt_key_on_the_command_line_is_a_clear_error(tmp_path):
    env = {**os.environ, "MMGPT_LOG_DIR": str(tmp_path)}
    proc = subprocess.run([str(BIN / "mmgpt-train"), "trainer.max_epocs=1"], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode != 0
    assert "Key 'max_epocs' not in 'TrainerSchema'" in proc.stderr and "full_key: trainer.max_epocs" in proc.stderr
