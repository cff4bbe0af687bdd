"""Crash-safe checkpoints and resuming."""

import copy
import os
import signal
from pathlib import Path

import pytest
import torch

from mmgpt.cli.train import apply_speedups, train
from mmgpt.training.checkpointing import AtomicCheckpointIO, config_differences, find_resume_checkpoint
from tests.conftest import make_batch
from tests.fusion.test_fusion import build


def test_atomic_save_leaves_the_previous_checkpoint_intact_when_saving_crashes(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"global_step": 1, "state_dict": {"w": torch.ones(3)}}, path)

    def crash(obj, f, *args, **kwargs):
        f.write(b"partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        io.save_checkpoint({"global_step": 2, "state_dict": {"w": torch.zeros(3)}}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["global_step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left behind


def test_a_preemption_signal_during_a_save_is_delivered_after_the_checkpoint_is_complete(tmp_path, monkeypatch):
    """submitit's SIGUSR2 handler exits the process; arriving mid-``torch.save`` it used to abort the write, so the
    job failed instead of being requeued (seen in CI). The signal is now held until the checkpoint is in place."""
    path, real_save, seen = tmp_path / "step.ckpt", torch.save, []

    def save_interrupted(obj, f, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGUSR2)  # the pre-emption arrives while the file is being written
        real_save(obj, f, *args, **kwargs)

    def preempted(signum, frame):
        seen.append(path.exists())
        raise SystemExit(-1)

    previous = signal.signal(signal.SIGUSR2, preempted)
    try:
        monkeypatch.setattr(torch, "save", save_interrupted)
        with pytest.raises(SystemExit):
            AtomicCheckpointIO().save_checkpoint({"global_step": 5, "state_dict": {"w": torch.ones(3)}}, path)
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert seen == [True]  # the handler ran once, after the checkpoint was renamed into place
    assert torch.load(path, weights_only=True)["global_step"] == 5
    assert [p.name for p in tmp_path.iterdir()] == ["step.ckpt"]


def test_a_corrupt_last_checkpoint_falls_back_to_the_previous_good_one(tmp_path):
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    good = ckpts / "best-epoch000.ckpt"
    torch.save({"global_step": 5, "state_dict": {}}, good)
    last = ckpts / "last.ckpt"
    torch.save({"global_step": 9, "state_dict": {}}, last)
    assert find_resume_checkpoint(tmp_path) == last
    last.write_bytes(last.read_bytes()[:40])  # truncated, as by a crash mid-write without atomic saving
    assert find_resume_checkpoint(tmp_path) == good
    assert find_resume_checkpoint(tmp_path / "nowhere") is None
    half = ckpts / ".step0000011.ckpt.tmp-4242"  # a save killed half-way (see AtomicCheckpointIO)
    half.write_bytes(b"partial")
    assert find_resume_checkpoint(tmp_path) == good and not half.exists()


def test_one_last_checkpoint_per_run(compose_cfg):
    cfg = compose_cfg(["experiment=smoke", "logger=csv", "callbacks.step_checkpoint.every_n_train_steps=1"])
    train(cfg)
    names = sorted(p.name for p in (Path(cfg.paths.output_dir) / "checkpoints").glob("*.ckpt"))
    assert [n for n in names if n.startswith("last")] == ["last.ckpt"], names


def test_config_differences_name_the_keys():
    diffs = config_differences({"a": {"dim": 64, "x": 1}}, {"a": {"dim": 32}}, "model")
    assert diffs == ["model.a.dim: 64 (checkpoint) != 32 (now)", "model.a.x: absent in the current config"]


def test_resume_auto_continues_and_refuses_another_model(compose_cfg):
    base = ["experiment=smoke", "logger=csv"]
    first = train(compose_cfg(base))
    steps_per_epoch = first["global_step"]
    resumed = train(compose_cfg([*base, "resume=auto", "trainer.max_epochs=2"]))
    assert resumed["global_step"] == 2 * steps_per_epoch
    with pytest.raises(ValueError, match=r"(?s)refusing to resume.*model\.net\.encoders\.text\.dim"):
        train(compose_cfg([*base, "resume=auto", "trainer.max_epochs=3", "model.dim=48"]))


def test_resume_auto_without_checkpoint_starts_fresh(compose_cfg):
    results = train(compose_cfg(["experiment=smoke", "logger=csv", "resume=auto", "debug=fdr"]))
    assert results["global_step"] == 1


def test_activation_checkpointing_gives_the_same_gradients_and_parameter_names():
    batch = make_batch()
    plain = build("early")
    wrapped = copy.deepcopy(plain)
    apply_speedups(wrapped, compile=False, activation_checkpointing=True)
    assert set(plain.state_dict()) == set(wrapped.state_dict())
    for model in (plain, wrapped):
        torch.nn.functional.cross_entropy(model(batch).logits, batch.labels).backward()
    for (name, p), q in zip(plain.named_parameters(), wrapped.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-6, rtol=1e-5, msg=name)
