"""Hugging Face data sets as mmgpt data: ``data=hf`` (see :mod:`mmgpt.datamodules.hf.datamodule`)."""

from mmgpt.datamodules.hf.datamodule import HFDataModule
from mmgpt.datamodules.hf.source import HFDataError, open_source

__all__ = ["HFDataError", "HFDataModule", "open_source"]
