"""FSDP2 (``trainer=fsdp_sim``: Lightning's ModelParallelStrategy on 2 CPU processes, gloo) end to end.

One run of the whole story, because each two-process run costs ~20 s: the sharded run's parameters equal a
DDP run's (same global batch, gradient clipping active in both); a run killed by SIGKILL mid-epoch and
restarted with ``resume=auto`` from its sharded checkpoint ends bit-identical to the uninterrupted sharded run;
the sharded best checkpoint evaluates on one process in ``mmgpt-eval`` (consolidated in memory, and through
the conversion command) to the validation metric the training run reported.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import open_dict

from mmgpt.cli.evaluate import evaluate
from mmgpt.training.checkpointing import find_resume_checkpoint
from mmgpt.training.distributed import consolidate, is_sharded_checkpoint
from tests.helpers.folders import newest_step

BIN = Path(sys.executable).parent
# 256 samples / (2 ranks x 32) = 4 steps per epoch, 2 epochs; a checkpoint after every step; killed at step 6.
# SGD: Adam turns float noise in gradients that are zero in exact arithmetic into full-size steps (see the DDP
# parity test in tests/cli/test_train.py). A small clipping threshold, so that clipping acts on every step.
COMMON = ["experiment=smoke", "logger=csv", "data.num_train=256", "trainer.max_epochs=2", "test=false",
          "callbacks.step_checkpoint.every_n_train_steps=1", "model.dropout=0.1", "data.augment=true",
          "data.modality_dropout.audio=0.2", "data.modality_dropout.image=0.2", "trainer.gradient_clip_val=0.05",
          "model.module.optimizer.type=sgd", "~model.module.optimizer.betas",
          "model.module.optimizer.lr=0.2"]
KILL_AT = 6
#: FSDP reduce-scatters where DDP all-reduces: the same sums in another order, so float rounding differs.
ATOL, RTOL = 1e-5, 1e-4


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "MMGPT_LOG_DIR": str(tmp_path), "CI": "1", "WANDB_MODE": "offline"}


def _train(tmp_path: Path, run_dir: Path, *args: str) -> dict:
    proc = subprocess.run([str(BIN / "mmgpt-train"), *COMMON, *args, f"hydra.run.dir={run_dir}"],
                          env=_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((run_dir / "results.json").read_text())


@pytest.mark.slow
def test_fsdp_matches_ddp_resumes_exactly_and_evaluates_on_one_process(tmp_path, compose_cfg):
    ddp = _train(tmp_path, tmp_path / "ddp", "trainer=ddp_sim")
    full_dir = tmp_path / "fsdp"
    fsdp = _train(tmp_path, full_dir, "trainer=fsdp_sim")
    assert fsdp["world_size"] == ddp["world_size"] == 2 and fsdp["global_step"] == ddp["global_step"] == 8

    last = full_dir / "checkpoints" / "last.ckpt"
    assert is_sharded_checkpoint(last) and len(list(last.glob("*.distcp"))) == 2  # one shard file per rank
    sharded = consolidate(last)["state_dict"]
    reference = torch.load(tmp_path / "ddp" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert set(sharded) == set(reference)
    for k in sharded:
        torch.testing.assert_close(sharded[k], reference[k], atol=ATOL, rtol=RTOL, msg=k)

    # Killed mid-epoch (its own process group: every rank at once), then resume=auto.
    killed_dir = tmp_path / "killed"
    cmd = [str(BIN / "mmgpt-train"), *COMMON, "trainer=fsdp_sim", f"hydra.run.dir={killed_dir}"]
    proc = subprocess.Popen(cmd, env=_env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 600
    while newest_step((killed_dir / "checkpoints").glob("step*.ckpt")) < KILL_AT and time.time() < deadline:
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed_dir / "results.json").exists()
    found = find_resume_checkpoint(killed_dir)
    assert found is not None and is_sharded_checkpoint(found)
    subprocess.run([*cmd, "resume=auto"], env=_env(tmp_path), check=True, capture_output=True, timeout=600)
    resumed = json.loads((killed_dir / "results.json").read_text())
    assert resumed["global_step"] == fsdp["global_step"] and resumed["val"] == fsdp["val"]
    a = consolidate(last)["state_dict"]
    b = consolidate(killed_dir / "checkpoints" / "last.ckpt")["state_dict"]
    for k in a:
        assert torch.equal(a[k], b[k]), k

    # One process: mmgpt-eval on the sharded folder (consolidated in memory) and on the converted file.
    best = Path(fsdp["best_ckpt"])
    assert is_sharded_checkpoint(best)
    converted = tmp_path / "best.ckpt"
    subprocess.run([sys.executable, "-m", "mmgpt.training.distributed", str(best), str(converted)], check=True,
                   capture_output=True, timeout=300)
    for path in (best, converted):
        cfg = compose_cfg([f"ckpt_path={path}", "subsets=false"], config_name="eval")
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path / "eval" / path.name)
        out = evaluate(cfg)
        assert out["metrics"]["val/acc"] == pytest.approx(fsdp["val"]["val/acc"], abs=1e-6)
        assert out["metrics"]["val/loss"] == pytest.approx(fsdp["val"]["val/loss"], rel=1e-4)
