"""Tiny Hugging Face data sets written with ``datasets`` itself: a ``save_to_disk`` folder and a Parquet folder,
with ``Image``, ``Audio`` (WAV / FLAC bytes), text, a features column and a ``ClassLabel``."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image

CLASSES = ["no", "yes"]


def png(i: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (10 + i % 3, 8), ((40 * i) % 256, 100, 0)).save(buf, format="PNG")
    return buf.getvalue()


def audio_bytes(i: int, fmt: str = "WAV") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.sin(np.arange(400 + 40 * i) * 0.2).astype(np.float32), 8000, format=fmt)
    return buf.getvalue()


def hf_split(n: int, offset: int = 0):  # noqa: ANN201 (datasets.Dataset)
    """``n`` rows: question (string), img (Image), sound (Audio, decode=False; WAV and FLAC), feats (list of
    (steps, 3) lists), answer (ClassLabel no/yes), uid (string)."""
    import datasets

    features = datasets.Features({
        "question": datasets.Value("string"), "img": datasets.Image(),
        # Audio is stored as its {bytes, path} struct and cast: datasets would need torchcodec to encode arrays.
        "sound": {"bytes": datasets.Value("binary"), "path": datasets.Value("string")},
        "feats": datasets.List(datasets.List(datasets.Value("float32"))),
        "answer": datasets.ClassLabel(names=CLASSES), "uid": datasets.Value("string")})
    rows = range(offset, offset + n)
    data = {"question": [f"question {i}" for i in rows],
            "img": [{"bytes": png(i), "path": None} for i in rows],
            "sound": [{"bytes": audio_bytes(i, "FLAC" if i % 2 else "WAV"), "path": None} for i in rows],
            "feats": [np.full((1 + i % 3, 3), i, dtype=np.float32).tolist() for i in rows],
            "answer": [i % 2 for i in rows], "uid": [f"r{i}" for i in rows]}
    ds = datasets.Dataset.from_dict(data, features=features)
    return ds.cast_column("sound", datasets.Audio(sampling_rate=8000, decode=False))


def save_to_disk_folder(root: Path, sizes: dict[str, int] | None = None) -> Path:
    """A ``DatasetDict.save_to_disk`` folder (train / validation / test); row ids r0, r1, ... across splits."""
    import datasets

    sizes = sizes or {"train": 10, "validation": 4, "test": 3}
    offsets = np.cumsum([0, *sizes.values()])
    datasets.DatasetDict({s: hf_split(n, int(o)) for (s, n), o in zip(sizes.items(), offsets)}).save_to_disk(
        str(root), max_shard_size="20KB")
    return root


def parquet_folder(root: Path, sizes: dict[str, int] | None = None, rows_per_group: int = 5) -> Path:
    """Parquet files named as on the Hub: ``data/train-00000-of-00002.parquet`` ..."""
    sizes = sizes or {"train": 12, "validation": 4}
    (root / "data").mkdir(parents=True, exist_ok=True)
    offset = 0
    for split, n in sizes.items():
        ds = hf_split(n, offset)
        half = n // 2
        for k, (a, b) in enumerate(((0, half), (half, n))):
            ds.select(range(a, b)).to_parquet(str(root / "data" / f"{split}-{k:05d}-of-00002.parquet"),
                                              batch_size=rows_per_group)
        offset += n
    return root
