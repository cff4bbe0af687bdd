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

META_FILE = "shards.json"


class ShardError(ValueError):
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
        return json.loads(meta.read_text())
    except json.JSONDecodeError as e:
        raise ShardError(f"{meta}: not valid JSON ({e.msg}, line {e.lineno})") from e
