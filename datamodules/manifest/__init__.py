"""``data=manifest``: a user's own folder of images, recordings and texts, listed in JSON Lines or CSV files."""

from mmgpt.datamodules.decode import DecodeError, load_audio, load_image
from mmgpt.datamodules.manifest.check import CheckReport, ManifestError, check_folder
from mmgpt.datamodules.manifest.datamodule import ManifestDataModule, StoreDataset
from mmgpt.datamodules.manifest.index import read_index
from mmgpt.datamodules.manifest.media import MediaFiles
from mmgpt.datamodules.manifest.rows import Problem, Row, resolve_media

__all__ = [
    "CheckReport",
    "DecodeError",
    "ManifestDataModule",
    "ManifestError",
    "MediaFiles",
    "Problem",
    "Row",
    "StoreDataset",
    "check_folder",
    "load_audio",
    "load_image",
    "read_index",
    "resolve_media",
]
