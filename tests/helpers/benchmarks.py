"""Tiny benchmark folders written in exactly the distributed formats (nothing can be downloaded in tests).

Each writer returns what it wrote (ids, labels, arrays) so tests can check the loaders read it back.
Formats: MMSA's feature pickle (thuiar/MMSA src/MMSA/data_loader.py), MultiBench's AV-MNIST ``.npy`` layout
(pliang279/MultiBench datasets/avmnist/get_data.py), MM-IMDb's folder (split.json + dataset/<id>.json/.jpeg),
Hateful Memes' ``.jsonl`` + ``img/``.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

#: MMSA feature sizes (config_regression.json, feature_dims: text, audio, vision).
MOSI_DIMS = {"text": 768, "audio": 5, "vision": 20}
MOSEI_DIMS = {"text": 768, "audio": 74, "vision": 35}


def write_mmsa(path: Path, *, aligned: bool, dims: dict[str, int] = MOSI_DIMS, sizes: dict[str, int] | None = None,
               seq_lens: tuple[int, int, int] = (50, 50, 50), seed: int = 0) -> dict[str, dict[str, Any]]:
    """An MMSA feature pickle: {'train'|'valid'|'test': {text, text_bert, audio, vision, raw_text, id,
    annotations, classification_labels, regression_labels[, audio_lengths, vision_lengths]}}."""
    rng = np.random.default_rng(seed)
    sizes = sizes or {"train": 5, "valid": 3, "test": 4}
    lt, la, lv = seq_lens
    data: dict[str, dict[str, Any]] = {}
    for split, n in sizes.items():
        labels = np.round(rng.uniform(-3, 3, size=n), 1).astype(np.float32)
        labels[0] = 0.0
        audio = rng.normal(size=(n, la, dims["audio"])).astype(np.float32)
        audio[0, 0, 0] = -np.inf  # COVAREP has -inf values; MMSA's loader sets them to 0
        d = {
            "raw_text": np.array([f"{split} sentence number {i}" for i in range(n)], dtype=object),
            "id": np.array([f"{split}vid{i // 2}$_${i % 2}" for i in range(n)], dtype=object),
            "text": rng.normal(size=(n, lt, dims["text"])).astype(np.float32),
            "text_bert": np.stack([rng.integers(100, 2000, size=(n, lt)), np.ones((n, lt)), np.zeros((n, lt))],
                                  axis=1).astype(np.float32),
            "audio": audio,
            "vision": rng.normal(size=(n, lv, dims["vision"])).astype(np.float32),
            "annotations": np.array(["Positive" if y > 0 else "Negative" if y < 0 else "Neutral" for y in labels],
                                    dtype=object),
            "classification_labels": np.sign(labels).astype(np.float32) + 1,
            "regression_labels": labels,
        }
        if not aligned:
            d["audio_lengths"] = [int(x) for x in rng.integers(1, la + 1, size=n)]
            d["vision_lengths"] = [int(x) for x in rng.integers(1, lv + 1, size=n)]
        data[split] = d
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(data, protocol=4))
    return data


def write_avmnist(root: Path, *, num_train: int = 12, num_test: int = 5, seed: int = 0) -> dict[str, np.ndarray]:
    """MultiBench's AV-MNIST layout: image/{train,test}_data.npy (N, 784) float 0..255, audio/... (N, 112, 112)
    float 0..255, {train,test}_labels.npy (N,) digits."""
    rng = np.random.default_rng(seed)
    out = {}
    for part, n in (("train", num_train), ("test", num_test)):
        (root / "image").mkdir(parents=True, exist_ok=True)
        (root / "audio").mkdir(parents=True, exist_ok=True)
        images = rng.integers(0, 256, size=(n, 784)).astype(np.float32)
        audio = rng.integers(0, 256, size=(n, 112, 112)).astype(np.float32)
        labels = rng.integers(0, 10, size=n)
        np.save(root / "image" / f"{part}_data.npy", images)
        np.save(root / "audio" / f"{part}_data.npy", audio)
        np.save(root / f"{part}_labels.npy", labels)
        out.update({f"{part}_images": images, f"{part}_audio": audio, f"{part}_labels": labels})
    return out


def write_mmimdb(root: Path, movies: dict[str, list[dict[str, Any]]], *, poster_size: tuple[int, int] = (16, 24),
                 seed: int = 0) -> None:
    """An MM-IMDb folder: split.json {"train"|"dev"|"test": [ids]} and dataset/<id>.json (+ <id>.jpeg unless a
    movie has ``"poster": False``). ``movies``: split -> [{"id", "plot": [...], "genres": [...]}]."""
    rng = np.random.default_rng(seed)
    (root / "dataset").mkdir(parents=True, exist_ok=True)
    split = {}
    for part, rows in movies.items():
        split[part] = [m["id"] for m in rows]
        for m in rows:
            meta = {k: v for k, v in m.items() if k not in ("id", "poster")}
            meta.setdefault("title", f"Movie {m['id']}")
            (root / "dataset" / f"{m['id']}.json").write_text(json.dumps(meta))
            if m.get("poster", True):
                pixels = rng.integers(0, 256, size=(poster_size[1], poster_size[0], 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / "dataset" / f"{m['id']}.jpeg")
    (root / "split.json").write_text(json.dumps(split))


def write_hateful_memes(root: Path, rows: dict[str, list[dict[str, Any]]], *, seed: int = 0) -> None:
    """A Hateful Memes folder: img/<id>.png and one .jsonl per file name in ``rows`` (lines id, img, label,
    text; a row without ``label`` is written without one)."""
    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True, exist_ok=True)
    for name, lines in rows.items():
        with open(root / name, "w") as f:
            for row in lines:
                img = f"img/{row['id']:05d}.png"
                Image.fromarray(rng.integers(0, 256, size=(20, 30, 3), dtype=np.uint8)).save(root / img)
                f.write(json.dumps({"id": row["id"], "img": img, **{k: v for k, v in row.items() if k != "id"}})
                        + "\n")


def write_mmimdb_hdf5(path: Path, *, sizes: tuple[int, int, int] = (6, 3, 3), num_genres: int = 4,
                      image_hw: tuple[int, int] = (256, 160), seed: int = 0) -> dict[str, Any]:
    """MultiBench's ``multimodal_imdb.hdf5`` (Fuel format, gmu-mmimdb make_dataset.py): features (N, 300) float32,
    vgg_features (N, 4096) float32, images (N, 3, H, W) int32, genres (N, C) int32 with attrs target_names,
    imdb_ids (N,) S7, and the Fuel split table in the file's attrs."""
    import h5py

    rng = np.random.default_rng(seed)
    n = sum(sizes)
    out = {"features": rng.normal(size=(n, 300)).astype(np.float32),
           "vgg_features": rng.normal(size=(n, 4096)).astype(np.float32),
           "images": rng.integers(0, 256, size=(n, 3, *image_hw)).astype(np.int32),
           "genres": (rng.random((n, num_genres)) < 0.4).astype(np.int32),
           "imdb_ids": np.asarray([f"{i:07d}" for i in range(n)], dtype="S7"),
           "target_names": [f"genre{k}" for k in range(num_genres)]}
    bounds = np.cumsum([0, *sizes])
    split_dtype = np.dtype([("split", "S5"), ("source", "S12"), ("start", np.int64), ("stop", np.int64),
                            ("available", bool), ("comment", "S1")])
    rows = [(s.encode(), src.encode(), bounds[k], bounds[k + 1], True, b"")
            for k, s in enumerate(("train", "dev", "test"))
            for src in ("features", "vgg_features", "images", "genres", "imdb_ids")]
    with h5py.File(path, "w") as f:
        for key in ("features", "vgg_features", "images", "genres", "imdb_ids"):
            f.create_dataset(key, data=out[key])
        f["genres"].attrs["target_names"] = json.dumps(out["target_names"])
        f.attrs["split"] = np.array(rows, dtype=split_dtype)
    return out
