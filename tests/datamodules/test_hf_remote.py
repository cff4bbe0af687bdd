"""data=hf at a URL: a save_to_disk folder and a Parquet folder in a moto S3 bucket and behind Python's http.server
give the rows, batches and streamed order the same data gives from local disk."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mmgpt.datamodules.hf import HFDataError, HFDataModule
from mmgpt.datamodules.remote import RemoteError
from mmgpt.datamodules.resumable import StreamLoader
from tests.helpers.hf import parquet_folder, save_to_disk_folder
from tests.helpers.object_store import S3_ENV, http_server, make_bucket, s3_server

pytest.importorskip("s3fs")
pytest.importorskip("moto")
pytest.importorskip("datasets")

COLUMNS = {"text": "question", "image": "img", "audio": "sound", "label": "answer", "id": "uid"}


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("hf_remote")
    save_to_disk_folder(base / "disk")
    parquet_folder(base / "pq", sizes={"train": 22, "validation": 4})
    return base


@pytest.fixture(scope="module")
def bucket(folders):
    """``s3://hfdata/disk`` and ``s3://hfdata/pq``: the two folders uploaded; yields the endpoint."""
    import s3fs

    saved = {k: os.environ.get(k) for k in S3_ENV}
    os.environ.update(S3_ENV)
    with s3_server() as endpoint:
        make_bucket(endpoint, "hfdata")
        fs = s3fs.S3FileSystem(endpoint_url=endpoint, skip_instance_cache=True)
        for name in ("disk", "pq"):
            fs.put(str(folders / name), f"hfdata/{name}", recursive=True)
        yield endpoint
    for k, v in saved.items():
        os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def _dm(path: str, **kw) -> HFDataModule:
    options = {"columns": COLUMNS, "batch_size": 4, "num_workers": 0, "image_size": 16, "shuffle": True}
    return HFDataModule(path=path, **{**options, **kw})


def _streamed(dm: HFDataModule) -> list[list[str]]:
    loader = StreamLoader(dm.make_dataset("train"), batch_size=4, num_workers=dm.num_workers, collate_fn=dm.collate)
    loader.load_state_dict({"epoch": 1, "batches": 0})
    return [b.ids for b in loader]


@pytest.mark.parametrize("name", ["disk", "pq"])
def test_s3_save_to_disk_and_parquet_read_like_local(folders, bucket, name):
    local, remote = _dm(str(folders / name)), _dm(f"s3://hfdata/{name}", storage_options={"endpoint_url": bucket})
    assert remote.class_names == local.class_names and set(remote.split_names) == set(local.split_names)
    for split in remote.split_names:
        assert remote.split_files(split).num_rows == local.split_files(split).num_rows
    val = [(b.ids, b.labels.tolist(), b.inputs["image"].sum().item()) for b in remote.val_dataloader()]
    assert val == [(b.ids, b.labels.tolist(), b.inputs["image"].sum().item()) for b in local.val_dataloader()]
    streamed = {k: v for k, v in (("streaming", True), ("num_workers", 2))}
    assert _streamed(_dm(f"s3://hfdata/{name}", storage_options={"endpoint_url": bucket}, **streamed)) == \
        _streamed(_dm(str(folders / name), **streamed))


def test_http_save_to_disk_folder_and_one_parquet_file(folders):
    local = _dm(str(folders / "disk"), streaming=True)
    with http_server(folders) as base:
        assert _streamed(_dm(f"{base}/disk", streaming=True)) == _streamed(local)
        one = _dm(f"{base}/pq/data/train-00000-of-00002.parquet", splits={"train": "train"})
        assert one.split_files("train").num_rows == 11
        # a folder over HTTP: fsspec reads the links of an index page such as http.server's
        listed = _dm(f"{base}/pq")
        assert listed.split_files("train").files == [f"{base}/pq/data/train-0000{k}-of-00002.parquet" for k in (0, 1)]
        assert _streamed(_dm(f"{base}/pq", streaming=True)) == _streamed(_dm(str(folders / "pq"), streaming=True))


def test_a_missing_remote_path_is_one_line(bucket):
    with pytest.raises(RemoteError, match=r"^s3://hfdata/disk/dataset_dict.json: cannot connect"):
        _dm("s3://hfdata/disk", storage_options={"endpoint_url": "http://127.0.0.1:9",
                                                "config_kwargs": {"retries": {"max_attempts": 1}}})
    with pytest.raises(HFDataError, match=r"s3://hfdata/nothing: no .parquet or .arrow files"):
        _dm("s3://hfdata/nothing", storage_options={"endpoint_url": bucket})
