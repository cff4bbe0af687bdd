"""The on-disk media store (issue 16): preprocessed arrays (decoded media, later frozen backbone features) in
immutable segment files, shared by every process, keyed by namespace, processor fingerprint and :class:`SourceId`.

Every process that opens the same folder reads the same file pages through the OS page cache (``pread`` or
``numpy.memmap``): a DDP rank or a loader worker holds no private copy, so resident memory does not grow with the
data set.

Layout of a store folder::

    seg-<time_ns>-<pid>-<rand>.bin        raw bytes of many arrays, back to back (64-byte aligned)
    seg-<time_ns>-<pid>-<rand>.idx.npz    its index: per entry the key hash, offset, byte count, dtype code, shape,
                                          the source file's size and mtime_ns; plus a JSON header (format version,
                                          the .bin's length, decode errors). Read with ``allow_pickle=False``.

Segments are immutable. A writer appends entries to its own ``tmp-*.bin`` (one writer per file: no lock is needed
when DDP ranks, loader workers or sweep jobs fill the store at once), and commits by renaming it to ``seg-*.bin``
and then writing the index next to it (temporary name + ``os.replace``): readers only see a segment whose index
exists, and an index always describes a complete ``.bin``. A lookup key is a 64-bit hash of (namespace,
fingerprint, source path); the fingerprint names the preprocessing (e.g. ``image:v1:size=224``), so changing it
misses every old entry, and an entry whose source file's size or mtime changed is stale: the caller decodes
again and puts a new entry, which wins over the old one (the newest segment wins). An index that does not load,
or a ``.bin`` shorter than its index says, is reported with a warning and deleted, so its entries are decoded
again: the store rebuilds itself instead of failing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing.util
import os
import time
import uuid
import weakref
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

#: Bump when the segment layout changes: segments of another version are ignored (and left alone).
STORE_VERSION = 1
#: dtype codes stored in the index (their position in this tuple).
DTYPES: tuple[str, ...] = ("uint8", "int8", "int16", "int32", "int64", "float16", "float32", "float64", "bool")
_NP_DTYPES: tuple[np.dtype, ...] = tuple(np.dtype(d) for d in DTYPES)
MAX_NDIM = 4
ALIGN = 64
#: Left-over ``tmp-*`` files (a writer that crashed) older than this are deleted when the store is opened.
STALE_TMP_SECONDS = 24 * 3600


@dataclass(frozen=True)
class SourceId:
    """What identifies a source file's content cheaply: its path, size and modification time (ns)."""

    path: str
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: str | os.PathLike) -> SourceId | None:
        """The identity of ``path`` now, or None when it cannot be stat'ed (missing, no permission)."""
        try:
            st = os.stat(path)
        except OSError:
            return None
        return cls(os.fspath(path), st.st_size, st.st_mtime_ns)


def key_hash(namespace: str, fingerprint: str, path: str) -> int:
    """The 64-bit lookup key of an entry (signed, to sit in an int64 array)."""
    digest = hashlib.blake2b(f"{namespace}\0{fingerprint}\0{path}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


@dataclass(frozen=True)
class Hit:
    """A valid entry: ``error`` is the cached failure message of a source that could not be preprocessed."""

    index: int
    error: str | None


class _Writer:
    """This process's open segment: appended to, then committed as a whole (never rewritten)."""

    def __init__(self, root: Path) -> None:
        self.name = f"{os.getpid()}-{uuid.uuid4().hex[:10]}"
        self.tmp = root / f"tmp-{self.name}.bin"
        self.file = open(self.tmp, "wb")  # noqa: SIM115 (closed by DiskStore._commit)
        self.offset = 0
        # hash, offset, nbytes, dtype code, shape, source size, source mtime_ns
        self.rows: list[tuple[int, int, int, int, tuple[int, ...], int, int]] = []
        self.errors: dict[int, str] = {}
        self.pending: dict[int, int] = {}  # key hash -> row


def _commit_at_exit(ref: weakref.ref[DiskStore]) -> None:
    store = ref()
    if store is None:
        return
    try:
        store._commit()
    except OSError as e:  # e.g. a temporary store already removed
        log.debug("media store %s: nothing committed at exit (%s)", store.root, e)


class DiskStore:
    """Arrays keyed by (namespace, fingerprint, source file), memory-mapped from immutable segment files.

    Args:
        root: the store folder (created if missing). Several processes may open, read and fill it at once.
        segment_bytes: a writer commits its segment when it holds this many bytes (and on :meth:`flush`, and when
            the process exits).
        memory_cache_mb: a per-process LRU of arrays already read, bounded to this many MiB (0: none; the OS page
            cache already keeps hot pages, shared by every process).
        mmap: read through ``numpy.memmap`` views of the segments instead of ``pread`` into a fresh buffer. Both
            read the one copy in the OS page cache; a mapping keeps every page a process has touched mapped into
            it, so pages only one loader worker read count in that worker's unique memory (USS) and RSS, which
            ``pread`` avoids at the same cost (one copy per read either way).
    """

    def __init__(self, root: str | os.PathLike, *, segment_bytes: int = 256 << 20, memory_cache_mb: float = 0,
                 mmap: bool = False) -> None:
        self.root = Path(root)
        self.mmap = mmap
        self._fds: dict[int, int] = {}
        self.root.mkdir(parents=True, exist_ok=True)
        self.segment_bytes = segment_bytes
        self.lru_budget = int(memory_cache_mb * (1 << 20))
        self._lru: OrderedDict[int, np.ndarray] = OrderedDict()
        self._lru_bytes = 0
        self._segments: list[str] = []  # segment names, oldest first
        self._maps: dict[int, np.memmap] = {}
        self._errors: dict[int, str] = {}
        self._writer: _Writer | None = None
        self._writer_pid = -1
        self._exit_hook_pid = -1
        self._set_index(*(np.zeros(0, np.int64) for _ in range(6)), np.zeros(0, np.int8),
                        np.zeros((0, MAX_NDIM), np.int64))
        self._clean_stale_tmp()
        self.refresh()

    # --- reading ----------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._hash)

    def __getstate__(self) -> dict:
        # Pickled into spawned workers: the index travels, open maps and this process's writer do not.
        state = self.__dict__.copy()
        state.update(_maps={}, _fds={}, _writer=None, _writer_pid=-1, _exit_hook_pid=-1, _lru=OrderedDict(),
                     _lru_bytes=0)
        return state

    def refresh(self) -> None:
        """Load the segments other processes committed since the last refresh (dropping damaged ones)."""
        names = sorted(p.name[: -len(".idx.npz")] for p in self.root.glob("seg-*.idx.npz"))
        known = set(self._segments)
        new = [n for n in names if n not in known]
        if not new:
            return
        parts = [self._columns()]
        segments = list(self._segments)
        errors = dict(self._errors)
        for name in new:
            loaded = self._load_segment(name)
            if loaded is None:
                continue
            cols, seg_errors = loaded
            seg = len(segments)
            segments.append(name)
            start = sum(len(p[0]) for p in parts)
            cols[1][:] = seg
            parts.append(cols)
            errors.update({start + i: msg for i, msg in seg_errors.items()})
        merged = [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))]
        # The newest entry of a key wins: segments are in commit order, so keep each hash's last occurrence.
        order = np.argsort(merged[0], kind="stable")
        h = merged[0][order]
        last = np.ones(len(h), bool)
        last[:-1] = h[1:] != h[:-1]
        keep = order[last]
        self._segments = segments
        self._errors = {new_i: errors[old] for new_i, old in enumerate(keep.tolist()) if old in errors}
        self._set_index(*(m[keep] for m in merged))
        self._lru.clear()
        self._lru_bytes = 0

    def lookup(self, namespace: str, fingerprint: str, source: SourceId) -> Hit | None:
        """The entry for ``source`` under this preprocessing, or None when there is none or it is stale."""
        h = key_hash(namespace, fingerprint, source.path)
        w = self._own_writer()
        if w is not None and h in w.pending:  # written by this process, not committed yet
            row = w.pending[h]
            size, mtime = w.rows[row][5:7]
            if (size, mtime) == (source.size, source.mtime_ns):
                return Hit(-1 - row, w.errors.get(row))
        i = int(np.searchsorted(self._hash, h))
        if i >= len(self._hash) or self._hash[i] != h:
            return None
        if (self._size[i], self._mtime[i]) != (source.size, source.mtime_ns):
            return None
        return Hit(i, self._errors.get(i))

    def read(self, hit: Hit) -> np.ndarray:
        """The array of a valid entry (a private copy, safe to modify)."""
        if hit.error is not None:
            raise ValueError(f"entry holds an error, not an array: {hit.error}")
        if hit.index < 0:
            return self._read_pending(-1 - hit.index)
        return self.read_entry(hit.index)

    def read_entry(self, i: int) -> np.ndarray:
        """The array of committed entry ``i`` (a :class:`Hit`'s ``index`` >= 0 without an error; a private copy).

        For readers that resolved their entries once (e.g. a dataset checked in full) and read them many times."""
        if self.lru_budget:
            cached = self._lru.get(i)
            if cached is not None:
                self._lru.move_to_end(i)
                return cached.copy()
        # The hot path of every loader: a few scalar lookups and one pread straight into the result's buffer.
        seg, off, n = int(self._seg[i]), int(self._off[i]), int(self._nbytes[i])
        dtype = _NP_DTYPES[self._dtype[i]]
        shape = self._shape[i, : self._ndim[i]].tolist()
        if self.mmap:
            mm = self._maps.get(seg)
            if mm is None:
                mm = self._maps[seg] = np.memmap(self._bin(seg), dtype=np.uint8, mode="r")
            out = np.frombuffer(mm, dtype=dtype, count=n // dtype.itemsize, offset=off).reshape(shape).copy()
        else:
            fd = self._fds.get(seg)
            if fd is None:
                fd = self._fds[seg] = os.open(self._bin(seg), os.O_RDONLY)
            out = np.empty(shape, dtype)
            if os.preadv(fd, [out], off) != n:
                raise OSError(f"media store {self.root}: {self._bin(seg).name} is shorter than its index says")
        if self.lru_budget and n <= self.lru_budget:
            self._lru[i] = out.copy()
            self._lru_bytes += n
            while self._lru_bytes > self.lru_budget:
                self._lru_bytes -= self._lru.popitem(last=False)[1].nbytes
        return out

    def _bin(self, seg: int) -> Path:
        return self.root / f"{self._segments[seg]}.bin"

    # --- writing ----------------------------------------------------------------------------------------------

    def put(self, namespace: str, fingerprint: str, source: SourceId, value: np.ndarray | str) -> None:
        """Add the array for ``source`` (or the message of why it could not be made) to this process's segment."""
        w = self._own_writer(create=True)
        assert w is not None
        h = key_hash(namespace, fingerprint, source.path)
        row = len(w.rows)
        if isinstance(value, str):
            w.errors[row] = value
            w.rows.append((h, 0, -1, 0, (), source.size, source.mtime_ns))
        else:
            arr = np.ascontiguousarray(value)
            if arr.ndim > MAX_NDIM or arr.dtype.name not in DTYPES:
                raise ValueError(f"cannot store a {arr.dtype} array of {arr.ndim} dims (at most {MAX_NDIM}; {DTYPES})")
            pad = -w.offset % ALIGN
            if pad:
                w.file.write(b"\0" * pad)
                w.offset += pad
            w.file.write(arr.tobytes())
            w.rows.append((h, w.offset, arr.nbytes, DTYPES.index(arr.dtype.name), arr.shape, source.size,
                           source.mtime_ns))
            w.offset += arr.nbytes
        w.pending[h] = row
        if w.offset >= self.segment_bytes:
            self._commit()

    def flush(self, refresh: bool = True) -> None:
        """Commit this process's open segment (if any) and (``refresh``) load what every process committed."""
        self._commit()
        if refresh:
            self.refresh()

    def _own_writer(self, create: bool = False) -> _Writer | None:
        if self._writer_pid != os.getpid():  # a forked child never appends to its parent's open file
            self._writer, self._writer_pid = None, os.getpid()
        if self._writer is None and create:
            self._writer = _Writer(self.root)
            if self._exit_hook_pid != os.getpid():
                # Commit at process exit too: multiprocessing runs these in forked loader workers as well.
                multiprocessing.util.Finalize(None, _commit_at_exit, args=(weakref.ref(self),), exitpriority=10)
                self._exit_hook_pid = os.getpid()
        return self._writer

    def _read_pending(self, row: int) -> np.ndarray:
        w = self._own_writer()
        assert w is not None
        _, off, n, dtype, shape, _, _ = w.rows[row]
        w.file.flush()
        with open(w.tmp, "rb") as f:
            f.seek(off)
            data = f.read(n)
        return np.frombuffer(data, dtype=DTYPES[dtype]).reshape(shape).copy()

    def _commit(self) -> None:
        w = self._own_writer()
        if w is None:
            return
        self._writer = None
        w.file.close()
        if not w.rows:
            w.tmp.unlink(missing_ok=True)
            return
        name = f"seg-{time.time_ns():020d}-{w.name}"
        n = len(w.rows)
        shapes = np.full((n, MAX_NDIM), -1, np.int64)
        for r, row in enumerate(w.rows):
            shapes[r, : len(row[4])] = row[4]
        header = {"version": STORE_VERSION, "bin_bytes": w.offset, "errors": {str(k): v for k, v in w.errors.items()}}
        arrays = {
            "hash": np.array([r[0] for r in w.rows], np.int64),
            "offset": np.array([r[1] for r in w.rows], np.int64),
            "nbytes": np.array([r[2] for r in w.rows], np.int64),
            "dtype": np.array([r[3] for r in w.rows], np.int8),
            "shape": shapes,
            "size": np.array([r[5] for r in w.rows], np.int64),
            "mtime": np.array([r[6] for r in w.rows], np.int64),
            "header": np.frombuffer(json.dumps(header).encode(), np.uint8),
        }
        os.replace(w.tmp, self.root / f"{name}.bin")
        tmp_idx = self.root / f"tmp-{w.name}.idx.npz"
        with open(tmp_idx, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp_idx, self.root / f"{name}.idx.npz")
        log.debug("store %s: committed %s (%d entries, %d bytes)", self.root, name, n, w.offset)

    # --- internals --------------------------------------------------------------------------------------------

    def _columns(self) -> tuple[np.ndarray, ...]:
        return self._hash, self._seg, self._off, self._nbytes, self._size, self._mtime, self._dtype, self._shape

    def _set_index(self, h: np.ndarray, seg: np.ndarray, off: np.ndarray, nbytes: np.ndarray, size: np.ndarray,
                   mtime: np.ndarray, dtype: np.ndarray, shape: np.ndarray) -> None:
        # One entry per row, sorted by key hash (binary search; no per-entry Python objects).
        self._hash, self._seg, self._off, self._nbytes = h, seg, off, nbytes
        self._size, self._mtime, self._dtype, self._shape = size, mtime, dtype, shape
        self._ndim = (shape >= 0).sum(axis=1).astype(np.int8)  # shapes are -1-padded to MAX_NDIM

    def _load_segment(self, name: str) -> tuple[list[np.ndarray], dict[int, str]] | None:
        idx, bin_ = self.root / f"{name}.idx.npz", self.root / f"{name}.bin"
        root = self.root.resolve()
        if idx.resolve().parent != root or bin_.resolve().parent != root:  # a link leading out of the store
            return self._drop(name, "a link to a file outside the store")
        try:
            with np.load(idx, allow_pickle=False) as z:
                header = json.loads(z["header"].tobytes().decode())
                if not isinstance(header, dict):
                    return self._drop(name, "its index header is not a JSON object")
                if header.get("version") != STORE_VERSION:
                    log.info("store %s: skipping segment %s of format version %s", self.root, name,
                             header.get("version"))
                    return None
                h = z["hash"]
                cols = [h, np.zeros(len(h), np.int64), z["offset"], z["nbytes"], z["size"], z["mtime"], z["dtype"],
                        z["shape"]]
        except FileNotFoundError:  # deleted by another process since the listing
            return None
        except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile, UnicodeDecodeError) as e:
            return self._drop(name, f"unreadable index ({type(e).__name__}: {e})")
        try:
            size = bin_.stat().st_size
        except FileNotFoundError:
            return self._drop(name, "its .bin file is missing")
        why = _index_problem(cols, header, size)
        if why is not None:
            return self._drop(name, why)
        return cols, {int(k): v for k, v in header["errors"].items()}

    def _drop(self, name: str, why: str) -> None:
        log.warning("media store %s: segment %s is damaged (%s); deleting it, its entries will be made again",
                    self.root, name, why)
        for suffix in (".idx.npz", ".bin"):
            (self.root / f"{name}{suffix}").unlink(missing_ok=True)

    def _clean_stale_tmp(self) -> None:
        now = time.time()
        for p in self.root.glob("tmp-*"):
            try:
                if now - p.stat().st_mtime > STALE_TMP_SECONDS:
                    p.unlink()
            except OSError:
                pass


def _index_problem(cols: list[np.ndarray], header: dict, size: int) -> str | None:
    """Why a segment's index cannot be trusted (columns of another type or length, dtype codes, shapes, byte counts
    or offsets that do not describe arrays inside its ``size``-byte ``.bin``), or None when it can. An index comes
    from whichever process (or machine) wrote the store: it is read as data and checked before any entry is used."""
    n = len(cols[0])
    if any(c.dtype.kind not in "iu" for c in cols) or len({len(c) for c in cols}) != 1 or cols[7].ndim != 2 \
            or cols[7].shape[1:] != (MAX_NDIM,):
        return "index columns disagree in type or length"
    bin_bytes, errors = header.get("bin_bytes"), header.get("errors")
    if not isinstance(bin_bytes, int) or not isinstance(errors, dict):
        return "its index header lacks bin_bytes or errors"
    if size < bin_bytes:
        return f"truncated shard: {size} of {bin_bytes} bytes"
    if not all(isinstance(k, str) and k.isdigit() and int(k) < n and isinstance(v, str) for k, v in errors.items()):
        return "its index header lists errors of entries it does not have"
    off, nbytes, code, shape = cols[2], cols[3], cols[6], cols[7]
    array = nbytes >= 0  # entries that hold an array (-1: a recorded decode error)
    is_error = np.zeros(n, bool)
    is_error[[int(k) for k in errors]] = True
    if np.any(array == is_error) or np.any((code < 0) | (code >= len(DTYPES))):
        return "index entries of an unknown kind or dtype"
    dims = shape >= 0
    ndim = dims.sum(axis=1)
    if np.any(dims != (np.arange(MAX_NDIM) < ndim[:, None])):  # sizes first, then -1 padding
        return "index shapes that are not shapes"
    items = np.where(dims, shape, 1).astype(np.float64).prod(axis=1)  # float: a crafted shape cannot wrap around
    itemsize = np.array([d.itemsize for d in _NP_DTYPES])[code]
    outside = (off < 0) | (off > size) | (nbytes > size - np.minimum(np.maximum(off, 0), size))
    if np.any(array & (outside | (items * itemsize != nbytes))):
        return "index entries outside the .bin file, or of the wrong byte count"
    return None

