"""Media files written byte by byte, for inputs Pillow will not write itself: huge-but-small PNGs, 48-bit PNGs."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def write_png_rows(path: Path, width: int, height: int, row: bytes, bit_depth: int = 8, colour_type: int = 0) -> Path:
    """A PNG whose every row is ``row`` (filter byte included): a 14000 x 14000 grey image is a few hundred KB on
    disk and is written without ever holding its pixels. Blocks of rows are deflated once, each ending with a full
    flush (no back-references across blocks), so the same compressed block repeats."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows_per_block = max(1, min(height, (1 << 22) // len(row)))
    reps, rest = divmod(height, rows_per_block)

    def deflated(n_rows: int) -> bytes:
        z = zlib.compressobj(9, zlib.DEFLATED, -15)  # raw deflate: the zlib wrapper is written below
        return z.compress(row * n_rows) + z.flush(zlib.Z_FULL_FLUSH)

    block = row * rows_per_block
    adler = 1
    for _ in range(reps):
        adler = zlib.adler32(block, adler)
    adler = zlib.adler32(row * rest, adler)
    end = zlib.compressobj(9, zlib.DEFLATED, -15).flush(zlib.Z_FINISH)  # an empty final block
    idat = b"\x78\xda" + deflated(rows_per_block) * reps + (deflated(rest) if rest else b"") + end
    idat += struct.pack(">I", adler)
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b""))
    return path


def write_bomb_png(path: Path, side: int) -> Path:
    """A ``side`` x ``side`` black 8-bit grey PNG (decompression-bomb style: tiny file, huge image)."""
    return write_png_rows(path, side, side, bytes(side + 1))


def write_png16(path: Path, pixels: np.ndarray) -> Path:
    """A 16-bit PNG from (H, W) grey or (H, W, 3) RGB uint16 pixels (48-bit colour PNG for RGB)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = pixels.shape[:2]
    colour_type = 2 if pixels.ndim == 3 else 0
    raw = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(h))
    ihdr = struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0)
    chunks = _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunks)
    return path
