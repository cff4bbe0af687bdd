"""mmgpt: a multimodal (text + image + audio) GPT-style Transformer.

What lives where (docs/architecture.md has the picture): network code in ``layers``, ``encoders``, ``fusion``,
``model``, ``decoder``, ``objectives``, ``generation``, built from typed specs by ``registry``; the Trainer's side
in ``training``; entry points in ``cli``; reports in ``report``; data in ``datamodules`` (the repository's
``datamodules/``). Imports go one way: the network code imports nothing from ``training``, ``cli`` or
``datamodules``.
"""

from mmgpt.batch import MODALITIES, MultimodalBatch

__all__ = ["MODALITIES", "MultimodalBatch"]
__version__ = "0.1.0"
