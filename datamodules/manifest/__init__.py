"""``data=manifest``: a user's own folder of images, recordings and texts, listed in JSON Lines or CSV files."""

from mmgpt.datamodules.decode import DecodeError, load_audio, load_image
from mmgpt.datamodules.manifest.check import CheckReport, ManifestError, check_folder
from mmgpt.datamodules.manifest.datamodule import ManifestDataModule, StoreDataset
from mmgpt.datamodules.manifest.media import MediaFiles
from mmgpt.datamodules.manifest.records import Problem, Row, read_index, resolve_media

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
