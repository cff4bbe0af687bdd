"""``LightningModule.log`` without its per-call walk over the logged value's state.

Each ``self.log(name, tensor)`` makes Lightning's result collection call ``_ResultMetric.to(value.device)``, which
rebuilds the stored entry's whole ``__dict__`` through ``apply_to_collection`` (its metadata dataclass and the
``nn.Module`` bookkeeping dicts included) to move two tensors that are almost always on that device already. On a
CPU that walk costs about a millisecond per call: a few percent of a small model's step (measured on
``experiment=mosi_mmsa_lmf``: 1806 against 1922 training samples/s with it skipped, 8-epoch fits interleaved).

:func:`install` puts a check in front of it: when the entry holds a tensor whose stored value (and, for a mean, its
batch-size sum) is already on the requested device, or a metric object already there, nothing would move, and the
entry is returned as it is; any other call goes through Lightning's own method. It touches a private class of
pytorch-lightning 2.x, as :mod:`mmgpt.training.epoch_state` does; where that class is not what it expects it
installs nothing.
"""

from __future__ import annotations

from typing import Any

import torch
from torchmetrics import Metric

try:
    from pytorch_lightning.trainer.connectors.logger_connector.result import _ResultMetric
except ImportError:  # another Lightning layout: leave it alone
    _ResultMetric = None  # type: ignore[assignment,misc]


def _on(tensor: Any, device: torch.device) -> bool:
    return isinstance(tensor, torch.Tensor) and tensor.device == device


def install() -> bool:
    """Install the check (once per process); False where Lightning's class is not the one it was written for."""
    cls = _ResultMetric
    if cls is None or not callable(getattr(cls, "to", None)):
        return False
    if getattr(cls.to, "_mmgpt_fast", False):
        return True
    lightning_to = cls.to

    def to(self: Any, *args: Any, **kwargs: Any) -> Any:
        if len(args) == 1 and not kwargs and isinstance(args[0], torch.device):
            device, d = args[0], self.__dict__
            value = d.get("value")
            if getattr(self, "is_tensor", False):
                if _on(value, device) and (not self.meta.is_mean_reduction
                                           or _on(d.get("cumulated_batch_size"), device)):
                    return self
            elif isinstance(value, Metric) and value.device == device:  # a logged metric object
                return self
        return lightning_to(self, *args, **kwargs)

    to._mmgpt_fast = True  # type: ignore[attr-defined]
    to.lightning_to = lightning_to  # type: ignore[attr-defined]
    cls.to = to
    return True
