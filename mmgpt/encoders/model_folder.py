"""A model folder someone sent you, checked as data before ``transformers`` or ``timm`` reads it.

A backbone encoder's ``name_or_path``, the ``hf`` decoder's folder and a timm ``checkpoint_path`` come from other
machines. ``transformers`` itself refuses the dangerous parts (remote code without ``trust_remote_code``, pickled
weights that ``torch.load(weights_only=True)`` rejects), but as a traceback of a dozen lines from deep inside its
loader, after some of the folder has been read. :func:`check_model_folder` looks first and refuses, in one line
naming the folder, the file and why:

* a ``*config.json`` (model, tokenizer, processor) that is not a JSON object;
* an ``auto_map`` (classes shipped as Python files in the folder) where the folder names no class of
  ``transformers`` itself to use instead: a ``config.json`` whose ``model_type`` it does not know, a tokenizer or
  processor config without a known ``tokenizer_class`` / ``*_type``. (``trust_remote_code`` is off for every
  folder mmgpt reads unless the user sets it; with it off and a known class, ``transformers`` ignores the
  ``auto_map``, so such folders load, with ``transformers``' own code);
* a ``config.json`` whose ``model_type`` ``transformers`` does not know (only its own classes are built);
* a weight index (``*.index.json``) naming a shard outside the folder;
* pickled weights (``pytorch_model*.bin``; only read when the folder has no ``.safetensors`` weights, as
  ``transformers`` does) that do not load with ``torch.load(weights_only=True)``: tensors and plain containers
  only, so a pickled call is refused before anything else reads the file.

Nothing in the folder is imported or run by the check.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from mmgpt.errors import UserError, load_error_reason

__all__ = ["ModelFolderError", "check_model_folder", "check_weights_file"]

#: Weight files ``transformers`` reads as pickles when a folder has no safetensors weights.
PICKLED_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")
SAFETENSORS_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")

_CHECKED: set[tuple[Any, ...]] = set()


class ModelFolderError(UserError):
    """A model folder (or weight file) holding something mmgpt does not load: code, or a pickle that is not data."""


def check_model_folder(folder: str | Path, what: str = "name_or_path") -> None:
    """Refuse a model folder that ships code, names an unknown model type or holds pickled weights that are not
    plain data (see the module doc). Checked once per process while the folder's files are unchanged.

    Args:
        folder: the ``save_pretrained`` folder.
        what: the config key that named it, for the message (``model.net.decoder.name_or_path``).

    Raises:
        ModelFolderError: one line naming the folder, the file and why.
    """
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.is_file())
    stamp = (str(folder.resolve()), tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files))
    if stamp in _CHECKED:
        return
    where = f"{what}={folder}"
    config_file = folder / "config.json"
    model_type = _json_object(config_file, where).get("model_type") if config_file.is_file() else None
    for path in files:
        if path.name.endswith("config.json"):
            config = _json_object(path, where)
            native = _known_model_type(model_type) if path == config_file else _known_class(config) or (
                not any(key in config for key in _CLASS_KEYS) and _known_model_type(model_type))
            if "auto_map" in config and not native:
                classes = ", ".join(sorted({str(v) for v in _strings(config["auto_map"])})) or "auto_map"
                raise ModelFolderError(f"{where}: {path.name} has an auto_map (code shipped with the model: "
                                       f"{classes}) and no class of transformers' own; refused (trust_remote_code "
                                       "is off, nothing was imported)")
    if model_type is not None and not _known_model_type(model_type):
        raise ModelFolderError(f"{where}: config.json names model_type {model_type!r}, which transformers does "
                               "not know; refused (mmgpt builds only transformers' own classes)")
    for index in (p for p in files if p.name.endswith(".index.json")):
        weight_map = _json_object(index, where).get("weight_map") or {}
        for name in _strings(weight_map):  # plain names (the hub cache's snapshots link them to its blobs)
            if Path(name).name != name or name in ("", ".", "..") or "\\" in name:
                raise ModelFolderError(f"{where}: {index.name} names the weight file {name!r}, outside the folder; "
                                       "refused")
    if not any((folder / name).is_file() for name in SAFETENSORS_WEIGHTS):
        for path in _pickled_weights(folder):
            check_weights_file(path, where)
    _CHECKED.add(stamp)


def check_weights_file(path: str | Path, where: str) -> None:
    """Refuse a pickled weight file that does not load as data (``torch.load(weights_only=True)``); a
    ``.safetensors`` file holds no code and is not read here.

    Raises:
        ModelFolderError: one line naming ``where``, the file and the global it names.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        return
    try:
        try:
            torch.load(path, map_location="cpu", weights_only=True, mmap=True)  # mmap: tensors are not read
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            torch.load(path, map_location="cpu", weights_only=True)  # the legacy (non-zip) format
    except Exception as e:  # noqa: BLE001 - anything but plain data is refused
        raise ModelFolderError(f"{where}: {path.name} is not plain weights ({load_error_reason(e)}); refused "
                               "(pickled weights are read with weights-only loading only, nothing was run)") from None


def _pickled_weights(folder: Path) -> list[Path]:
    """The pickled weight files ``transformers`` would read: ``pytorch_model.bin`` or the shards its index names."""
    index = folder / "pytorch_model.bin.index.json"
    if index.is_file():
        return [folder / name for name in sorted(set(_strings(json.loads(index.read_text()).get("weight_map") or {})))]
    single = folder / "pytorch_model.bin"
    return [single] if single.is_file() else []


def _json_object(path: Path, where: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFolderError(f"{where}: {path.name} is not readable JSON ({e})") from None
    if not isinstance(data, dict):
        raise ModelFolderError(f"{where}: {path.name} holds a JSON {type(data).__name__}, not an object")
    return data


def _strings(node: Any) -> Iterable[str]:
    """Every string value under ``node`` (a JSON value)."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)


def _known_model_type(model_type: Any) -> bool:
    from transformers import CONFIG_MAPPING

    return isinstance(model_type, str) and model_type in CONFIG_MAPPING


#: Keys through which a tokenizer / processor config names its transformers class.
_CLASS_KEYS = ("tokenizer_class", "image_processor_type", "feature_extractor_type", "processor_class")


def _known_class(config: dict[str, Any]) -> bool:
    """Whether a tokenizer or processor config names a class of transformers itself (then transformers uses it
    and ignores an ``auto_map`` while ``trust_remote_code`` is off)."""
    import transformers

    names = [config.get(key) for key in _CLASS_KEYS if isinstance(config.get(key), str)]
    return bool(names) and all(hasattr(transformers, name) for name in names)
