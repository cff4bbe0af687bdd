"""The embedded synthetic data set (``data=synthetic``)."""

from datamodules.synthetic.datamodule import SyntheticDataModule
from datamodules.synthetic.generator import CLASSES, SyntheticGenerator, ceilings

__all__ = ["CLASSES", "SyntheticDataModule", "SyntheticGenerator", "ceilings"]
