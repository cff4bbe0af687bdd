"""Distributed training helpers: FSDP2 sharding per layer, sharded gradient clipping, sharded checkpoints.

``trainer=fsdp`` (GPUs) and ``trainer=fsdp_sim`` (2 CPU processes, gloo) use Lightning's
:class:`~pytorch_lightning.strategies.ModelParallelStrategy`, which calls the LightningModule's
``configure_model()``; that calls :func:`shard_module` here. Each instance of a class in :data:`SHARD_CLASSES`
(the Transformer :class:`~mmgpt.layers.Block`, and classes added with :func:`register_shard_class`) or of a
pretrained backbone's layer class (found from its encoder's ``layers()``) becomes one FSDP unit whose parameters
are all-gathered just before it runs and freed after; everything else (embeddings, heads, objectives' parameters)
forms the root unit. Frozen backbone layers are sharded too (their memory is split over the ranks).

Checkpoints written by that strategy are *sharded*: a folder ``name.ckpt/`` holding one ``.distcp`` file per
rank (torch.distributed.checkpoint), its ``.metadata`` and Lightning's ``meta.pt`` (loop state, callbacks,
hyperparameters). :func:`consolidate` turns one into an ordinary single-file checkpoint
(``python -m mmgpt.training.distributed CKPT_DIR OUT.ckpt``); ``mmgpt-eval`` does it in memory by itself.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import io
import logging
import os
import pickle
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mmgpt.errors import CheckpointError, UserError, load_error_reason
from mmgpt.layers import Block
from mmgpt.training.checkpoint_file import read_checkpoint_file

log = logging.getLogger(__name__)

#: Module classes sharded as their own FSDP unit (and whose activations ``model.activation_checkpointing``
#: recomputes). Add a pretrained backbone's layer class with :func:`register_shard_class`.
SHARD_CLASSES: list[type[nn.Module]] = [Block]

#: The file Lightning writes beside the shards of a sharded checkpoint (everything but weights and optimizer).
META_FILE = "meta.pt"


def register_shard_class(cls: type[nn.Module]) -> type[nn.Module]:
    """Make every instance of ``cls`` its own FSDP unit (usable as a class decorator); returns ``cls``."""
    if cls not in SHARD_CLASSES:
        SHARD_CLASSES.append(cls)
    return cls


def layer_classes(root: nn.Module) -> tuple[type[nn.Module], ...]:
    """:data:`SHARD_CLASSES` plus the layer classes of every pretrained backbone under ``root`` (the classes of
    its encoder's :meth:`~mmgpt.encoders.backbone.BackboneEncoder.layers`, e.g. ``BertLayer``, a timm ``Block``):
    the modules FSDP shards as units and ``model.activation_checkpointing`` recomputes."""
    from mmgpt.encoders.backbone import BackboneEncoder

    classes = list(SHARD_CLASSES)
    for module in root.modules():
        if isinstance(module, BackboneEncoder):
            for layer in module.layers():
                cls = type(getattr(layer, "_checkpoint_wrapped_module", layer))  # already checkpoint-wrapped
                if cls not in classes:
                    classes.append(cls)
    return tuple(classes)


def fsdp_wrap_classes() -> set[type[nn.Module]]:
    """The classes of :data:`SHARD_CLASSES` as a set (FSDP1's ``auto_wrap_policy`` form)."""
    return set(SHARD_CLASSES)


def is_sharded(module: nn.Module) -> bool:
    """Whether ``fully_shard`` has been applied to ``module`` (its class is then an ``FSDPModule``)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


def shard_module(root: nn.Module, *, mesh: Any = None, forward_methods: Iterable[str] = (),
                 reshard_after_forward: bool = True) -> int:
    """Apply FSDP2's ``fully_shard`` to every :func:`layer_classes` instance under ``root``, then to ``root``.

    Args:
        root: the module to shard in place (a LightningModule, or a bare network).
        mesh: the 1-D data-parallel device mesh; None for the default (all ranks of the process group).
        forward_methods: methods of ``root`` other than ``forward`` through which it is run (``training_step``):
            FSDP all-gathers the root unit's parameters around those calls, as it does around ``forward``.
        reshard_after_forward: free the gathered parameters of each layer after its forward (ZeRO-3) rather
            than keeping them until backward (ZeRO-2: more memory, fewer all-gathers).

    Returns:
        The number of layer units (the root not counted).
    """
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    classes = layer_classes(root)  # mmgpt's blocks and each backbone's layer class
    # Innermost first: a unit's parameters are those not already owned by a unit below it.
    layers = [m for m in root.modules() if isinstance(m, classes) and m is not root]
    for layer in reversed(layers):
        fully_shard(layer, mesh=mesh, reshard_after_forward=reshard_after_forward)
    fully_shard(root, mesh=mesh, reshard_after_forward=reshard_after_forward)
    for name in forward_methods:
        register_fsdp_forward_method(root, name)
    return len(layers)


def local(t: Tensor) -> Tensor:
    """This rank's part of a (possibly sharded) tensor: the local shard of a DTensor, else ``t`` itself."""
    from torch.distributed.tensor import DTensor

    return t.to_local() if isinstance(t, DTensor) else t


def clip_grad_norm_(parameters: Iterable[Tensor], max_norm: float) -> Tensor:
    """Clip gradients to a total 2-norm of ``max_norm``, the norm taken over *all* shards of every rank.

    With FSDP2 the gradients are DTensors sharded over the ranks; the norm of each rank's shards is combined
    across ranks (``full_tensor``) so every rank scales by the same factor, exactly as unsharded clipping would.
    Returns the total norm before clipping.
    """
    from torch.distributed.tensor import DTensor

    params = [p for p in parameters if p.grad is not None]
    grads = [p.grad for p in params]
    if not grads:
        return torch.zeros(())
    total = torch.nn.utils.get_total_norm(grads, norm_type=2.0)
    if isinstance(total, DTensor):
        total = total.full_tensor()  # sum of squares over the shards of every rank
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return total


def is_sharded_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is a complete sharded checkpoint folder (shards' index and Lightning's metadata written)."""
    path = Path(path)
    return path.is_dir() and (path / ".metadata").is_file() and (path / META_FILE).is_file()


def load_sharded_meta(path: str | Path) -> dict[str, Any]:
    """Everything a sharded checkpoint holds except weights and optimizer state (``meta.pt``), after checking the
    whole folder as data (:func:`check_sharded_checkpoint`).

    Raises:
        CheckpointError: one line naming the folder and what was refused.
    """
    path = Path(path)
    if not is_sharded_checkpoint(path):
        raise CheckpointError(f"{path}: a folder, but not a complete sharded checkpoint (.metadata and {META_FILE})")
    check_sharded_checkpoint(path)
    return read_checkpoint_file(path / META_FILE)


class _IndexUnpickler(pickle.Unpickler):
    """Unpickles a sharded checkpoint's index (``.metadata``) without running code: only the classes (dataclasses
    and enums) of torch.distributed.checkpoint, torch sizes and dtypes, and plain containers; any other global
    (a function a crafted index would call) is refused before it is imported."""

    _SAFE = {("torch", "Size"), ("collections", "OrderedDict"), ("builtins", "set"), ("builtins", "frozenset"),
             ("builtins", "slice"), ("torch.serialization", "_get_layout"), ("pathlib", "PosixPath"),
             ("pathlib", "PurePosixPath")}  # _get_layout: name -> torch.layout

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._SAFE:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if module.startswith("torch.distributed.checkpoint."):
            obj = super().find_class(module, name)
            if isinstance(obj, type) and (dataclasses.is_dataclass(obj) or issubclass(obj, enum.Enum)):
                return obj
        raise pickle.UnpicklingError(f"the sharded checkpoint's index names {module}.{name}; refused")

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError(f"the sharded checkpoint's index uses a persistent id ({pid!r}); refused")


def _check_index(metadata: Any, folder: Path) -> None:
    """Refuse an index that is not torch.distributed.checkpoint's ``Metadata``, or whose entries point outside the
    checkpoint folder's own data files (another folder, ``../``, a link leading elsewhere) or past their end."""
    from torch.distributed.checkpoint.filesystem import _StorageInfo
    from torch.distributed.checkpoint.metadata import Metadata

    def refuse(why: str) -> None:
        raise pickle.UnpicklingError(f"{why}; refused")

    if not isinstance(metadata, Metadata):
        refuse(f"the index (.metadata) holds a {type(metadata).__name__}, not a checkpoint index")
    if not isinstance(metadata.state_dict_metadata, dict) or not isinstance(metadata.storage_data, dict):
        refuse("the index (.metadata) has no entry tables")
    root = folder.resolve()
    sizes: dict[str, int] = {}
    for index, info in metadata.storage_data.items():
        fqn = getattr(index, "fqn", index)
        name = getattr(info, "relative_path", None)
        if not isinstance(info, _StorageInfo) or not isinstance(name, str):
            refuse(f"the index entry {fqn!r} is not a storage record")
        if name not in sizes:
            file = folder / name
            if Path(name).name != name or name in ("", ".", "..") or file.resolve().parent != root \
                    or not file.is_file():
                refuse(f"the index entry {fqn!r} names the data file {name!r}, not a file of this folder")
            sizes[name] = file.stat().st_size
        offset, length = info.offset, info.length
        if not (isinstance(offset, int) and isinstance(length, int) and 0 <= offset and 0 <= length
                and offset + length <= sizes[name]):
            refuse(f"the index entry {fqn!r} lies outside {name} (offset {offset!r}, length {length!r}, "
                   f"{sizes[name]} bytes)")


def _safe_reader(path: Path) -> Any:
    """A FileSystemReader whose index is read with :class:`_IndexUnpickler` and checked (:func:`_check_index`);
    tensors are read by torch with ``torch.load(weights_only=True)``, byte entries by :func:`_data_only_planner`."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class SafeReader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            with open(Path(self.path) / ".metadata", "rb") as f:
                metadata = _IndexUnpickler(f).load()
            _check_index(metadata, Path(self.path))
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return SafeReader(path)


def _load_data(value: io.BytesIO, fqn: str) -> Any:
    """A byte entry of a shard file as data: ``torch.load(weights_only=True)`` (tensors, numbers, strings, plain
    containers), where torch's own planner unpickles it without restriction."""
    try:
        return torch.load(value, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure to read it as data refuses the entry
        raise pickle.UnpicklingError(f"the byte entry {fqn!r} is not plain data ({load_error_reason(e)}); "
                                     "refused") from None


def _data_only_planner() -> Any:
    """The load planner of :func:`consolidate`: torch's, with every non-tensor ("byte") entry of the shard files
    (optimizer hyperparameters, anything Lightning saved beside the tensors) read by :func:`_load_data`."""
    from torch.distributed.checkpoint._traverse import set_element
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner

    class DataOnlyPlanner(_EmptyStateDictLoadPlanner):
        def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
            fqn = read_item.dest_index.fqn
            obj = _load_data(value, fqn)
            if self.flatten_state_dict:
                set_element(self.original_state_dict, self.mappings[fqn], obj)
            else:
                self.state_dict[fqn] = obj

    return DataOnlyPlanner()


def _unreadable(path: Path, e: BaseException) -> Exception:
    """One line for a failure inside torch.distributed.checkpoint (it wraps errors in a multi-line report)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    reason = next((ln for ln in lines if "refused" in ln), lines[-1] if lines else type(e).__name__)
    return CheckpointError(f"{path}: cannot read the sharded checkpoint ({reason})")


def check_sharded_checkpoint(path: str | Path) -> None:
    """Read a sharded checkpoint's index and every byte entry of its data files as data only, reading no tensor.

    Run before anything else opens the folder (``mmgpt-eval``, ``ckpt_path=`` resume through Lightning, whose own
    reader unpickles both without restriction): a crafted index or byte entry is refused before it is used.

    Raises:
        CheckpointError: one line naming the folder and the entry refused.
    """
    from torch.distributed.checkpoint.api import CheckpointException as DCPException  # a BaseException
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata
    from torch.distributed.checkpoint.planner import LoadPlan
    from torch.distributed.checkpoint.planner_helpers import _create_read_item_for_byteio

    class ByteChecker:
        def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
            _load_data(value, read_item.dest_index.fqn)

    path = Path(path)
    reader = _safe_reader(path)
    try:
        metadata = reader.read_metadata()
        reader.set_up_storage_reader(metadata, is_coordinator=True)
        items = [_create_read_item_for_byteio(index, 0, index, 0, 0) for index in metadata.storage_data
                 if isinstance(metadata.state_dict_metadata.get(index.fqn), BytesStorageMetadata)]
        reader.read_data(LoadPlan(items), ByteChecker()).wait()
    except (Exception, DCPException) as e:
        raise _unreadable(path, e) from None


def consolidate(path: str | Path) -> dict[str, Any]:
    """A sharded checkpoint folder as one ordinary checkpoint dict (full tensors, on CPU, in this process).

    No process group is needed: the shards are read from the files. Weights come back under ``state_dict``
    (names as in an unsharded module), optimizer states as ``optimizer_states`` (keyed by parameter name, as
    torch.distributed.checkpoint stores them), and ``meta.pt``'s entries as they are. Nothing in the folder is
    unpickled without restriction (see :func:`check_sharded_checkpoint`).

    Raises:
        CheckpointError: one line naming the folder and what was refused or is missing.
    """
    from torch.distributed.checkpoint.api import CheckpointException as DCPException  # a BaseException
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    path = Path(path)
    meta = load_sharded_meta(path)
    state: dict[str, Any] = {}
    try:
        _load_state_dict(state, storage_reader=_safe_reader(path), planner=_data_only_planner(), no_dist=True)
    except (Exception, DCPException) as e:  # torch wraps reader errors in a multi-line CheckpointException
        raise _unreadable(path, e) from None
    if not isinstance(state.get("state_dict"), dict):
        raise CheckpointError(f"{path}: the sharded checkpoint holds no state_dict")
    optimizers = sorted((k for k in state if k.startswith("optimizer_") and k[len("optimizer_"):].isdigit()),
                        key=lambda k: int(k[len("optimizer_"):]))
    out = {**meta, "state_dict": state.pop("state_dict")}
    out["optimizer_states"] = [state.pop(k) for k in optimizers]
    return out


def save_atomically(save: Any, path: Path, is_rank_zero: bool, barrier: Any) -> None:
    """Write a checkpoint folder through ``save(tmp_path)`` on every rank, then swap it into ``path``.

    A process killed while saving leaves the previous complete folder (or none) at ``path``, never a mix of
    old and new shards: the new folder is written under a temporary name and renamed into place by rank 0.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    old = path.with_name(f".{path.name}.old")
    if is_rank_zero:
        for stale in (tmp, old):
            if stale.exists():
                shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    barrier()
    save(tmp)
    barrier()
    if is_rank_zero:
        if path.exists():
            os.replace(path, old) if path.is_dir() else path.unlink()
        os.replace(tmp, path)
        if old.exists():
            shutil.rmtree(old)
    barrier()


def fsdp2_strategy(**kwargs: Any) -> Any:
    """Lightning's FSDP2 strategy (``ModelParallelStrategy``), as pure data parallelism with atomic sharded saves.

    ``data_parallel_size`` defaults to every process (``ModelParallelStrategy`` alone would make that the
    number of nodes and use the processes of a node for tensor parallelism, which mmgpt does not implement);
    each sharded checkpoint folder is written under a temporary name and swapped into place, so a crash while
    saving never leaves a half-written ``last.ckpt``. Keyword arguments go to ``ModelParallelStrategy``.
    """
    from pytorch_lightning.strategies import ModelParallelStrategy

    class FSDP2Strategy(ModelParallelStrategy):
        def setup_environment(self) -> None:
            if self._data_parallel_size == "auto" and self._tensor_parallel_size == "auto":
                self._data_parallel_size = self.num_nodes * self.num_processes
                self._tensor_parallel_size = 1
            super().setup_environment()

        def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any = None) -> None:
            if not self._save_distributed_checkpoint:
                return super().save_checkpoint(checkpoint, filepath, storage_options)
            path = Path(self.broadcast(str(filepath)))
            save_atomically(lambda tmp: super(FSDP2Strategy, self).save_checkpoint(checkpoint, tmp, storage_options),
                            path, self.is_global_zero, self.barrier)

    return FSDP2Strategy(**kwargs)


def main(argv: list[str] | None = None) -> None:
    """``python -m mmgpt.training.distributed CKPT_DIR OUT.ckpt``: consolidate a sharded checkpoint."""
    parser = argparse.ArgumentParser(description="Write a sharded (FSDP) checkpoint folder as one checkpoint file "
                                                 "that mmgpt-eval, mmgpt-generate and init_from load on one device.")
    parser.add_argument("checkpoint", type=Path, help="sharded checkpoint folder, e.g. run/checkpoints/last.ckpt")
    parser.add_argument("output", type=Path, help="the single-file checkpoint to write")
    args = parser.parse_args(argv)
    try:
        ckpt = consolidate(args.checkpoint)
    except UserError as e:  # a missing, incomplete or refused folder: one line
        parser.exit(1, f"error: {e}\n")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, args.output)
    print(f"wrote {args.output} ({len(ckpt['state_dict'])} tensors, step {ckpt.get('global_step')})")


if __name__ == "__main__":
    main()
