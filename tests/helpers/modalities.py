"""A manifest folder with four modalities of three kinds: two images, a text and a feature sequence (``.npy``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

#: The declaration of :func:`four_modality_folder`'s data (``data.modalities``).
FOUR = {"poster": "image", "photo": "image", "text": "text", "vision_feats": {"kind": "features", "dim": 6}}
#: The same as a Hydra override.
FOUR_OVERRIDE = "data.modalities={poster: image, photo: image, text: text, vision_feats: {kind: features, dim: 6}}"
#: The encoders a model needs for it (the default model has text, image and audio encoders).
FOUR_ENCODERS = ["~model.net.encoders.audio", "~model.net.encoders.image",
                 "+model/encoder/image@model.net.encoders.poster=scratch",
                 "+model/encoder/image@model.net.encoders.photo=scratch",
                 "+model/encoder/features@model.net.encoders.vision_feats=scratch"]


def four_modality_folder(root: Path, n_train: int = 12, n_val: int = 6, n_test: int = 6) -> Path:
    """Rows whose label shows in every modality (colour, word, feature sign); some modalities are missing."""
    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True, exist_ok=True)
    (root / "feats").mkdir(exist_ok=True)
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        rows = []
        for i in range(n):
            label = i % 2
            colour = (220, 30, 30) if label else (30, 30, 220)
            Image.new("RGB", (20, 16), colour).save(root / f"img/{split}{i}_poster.png")
            Image.new("RGB", (12, 12), colour[::-1]).save(root / f"img/{split}{i}_photo.png")
            steps = 1 + i % 4  # variable lengths
            feats = rng.normal(size=(steps, 6)).astype(np.float32) + (1.0 if label else -1.0)
            np.save(root / f"feats/{split}{i}.npy", feats)
            row = {"id": f"{split}{i}", "label": ["neg", "pos"][label], "text": ["bad", "good"][label] + f" {i}",
                   "poster": f"img/{split}{i}_poster.png", "photo": f"img/{split}{i}_photo.png",
                   "vision_feats": f"feats/{split}{i}.npy"}
            if i % 5 == 1:
                row["photo"] = None
            if i % 5 == 2:
                row["vision_feats"] = None
            rows.append(row)
        (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


#: ``labelled_folder``'s declaration: a text and a feature sequence (fast to encode).
TEXT_FEATS = "data.modalities={text: text, vision_feats: {kind: features, dim: 4}}"
GENRES = ("comedy", "drama", "horror")


def labelled_folder(root: Path, label_type: str, n_train: int = 24, n_eval: int = 12) -> Path:
    """A text + features folder with ``float`` (sentiment in [-3, 3]) or ``multilabel`` (genre lists) labels that
    the features predict."""
    rng = np.random.default_rng(1)
    (root / "feats").mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("val", n_eval), ("test", n_eval)):
        rows = []
        for i in range(n):
            if label_type == "float":
                value = float(np.round(rng.uniform(-3, 3) * 2) / 2)
                label: object = value
                feats = rng.normal(size=(3, 4)).astype(np.float32) + value
            else:
                hot = rng.random(len(GENRES)) < 0.4
                label = [g for g, h in zip(GENRES, hot) if h]
                feats = rng.normal(size=(2, 4)).astype(np.float32)
                feats[:, : len(GENRES)] += 2.0 * hot
            np.save(root / f"feats/{split}{i}.npy", feats)
            rows.append({"id": f"{split}{i}", "text": f"review {i}", "vision_feats": f"feats/{split}{i}.npy",
                         "label": label})
        (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if label_type == "multilabel":
        (root / "labels.txt").write_text("".join(f"{g}\n" for g in GENRES))
    return root
