"""``data=manifest``: a user's own folder of images, recordings and texts, listed in JSON Lines or CSV files."""

from datamodules.manifest.check import CheckReport, ManifestError, check_folder
from datamodules.manifest.datamodule import ManifestDataModule, ManifestDataset
from datamodules.manifest.decode import DecodeError, DecodeSettings, MediaCache, load_audio, load_image
from datamodules.manifest.records import Problem, Row, read_index, resolve_media

__all__ = [
    "CheckReport",
    "DecodeError",
    "DecodeSettings",
    "ManifestDataModule",
    "ManifestDataset",
    "ManifestError",
    "MediaCache",
    "Problem",
    "Row",
    "check_folder",
    "load_audio",
    "load_image",
    "read_index",
    "resolve_media",
]
