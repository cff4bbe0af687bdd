"""Shards streamed from an S3-compatible store vs the same shards on local disk: loader samples/s, 1 and 2 workers.

    python -m bench.remote_loader [--num-train 2000] [--samples-per-shard 250] [--passes 3]

The synthetic set (32 px images, 1 s audio) is written as tar shards to a local folder and, with ``mmgpt-data
shard``'s writer, to a bucket of moto's S3 server, run in its own process on the loopback interface (the real
S3 wire protocol through s3fs/botocore). For each worker count the local and the remote loader make their passes
over the training split in turn (a warm-up pass each, then ``--passes`` timed ones, alternated); a rate is the
median of its timed passes. The remote loader's cache is emptied before each pass, so every pass downloads every
shard: these are streaming rates, not cached ones. The cache is smaller than the set (``--cache-fraction``, or what
the readers hold at once if that is more), so least-recently-used eviction runs during each pass; a thread samples
the cache folder's size all along, and its peak is reported against the configured size. The
model rate is training steps (forward, backward, AdamW) over batches in memory, as in ``bench.dataloader``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from bench.common import build_classifier, save
from bench.lightning_overhead import plain_loop
from mmgpt.datamodules.remote import ShardCache
from mmgpt.datamodules.shards import ShardDataModule, write_shards
from mmgpt.datamodules.synthetic.export import export_synthetic

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}


def start_store() -> tuple[subprocess.Popen, str]:
    """moto's S3 server in its own process (not a thread of this one: it would compete for the GIL)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("moto server did not start")


def one_pass(dm: ShardDataModule) -> tuple[float, int]:
    t0 = time.perf_counter()
    n = sum(batch.batch_size for batch in dm.train_dataloader())
    return n / (time.perf_counter() - t0), n


class DiskWatch:
    """The peak size of a cache folder, sampled every few milliseconds on a thread."""

    def __init__(self, folder: Path) -> None:
        self.cache, self.peak = ShardCache(folder, 0), 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.cache.disk_bytes())
            time.sleep(0.005)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--num-train", type=int, default=2000)
    p.add_argument("--samples-per-shard", type=int, default=250)
    p.add_argument("--passes", type=int, default=3, help="timed passes per loader and worker count")
    p.add_argument("--cache-fraction", type=float, default=0.5, help="cache size as a fraction of the set's bytes")
    p.add_argument("--read-ahead", type=int, default=1)
    p.add_argument("--steps", type=int, default=12, help="training steps timed for the model rate")
    args = p.parse_args()
    os.environ.update(CREDENTIALS)

    work = Path(tempfile.mkdtemp(prefix="mmgpt-bench-remote-"))
    store, endpoint = start_store()
    try:
        import s3fs

        s3fs.S3FileSystem(endpoint_url=endpoint, skip_instance_cache=True).mkdir("bench")
        folder, local = work / "folder", work / "shards"
        export_synthetic(folder, num_train=args.num_train, num_val=64, num_test=64)
        options = {"endpoint_url": endpoint}
        write_shards(folder, local, samples_per_shard=args.samples_per_shard)
        t0 = time.perf_counter()
        write_shards(folder, "s3://bench/set", samples_per_shard=args.samples_per_shard, storage_options=options)
        upload_s = time.perf_counter() - t0
        meta = json.loads((local / "shards.json").read_text())
        train_bytes = sum(meta["splits"]["train"]["bytes"])
        largest = max(meta["splits"]["train"]["bytes"])
        common = {"batch_size": 64, "image_size": 32, "shuffle": True}
        rows = []
        for workers in (1, 2):
            cache = work / f"cache{workers}"
            cache_size = max(int(train_bytes * args.cache_fraction), workers * (args.read_ahead + 1) * largest)
            local_dm = ShardDataModule(str(local), num_workers=workers, **common)
            remote_dm = ShardDataModule("s3://bench/set", num_workers=workers, storage_options=options,
                                        cache_dir=str(cache), cache_size=cache_size, read_ahead=args.read_ahead,
                                        **common)
            watch = DiskWatch(cache)
            one_pass(local_dm), one_pass(remote_dm)  # warm-up: worker start-up, imports, page cache
            rates: dict[str, list[float]] = {"local": [], "remote": []}
            for _ in range(args.passes):  # alternated, so both see the same machine load
                rates["local"].append(one_pass(local_dm)[0])
                for shard in cache.glob("*.tar"):  # a cold cache: every shard downloaded in this pass
                    shard.unlink()
                rates["remote"].append(one_pass(remote_dm)[0])
            peak = watch.stop()
            local_rate, remote_rate = statistics.median(rates["local"]), statistics.median(rates["remote"])
            row = {"workers": workers, "local_samples_per_s": local_rate, "remote_samples_per_s": remote_rate,
                   "ratio": remote_rate / local_rate, "passes": rates, "cache_size": cache_size,
                   "peak_disk_bytes": peak, "train_bytes": train_bytes}
            rows.append(row)
            print(f"{workers} workers: local {local_rate:,.0f}/s, remote {remote_rate:,.0f}/s "
                  f"({row['ratio']:.2f}x), cache peak {peak:,} of {cache_size:,} bytes", flush=True)
            shutil.rmtree(cache, ignore_errors=True)

        torch.manual_seed(0)
        module, dm, cfg = build_classifier(["data=shards", f"data.root={local}", "data.num_workers=0"])
        it = iter(dm.train_dataloader())
        batches = [next(it) for _ in range(args.steps)]
        plain_loop(copy.deepcopy(module), batches[:2])  # warm-up
        model_rate = batches[0].batch_size / plain_loop(module, batches)
    finally:
        store.terminate()
        store.wait()
        shutil.rmtree(work, ignore_errors=True)

    lines = [
        "## Remote shards (S3-compatible store) vs local shards",
        "",
        f"{args.num_train} synthetic training samples (32 px, 1 s audio) in shards of {args.samples_per_shard} "
        f"({train_bytes / 1e6:.1f} MB), batch 64. Remote: moto's S3 server in its own process on the loopback "
        "interface, read through s3fs; the shard cache emptied before each pass (every shard downloaded in every "
        f"pass) and smaller than the set (eviction at work), read-ahead {args.read_ahead}. Median of {args.passes} "
        "passes each after a warm-up, local and remote passes alternated. Model: "
        f"{args.steps} training steps over batches in memory (default model, early fusion). Upload while writing: "
        f"{upload_s:.1f} s. Command: `python -m bench.remote_loader --num-train {args.num_train} "
        f"--samples-per-shard {args.samples_per_shard}`.",
        "",
        "| workers | local samples/s | remote samples/s | **remote / local** | remote / model | cache peak / size |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [f"| {r['workers']} | {r['local_samples_per_s']:,.0f} | {r['remote_samples_per_s']:,.0f} | "
              f"**{r['ratio']:.2f}x** | {r['remote_samples_per_s'] / model_rate:.1f}x | "
              f"{r['peak_disk_bytes'] / 1e6:.1f} / {r['cache_size'] / 1e6:.1f} MB |" for r in rows]
    lines += ["", f"Model: {model_rate:,.0f} samples/s."]
    save("remote_loader", {"args": vars(args), "rows": rows, "model_samples_per_s": model_rate,
                           "upload_s": upload_s}, "\n".join(lines))


if __name__ == "__main__":
    main()
