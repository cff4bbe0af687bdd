"""``mmgpt-export CKPT OUT``: a trained model as a self-contained folder that others load with ``mmgpt.load(OUT)``.

::

    OUT/
      model.safetensors   the network's weights (safetensors: no pickle); frozen backbones left out when referenced
      mmgpt.json          the network spec, class names, task, data settings the processors use, backbones, run stamp
      processors/<m>/     a backbone's own tokenizer / image processor / feature extractor files (save_pretrained)
      backbones/<m>/      with --include-backbones: the backbone's files (safetensors weights and configs only)
      README.md           the model card: task, data, modalities, metrics with the run stamp, intended use

A frozen backbone is referenced by default (its ``name_or_path`` and the sha256 of its weight files, checked when
the folder is loaded), or included with ``--include-backbones``. Loading (:func:`load_exported`) follows the rules of
a checkpoint (:mod:`mmgpt.training.safe_load`): ``mmgpt.json`` is plain JSON naming registered parts only (a
``_target_`` or a ``${...}`` interpolation anywhere is refused), the weights are read as safetensors only (a pickle
posing as one is refused), nothing in the folder is imported or unpickled, and remote code stays off.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from mmgpt import stored_config
from mmgpt.errors import UserError

log = logging.getLogger(__name__)

FORMAT, FORMAT_VERSION = "mmgpt-export", 1
SPEC_FILE, WEIGHTS_FILE, CARD_FILE = "mmgpt.json", "model.safetensors", "README.md"
#: Weight files never copied into, nor accepted in, an exported folder: they are pickles.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
#: The data settings the processors are built from (the rest of a data config stays with the training run).
_DATA_KEYS = ("image_size", "sample_rate", "max_audio_seconds", "max_text_length", "max_image_pixels", "modalities")
#: The spec key that names a backbone's files, per encoder type family.
_FILES_KEY = {"hf_": "name_or_path", "timm_": "checkpoint_path"}


class ExportError(UserError):
    """A folder that is not a loadable mmgpt export, or that names something mmgpt does not load."""


# -- writing -----------------------------------------------------------------------------------------------------------
def export(checkpoint: str | Path, out: str | Path, *, include_backbones: bool = False,
           plugins: Sequence[str] = (), overwrite: bool = False) -> Path:
    """Write the self-contained folder of ``checkpoint`` into ``out`` (see the module docstring); returns ``out``.

    Args:
        checkpoint: a training checkpoint, opened by the safe loader.
        out: the folder to write (it must not exist, or be empty, unless ``overwrite``).
        include_backbones: copy each pretrained backbone's files in, instead of referencing them.
        plugins: your modules that register parts the model uses.
        overwrite: replace an earlier export in ``out`` (only a folder holding an export's ``mmgpt.json``).
    """
    from mmgpt.stamp import run_stamp
    from mmgpt.training.backbone_checkpoints import slim
    from mmgpt.training.lit_module import MultimodalModule
    from mmgpt.training.safe_load import read_checkpoint, stored_run_config

    checkpoint, out = Path(checkpoint), Path(out)
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out}: exists and is not a folder (choose a new folder)")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise ExportError(f"{out}: exists and is not empty (choose a new folder, or pass --overwrite)")
        if not _is_export(out):  # --overwrite deletes the folder: never a run directory, a home, a data folder
            raise ExportError(f"{out}: not an earlier mmgpt export (no {SPEC_FILE} of format {FORMAT!r}); "
                              "--overwrite replaces only an export folder, and nothing was deleted")
        if out.resolve() in checkpoint.resolve().parents:
            raise ExportError(f"{out}: holds the checkpoint {checkpoint}; choose another folder (nothing was deleted)")
    module = MultimodalModule.load_from_checkpoint(checkpoint, map_location="cpu", plugins=list(plugins))
    run_cfg = stored_run_config(read_checkpoint(checkpoint), checkpoint) or {}
    spec = json.loads(json.dumps(module.hparams["net"]))  # plain JSON types
    # Written into a hidden folder beside ``out`` and moved into place at the end: an export that fails midway (a
    # backbone that cannot be copied, a full disk) leaves no partial folder, and an earlier export stays as it was.
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    try:
        record: dict[str, Any] = {"state_dict": dict(module.net.state_dict())}
        slim(record, module.net)  # unchanged backbone tensors out, their identities in
        backbones = dict(record.get("backbones") or {})
        processors = _save_processors(module.net, spec, run_cfg.get("data") or {}, stage)  # original paths
        if include_backbones:
            for name, entry in backbones.items():
                entry["included"] = _include_backbone(spec, name, stage)
        tied = _save_weights(record["state_dict"], stage / WEIGHTS_FILE)

        results = _run_results(checkpoint)
        data = run_cfg.get("data") or {}
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "net": spec,
            "num_classes": int(module.hparams["num_classes"]),
            "class_names": list(module.hparams.get("class_names") or []),
            "objectives": module.hparams.get("objectives"),
            "data": {k: data[k] for k in _DATA_KEYS if data.get(k) is not None},
            "data_source": str(data.get("_target_", "")).rsplit(".", 1)[-1],
            "backbones": backbones,
            "tied": tied,
            "processors": processors,
            "metrics": {"val": results.get("val") or {}, "test": results.get("test") or {}},
            "training_stamp": results.get("stamp"),
            "export_stamp": run_stamp(),
            "checkpoint": checkpoint.name,
        }
        stored_config.check(manifest, out / SPEC_FILE, error=ExportError)  # what load_exported will accept
        (stage / SPEC_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))
        (stage / CARD_FILE).write_text(model_card(manifest))
        _move_into_place(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    log.info("exported %s to %s", checkpoint, out)
    return out


def _move_into_place(stage: Path, out: Path) -> None:
    """``stage`` becomes ``out``; an earlier ``out`` (an export, or an empty folder: checked by the caller) is moved
    aside first and deleted only once the new one is in place."""
    if not out.exists():
        stage.rename(out)
        return
    old = out.parent / f".{out.name}.replaced-{os.getpid()}"
    out.rename(old)
    try:
        stage.rename(out)
    except OSError:
        old.rename(out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _is_export(folder: Path) -> bool:
    """Whether ``folder`` holds an ``mmgpt.json`` written by :func:`export` (what ``--overwrite`` may replace)."""
    try:
        return json.loads((folder / SPEC_FILE).read_text(encoding="utf-8")).get("format") == FORMAT
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return False


def _include_backbone(spec: dict[str, Any], name: str, out: Path) -> bool:
    """Copy the backbone of encoder ``name`` (``encoders.<m>``) into ``out/backbones/<m>`` (safetensors and
    configs only) and point the spec at it (a path relative to the folder)."""
    modality = name.split(".")[-1]
    enc = spec["encoders"][modality]
    key = next((k for prefix, k in _FILES_KEY.items() if str(enc["type"]).startswith(prefix)), None)
    source = Path(str(enc.get(key) or "")) if key else None
    if source is None or not source.exists():
        raise ExportError(f"--include-backbones: {name}'s backbone ({enc.get(key) or enc['type']}) is not a local "
                          "file or folder; save it locally and train with that path, or export by reference")
    target = out / "backbones" / modality
    target.mkdir(parents=True)
    files = [source] if source.is_file() else sorted(p for p in source.rglob("*") if p.is_file())
    pickles = [p.name for p in files if p.suffix in PICKLE_SUFFIXES]
    if pickles and not any(p.suffix == ".safetensors" for p in files):
        raise ExportError(f"--include-backbones: {source} holds its weights as pickles ({pickles[0]}); save them "
                          "as safetensors (save_pretrained(..., safe_serialization=True)) first")
    for p in files:
        if p.suffix not in PICKLE_SUFFIXES:
            dest = target / (p.name if source.is_file() else p.relative_to(source))
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(p, dest)
    enc[key] = str(Path("backbones") / modality / (source.name if source.is_file() else ""))
    return True


def _save_weights(state: Mapping[str, torch.Tensor], path: Path) -> dict[str, str]:
    """Save ``state`` as safetensors; tensors sharing storage with an earlier one (tied weights) are saved once and
    returned as ``{alias: saved key}``."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    seen: dict[tuple[int, tuple[int, ...], tuple[int, ...]], str] = {}
    tied: dict[str, str] = {}
    for key, value in state.items():
        ident = (value.untyped_storage().data_ptr() + value.storage_offset() * value.element_size(),
                 tuple(value.shape), tuple(value.stride()))
        if value.numel() and ident in seen:
            tied[key] = seen[ident]
            continue
        seen[ident] = key
        tensors[key] = value.detach().cpu().contiguous().clone()
    save_file(tensors, str(path), metadata={"format": "pt"})
    return tied


def _save_processors(net: torch.nn.Module, spec: Mapping[str, Any], data: Mapping[str, Any],
                     out: Path) -> dict[str, str]:
    """Save each backbone processor's own files (tokenizer, image processor, feature extractor) into
    ``out/processors/<m>``; returns modality -> that folder (relative)."""
    from mmgpt.cli.generate import media_processors

    saved = {}
    for modality, processor in media_processors(net, dict(spec), dict(data)).items():
        for attr in ("tokenizer", "processor", "extractor"):
            obj = getattr(processor, attr, None)
            if hasattr(obj, "save_pretrained"):
                folder = out / "processors" / modality
                obj.save_pretrained(str(folder))
                saved[modality] = str(Path("processors") / modality)
    return saved


def _run_results(checkpoint: Path) -> dict[str, Any]:
    """The training run's ``results.json`` (beside ``checkpoints/``), for the card's metrics and stamp."""
    for path in (checkpoint.parent.parent / "results.json", checkpoint.parent / "results.json"):
        if path.is_file():
            return json.loads(path.read_text())
    return {}


def model_card(manifest: Mapping[str, Any]) -> str:
    """The folder's ``README.md``: what the model does, on what data, how well, from which code, and how to use it."""
    from mmgpt.predictor import task_of

    net = manifest["net"]
    task, _ = task_of(manifest.get("objectives"))
    encoders = "\n".join(f"| {m} | `{e['type']}` | {e.get('name_or_path') or e.get('model_name') or 'trained here'} |"
                         for m, e in sorted(net["encoders"].items()))
    metrics = {**manifest["metrics"]["val"], **manifest["metrics"]["test"]}
    stamp = manifest.get("training_stamp") or {}
    names = manifest["class_names"]
    shown = ", ".join(names[:20]) + (f" ... ({len(names)} in all)" if len(names) > 20 else "")
    lines = [
        "# mmgpt model", "",
        f"A multimodal classifier (task: `{task}`) trained with mmgpt ({stamp.get('mmgpt', '?')}): "
        f"`{net['fusion']['type']}` fusion of {', '.join(sorted(net['encoders']))}.", "",
        "## Data", "",
        f"Trained on `{manifest.get('data_source') or 'unknown'}` data; classes: {shown or 'none (regression)'}.",
        "Settings the processors use: " + (", ".join(f"`{k}={v}`" for k, v in sorted(manifest["data"].items()))
                                          or "the defaults") + ".", "",
        "## Modalities", "",
        "| modality | encoder | backbone |", "|---|---|---|", encoders, "",
        "Any subset of the modalities may be given; a missing one is marked absent, as in training.", "",
        "## Metrics", "",
        *([f"- {k}: {v:.4f}" for k, v in sorted(metrics.items())] or ["- not recorded"]), "",
        f"Run stamp: commit `{stamp.get('commit')}`{' (dirty tree)' if stamp.get('dirty') else ''}, command "
        f"`{stamp.get('command')}`, host `{stamp.get('host')}`, devices {stamp.get('devices')}, versions "
        f"{stamp.get('versions')}.", "",
        "## Use", "",
        "```python", "import mmgpt", "", "predictor = mmgpt.load(\"THIS_FOLDER\")",
        "out = predictor.predict(text=\"...\", image=\"photo.png\", audio=\"clip.wav\")",
        "print(out.label, out.probs)", "```", "",
        "Intended use: research on multimodal fusion, and predictions on data like the training data above. It was "
        "not evaluated for use beyond that data; check it on your own before relying on it.", "",
        "Files: `model.safetensors` (weights), `mmgpt.json` (network spec, classes, settings, backbone identities), "
        "`processors/` (backbones' own preprocessing), `backbones/` (when included). Backbones not included are "
        "referenced by `name_or_path` and sha256 (`mmgpt.json`, `backbones`) and must be present where it says.", "",
    ]
    return "\n".join(lines)


# -- reading -----------------------------------------------------------------------------------------------------------
def read_manifest(folder: Path) -> dict[str, Any]:
    """``mmgpt.json`` of an exported folder, its format confirmed and checked as data
    (:func:`mmgpt.stored_config.check`: no ``_target_``, no ``${...}``)."""
    path = folder / SPEC_FILE
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ExportError(f"{path}: not readable JSON ({str(e).splitlines()[0]})") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ExportError(f"{path}: not an mmgpt export (format {FORMAT!r} expected)")
    version, classes = manifest.get("format_version", 0), manifest.get("num_classes")
    if not isinstance(version, int) or isinstance(version, bool):
        raise ExportError(f"{path}: format_version: expected a whole number, got {version!r}")
    if not isinstance(classes, int) or isinstance(classes, bool) or classes < 1:
        raise ExportError(f"{path}: num_classes: expected a positive whole number, got {classes!r}")
    if version > FORMAT_VERSION:
        raise ExportError(f"{path}: format version {manifest['format_version']} is newer than this mmgpt reads "
                          f"({FORMAT_VERSION}); update mmgpt")
    stored_config.check(manifest, path, error=ExportError)  # no code keys, no interpolations: data only
    return manifest


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; anything else (a pickle under that name) is refused, never unpickled."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise ExportError(f"{path}: missing; not a complete mmgpt export (export the checkpoint again)")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise ExportError(f"{path}: not a safetensors file ({str(e).splitlines()[0] if str(e) else 'unreadable'}); "
                          "refused (an exported model carries no pickles)") from e


def _local(spec: dict[str, Any], folder: Path) -> dict[str, Any]:
    """The spec with the folder's own relative paths (included backbones) made absolute."""
    for enc in spec["encoders"].values():
        for key in _FILES_KEY.values():
            value = enc.get(key)
            if isinstance(value, str) and value.startswith("backbones/"):
                target = (folder / value).resolve()
                if folder.resolve() not in target.parents:
                    raise ExportError(f"{folder / SPEC_FILE}: {key}={value!r} points outside the folder; refused")
                pickles = [p.name for p in ([target] if target.is_file() else target.rglob("*"))
                           if p.suffix in PICKLE_SUFFIXES]
                if pickles:
                    raise ExportError(f"{target}: holds a pickle ({pickles[0]}); refused (an exported model "
                                      "carries no pickles)")
                enc[key] = str(target)
    return spec


def load_exported(folder: str | Path, *, device: str | torch.device = "cpu", plugins: Sequence[str] = ()):  # noqa: ANN201
    """The :class:`~mmgpt.predictor.Predictor` of an exported folder, checked like a checkpoint (module docstring)."""
    from mmgpt import registry
    from mmgpt.cli.generate import media_processors
    from mmgpt.predictor import Predictor, task_of
    from mmgpt.registry import SpecError
    from mmgpt.training.backbone_checkpoints import check_identities

    folder = Path(folder)
    registry.import_plugins(list(plugins))
    manifest = read_manifest(folder)
    where = f"{folder / SPEC_FILE}: net"
    try:
        spec = registry.NetworkSpec.from_dict(manifest["net"], "net")
        spec.check("net")
        for name, obj in (manifest.get("objectives") or {}).items():
            registry.check_spec(obj, f"objectives.{name}", "objective")
        net_spec = _local(registry.for_checkpoint(spec.to_dict()), folder)
    except SpecError as e:
        raise ExportError(f"{folder / SPEC_FILE}: {e}") from e
    except (KeyError, TypeError) as e:
        raise ExportError(f"{where}: not a network spec ({e})") from e
    state = read_weights(folder / WEIGHTS_FILE)
    for alias, key in (manifest.get("tied") or {}).items():
        if key not in state:
            raise ExportError(f"{folder / SPEC_FILE}: tied.{alias} names {key!r}, which the weights lack")
        state[alias] = state[key]
    net = registry.build_network(net_spec, int(manifest["num_classes"]))
    omitted = check_identities(manifest.get("backbones") or {}, net, folder)
    own = set(net.state_dict())
    missing, unexpected = sorted(own - set(state) - omitted), sorted(set(state) - own)
    if missing or unexpected:
        raise ExportError(f"{folder / WEIGHTS_FILE}: the weights do not fit the network mmgpt.json describes "
                          f"({len(missing)} missing, {len(unexpected)} unexpected: "
                          f"{', '.join((missing + unexpected)[:4])})")
    net.load_state_dict(state, strict=False)
    processor_spec = json.loads(json.dumps(net_spec))
    stored = manifest.get("processors") or {}
    if not isinstance(stored, dict):
        raise ExportError(f"{folder / SPEC_FILE}: processors: expected a mapping of modality -> folder")
    for modality, rel in stored.items():
        enc = processor_spec["encoders"].get(modality)
        target = (folder / rel).resolve() if isinstance(rel, str) else None
        if enc is None or target is None or folder.resolve() not in target.parents or not target.is_dir():
            raise ExportError(f"{folder / SPEC_FILE}: processors.{modality}={rel!r}: not a folder of this export "
                              "for one of the network's encoders; refused")
        enc["name_or_path"], enc["revision"] = str(target), None  # the folder's own files
    processors = media_processors(net, processor_spec, manifest.get("data") or {})
    task, threshold = task_of(manifest.get("objectives"))
    return Predictor(net.to(device), processors, manifest.get("class_names") or [], task=task, threshold=threshold,
                     source=folder)
