"""Loaders for the standard multimodal benchmarks, each reading exactly the format the data is distributed in.

=================  =====================================  ==========  ============================================
``data=``          format                                 task        module
=================  =====================================  ==========  ============================================
``mosi``/``mosei`` MMSA feature pickle (aligned/unaligned) regression  :mod:`.mmsa`
``avmnist``        MultiBench ``.npy`` layout              10 classes  :mod:`.avmnist`
``mmimdb``         ``split.json`` + ``dataset/<id>.json``  multilabel  :mod:`.mmimdb`
``hateful_memes``  ``*.jsonl`` + ``img/``                  binary      :mod:`.hateful_memes`
=================  =====================================  ==========  ============================================
"""

from mmgpt.datamodules.benchmarks.avmnist import AVMNISTDataModule, read_avmnist
from mmgpt.datamodules.benchmarks.common import BenchmarkDataModule, BenchmarkError, BenchmarkSplit
from mmgpt.datamodules.benchmarks.hateful_memes import HatefulMemesDataModule, read_jsonl
from mmgpt.datamodules.benchmarks.mmimdb import MMIMDbDataModule, read_mmimdb
from mmgpt.datamodules.benchmarks.mmsa import MMSADataModule, read_mmsa

__all__ = ["AVMNISTDataModule", "BenchmarkDataModule", "BenchmarkError", "BenchmarkSplit", "HatefulMemesDataModule",
           "MMIMDbDataModule", "MMSADataModule", "read_avmnist", "read_jsonl", "read_mmimdb", "read_mmsa"]
