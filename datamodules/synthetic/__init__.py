"""The embedded synthetic data set (``data=synthetic``)."""

from mmgpt.datamodules.synthetic.datamodule import SyntheticDataModule
from mmgpt.datamodules.synthetic.generator import CLASSES, SyntheticGenerator, ceilings

__all__ = ["CLASSES", "SyntheticDataModule", "SyntheticGenerator", "ceilings"]
