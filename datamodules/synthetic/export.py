"""Writing a manifest folder: the embedded synthetic set as PNG + WAV files listed in JSON Lines.

``mmgpt-data export-synthetic OUT`` (or ``make export-synthetic``) runs :func:`export_synthetic`; the folder it
writes trains with ``mmgpt-train data=manifest data.root=OUT`` and shows users the format.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from PIL import Image

from mmgpt.datamodules.synthetic.generator import CLASSES, SyntheticGenerator


def write_image(path: Path, image: np.ndarray) -> None:
    """Save a (3, H, W) float image in [0, 1] (or an (H, W) uint8 one) as whatever ``path``'s suffix says."""
    if image.dtype != np.uint8:
        image = (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if image.ndim == 3:
        image = image.transpose(1, 2, 0)  # (H, W, 3)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)


def write_audio(path: Path, wave: np.ndarray, sample_rate: int) -> None:
    """Save a float waveform in [-1, 1], (S,) or (S, channels), as 16-bit PCM (WAV/FLAC by suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.clip(wave, -1.0, 1.0), sample_rate, subtype="PCM_16")


def write_manifest(out: Path, split: str, rows: Iterable[Mapping[str, Any]]) -> int:
    """Write ``out/<split>.jsonl``, one JSON object per row; returns the number of rows."""
    out.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(out / f"{split}.jsonl", "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(dict(row), ensure_ascii=False) + "\n")
            n += 1
    return n


def write_labels(out: Path, class_names: Iterable[str]) -> None:
    """Write ``out/labels.txt``, one class name per line, in label-index order."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "labels.txt").write_text("".join(f"{c}\n" for c in class_names), encoding="utf-8")


def export_synthetic(
    out: str | Path,
    num_train: int = 4000,
    num_val: int = 1000,
    num_test: int = 1000,
    seed: int = 0,
    image_size: int = 32,
    sample_rate: int = 8000,
    max_audio_seconds: float = 1.0,
) -> dict[str, int]:
    """Write the synthetic set (the same samples as ``data=synthetic`` with these settings) as a manifest folder.

    Layout: ``labels.txt``, ``{train,val,test}.jsonl``, ``images/<split>/<id>.png``, ``audio/<split>/<id>.wav``.

    Returns:
        rows written per split.
    """
    out = Path(out)
    generator = SyntheticGenerator(image_size, sample_rate, max_seconds=max_audio_seconds)
    write_labels(out, CLASSES)
    counts = {}
    for k, (split, n) in enumerate({"train": num_train, "val": num_val, "test": num_test}.items()):
        rows = []
        for s in generator.generate(n, seed=seed + k, prefix=split):
            image, audio = f"images/{split}/{s.id}.png", f"audio/{split}/{s.id}.wav"
            write_image(out / image, s.image)
            write_audio(out / audio, s.audio, sample_rate)
            rows.append({"id": s.id, "text": s.text, "image": image, "audio": audio, "label": CLASSES[s.label],
                         "caption": s.caption})
        counts[split] = write_manifest(out, split, rows)
    return counts
