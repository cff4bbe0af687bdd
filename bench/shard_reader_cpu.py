"""CPU time per sample of one pass over local shards: this checkout's ShardDataset vs another revision's.

    git show main:datamodules/shards/dataset.py > /tmp/old_dataset.py
    python -m bench.shard_reader_cpu /tmp/old_dataset.py [--num-train 1000] [--repeats 5]

Both read the same local shards in the training process (no workers), decoding every sample, passes interleaved;
process CPU time, not wall time, so that other load on the machine weighs less. It checks that the local path
did not slow down when remote shards were added beside it.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import tempfile
import time
from pathlib import Path

from mmgpt.datamodules.shards import ShardDataModule, write_shards
from mmgpt.datamodules.synthetic.export import export_synthetic


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("old", help="a dataset.py of another revision (datamodules/shards/dataset.py)")
    p.add_argument("--num-train", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    spec = importlib.util.spec_from_file_location("old_dataset", args.old)
    old = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(old)
    work = Path(tempfile.mkdtemp(prefix="mmgpt-bench-cpu-"))
    export_synthetic(work / "folder", num_train=args.num_train, num_val=10, num_test=10)
    write_shards(work / "folder", work / "shards", samples_per_shard=100)
    dm = ShardDataModule(str(work / "shards"), batch_size=64, num_workers=0, shuffle=True)
    new = dm.make_dataset("train")
    before = old.ShardDataset(new.shards, dm.class_names, dm.processors, train=True, shuffle=True, batch_size=64,
                              sizes=new.sizes)
    micros: dict[str, list[float]] = {"old": [], "this": []}
    for _ in range(args.repeats):
        for name, ds in (("old", before), ("this", new)):
            t0 = time.process_time()
            n = sum(1 for _ in ds)
            micros[name].append((time.process_time() - t0) / n * 1e6)
    for name, values in micros.items():
        print(f"{name}: median {statistics.median(values):.0f} us/sample CPU ({', '.join(f'{v:.0f}' for v in values)})")


if __name__ == "__main__":
    main()
