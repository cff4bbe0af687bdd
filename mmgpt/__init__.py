"""mmgpt: a multimodal (text + image + audio) GPT-style Transformer.

What lives where (docs/architecture.md has the picture): network code in ``layers``, ``encoders``, ``fusion``,
``model``, ``decoder``, ``objectives``, ``generation``, built from typed specs by ``registry``; the Trainer's side
in ``training``; entry points in ``cli``; reports in ``report``; data in ``datamodules`` (the repository's
``datamodules/``). Imports go one way: the network code imports nothing from ``training``, ``cli`` or
``datamodules``.

From Python (docs/api.md): ``mmgpt.train``, ``mmgpt.evaluate``, ``mmgpt.compare`` run what the commands run and
return dataclasses; ``mmgpt.load`` opens a checkpoint or an exported folder as a :class:`~mmgpt.predictor.Predictor`;
``mmgpt.export`` writes a self-contained folder. They are imported on first use, so ``import mmgpt`` does not load
Lightning or Hydra.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from mmgpt.batch import MODALITIES, MultimodalBatch

if TYPE_CHECKING:
    from mmgpt.api import Comparison, EvalResults, Results, compare, evaluate, load, train
    from mmgpt.exported import export
    from mmgpt.predictor import Prediction, Predictor

__all__ = ["MODALITIES", "Comparison", "EvalResults", "MultimodalBatch", "Prediction", "Predictor", "Results",
           "compare", "evaluate", "export", "load", "train"]
__version__ = "0.1.0"

#: The public API's names and the modules they live in (imported when first used).
_LAZY = {"train": "mmgpt.api", "evaluate": "mmgpt.api", "compare": "mmgpt.api", "Results": "mmgpt.api",
         "EvalResults": "mmgpt.api", "Comparison": "mmgpt.api", "load": "mmgpt.api",
         "Predictor": "mmgpt.predictor", "Prediction": "mmgpt.predictor", "export": "mmgpt.exported"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'mmgpt' has no attribute {name!r}")
