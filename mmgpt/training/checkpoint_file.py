"""Weight files read as data: ``torch.load(weights_only=True)`` or safetensors, every failure as one line.

Below both :mod:`mmgpt.training.safe_load` (which checks what a checkpoint describes) and
:mod:`mmgpt.training.distributed` (which reads a sharded checkpoint's ``meta.pt``), so neither imports the other.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mmgpt.errors import CheckpointError, UserError, load_error_reason


def read_checkpoint_file(path: str | Path) -> dict[str, Any]:
    """The dict a checkpoint file holds, unpickled with ``weights_only=True`` (no code runs).

    Raises:
        CheckpointError: a missing, truncated, damaged or non-checkpoint file, in one line naming it.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (zipfile.BadZipFile, EOFError) as e:
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or damaged: {e})") from e
    except RuntimeError as e:
        reason = "truncated or damaged" if "zip" in str(e).lower() or "archive" in str(e).lower() else str(e)
        raise CheckpointError(f"{path}: not a readable checkpoint ({reason.splitlines()[0]})") from e
    except Exception as e:  # noqa: BLE001 - pickle errors of every kind mean "not a checkpoint"
        raise CheckpointError(f"{path}: not a checkpoint ({type(e).__name__}: {load_error_reason(e)})") from e
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: not a checkpoint (it holds a {type(ckpt).__name__}, not a dict)")
    return ckpt


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Tensors of a Lightning checkpoint (``state_dict``), a plain ``.pt``/``.bin`` state dict, or ``.safetensors``
    (``init_from``); no code runs, and a file that is none of these is one line naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as e:
            raise UserError(f"{path}: not a readable .safetensors file ({str(e).splitlines()[0]})") from e
    obj = read_checkpoint_file(path)
    return obj.get("state_dict", obj)
