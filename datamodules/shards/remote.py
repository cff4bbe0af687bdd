"""Shards in object storage: ``data.root=s3://bucket/prefix`` or ``https://host/prefix`` (with its ``shards.json``).

:class:`RemoteShards` reads the set's ``shards.json`` and checks, before training, that the store can be reached
with the credentials at hand and that every shard it lists is there with the size it was written with. While
streaming, each loader worker gets its shards through the node's :class:`~mmgpt.datamodules.remote.ShardCache`,
downloading up to ``read_ahead`` shards ahead of the one it decodes (:func:`RemoteShards.local_runs`). Which
worker reads which shard is :mod:`.partition`'s business, unchanged: a node downloads its own share of the set.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from mmgpt.datamodules.remote import (
    RemoteError,
    Retry,
    ShardCache,
    default_cache_dir,
    describe_failure,
    filesystem,
    join,
    object_sizes,
    parse_size,
    read_bytes,
)
from mmgpt.datamodules.shards.format import META_FILE, ShardError, check_meta

log = logging.getLogger(__name__)


class RemoteShards:
    """Where a remote shard set is, how to reach it, and the node's cache of it (picklable: workers rebuild
    their filesystem and cache handle).

    Args:
        root: the set's URL.
        storage_options: for the fsspec filesystem (e.g. ``{"endpoint_url": ...}``); never saved.
        cache_dir: the node-local cache folder (None: a folder per root under the temporary folder).
        cache_size: the most bytes the cache holds (``"4GB"``); must fit every reader's current and read-ahead
            shards.
        read_ahead: shards each worker downloads ahead of the one it decodes (0: none).
        retry: how a dropped connection or a 5xx is retried.
    """

    def __init__(self, root: str, *, storage_options: Mapping[str, Any] | None = None, cache_dir: str | None = None,
                 cache_size: int | str = "4GB", read_ahead: int = 2, retry: Retry | None = None) -> None:
        if int(read_ahead) < 0:
            raise ShardError(f"data.read_ahead={read_ahead}: expected 0 or more")
        self.root = root.rstrip("/")
        self.storage_options = dict(storage_options or {})
        self.cache_dir = str(cache_dir) if cache_dir else str(default_cache_dir(self.root))
        self.cache_size, self.read_ahead = parse_size(cache_size), int(read_ahead)
        self.retry = retry or Retry()
        self._cache: ShardCache | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_cache": None}  # each worker process opens its own

    @property
    def cache(self) -> ShardCache:
        if self._cache is None:
            self._cache = ShardCache(self.cache_dir, self.cache_size, self.storage_options, self.retry)
        return self._cache

    def url(self, name: str) -> str:
        return join(self.root, name)

    def read_meta(self) -> dict[str, Any]:
        """The set's ``shards.json``; an unreachable endpoint or refused credentials end here, in one line."""
        url = self.url(META_FILE)
        text = read_bytes(url, self.storage_options)
        try:
            meta = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ShardError(f"{url}: not valid JSON ({e})") from e
        check_meta(meta, url)  # as for a local set: plain shard names of this prefix, counts and sizes per shard
        return meta

    def check(self, meta: Mapping[str, Any], num_workers: int, processes: int = 1) -> None:
        """Before training: every listed shard is on the store with its recorded size (``bytes`` in
        ``shards.json``), and the cache can hold what ``processes`` x ``num_workers`` readers keep at once.

        Raises:
            RemoteError: a missing or truncated shard (naming its URL), or a cache too small for the readers.
        """
        expected = {self.url(name): size for split in meta["splits"].values()
                    for name, size in zip(split["shards"], split.get("bytes") or [None] * len(split["shards"]))}
        if not expected:
            return
        found = object_sizes(list(expected), self.storage_options)
        for url, size in expected.items():
            if size is not None and found.get(url) is not None and found[url] != size:
                raise RemoteError(f"{url}: {found[url]} bytes on the store, {size} written (shards.json): truncated "
                                  "or replaced; write the shards again")
        largest = max((s for s in found.values() if s is not None), default=0)
        readers = max(1, processes) * max(1, num_workers)
        needed = readers * (self.read_ahead + 1) * largest
        if needed > self.cache_size:
            raise RemoteError(f"data.cache_size={self.cache_size} bytes cannot hold the shards {readers} readers keep "
                              f"at once ({self.read_ahead + 1} each of up to {largest} bytes: {needed}); raise "
                              "data.cache_size or lower data.read_ahead / data.num_workers")

    def local_runs(self, runs: Sequence[tuple[str, int | None]], sizes: Mapping[str, int | None] | None = None
                   ) -> Iterator[tuple[str, Path, int | None]]:
        """``(url, local copy, samples to read)`` of each run in order, the copy held in the cache while the
        caller reads it; the next ``read_ahead`` shards download meanwhile on threads."""
        sizes = sizes or {}
        pending: deque[tuple[str, int | None, Future[tuple[Path, ExitStack]]]] = deque()
        todo = iter(runs)

        def hold(url: str) -> tuple[Path, ExitStack]:
            stack = ExitStack()
            try:
                return stack.enter_context(self.cache.open(url, sizes.get(url))), stack
            except BaseException:
                stack.close()
                raise

        def submit(pool: ThreadPoolExecutor) -> None:
            for url, n in todo:
                pending.append((url, n, pool.submit(hold, url)))
                return

        with ThreadPoolExecutor(max_workers=max(1, self.read_ahead), thread_name_prefix="shard-fetch") as pool:
            try:
                for _ in range(self.read_ahead + 1):
                    submit(pool)
                while pending:
                    url, n, future = pending.popleft()
                    path, stack = future.result()
                    with stack:
                        yield url, path, n
                    submit(pool)  # keeps read_ahead shards coming while the next one is read
            finally:  # stopped early (a resume's skip, an error): release what was fetched ahead
                for _, _, future in pending:
                    future.cancel()
                for _, _, future in pending:
                    if not future.cancelled() and future.exception() is None:
                        future.result()[1].close()

    def fetched_bytes(self) -> int:
        """Bytes this process has downloaded."""
        return 0 if self._cache is None else self._cache.fetched_bytes




@contextmanager
def upload_while_writing(out: str, storage_options: Mapping[str, Any] | None = None
                         ) -> Iterator[tuple[Path, Callable[[str], None]]]:
    """A local staging folder and an ``upload(path)`` that sends a finished file to ``out/<name>`` and deletes
    it, so the writer's disk holds one shard at a time.

    Raises:
        ShardError: ``out`` already holds a shard set (its ``shards.json``).
        RemoteError: the store cannot be reached or refuses the upload (one line naming the URL).
    """
    fs = filesystem(out, storage_options)
    meta = join(out, META_FILE)
    try:
        exists = fs.exists(meta)
    except Exception as e:  # noqa: BLE001 -- transports raise their own types
        raise RemoteError(describe_failure(meta, e, storage_options)) from e
    if exists:
        raise ShardError(f"{out} is not empty (it has a {META_FILE}); shards are written into a new prefix")

    def upload(path: str) -> None:
        url = join(out, Path(path).name)
        try:
            fs.put_file(path, url)
        except Exception as e:  # noqa: BLE001
            raise RemoteError(describe_failure(url, e, storage_options)) from e
        Path(path).unlink()
        log.info("uploaded %s", url)

    with tempfile.TemporaryDirectory(prefix="mmgpt-shard-upload-") as staging:
        yield Path(staging), upload
