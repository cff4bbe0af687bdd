"""Checkpoints that survive crashes: atomic writes, finding the newest good checkpoint, config compatibility."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from mmgpt.training.distributed import is_sharded_checkpoint

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file in the same directory, fsyncs it, then renames it into place.

    A crash while saving leaves the previous ``last.ckpt`` intact: the rename is atomic on POSIX file systems.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        with signals_held():
            try:
                with open(tmp, "wb") as f:
                    torch.save(checkpoint, f)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)


HELD_SIGNALS = tuple(getattr(signal, name) for name in ("SIGUSR1", "SIGUSR2", "SIGTERM") if hasattr(signal, name))


@contextlib.contextmanager
def signals_held(signals: tuple[int, ...] = HELD_SIGNALS) -> Iterator[None]:
    """Hold pre-emption signals (SLURM's ``SIGUSR1``/``SIGUSR2``, ``SIGTERM``) until the block ends, then deliver them.

    A cluster's pre-emption handler (submitit's, Lightning's) saves or exits from inside the signal handler; run in
    the middle of ``torch.save`` it would abort the write half-way and the job would fail instead of being requeued.
    Only the main thread may install handlers; elsewhere the block runs unguarded.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: pending.append(signum)) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for sig in dict.fromkeys(pending):
            signal.raise_signal(sig)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (no arbitrary code runs while unpickling).

    A sharded checkpoint (a folder, written by ``trainer=fsdp``) gives its metadata only: loop state,
    callbacks, hyperparameters, without ``state_dict`` (:func:`mmgpt.training.distributed.consolidate` reads
    the weights).
    """
    if Path(path).is_dir():
        from mmgpt.training.distributed import load_sharded_meta

        return load_sharded_meta(path)
    return torch.load(path, map_location="cpu", weights_only=True)


def find_resume_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest checkpoint under ``run_dir/checkpoints`` that loads; corrupt ones are reported and skipped.

    ``last.ckpt`` is preferred when it is the newest; a truncated or otherwise unreadable file falls back to the
    next newest good checkpoint. Returns None when the directory has no usable checkpoint.
    """
    ckpt_dir = Path(run_dir) / "checkpoints"
    for stale in ckpt_dir.glob(".*.ckpt.tmp-*"):  # half-written by a process that was killed while saving
        log.info("removing %s, left by an interrupted save", stale)
        stale.unlink(missing_ok=True)
    for stale in ckpt_dir.glob(".*.ckpt.tmp"):  # a sharded checkpoint folder whose save was interrupted
        log.info("removing %s, left by an interrupted save", stale)
        shutil.rmtree(stale, ignore_errors=True)
    for old in ckpt_dir.glob(".*.ckpt.old"):  # killed between the two renames of a sharded save: put it back
        target = old.with_name(old.name[1:-len(".old")])
        if target.exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(old, target)
    candidates = sorted(ckpt_dir.glob("*.ckpt"), key=lambda p: (p.stat().st_mtime, p.name == "last.ckpt"), reverse=True)
    for path in candidates:
        try:
            ckpt = load_checkpoint(path)
        except Exception as e:  # noqa: BLE001 - any failure to read means "not usable"
            log.warning("skipping unreadable checkpoint %s (%s: %s)", path, type(e).__name__, e)
            continue
        if ("state_dict" not in ckpt and not is_sharded_checkpoint(path)) or "global_step" not in ckpt:
            log.warning("skipping %s: not a training checkpoint", path)
            continue
        return path
    return None


def config_differences(saved: Any, current: Any, prefix: str = "") -> list[str]:
    """Key paths where two plain config trees differ (``model.dim: 64 != 128``)."""
    if isinstance(saved, dict) and isinstance(current, dict):
        out: list[str] = []
        for key in sorted(set(saved) | set(current), key=str):
            where = f"{prefix}.{key}" if prefix else str(key)
            if key not in saved:
                out.append(f"{where}: absent in the checkpoint")
            elif key not in current:
                out.append(f"{where}: absent in the current config")
            else:
                out += config_differences(saved[key], current[key], where)
        return out
    return [] if saved == current else [f"{prefix}: {saved!r} (checkpoint) != {current!r} (now)"]


def check_resume_compatible(ckpt: dict[str, Any], net_config: dict[str, Any], path: str | Path) -> None:
    """Refuse to resume from a checkpoint whose network config differs from the one being trained."""
    saved = (ckpt.get("hyper_parameters") or {}).get("net")
    if saved is None:
        raise ValueError(f"{path}: the checkpoint stores no network config, so it cannot be checked for resuming")
    saved = {k: v for k, v in saved.items()}
    current = dict(net_config)
    # head.num_classes is filled in from the data on both sides; compare it too (a different class count is fatal).
    diffs = config_differences(saved, current, "model.net")
    if diffs:
        shown = "\n  ".join(diffs[:20])
        raise ValueError(f"refusing to resume from {path}: its model config differs from the current one:\n  {shown}")
