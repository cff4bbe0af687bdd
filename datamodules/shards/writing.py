"""``mmgpt-data shard DIR OUT``: write every split of a manifest folder as WebDataset tar shards."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import webdataset as wds

from mmgpt.datamodules.manifest.check import check_folder
from mmgpt.datamodules.manifest.index import read_index
from mmgpt.datamodules.manifest.media import MediaFiles
from mmgpt.datamodules.manifest.rows import MEDIA_KEYS, resolve_media
from mmgpt.datamodules.options import DataOptions
from mmgpt.datamodules.processors import declared_processors
from mmgpt.datamodules.remote import is_url
from mmgpt.datamodules.shards.format import META_FILE, ShardError, sample_key

log = logging.getLogger(__name__)


def write_shards(root: str | Path, out: str | Path, samples_per_shard: int = 256,
                 allow_outside_root: bool = False, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write every split of the manifest folder ``root`` as tar shards under ``out``, a folder or a URL
    (``s3://bucket/prefix``: each shard is uploaded as soon as it is complete, ``shards.json`` last).

    Raises:
        ShardError: the folder has problems (run ``mmgpt-data check`` for the full report) or ``out`` is not empty.
    """
    if is_url(out):
        from mmgpt.datamodules.shards.remote import upload_while_writing  # fsspec only when a URL needs it

        with upload_while_writing(str(out), storage_options) as (local, upload):
            return _write(Path(root), local, samples_per_shard, allow_outside_root, upload)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ShardError(f"{out} exists and is not a folder; shards are written into a new folder")
    if out.exists() and any(out.iterdir()):
        raise ShardError(f"{out} is not empty; shards are written into a new folder")
    return _write(Path(root), out, samples_per_shard, allow_outside_root, None)


def _write(root: Path, out: Path, samples_per_shard: int, allow_outside_root: bool,
           upload: Callable[[str], None] | None) -> dict[str, Any]:
    # The whole check of `mmgpt-data check` (every file exists and decodes) before anything is written, so that
    # bad data is reported here, by file and line, rather than by a training run that streams it later.
    media = MediaFiles(declared_processors(None, DataOptions(image_size=32, sample_rate=16000)), keep=False)
    report = check_folder(root, media, allow_outside_root)
    if not report.ok:
        raise ShardError(f"{root}: nothing written, fix these first:\n{report.format(limit=20)}")
    index = read_index(root)
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"class_names": index.class_names, "splits": {}}
    written: dict[str, int] = {}  # shard name -> bytes, recorded before an upload removes the local file

    def done(path: str) -> None:
        written[Path(path).name] = Path(path).stat().st_size
        if upload is not None:
            upload(path)

    for split, rows in index.rows.items():
        pattern = str(out / f"{split}-%06d.tar")
        # A whole-second mtime: with a fractional one Python writes an extra PAX header before every member,
        # which doubles the tar parsing work of every reader in every epoch.
        with wds.ShardWriter(pattern, maxcount=samples_per_shard, verbose=0, mtime=int(time.time()),
                             post=done) as sink:
            for n, row in enumerate(rows):
                sample: dict[str, Any] = {
                    "__key__": sample_key(row.id, n),
                    "json": json.dumps({"id": row.id, "text": row.get("text"), "label": row.label,
                                        "caption": row.caption}),
                }
                for modality in MEDIA_KEYS:
                    rel = row.get(modality)
                    if rel is not None:
                        path = resolve_media(root, rel, allow_outside_root)
                        sample[f"{modality}{path.suffix.lower()}"] = path.read_bytes()
                sink.write(sample)
        shards = sorted(name for name in written if name.startswith(f"{split}-"))
        sizes = [min(samples_per_shard, len(rows) - i * samples_per_shard) for i in range(len(shards))]
        summary["splits"][split] = {"shards": shards, "samples": len(rows), "sizes": sizes,
                                    "bytes": [written[s] for s in shards]}
        log.info("%s: %d samples in %d shards", split, len(rows), len(shards))
    (out / "labels.txt").write_text("".join(f"{c}\n" for c in index.class_names))
    (out / META_FILE).write_text(json.dumps(summary, indent=2))
    if upload is not None:  # shards.json last: a set without it is not one yet
        upload(str(out / "labels.txt"))
        upload(str(out / META_FILE))
    return summary
