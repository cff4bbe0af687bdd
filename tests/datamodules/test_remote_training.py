"""Training on shards in a bucket: with mmgpt-train's config, credentials given in data.storage_options never reach
the run's files; on two DDP processes every sample is trained on exactly once; a run killed mid-epoch resumes
exactly; two "nodes" (2 x 2 processes) each download their own share of the set, not the set."""

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from mmgpt.datamodules.shards import write_shards
from tests.helpers.folders import export_and_shard
from tests.helpers.object_store import S3_ENV, make_bucket, proxy, s3_server

pytest.importorskip("s3fs")
pytest.importorskip("moto")

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A moto server with the synthetic set (96 training samples in 16 shards) written to s3://data/set."""
    saved = {k: os.environ.get(k) for k in S3_ENV}
    os.environ.update(S3_ENV)
    base = tmp_path_factory.mktemp("bucket")
    shards = export_and_shard(base, num_train=96, samples_per_shard=6, num_val=12, num_test=6)
    with s3_server() as endpoint:
        make_bucket(endpoint, "data")
        write_shards(base / "folder", "s3://data/set", samples_per_shard=6, storage_options={"endpoint_url": endpoint})
        yield endpoint, shards
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.mark.slow
def test_credentials_in_storage_options_stay_out_of_the_run_files(store, tmp_path, compose_cfg):
    from mmgpt.cli.train import train

    endpoint, _ = store
    secret = "SECRETVALUE-d41d8cd98f"
    cfg = compose_cfg(["experiment=smoke", "data=shards", "data.root=s3://data/set", "data.num_workers=0",
                       "data.batch_size=8", "logger=csv", "trainer.max_epochs=1", "test=false",
                       f"data.storage_options={{endpoint_url: '{endpoint}', key: testing, secret: '{secret}'}}",
                       f"data.cache_dir={tmp_path / 'cache'}"])
    results = train(cfg)
    assert results["global_step"] > 0
    run = Path(results["run_dir"])
    files = [p for p in run.rglob("*") if p.is_file()]
    assert any(p.suffix == ".ckpt" for p in files) and (run / "config.yaml").is_file()
    for p in files:
        assert secret.encode() not in p.read_bytes(), p
    saved = (run / "config.yaml").read_text()
    assert endpoint in saved and "key:" not in saved  # the endpoint is kept, the credentials are not
    ckpt = torch.load(next(p for p in files if p.suffix == ".ckpt"), map_location="cpu", weights_only=False)
    assert "storage_options" not in ckpt["datamodule_hyper_parameters"]


def _train_cmd(run_dir: Path, endpoint: str, cache: Path, *extra: str) -> list[str]:
    return [str(BIN / "mmgpt-train"), "experiment=smoke", "data=shards", "data.root=s3://data/set",
            "data.num_workers=2", "data.batch_size=8", "data.num_train=null", "logger=csv", "trainer.max_epochs=1",
            "test=false", f"data.storage_options={{endpoint_url: '{endpoint}'}}", f"data.cache_dir={cache}",
            "+callbacks.record_ids._target_=tests.helpers.object_store.RecordTrainIds",
            f"+callbacks.record_ids.folder={run_dir / 'ids'}", f"hydra.run.dir={run_dir}", *extra]


def _env(tmp_path: Path, **more: str) -> dict[str, str]:
    return {**os.environ, **S3_ENV, "MMGPT_LOG_DIR": str(tmp_path), "CI": "1", "WANDB_MODE": "offline",
            "PYTHONPATH": str(ROOT), **more}


def _trained_ids(folder: Path) -> Counter:
    seen: Counter = Counter()
    for f in folder.glob("rank*.jsonl"):
        for line in f.read_text().splitlines():
            seen.update(json.loads(line))
    return seen


@pytest.mark.slow
def test_two_ddp_processes_train_on_every_sample_of_the_bucket_once(store, tmp_path):
    endpoint, _ = store
    run = tmp_path / "run"
    subprocess.run(_train_cmd(run, endpoint, tmp_path / "cache", "trainer=ddp_sim"), env=_env(tmp_path),
                   check=True, capture_output=True, timeout=600, cwd=ROOT)
    seen = _trained_ids(run / "ids")
    assert len(seen) == 96 and set(seen.values()) == {1}  # 16 shards of 6 over 2 ranks x 2 workers: no padding


@pytest.mark.slow
def test_two_nodes_each_download_their_share(store, tmp_path):
    """2 nodes x 2 processes (NODE_RANK, WORLD_SIZE set as a launcher does), each node with its own cache and its
    own proxy to the store, which counts the bytes it serves: each node's downloads are half the training set."""
    endpoint, shards = store
    meta = json.loads((shards / "shards.json").read_text())
    train_bytes = sum(meta["splits"]["train"]["bytes"])
    val_bytes = sum(meta["splits"]["val"]["bytes"])
    port = 29500 + os.getpid() % 1000
    with proxy(endpoint) as (url0, node0), proxy(endpoint) as (url1, node1):
        procs = []
        for node, url in enumerate((url0, url1)):
            cmd = _train_cmd(tmp_path / f"node{node}", url, tmp_path / f"cache{node}", "trainer=ddp_sim",
                             "trainer.num_nodes=2")
            env = _env(tmp_path, NODE_RANK=str(node), WORLD_SIZE="4", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
            procs.append(subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
        outs = [p.communicate(timeout=600)[0].decode() for p in procs]
        for p, out in zip(procs, outs):
            assert p.returncode == 0, out[-3000:]
    seen = _trained_ids(tmp_path / "node0" / "ids") + _trained_ids(tmp_path / "node1" / "ids")
    assert len(seen) == 96 and set(seen.values()) == {1}  # 16 shards over 4 ranks x 2 workers
    for served in (node0.served_bytes, node1.served_bytes):
        # its half of the training shards, its share of the validation shards, shards.json: never the whole set
        assert train_bytes / 2 <= served <= train_bytes / 2 + val_bytes + 20_000, (served, train_bytes)


def test_mmgpt_train_with_a_wrong_endpoint_fails_in_one_line_before_training(tmp_path):
    closed = 9  # the discard port: nothing listens on loopback
    out = subprocess.run([str(BIN / "mmgpt-train"), "experiment=smoke", "data=shards", "data.root=s3://data/set",
                          "data.storage_options={endpoint_url: 'http://127.0.0.1:9', "
                          "config_kwargs: {retries: {max_attempts: 1}}}", f"hydra.run.dir={tmp_path / 'run'}"],
                         env=_env(tmp_path), capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1].startswith(
        f"error: s3://data/set/shards.json: cannot connect at endpoint http://127.0.0.1:{closed} ")
    assert "Traceback" not in out.stderr and not (tmp_path / "run" / "checkpoints").exists()
