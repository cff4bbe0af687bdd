"""MM-IMDb (Arevalo et al. 2017): a movie's plot and poster -> its genres (23-genre multi-label).

The distributed folder (``mmimdb.tar.gz``, read as MultiBench's raw loader reads it: pliang279/MultiBench,
``datasets/imdb/get_data_raw.py``)::

    mmimdb/split.json              {"train": [ids], "dev": [ids], "test": [ids]}
    mmimdb/dataset/<id>.json       {"plot": ["...", ...], "genres": ["Drama", ...], ...}
    mmimdb/dataset/<id>.jpeg       the poster

Conventions from the dataset's own builder (johnarevalo/gmu-mmimdb, ``make_dataset.py``): a movie is used
when its JSON has ``genres`` and ``plot`` and its poster exists; its text is the longest of its plots; the
classes are the 23 most frequent genres over those movies, most frequent first (``target_names``). A
``labels.json`` (genre -> index, as MultiBench's raw loader takes it) overrides that list when present.
Splits: train = ``train``, val = ``dev``, test = ``test``. Modalities: ``plot`` (text) and ``poster`` (image,
decoded by its processor when loaded). Labels: (N, 23) multi-hot.

The ready-made HDF5 file (``multimodal_imdb.hdf5``, Fuel format, written by gmu-mmimdb's ``make_dataset.py`` and
read by MultiBench's ``datasets/imdb/get_data.py``) is read too when ``root`` is that file (needs ``h5py``):
``features`` (N, 300) float32 (the mean word2vec vector of the plot) -> ``plot``; ``vgg_features`` (N, 4096)
float32 (``poster=vgg``, MultiBench's ``vgg=True``) or ``images`` (N, 3, 256, 160) int32 (``poster=image``) ->
``poster``; ``genres`` (N, 23) int32 with ``genres.attrs['target_names']`` (JSON); ``imdb_ids`` (N,) bytes.
Splits from the file's Fuel split table (``attrs['split']``: split, source, start, stop), else MultiBench's fixed
ranges: train [0, 15552), val [15552, 18160), test [18160, 25959).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mmgpt.datamodules.benchmarks.common import (
    BenchmarkDataModule,
    BenchmarkError,
    BenchmarkSplit,
    h5_dataset,
    require_file,
    require_keys,
)
from mmgpt.datamodules.processors import Processor

#: mmgpt split -> the key of split.json.
SPLIT_KEYS: dict[str, str] = {"train": "train", "val": "dev", "test": "test"}
NUM_GENRES = 23


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BenchmarkError(f"{path}: not readable JSON ({e})") from e


def read_mmimdb(root: str | Path, *, num_genres: int = NUM_GENRES) -> tuple[list[str], dict[str, BenchmarkSplit]]:
    """The genre list and the train/val/test splits of an MM-IMDb folder (see the module doc)."""
    root = Path(root)
    split = _read_json(require_file(root / "split.json", "MM-IMDb's split.json"))
    require_keys(split, list(SPLIT_KEYS.values()), str(root / "split.json"))
    movies: dict[str, list[tuple[str, str, list[str]]]] = {}
    for ours, key in SPLIT_KEYS.items():
        movies[ours] = []
        for movie_id in split[key]:
            meta_path = root / "dataset" / f"{movie_id}.json"
            poster = root / "dataset" / f"{movie_id}.jpeg"
            meta = _read_json(require_file(meta_path, f"listed in split.json[{key!r}]"))
            if not (isinstance(meta, dict) and meta.get("genres") and meta.get("plot") and poster.is_file()):
                continue  # as make_dataset.py: only movies with genres, a plot and a poster
            plot = max(meta["plot"], key=len) if isinstance(meta["plot"], list) else str(meta["plot"])
            movies[ours].append((str(movie_id), plot, list(meta["genres"])))
    labels_file = root / "labels.json"
    if labels_file.is_file():
        index = _read_json(labels_file)
        genres = sorted(index, key=index.__getitem__)
    else:
        counts = Counter(g for part in movies.values() for _, _, gs in part for g in gs)
        genres = [g for g, _ in counts.most_common(num_genres)]
    position = {g: i for i, g in enumerate(genres)}
    tables = {}
    for name, part in movies.items():
        labels = np.zeros((len(part), len(genres)), dtype=np.int64)
        for row, (_, _, gs) in enumerate(part):
            labels[row, [position[g] for g in gs if g in position]] = 1
        tables[name] = BenchmarkSplit(
            ids=[m for m, _, _ in part], labels=labels,
            columns={"plot": [p for _, p, _ in part],
                     "poster": [str(root / "dataset" / f"{m}.jpeg") for m, _, _ in part]},
            files=frozenset({"poster"}))
    return genres, tables


#: MultiBench's split ranges of multimodal_imdb.hdf5 (datasets/imdb/get_data.py).
HDF5_SPLITS: dict[str, tuple[int, int]] = {"train": (0, 15552), "val": (15552, 18160), "test": (18160, 25959)}
POSTER_CHOICES: tuple[str, ...] = ("vgg", "image")


class _H5Rows:
    """Rows ``start:stop`` of one HDF5 dataset through a conversion, the file opened on first use in each process."""

    def __init__(self, path: str, key: str, start: int, stop: int, convert: Any = None) -> None:
        self.path, self.key, self.start, self.stop, self.convert = path, key, start, stop, convert
        self._file: Any = None

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, i: int | slice) -> Any:
        if isinstance(i, slice):
            a, b, _ = i.indices(len(self))
            return _H5Rows(self.path, self.key, self.start + a, self.start + b, self.convert)
        if not 0 <= i < len(self):
            raise IndexError(i)
        if self._file is None:
            import h5py

            self._file = h5py.File(self.path, "r")
        row = np.asarray(self._file[self.key][self.start + i])
        return self.convert(row) if self.convert else row.astype(np.float32)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_file": None}


class _Poster:
    """A (3, H, W) int poster -> (3, S, S) uint8 at ``image_size`` (the HDF5 posters are 256 x 160)."""

    def __init__(self, image_size: int) -> None:
        self.image_size = image_size

    def __call__(self, row: np.ndarray) -> Any:
        import torch
        import torch.nn.functional as F

        image = torch.as_tensor(np.clip(row, 0, 255).astype(np.float32))[None]  # (1, 3, H, W)
        image = F.interpolate(image, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        return image[0].round().clamp(0, 255).to(torch.uint8)


def read_mmimdb_hdf5(path: str | Path, *, poster: str = "vgg", image_size: int = 64,
                     ) -> tuple[list[str], dict[str, BenchmarkSplit]]:
    """The genre list and splits of MultiBench's ``multimodal_imdb.hdf5`` (see the module doc)."""
    if poster not in POSTER_CHOICES:
        raise BenchmarkError(f"data.poster={poster!r}: expected one of {', '.join(POSTER_CHOICES)}")
    try:
        import h5py
    except ImportError as e:
        raise BenchmarkError(f"{path}: reading MM-IMDb's HDF5 file needs h5py (pip install 'mmgpt[benchmarks]')") from e
    path = str(require_file(Path(path), "MM-IMDb's multimodal_imdb.hdf5"))
    key = "vgg_features" if poster == "vgg" else "images"
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise BenchmarkError(f"{path}: not a readable HDF5 file ({e})") from None
    with f:
        require_keys(f, ["features", key, "genres"], path)
        for name in ("features", key):
            h5_dataset(f, name, path)  # numbers, in this file: checked before the loaders read rows
        genres_ds = h5_dataset(f, "genres", path)
        n = len(genres_ds)
        try:
            genres = json.loads(genres_ds.attrs["target_names"]) if "target_names" in genres_ds.attrs else \
                [str(i) for i in range(genres_ds.shape[1])]
            if not isinstance(genres, list) or not all(isinstance(g, str) for g in genres):
                raise ValueError("not a list of names")
            ranges = _fuel_splits(f.attrs.get("split")) or HDF5_SPLITS
        except (ValueError, TypeError, KeyError, IndexError) as e:  # json errors are ValueErrors
            raise BenchmarkError(f"{path}: the genre names or the split table are not readable ({e})") from None
        labels = np.asarray(genres_ds[:], dtype=np.int64)
        ids = [i.decode() if isinstance(i, bytes) else str(i) for i in h5_dataset(f, "imdb_ids", path, "SOU")[:]] \
            if "imdb_ids" in f else [str(i) for i in range(n)]
    tables = {}
    for split, (start, stop) in ranges.items():
        if stop > n:
            raise BenchmarkError(f"{path}: the {split} split ends at row {stop}, the file has {n} rows")
        convert = _Poster(image_size) if poster == "image" else None
        tables[split] = BenchmarkSplit(ids=ids[start:stop], labels=labels[start:stop],
                                       columns={"plot": _H5Rows(path, "features", start, stop),
                                                "poster": _H5Rows(path, key, start, stop, convert)})
    return genres, tables


def _fuel_splits(table: Any) -> dict[str, tuple[int, int]] | None:
    """Fuel's split table (rows of split, source, start, stop) -> mmgpt split -> (start, stop) of ``genres``."""
    if table is None:
        return None
    names = {"train": "train", "dev": "val", "test": "test"}
    out = {}
    for row in table:
        split, source = (v.decode() if isinstance(v, bytes) else str(v) for v in (row["split"], row["source"]))
        if source == "genres" and split in names:
            out[names[split]] = (int(row["start"]), int(row["stop"]))
    return out or None


class MMIMDbDataModule(BenchmarkDataModule):
    """``data=mmimdb``: MM-IMDb from its distributed folder (plot + poster -> 23 genres, multi-label).

    Args:
        root: the ``mmimdb`` folder (``split.json``, ``dataset/``), or MultiBench's ``multimodal_imdb.hdf5``.
        poster: HDF5 only: ``vgg`` (the 4096 VGG features, as MultiBench) or ``image`` (the 256 x 160 posters).
        The rest: the shared data options (:class:`~mmgpt.datamodules.base.MultimodalDataModule`).
    """

    task = "multilabel"

    def __init__(self, root: str, poster: str = "vgg", batch_size: int = 32, num_workers: int = 2, image_size: int = 64,
                 max_text_length: int = 256, processors: Mapping[str, Processor] | None = None,
                 **options: Any) -> None:
        if str(root).endswith((".hdf5", ".h5")):  # MultiBench's file: pre-extracted plot (and poster) features
            self.genres, self.tables = read_mmimdb_hdf5(root, poster=poster, image_size=image_size)
            first = self.tables["train"].columns  # feature sizes as stored (300 and 4096 in the distributed file)
            vgg = {"kind": "features", "dim": int(first["poster"][0].shape[-1])} if poster == "vgg" else None
            modalities: dict[str, Any] = {"plot": {"kind": "features", "dim": int(first["plot"][0].shape[-1])},
                                          "poster": vgg or "image"}
        else:
            self.genres, self.tables = read_mmimdb(root)
            modalities = {"plot": "text", "poster": "image"}
        super().__init__(root=root, modalities=modalities, batch_size=batch_size, num_workers=num_workers,
                         image_size=image_size, max_text_length=max_text_length, processors=processors, **options)
        self.save_hyperparameters(ignore=["processors"])

    @property
    def class_names(self) -> list[str]:
        return list(self.genres)

    def read_split(self, split: str) -> BenchmarkSplit:
        return self.tables[split]
