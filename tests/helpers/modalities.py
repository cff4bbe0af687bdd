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
