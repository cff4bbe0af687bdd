"""The shard folder's format: ``<split>-NNNNNN.tar`` WebDataset shards, ``shards.json`` and ``labels.txt``.

In a shard, the files of one sample share a key ``<index>_<id>``: ``<key>.json`` holds id, text, label and caption,
and ``<key>.<modality>.<ext>`` each media file's original bytes (``image``, ``audio``). ``shards.json`` records
the class list and, per split, the shard names, the sample count and the samples per shard.
"""

from __future__ import annotations

import json
import re
import zlib
from pathlib import Path
from typing import Any

from mmgpt.errors import UserError

META_FILE = "shards.json"


class ShardError(UserError):
    """A manifest folder that cannot be sharded, or a shard folder that cannot be read."""


def sample_key(sample_id: str, n: int) -> str:
    """The key of the ``n``-th sample of a split. WebDataset splits keys from extensions at the first dot, so
    ids are made dot-free (and unique by the index)."""
    return f"{n:08d}_" + re.sub(r"[^A-Za-z0-9_-]", "_", sample_id)


def sample_index(key: str) -> int:
    """The sample's index in its split, from its key (a foreign key without one: a stable hash of it)."""
    head = key.split("_", 1)[0]
    return int(head) if head.isdigit() else zlib.crc32(key.encode())


def read_meta(root: Path) -> dict[str, Any]:
    """``root/shards.json``.

    Raises:
        ShardError: it is missing or not valid JSON.
    """
    meta = root / META_FILE
    if not meta.is_file():
        raise ShardError(f"{meta}: not found; write shards with `mmgpt-data shard DIR {root}`")
    try:
        data = json.loads(meta.read_text())
    except json.JSONDecodeError as e:
        raise ShardError(f"{meta}: not valid JSON ({e.msg}, line {e.lineno})") from e
    except UnicodeDecodeError as e:
        raise ShardError(f"{meta}: not UTF-8 text ({e})") from e
    check_meta(data, meta)
    return data


def check_meta(meta: Any, where: Path | str) -> None:
    """Refuse a ``shards.json`` that does not describe shard files of its own folder: ``class_names`` a list of
    strings; per split, ``shards`` plain file names (no folder part, no ``..``: nothing outside the folder is read)
    ``sizes`` and ``bytes`` (if given) one sample count and one byte size per shard.

    Raises:
        ShardError: naming the file and the key.
    """
    def refuse(key: str, why: str) -> None:
        raise ShardError(f"{where}: {key}: {why}; refused")

    if not isinstance(meta, dict):
        refuse("the top level", f"a JSON {type(meta).__name__}, not an object")
    names = meta.get("class_names")
    if not isinstance(names, list) or not all(isinstance(c, str) for c in names):
        refuse("class_names", "not a list of strings")
    splits = meta.get("splits")
    if not isinstance(splits, dict):
        refuse("splits", "not an object")
    for split, entry in splits.items():
        shards = entry.get("shards") if isinstance(entry, dict) else None
        if not isinstance(shards, list):
            refuse(f"splits.{split}.shards", "not a list")
        for i, name in enumerate(shards):
            if not isinstance(name, str) or Path(name).name != name or name in ("", ".", "..") or "\\" in name:
                refuse(f"splits.{split}.shards[{i}]", f"{name!r} is not a file name in this folder")
        sizes = entry.get("sizes")
        if sizes is not None and not (isinstance(sizes, list) and len(sizes) == len(shards) and all(
                isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in sizes)):
            refuse(f"splits.{split}.sizes", "not one sample count per shard")
        byte_sizes = entry.get("bytes")
        if byte_sizes is not None and not (isinstance(byte_sizes, list) and len(byte_sizes) == len(shards) and all(
                isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in byte_sizes)):
            refuse(f"splits.{split}.bytes", "not one byte size per shard")
