"""Fixtures that write real media files (PNG, JPEG, WAV, FLAC, OGG, corrupt and empty files) and manifest folders."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from PIL import Image


def write_png(path: Path, size: tuple[int, int] = (30, 20), mode: str = "RGB", value: int | tuple = 200) -> Path:
    """A solid-colour image (width, height) in ``mode``, saved by its suffix (PNG, JPEG...)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value).save(path)
    return path


def write_wav(path: Path, seconds: float = 0.5, sample_rate: int = 8000, channels: int = 1, freq: float = 440.0,
              subtype: str | None = None) -> Path:
    """A sine wave (in every channel: left at full amplitude, the others silent)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    wave = np.zeros((len(t), channels), dtype=np.float32)
    wave[:, 0] = 0.5 * np.sin(2 * np.pi * freq * t)
    sf.write(str(path), wave if channels > 1 else wave[:, 0], sample_rate, subtype=subtype)
    return path


def write_rows(path: Path, rows: Iterable[dict[str, Any] | str]) -> Path:
    """A JSON Lines file; a str row is written verbatim (for malformed lines)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def media(tmp_path: Path) -> Path:
    """A folder with one file of each kind the manifest must read, and broken ones."""
    root = tmp_path / "data"
    write_png(root / "img/red.png", (30, 20), "RGB", (255, 0, 0))
    write_png(root / "img/gray.jpg", (64, 48), "L", 100)
    write_png(root / "img/clear.png", (16, 16), "RGBA", (0, 0, 0, 0))  # fully transparent: white after compositing
    pal = Image.new("P", (8, 8), 0)
    pal.putpalette([0, 0, 255] * 256)
    pal.save(root / "img/palette.png")
    write_wav(root / "wav/mono8k.wav", 0.5, 8000, 1)
    write_wav(root / "wav/stereo44k.wav", 0.5, 44100, 2)
    write_wav(root / "wav/long.wav", 3.0, 16000, 1)
    write_wav(root / "wav/tone.flac", 0.5, 16000, 1)
    if "OGG" in sf.available_formats():
        write_wav(root / "wav/tone.ogg", 0.5, 16000, 1, subtype="VORBIS")
    write_wav(root / "wav/empty.wav", 0.0, 8000, 1)
    (root / "img/corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    (root / "img/empty.png").write_bytes(b"")
    (root / "wav/corrupt.wav").write_bytes(b"RIFF....WAVEfmt " + bytes(range(40)))
    return root


FolderFactory = Callable[..., Path]


@pytest.fixture
def make_folder(media: Path) -> FolderFactory:
    """Write split files into the ``media`` folder: ``make_folder(train=[...], val=[...], labels=[...])``."""

    def make(train: list | None = None, val: list | None = None, test: list | None = None,
             labels: list[str] | None = None) -> Path:
        for split, rows in (("train", train), ("val", val), ("test", test)):
            if rows is not None:
                write_rows(media / f"{split}.jsonl", rows)
        if labels is not None:
            (media / "labels.txt").write_text("".join(f"{c}\n" for c in labels), encoding="utf-8")
        return media

    return make


def good_rows(n: int, labels: tuple[str, ...] = ("cat", "dog")) -> list[dict[str, Any]]:
    """``n`` valid rows cycling through every image/audio file and label, with some modalities missing."""
    images = ["img/red.png", "img/gray.jpg", "img/clear.png", "img/palette.png", None]
    audios = ["wav/mono8k.wav", "wav/stereo44k.wav", "wav/tone.flac", "wav/long.wav", None]
    rows = []
    for i in range(n):
        row: dict[str, Any] = {"id": f"s{i}", "text": f"sample number {i}", "image": images[i % 5],
                               "audio": audios[(i // 2) % 5], "label": labels[i % len(labels)]}
        if i % 7 == 3:
            row["text"] = None
        rows.append(row)
    return rows
