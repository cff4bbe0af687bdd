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
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mmgpt.datamodules.base import shared_options
from mmgpt.datamodules.benchmarks.common import (
    BenchmarkDataModule,
    BenchmarkError,
    BenchmarkSplit,
    require_file,
    require_keys,
)
from mmgpt.datamodules.decode import DEFAULT_MAX_IMAGE_PIXELS
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


class MMIMDbDataModule(BenchmarkDataModule):
    """``data=mmimdb``: MM-IMDb from its distributed folder (plot + poster -> 23 genres, multi-label).

    Args:
        root: the ``mmimdb`` folder (``split.json``, ``dataset/``).
        The rest: the shared data options (:class:`~mmgpt.datamodules.base.MultimodalDataModule`).
    """

    task = "multilabel"

    def __init__(self, root: str, batch_size: int = 32, num_workers: int = 2, image_size: int = 64,
                 sample_rate: int = 8000, max_audio_seconds: float = 1.0, max_text_length: int = 256,
                 shuffle: bool = True, seed: int = 0, num_train: int | None = None, num_val: int | None = None,
                 num_test: int | None = None, augment: bool = False, modality_dropout: dict[str, float] | None = None,
                 pin_memory: bool | None = None, max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
                 processors: Mapping[str, Processor] | None = None) -> None:
        options = shared_options(locals())
        super().__init__(root=root, modalities={"plot": "text", "poster": "image"}, **options)
        self.save_hyperparameters(ignore=["processors"])
        self.genres, self.tables = read_mmimdb(root)

    @property
    def class_names(self) -> list[str]:
        return list(self.genres)

    def read_split(self, split: str) -> BenchmarkSplit:
        return self.tables[split]
