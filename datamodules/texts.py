"""The training texts of a data folder (its ``text`` fields and captions), e.g. to train a tokenizer on.

A folder is either a manifest folder (``train.jsonl`` / ``train.csv``; ``mmgpt-data export-synthetic`` writes
one) or a folder of tar shards (``shards.json``, written by ``mmgpt-data shard``). Only the training split is read,
so a tokenizer never sees validation or test text.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from mmgpt.errors import UserError

#: The sample fields that hold text.
TEXT_FIELDS: tuple[str, ...] = ("text", "caption")


def training_texts(root: str | Path) -> Iterator[str]:
    """Every non-blank ``text`` and ``caption`` of the training split of ``root`` (manifest or shards).

    Raises:
        UserError: ``root`` is neither, or has no training split.
    """
    root = Path(root)
    if (root / "shards.json").is_file():
        yield from _shard_texts(root)
    elif any((root / f"train.{ext}").is_file() for ext in ("jsonl", "csv")):
        yield from _manifest_texts(root)
    else:
        raise UserError(f"{root}: no train.jsonl / train.csv (a manifest folder) and no shards.json (a shards "
                        "folder); write one with `mmgpt-data export-synthetic` or `mmgpt-data shard`")


def _keep(value: object) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _manifest_texts(root: Path) -> Iterator[str]:
    from mmgpt.datamodules.manifest.index import read_index

    index = read_index(root)
    fatal = [p for p in index.problems if p.fatal]
    if fatal:
        raise UserError(f"{root}: {fatal[0]} (run `mmgpt-data check {root}` for the full report)")
    for row in index.rows.get("train", []):
        for value in (row.text, row.caption):
            if _keep(value):
                yield value  # type: ignore[misc]


def _shard_texts(root: Path) -> Iterator[str]:
    from mmgpt.datamodules.shards.dataset import read_tar
    from mmgpt.datamodules.shards.format import read_meta

    meta = read_meta(root)
    train = meta.get("splits", {}).get("train")
    if not train:
        raise UserError(f"{root / 'shards.json'}: no train split")
    for shard in train["shards"]:
        for sample in read_tar(str(root / shard)):
            raw = sample.get("json")
            if raw is None:
                continue
            record = json.loads(raw)
            for key in TEXT_FIELDS:
                if _keep(record.get(key)):
                    yield record[key]
