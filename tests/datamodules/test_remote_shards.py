"""Shards in object storage: a real S3-compatible server (moto) and Python's http.server on the loopback interface,
with a proxy in front that counts bytes and injects faults. Streaming from them must deal samples exactly as local
shards do, survive resets and 503s without losing or repeating a sample, and name bad objects in one line."""

import json
import os
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from torch.utils.data import DataLoader

from mmgpt.datamodules.remote import RemoteError, ShardCache, is_url, parse_size
from mmgpt.datamodules.resumable import SeededCollate
from mmgpt.datamodules.shards import ShardDataModule, ShardError, StreamLoader, write_shards
from mmgpt.errors import UserError
from tests.helpers.folders import export_and_shard
from tests.helpers.object_store import S3_ENV, http_server, make_bucket, proxy, s3_server

pytest.importorskip("s3fs")
pytest.importorskip("moto")


@pytest.fixture(scope="module", autouse=True)
def s3_credentials():
    saved = {k: os.environ.get(k) for k in S3_ENV}
    os.environ.update(S3_ENV)
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def endpoint():
    with s3_server() as url:
        make_bucket(url, "data")
        yield url


@pytest.fixture(scope="module")
def local_shards(tmp_path_factory) -> Path:
    """50 samples in 9 shards (the last one of 2): two workers stream uneven parts."""
    return export_and_shard(tmp_path_factory.mktemp("remote"), num_train=50, samples_per_shard=6, seed=1)


@pytest.fixture(scope="module")
def bucket_set(local_shards, endpoint) -> str:
    """The same manifest folder written straight to the bucket by write_shards (uploaded as it writes)."""
    url = "s3://data/set"
    write_shards(local_shards.parent / "folder", url, samples_per_shard=6, storage_options={"endpoint_url": endpoint})
    return url


def _ids(dm: ShardDataModule, rank: int = 0, world_size: int = 1, epoch: int = 1, state=None) -> list[list[str]]:
    loader = StreamLoader(dm.dataset("train", rank=rank, world_size=world_size), batch_size=4,
                          num_workers=dm.num_workers, collate_fn=dm.collate)
    loader.load_state_dict(state or {"epoch": epoch, "batches": 0})
    return [batch.ids for batch in loader]


def _remote(root: str, endpoint: str, tmp_path: Path, **kw) -> ShardDataModule:
    kw.setdefault("num_workers", 2)
    return ShardDataModule(root, batch_size=4, shuffle=True, storage_options={"endpoint_url": endpoint},
                           cache_dir=str(tmp_path / "cache"), **kw)


def test_urls_and_sizes():
    assert is_url("s3://b/p") and is_url("https://h/p") and not is_url("/data/set") and not is_url("file:///x")
    assert parse_size("4GB") == 4 * 10**9 and parse_size("1.5KiB") == 1536 and parse_size(7) == 7
    with pytest.raises(ValueError, match="not a size"):
        parse_size("lots")
    with pytest.raises(UserError, match=r"'1\.2\.3GB': not a size"):  # was float()'s ValueError, a traceback
        parse_size("1.2.3GB")


def test_s3_streams_the_batches_local_shards_give_and_resumes_mid_epoch(local_shards, bucket_set, endpoint,
                                                                        tmp_path):
    local = ShardDataModule(str(local_shards), batch_size=4, num_workers=2, shuffle=True)
    remote = _remote(bucket_set, endpoint, tmp_path)
    assert remote.meta["splits"]["train"]["bytes"] == local.meta["splits"]["train"]["bytes"]
    full = _ids(local)
    assert _ids(remote) == full
    for consumed in (1, len(full) - 2):
        assert _ids(remote, state={"epoch": 1, "batches": consumed}) == full[consumed:]


def _seen_by_two_ranks(dm: ShardDataModule) -> Counter:
    seen: Counter = Counter()
    for rank in range(2):
        ds = dm.dataset("train", rank=rank, world_size=2)
        ds.set_epoch(0)
        for batch in DataLoader(ds, batch_size=4, num_workers=2, collate_fn=SeededCollate(dm.collate)):
            seen.update(batch.ids)
    return seen


def test_every_sample_once_across_two_ranks_and_two_workers_from_s3(local_shards, bucket_set, endpoint, tmp_path):
    seen = _seen_by_two_ranks(_remote(bucket_set, endpoint, tmp_path))
    assert len(seen) == 50
    # beyond each sample once, the shorter rank repeats the split's first samples to keep DDP in step (as
    # DistributedSampler pads): exactly as from local shards
    assert seen == _seen_by_two_ranks(ShardDataModule(str(local_shards), batch_size=4, num_workers=2))


def test_http_root_with_its_shards_json(local_shards, tmp_path):
    local = ShardDataModule(str(local_shards), batch_size=4, num_workers=0, shuffle=True)
    with http_server(local_shards.parent) as base:
        remote = ShardDataModule(f"{base}/shards", batch_size=4, num_workers=0, shuffle=True,
                                 cache_dir=str(tmp_path / "cache"))
        assert _ids(remote) == _ids(local)
        with pytest.raises(RemoteError, match=r"/nothing/shards.json: not found"):
            ShardDataModule(f"{base}/nothing", cache_dir=str(tmp_path / "cache"))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resets_and_503s_mid_shard_lose_and_repeat_no_sample(local_shards, bucket_set, endpoint, tmp_path,
                                                             num_workers):
    expected = _ids(ShardDataModule(str(local_shards), batch_size=4, num_workers=num_workers, shuffle=True))
    with proxy(endpoint, every=2) as (url, faults):
        dm = _remote(bucket_set, url, tmp_path, num_workers=num_workers)
        got = _ids(dm)
    assert faults.injected["503"] > 0 and faults.injected["reset"] > 0, faults.injected
    assert got == expected  # same batches, same order: nothing lost, nothing twice


def test_http_resets_are_resumed_with_ranges(local_shards, tmp_path):
    expected = _ids(ShardDataModule(str(local_shards), batch_size=4, num_workers=0, shuffle=True))
    with http_server(local_shards.parent) as base, proxy(base, every=2) as (url, faults):
        dm = ShardDataModule(f"{url}/shards", batch_size=4, num_workers=0, shuffle=True,
                             cache_dir=str(tmp_path / "cache"))
        assert _ids(dm) == expected
    assert faults.injected["reset"] > 0 and faults.injected["503"] > 0


def test_a_missing_or_truncated_shard_is_named_before_training(local_shards, endpoint, tmp_path):
    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=endpoint, skip_instance_cache=True)
    fs.put(str(local_shards), "data/broken", recursive=True)
    fs.rm("data/broken/train-000003.tar")
    with pytest.raises(RemoteError, match=r"^s3://data/broken/train-000003.tar: not found at endpoint http"):
        _remote("s3://data/broken", endpoint, tmp_path)
    fs.pipe("data/broken/train-000003.tar", (local_shards / "train-000003.tar").read_bytes()[:5000])
    with pytest.raises(RemoteError, match=r"^s3://data/broken/train-000003.tar: 5000 bytes on the store, \d+ written"):
        _remote("s3://data/broken", endpoint, tmp_path)


def test_a_truncated_shard_without_recorded_bytes_is_named_while_streaming(local_shards, endpoint, tmp_path):
    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=endpoint, skip_instance_cache=True)
    meta = json.loads((local_shards / "shards.json").read_text())
    for split in meta["splits"].values():
        del split["bytes"]  # as written before the sizes were recorded
    fs.put(str(local_shards), "data/old", recursive=True)
    fs.pipe("data/old/shards.json", json.dumps(meta).encode())
    shard = meta["splits"]["train"]["shards"][0]
    data = (local_shards / shard).read_bytes()
    fs.pipe(f"data/old/{shard}", data[: 512 * 60])  # cut at a header boundary: parses as a shorter tar
    dm = _remote("s3://data/old", endpoint, tmp_path, num_workers=0)
    with pytest.raises(ShardError, match=rf"^s3://data/old/{shard}: truncated"):
        _ids(dm)


def test_wrong_endpoint_and_missing_credentials_fail_in_one_line_before_training(bucket_set, endpoint, tmp_path,
                                                                                monkeypatch):
    closed = socket_port_closed()
    quick = {"config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 2}}
    with pytest.raises(RemoteError, match=rf"^s3://data/set/shards.json: cannot connect at endpoint "
                                          rf"http://127.0.0.1:{closed} .*check the endpoint"):
        ShardDataModule(bucket_set, storage_options={"endpoint_url": f"http://127.0.0.1:{closed}", **quick})
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(k)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    with pytest.raises(RemoteError, match=r"^s3://data/set/shards.json: access refused .*check the credentials"):
        ShardDataModule(bucket_set, storage_options={"endpoint_url": endpoint, **quick})


def socket_port_closed() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens there once the socket is closed


def test_the_cache_stays_under_its_size_and_refuses_a_size_too_small(bucket_set, endpoint, tmp_path):
    dm = _remote(bucket_set, endpoint, tmp_path, num_workers=0, read_ahead=1)
    largest = max(dm.meta["splits"]["train"]["bytes"])
    size = 2 * largest  # the shard being read and one ahead
    dm = _remote(bucket_set, endpoint, tmp_path, num_workers=0, read_ahead=1, cache_size=size)
    cache = ShardCache(tmp_path / "cache", size)
    peak, stop = [0], threading.Event()

    def watch():
        while not stop.is_set():
            peak[0] = max(peak[0], cache.disk_bytes())
            time.sleep(0.002)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        assert len(sum(_ids(dm), [])) == 50
    finally:
        stop.set()
        watcher.join()
    assert 0 < peak[0] <= size and cache.disk_bytes() <= size
    with pytest.raises(RemoteError, match=r"data.cache_size=\d+ bytes cannot hold the shards 2 readers keep"):
        _remote(bucket_set, endpoint, tmp_path, num_workers=2, read_ahead=1, cache_size=size)


def test_shard_and_check_commands_with_a_bucket(local_shards, endpoint, tmp_path, capsys):
    from mmgpt.cli.data import main as data_main

    options = json.dumps({"endpoint_url": endpoint})
    folder = str(local_shards.parent / "folder")
    assert data_main(["shard", folder, "s3://data/cli", "--samples-per-shard", "6", "--storage-options", options]) == 0
    assert data_main(["shard", folder, "s3://data/cli", "--storage-options", options]) == 1  # not empty
    assert "s3://data/cli is not empty" in capsys.readouterr().err
    check = ["check", "s3://data/cli", "--storage-options", options, "--cache-dir", str(tmp_path / "cache")]
    assert data_main(check) == 0
    assert "s3://data/cli: train 50 samples, val 12 samples, test 6 samples" in capsys.readouterr().out

    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=endpoint, skip_instance_cache=True)
    data = bytearray((local_shards / "train-000002.tar").read_bytes())
    data[0:8] = b"#" * 8  # same size, first header damaged
    fs.pipe("data/cli/train-000002.tar", bytes(data))
    assert data_main([*check[:-1], str(tmp_path / "cache2")]) == 1
    out = capsys.readouterr().out
    assert "s3://data/cli/train-000002.tar: not a tar file, or damaged" in out and "1 problems" in out
    fs.rm("data/cli/train-000004.tar")
    assert data_main([*check[:-1], str(tmp_path / "cache3")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: s3://data/cli/train-000004.tar: not found at endpoint {endpoint}"]


def test_a_remote_error_from_a_loader_worker_still_reads_as_one_line():
    raised_in_worker = RemoteError("Caught RemoteError in DataLoader worker process 1.\nOriginal Traceback (most "
                                   "recent call last):\n  File \"x.py\", line 3, in f\n    raise e\n"
                                   "mmgpt.datamodules.remote.RemoteError: s3://b/set/train-000001.tar: not found\n")
    assert str(raised_in_worker) == "s3://b/set/train-000001.tar: not found"
    assert str(RemoteError("s3://b/x: not found")) == "s3://b/x: not found"


@pytest.mark.parametrize(("change", "key"), [
    ({"shards": ["../other/train-000000.tar"]}, r"splits\.train\.shards\[0\]"),
    ({"bytes": [1, 2]}, r"splits\.train\.bytes"),
    ({"shards": "train-000000.tar"}, r"splits\.train\.shards"),
])
def test_a_remote_shards_json_is_checked_as_a_local_one(local_shards, tmp_path, change, key):
    """A URL's shards.json was read unchecked: a shard name with '..' or a folder part was fetched from outside the
    prefix, and a malformed entry ended in a KeyError or TypeError traceback instead of a line naming the key."""
    meta = json.loads((local_shards / "shards.json").read_text())
    meta["splits"]["train"].update(change)
    (tmp_path / "set").mkdir()
    (tmp_path / "set" / "shards.json").write_text(json.dumps(meta))
    with http_server(tmp_path) as base, pytest.raises(ShardError, match=rf"/set/shards\.json: {key}: .*refused"):
        ShardDataModule(f"{base}/set", cache_dir=str(tmp_path / "cache"))
