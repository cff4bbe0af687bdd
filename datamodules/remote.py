"""Data in object storage: ``s3://bucket/prefix`` and ``http(s)://host/prefix`` roots, read through fsspec.

``fsspec`` (with ``s3fs`` for S3-compatible stores; its own HTTP filesystem for ``http(s)://``) is an optional
dependency (``pip install 'mmgpt[remote]'``), imported only when a root is a URL: local paths never touch this
module's imports. Credentials come from where the transport looks for them (environment, ``~/.aws``); a config's
``storage_options`` (an endpoint URL, a profile, and secret keys if one must) reach the filesystem only, never a
saved hyperparameter or run file (:func:`mmgpt.secrets.redacted` drops their secrets from what is saved).

:class:`ShardCache` is the bounded local copy of remote tar shards: a shard is downloaded whole (resumed from where
a dropped connection left it, with backoff), checked against its expected size and only then renamed into place,
so a partly downloaded shard is never read. The least recently used shards are evicted to keep the folder under
its size; a shard being read is held by a shared ``flock`` and never evicted, by any process of the node.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import re
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmgpt.errors import UserError

log = logging.getLogger(__name__)

#: What a dropped connection mid-read looks like is up to the transport; these end a download at once instead.
FATAL = (FileNotFoundError, PermissionError, IsADirectoryError, UserError)
PART = ".part-"  # a download in progress: <name>.part-<pid>-<random>-<expected bytes>
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "kib": 2**10, "mib": 2**20,
          "gib": 2**30, "tib": 2**40}


class RemoteError(UserError):
    """A remote root, object or transport that cannot be used; one line naming the URL.

    Raised in a DataLoader worker, torch re-raises it in the training process with the worker's traceback in the
    message; :meth:`__str__` keeps the last line (this error's own message), so the commands still print one line.
    """

    def __str__(self) -> str:
        text = super().__str__()
        if "Original Traceback" not in text:
            return text
        last = text.rstrip().splitlines()[-1]
        _, found, message = last.partition("RemoteError: ")
        return message if found else last


def is_url(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` names a remote object (``scheme://...`` other than ``file://``)."""
    match = re.match(r"([A-Za-z][A-Za-z0-9+.-]*)://", str(path))
    return match is not None and match.group(1).lower() != "file"


def join(root: str, name: str) -> str:
    """``root/name`` for a URL root (no doubled slash)."""
    return f"{root.rstrip('/')}/{name}"


def parse_size(size: int | str) -> int:
    """Bytes from ``4096``, ``"512MB"`` or ``"8GiB"``.

    Raises:
        UserError: not a size.
    """
    if isinstance(size, int):
        return size
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([A-Za-z]*)\s*", str(size))
    if match is None or match.group(2).lower() not in _UNITS:
        raise UserError(f"{size!r}: not a size (expected bytes, or a number with KB, MB, GB, KiB, MiB, GiB)")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def _fsspec() -> Any:
    try:
        import fsspec
    except ImportError as e:
        raise UserError("reading data from a URL needs fsspec (and s3fs for s3://): "
                        "pip install 'mmgpt[remote]'") from e
    return fsspec


_FILESYSTEMS: dict[tuple[int, str, str], Any] = {}


def filesystem(url: str, storage_options: Mapping[str, Any] | None = None) -> Any:
    """The fsspec filesystem of ``url``'s scheme with ``storage_options``, one per process (fork-safe: a worker
    builds its own rather than using its parent's event loop and connections)."""
    protocol = url.split("://", 1)[0].lower()
    options = dict(storage_options or {})
    key = (os.getpid(), protocol, repr(sorted(options.items())))
    if key not in _FILESYSTEMS:
        fsspec = _fsspec()
        try:
            _FILESYSTEMS[key] = fsspec.filesystem(protocol, skip_instance_cache=True, **options)
        except ImportError as e:
            raise UserError(f"{url}: reading {protocol}:// needs its fsspec backend ({e}); "
                            "pip install 'mmgpt[remote]'") from e
        except (TypeError, ValueError) as e:
            raise UserError(f"{url}: data.storage_options not accepted by the {protocol} filesystem ({e})") from e
    return _FILESYSTEMS[key]


def describe_failure(url: str, e: BaseException, storage_options: Mapping[str, Any] | None = None) -> str:
    """One line saying why ``url`` could not be read, with what to check (endpoint, credentials, the object)."""
    options = dict(storage_options or {})
    endpoint = options.get("endpoint_url") or dict(options.get("client_kwargs") or {}).get("endpoint_url")
    where = f" at endpoint {endpoint}" if endpoint else ""
    name = type(e).__name__
    text = " ".join(str(e).split())[:200]
    if isinstance(e, FileNotFoundError):
        return f"{url}: not found{where}"
    if isinstance(e, PermissionError) or "credential" in text.lower() or "AccessDenied" in text \
            or "InvalidAccessKeyId" in text or "SignatureDoesNotMatch" in text or name == "NoCredentialsError":
        return (f"{url}: access refused{where} ({name}: {text}); check the credentials (AWS_ACCESS_KEY_ID / "
                "AWS_SECRET_ACCESS_KEY, ~/.aws, or data.storage_options)")
    if "connect" in text.lower() or "connect" in name.lower() or isinstance(e, (ConnectionError, TimeoutError)):
        return f"{url}: cannot connect{where} ({name}: {text}); check the endpoint (data.storage_options.endpoint_url)"
    return f"{url}: cannot be read{where} ({name}: {text})"


def read_bytes(url: str, storage_options: Mapping[str, Any] | None = None) -> bytes:
    """The whole (small) object ``url``, e.g. ``shards.json``; a failure is one line (:func:`describe_failure`)."""
    try:
        return filesystem(url, storage_options).cat_file(url)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 -- transports raise their own types (botocore, aiohttp)
        raise RemoteError(describe_failure(url, e, storage_options)) from e


def object_sizes(urls: list[str], storage_options: Mapping[str, Any] | None = None) -> dict[str, int | None]:
    """Byte size of each object (None where the server does not say), in as few requests as the store allows.

    Raises:
        RemoteError: an object is missing, or the store cannot be reached (one line naming the URL).
    """
    if not urls:
        return {}
    fs = filesystem(urls[0], storage_options)
    sizes: dict[str, int | None] = {}
    current = urls[0]  # what a failure is about
    try:
        folders = {u.rsplit("/", 1)[0] for u in urls}
        if urls[0].startswith("s3://") and len(folders) == 1:  # one listing instead of a HEAD per object
            listed = {("s3://" + e["name"].removeprefix("s3://")): e.get("size")
                      for e in fs.ls(folders.pop(), detail=True, refresh=True)}
            for current in urls:
                if current not in listed:
                    raise FileNotFoundError(current)
                sizes[current] = listed[current]
            return sizes
        for current in urls:  # HTTP: a HEAD each
            sizes[current] = fs.info(current).get("size")
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 -- transports raise their own types
        raise RemoteError(describe_failure(current, e, storage_options)) from e
    return sizes


@dataclass
class Retry:
    """How a dropped read is retried: ``attempts`` tries in all, waiting ``backoff * 2**n`` seconds (capped)."""

    attempts: int = 6
    backoff: float = 0.2
    max_wait: float = 10.0
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False)

    def wait(self, attempt: int) -> None:
        self.sleep(min(self.max_wait, self.backoff * 2**attempt))


def default_cache_dir(root: str) -> Path:
    """Where shards of ``root`` are cached by default: the node's temporary folder, one sub-folder per root."""
    return Path(tempfile.gettempdir()) / "mmgpt-shard-cache" / hashlib.sha1(root.encode()).hexdigest()[:16]


class ShardCache:
    """A bounded folder of downloaded shards, shared by every process of a node (see the module doc).

    Args:
        folder: the cache folder (created).
        max_bytes: the most it holds; least recently used shards are evicted first.
        storage_options: for :func:`filesystem`.
        retry: how dropped reads are retried.
        block_size: bytes per read request.
    """

    def __init__(self, folder: str | Path, max_bytes: int, storage_options: Mapping[str, Any] | None = None,
                 retry: Retry | None = None, block_size: int = 8 << 20) -> None:
        self.folder, self.max_bytes = Path(folder), int(max_bytes)
        self.storage_options = dict(storage_options or {})
        self.retry, self.block_size = retry or Retry(), block_size
        self.fetched_bytes = 0  # by this process (downloads, retries included)
        self.folder.mkdir(parents=True, exist_ok=True)

    def local_name(self, url: str) -> Path:
        digest = hashlib.sha1(url.encode()).hexdigest()[:12]
        return self.folder / f"{digest}-{url.rsplit('/', 1)[-1]}"

    @contextmanager
    def open(self, url: str, size: int | None = None) -> Any:
        """The local copy of ``url`` (a path), downloaded if not cached, held against eviction while in the block.

        Args:
            url: the shard.
            size: its expected byte size (``shards.json``); a copy of another size is refused.
        """
        path = self.local_name(url)
        while True:
            if not path.exists():
                with self._downloading(path):  # one download per shard on the node; the others wait for it
                    if not path.exists():
                        self._download(url, path, size)
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue  # evicted by another process between the download and here
            try:
                fcntl.flock(fd, fcntl.LOCK_SH)
                if os.fstat(fd).st_nlink == 0:  # evicted before the lock was taken
                    continue
                os.utime(path)  # most recently used
                yield path
                return
            finally:
                os.close(fd)

    def disk_bytes(self) -> int:
        """Bytes the folder holds now (complete shards and downloads in progress)."""
        return sum(_size(p) for p in self.folder.iterdir() if p.is_file())

    @contextmanager
    def _downloading(self, path: Path) -> Iterator[None]:
        locks = self.folder / ".locks"
        locks.mkdir(exist_ok=True)
        with open(locks / path.name, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _download(self, url: str, path: Path, size: int | None) -> None:
        fs = filesystem(url, self.storage_options)
        # The download's expected size is in its name, so that every process's eviction counts it in full from
        # the start (two readers downloading at once must not each make room for one shard only).
        part = path.with_name(f"{path.name}{PART}{os.getpid()}-{uuid.uuid4().hex[:8]}-{size or 0}")
        done, error = 0, None
        try:
            with open(part, "wb") as out:
                self._make_room()
                for attempt in range(self.retry.attempts):
                    try:
                        done, total = self._copy(fs, url, out, done)
                        if size is not None and total is not None and total != size:
                            raise RemoteError(f"{url}: {total} bytes on the store, {size} expected (shards.json): "
                                              "truncated or replaced; write the shards again")
                        if size is not None and done != size:
                            raise RemoteError(f"{url}: truncated ({done} of {size} bytes)")
                        break
                    except FATAL as e:
                        raise e if isinstance(e, UserError) else RemoteError(
                            describe_failure(url, e, self.storage_options)) from e
                    except Exception as e:  # noqa: BLE001 -- a reset connection, a 5xx: resume after a pause
                        error = e
                        log.info("%s: read failed at byte %d (%s: %s); retrying", url, done, type(e).__name__, e)
                        self.retry.wait(attempt)
                else:
                    raise RemoteError(f"{url}: read failed {self.retry.attempts} times at byte {done} "
                                      f"({type(error).__name__}: {' '.join(str(error).split())[:200]})")
            os.replace(part, path)  # complete: only now visible under its name
        finally:
            part.unlink(missing_ok=True)

    def _copy(self, fs: Any, url: str, out: Any, done: int) -> tuple[int, int | None]:
        """Append ``url`` from byte ``done`` to ``out``; returns (bytes now written, the object's size if known)."""
        with fs.open(url, "rb", block_size=self.block_size, cache_type="none") as src:
            total = getattr(src, "size", None)
            if done:
                src.seek(done)
            while True:
                chunk = src.read(self.block_size)
                if not chunk:
                    return done, total
                out.write(chunk)
                out.flush()
                done += len(chunk)
                self.fetched_bytes += len(chunk)

    def _make_room(self) -> None:
        """Evict least recently used shards not held by any process until the folder, downloads in progress counted
        at their full size, fits its size."""
        entries = []
        for p in self.folder.iterdir():
            if p.name == ".locks":
                continue
            try:
                st = p.stat()
            except FileNotFoundError:
                continue
            entries.append((st.st_mtime, max(st.st_size, _expected(p)), p))
        used = sum(s for _, s, _ in entries)
        for _, size, p in sorted(entries):
            if used <= self.max_bytes:
                return
            if PART in p.name:
                if _stale(p):
                    p.unlink(missing_ok=True)
                    used -= size
                continue
            if _evict(p):
                used -= size
        if used > self.max_bytes:
            log.warning("shard cache %s: %d bytes held by readers or downloading, over its size of %d bytes "
                        "(raise data.cache_size, or lower data.read_ahead / data.num_workers)", self.folder, used,
                        self.max_bytes)


def _size(p: Path) -> int:
    try:
        return p.stat().st_size
    except FileNotFoundError:
        return 0


def _evict(p: Path) -> bool:
    """Delete ``p`` unless a reader holds it (a shared lock)."""
    try:
        fd = os.open(p, os.O_RDONLY)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    else:
        p.unlink(missing_ok=True)
        return True
    finally:
        os.close(fd)


def _expected(p: Path) -> int:
    """The full size of a download in progress (the last part of its name), 0 for a complete shard."""
    if PART not in p.name:
        return 0
    tail = p.name.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def _stale(part: Path) -> bool:
    """A download left by a process that has died (its pid is in the name)."""
    try:
        pid = int(part.name.rsplit(PART, 1)[1].split("-", 1)[0])
        os.kill(pid, 0)
    except (ValueError, IndexError):
        return True
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
