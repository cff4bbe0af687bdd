"""Where a Hugging Face data set's rows are: its Arrow or Parquet files, split by split, read without ``datasets``.

``data.path`` may be

* a folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` (``dataset_dict.json`` with a
  folder per split, each with ``state.json`` naming its ``.arrow`` files; or one split's folder alone);
* Parquet or Arrow files: one file, a folder of them, or a glob. A file's split is the split word in its name or
  its folder (``train-00000-of-00002.parquet``, ``data/validation-*.parquet``, ``test.arrow``: the Hub's naming);
  files naming no split are ``train``;
* a URL of any of these: ``s3://bucket/prefix`` (listed), ``http(s)://host/prefix`` (a save_to_disk folder, whose
  ``dataset_dict.json`` / ``state.json`` list its files, or the files' URLs; HTTP has no listing): read through fsspec
  (``pip install 'mmgpt[remote]'``) with ``data.storage_options``, Parquet by byte ranges, Arrow streamed;
* a Hub id (``owner/name``): fetched with ``datasets.load_dataset`` when the Hub can be reached (its Arrow cache
  files are then read like a saved folder); without a network it fails at once, in one line.

Every split is a list of :class:`Piece` s -- a Parquet row group, or a record batch of an Arrow stream file --
with known row counts, read in order. They are the units streaming partitions over DDP ranks x loader workers
(like tar shards), and what map-style access indexes into. Column types come from the ``huggingface`` schema
metadata ``datasets`` writes into both formats (``Image``, ``Audio``, ``ClassLabel``...). ``Image`` and ``Audio``
cells are stored as ``{"bytes", "path"}``; they are read as such and decoded by the modalities' processors.
"""

from __future__ import annotations

import glob
import json
import os
import re
import socket
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from mmgpt.datamodules.remote import is_url
from mmgpt.errors import UserError

#: Words in a file's name or folder that name its split (the Hub's conventions), -> the split name used.
SPLIT_WORDS: dict[str, str] = {"train": "train", "training": "train", "validation": "validation", "valid": "validation",
                               "val": "validation", "dev": "validation", "test": "test", "testing": "test"}
DATA_SUFFIXES = (".parquet", ".arrow")
HUB_HOST = ("huggingface.co", 443)


class HFDataError(UserError):
    """A Hugging Face data set that cannot be used as given; the message names the path, split or column."""


@dataclass(frozen=True)
class Piece:
    """A contiguous run of rows: ``num_rows`` rows from row ``start`` of group ``group`` of ``file`` (a Parquet
    row group or an Arrow record batch); ``first`` is the split-wide index of its first row."""

    file: str
    group: int
    start: int
    num_rows: int
    first: int


@dataclass
class SplitFiles:
    """One split: its files' pieces in order, and its column types (``datasets.Features`` as a plain dict)."""

    name: str
    files: list[str]
    pieces: list[Piece] = field(default_factory=list)
    schema: pa.Schema | None = None
    storage_options: dict[str, Any] | None = None  # the files are URLs: their filesystem's options

    @property
    def num_rows(self) -> int:
        return sum(p.num_rows for p in self.pieces)

    @cached_property
    def features(self) -> Any:
        """The split's ``datasets.Features`` (from the schema's metadata, else inferred from the Arrow types)."""
        from datasets import Features

        return Features.from_arrow_schema(self.schema)

    @property
    def column_names(self) -> list[str]:
        return list(self.schema.names)


def open_source(path: str, *, piece_rows: int = 256, cache_dir: str | None = None,
                storage_options: dict[str, Any] | None = None) -> dict[str, SplitFiles]:
    """The splits of ``path`` (see the module doc), keyed by their own split names, pieces listed (row groups cut
    into pieces of at most ``piece_rows`` rows).

    Raises:
        HFDataError: nothing readable at ``path`` (one line naming it and what was expected).
    """
    local = Path(path).expanduser()
    if is_url(path):
        splits = _remote(path, storage_options)
    elif local.is_dir() and ((local / "dataset_dict.json").is_file() or (local / "state.json").is_file()):
        splits = _saved_folder(local)
    elif local.exists() or glob.has_magic(path):
        splits = _data_files(path)
    elif _looks_like_hub_id(path):
        splits = _hub(path, cache_dir=cache_dir)
    else:
        raise HFDataError(f"data.path={path}: no such file or folder (expected a save_to_disk folder, Parquet or "
                          "Arrow files, or a Hub id owner/name)")
    for split in splits.values():
        _list_pieces(split, piece_rows)
    return splits


def _remote(url: str, storage_options: dict[str, Any] | None) -> dict[str, SplitFiles]:
    """The splits at a URL: a save_to_disk folder (its JSON files list the data files), one file, or a listed
    prefix or glob of them."""
    from mmgpt.datamodules.remote import RemoteError, describe_failure, filesystem, join, read_bytes

    url = url.rstrip("/")
    fs = filesystem(url, storage_options)
    options = dict(storage_options or {})
    if url.endswith(DATA_SUFFIXES) and not glob.has_magic(url):
        files = [url]
    else:
        for name in ("dataset_dict.json", "state.json"):
            try:
                text = read_bytes(join(url, name), options)
            except RemoteError as e:
                if ": not found" in str(e):
                    continue
                raise
            return _saved_remote(url, name, text, options)
        protocol = url.split("://", 1)[0]
        try:
            found = fs.glob(url) if glob.has_magic(url) else fs.find(url)
        except Exception as e:  # noqa: BLE001 -- transports raise their own types
            raise HFDataError(describe_failure(url, e, options) + "; an http(s) URL needs a save_to_disk folder "
                              "(its dataset_dict.json) or the data files' URLs") from e
        names = [f if "://" in f else f"{protocol}://{f}" for f in found]
        files = sorted(f for f in names if f.endswith(DATA_SUFFIXES))
        if not files:
            raise HFDataError(f"data.path={url}: no .parquet or .arrow files there (nor a dataset_dict.json)")
    out: dict[str, SplitFiles] = {}
    for f in files:
        split = _split_of(f[len(url):] if f != url else f.rsplit("/", 1)[-1])
        out.setdefault(split, SplitFiles(split, [], storage_options=options)).files.append(f)
    return out


def _saved_remote(url: str, name: str, text: bytes, options: dict[str, Any]) -> dict[str, SplitFiles]:
    from mmgpt.datamodules.remote import join, read_bytes

    def state(folder: str) -> list[str]:
        data = _parse_json(read_bytes(join(folder, "state.json"), options), join(folder, "state.json"))
        files = [join(folder, f["filename"]) for f in data.get("_data_files", [])]
        if not files:
            raise HFDataError(f"{join(folder, 'state.json')}: lists no data files")
        return files

    if name == "state.json":  # one Dataset saved alone: it is the training split
        return {"train": SplitFiles("train", state(url), storage_options=options)}
    names = _parse_json(text, join(url, name)).get("splits", [])
    return {n: SplitFiles(n, state(join(url, n)), storage_options=options) for n in names}


def _parse_json(text: bytes, where: str) -> dict[str, Any]:
    try:
        return json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise HFDataError(f"{where}: not readable JSON ({e})") from e


def _saved_folder(root: Path) -> dict[str, SplitFiles]:
    if (root / "dataset_dict.json").is_file():
        names = _read_json(root / "dataset_dict.json").get("splits", [])
        folders = {name: root / _inside(name, root / "dataset_dict.json", "splits") for name in _listed(
            names, root / "dataset_dict.json", "splits")}
    else:  # one Dataset saved alone: it is the training split
        folders = {"train": root}
    out = {}
    for name, folder in folders.items():
        state = _read_json(folder / "state.json")
        entries = _listed(state.get("_data_files", []), folder / "state.json", "_data_files")
        files = [str(folder / _inside(f.get("filename") if isinstance(f, dict) else None, folder / "state.json",
                                      "_data_files")) for f in entries]
        if not files:
            raise HFDataError(f"{folder / 'state.json'}: lists no data files")
        out[name] = SplitFiles(name, files)
    return out


def _data_files(path: str) -> dict[str, SplitFiles]:
    local = Path(path).expanduser()
    if local.is_dir():
        files = sorted(str(p) for p in local.rglob("*") if p.suffix in DATA_SUFFIXES and p.is_file())
    elif local.is_file():
        files = [str(local)]
    else:
        files = sorted(f for f in glob.glob(os.path.expanduser(path), recursive=True) if f.endswith(DATA_SUFFIXES))
    if not files:
        raise HFDataError(f"data.path={path}: no .parquet or .arrow files there")
    out: dict[str, SplitFiles] = {}
    for f in files:
        relative = os.path.relpath(f, local) if local.is_dir() else os.path.basename(f)
        split = _split_of(relative)
        out.setdefault(split, SplitFiles(split, [])).files.append(f)
    return out


def _split_of(relative: str) -> str:
    for word in re.split(r"[^A-Za-z]+", relative.lower()):
        if word in SPLIT_WORDS:
            return SPLIT_WORDS[word]
    return "train"


def _looks_like_hub_id(path: str) -> bool:
    return re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?", path) is not None and not path.endswith(DATA_SUFFIXES)


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the Hub can be opened within ``timeout`` seconds."""
    try:
        with socket.create_connection(HUB_HOST, timeout=timeout):
            return True
    except OSError:
        return False


def _hub(repo_id: str, *, cache_dir: str | None) -> dict[str, SplitFiles]:
    offline = any(os.environ.get(k, "").lower() in ("1", "true", "yes") for k in ("HF_HUB_OFFLINE",
                                                                                   "HF_DATASETS_OFFLINE"))
    if not offline and not hub_reachable():
        raise HFDataError(f"data.path={repo_id}: not a local file or folder, and the Hugging Face Hub "
                          f"({HUB_HOST[0]}) cannot be reached. Download it where there is a network "
                          f"(datasets.load_dataset('{repo_id}').save_to_disk(DIR)) and pass data.path=DIR")
    import datasets

    try:
        loaded = datasets.load_dataset(repo_id, cache_dir=cache_dir)
    except Exception as e:  # noqa: BLE001 -- datasets raises many types (connection, missing repo, offline cache)
        raise HFDataError(f"data.path={repo_id}: cannot load from the Hub ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''})") from e
    return {name: SplitFiles(name, [c["filename"] for c in ds.cache_files]) for name, ds in loaded.items()}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise HFDataError(f"{path}: not readable JSON ({e})") from e
    if not isinstance(data, dict):
        raise HFDataError(f"{path}: a JSON {type(data).__name__}, not an object")
    return data


def _listed(value: Any, path: Path, key: str) -> list[Any]:
    if not isinstance(value, list):
        raise HFDataError(f"{path}: {key}: not a list")
    return value


def _inside(name: Any, path: Path, key: str) -> str:
    """``name`` (a split folder or data file that a saved folder's JSON lists) if it is a plain name of that
    folder: a saved folder from elsewhere never makes mmgpt read outside it."""
    if not isinstance(name, str) or Path(name).name != name or name in ("", ".", "..") or "\\" in name:
        raise HFDataError(f"{path}: {key}: {name!r} is not a name inside the folder; refused")
    return name


def _list_pieces(split: SplitFiles, piece_rows: int) -> None:
    groups: list[tuple[str, int, int]] = []  # (file, group, rows)
    for f in split.files:
        try:
            if f.endswith(".parquet") and not is_url(f):
                meta = pq.ParquetFile(f).metadata
                schema = pq.read_schema(f)
                groups += [(f, g, meta.row_group(g).num_rows) for g in range(meta.num_row_groups)]
            elif f.endswith(".parquet"):
                with _opened(f, split.storage_options) as source:
                    parquet = pq.ParquetFile(source)
                    meta, schema = parquet.metadata, parquet.schema_arrow
                groups += [(f, g, meta.row_group(g).num_rows) for g in range(meta.num_row_groups)]
            else:
                with _opened(f, split.storage_options) as source:
                    reader = _arrow_reader(source)
                    schema = reader.schema
                    groups += [(f, i, batch.num_rows) for i, batch in enumerate(reader)]
        except (OSError, pa.ArrowInvalid) as e:
            raise HFDataError(f"{f}: not a readable {Path(f).suffix[1:]} file ({e})") from e
        if split.schema is None:
            split.schema = schema
        elif schema.names != split.schema.names:
            raise HFDataError(f"{f}: columns {schema.names} differ from the split's first file "
                              f"({split.files[0]}: {split.schema.names})")
    first = 0
    for f, g, rows in groups:
        for start in range(0, rows, piece_rows):
            n = min(piece_rows, rows - start)
            split.pieces.append(Piece(f, g, start, n, first))
            first += n


def _arrow_reader(source: Any) -> Any:
    """A record-batch reader of an Arrow stream file (``datasets``' format) or an Arrow IPC file."""
    try:
        return pa.ipc.open_stream(source)
    except pa.ArrowInvalid:
        source.seek(0)
        return _FileBatches(pa.ipc.open_file(source))


class _FileBatches:
    """The record batches of an Arrow IPC file, iterated like a stream reader's."""

    def __init__(self, reader: Any) -> None:
        self.reader, self.schema = reader, reader.schema

    def __iter__(self) -> Any:
        return (self.reader.get_batch(i) for i in range(self.reader.num_record_batches))


def _opened(file: str, storage_options: dict[str, Any] | None = None) -> Any:
    """``file`` open for reading: a local one memory-mapped, a URL through fsspec (a failure is one line)."""
    if not is_url(file):
        return pa.memory_map(file)
    from mmgpt.datamodules.remote import RemoteError, describe_failure, filesystem

    try:
        return filesystem(file, storage_options).open(file, "rb", block_size=8 << 20)
    except Exception as e:  # noqa: BLE001 -- transports raise their own types
        raise RemoteError(describe_failure(file, e, storage_options)) from e


def read_group(file: str, index: int, columns: list[str], storage_options: dict[str, Any] | None = None) -> pa.Table:
    """Row group ``index`` of a Parquet file, or record batch ``index`` of an Arrow file, as a table."""
    if file.endswith(".parquet"):
        if not is_url(file):
            return pq.ParquetFile(file).read_row_group(index, columns=columns)
        with _opened(file, storage_options) as source:
            return pq.ParquetFile(source).read_row_group(index, columns=columns)
    with _opened(file, storage_options) as source:
        for i, batch in enumerate(_arrow_reader(source)):
            if i == index:
                return pa.Table.from_batches([batch]).select(columns)
    raise HFDataError(f"{file}: has no record batch {index} (changed since it was listed?)")


def read_table(file: str, columns: list[str], storage_options: dict[str, Any] | None = None) -> pa.Table:
    """A whole file as a table: Arrow memory-mapped (no copy), Parquet decompressed into memory (a URL's file
    read into memory)."""
    if is_url(file):
        with _opened(file, storage_options) as source:
            if file.endswith(".parquet"):
                return pq.read_table(source, columns=columns)
            return pa.Table.from_batches(list(_arrow_reader(source))).select(columns)
    if file.endswith(".parquet"):
        return pq.read_table(file, columns=columns)
    return pa.Table.from_batches(list(_arrow_reader(pa.memory_map(file)))).select(columns)
