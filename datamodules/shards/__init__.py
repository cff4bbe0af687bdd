"""Streaming data: WebDataset tar shards written from a manifest folder, and a datamodule that streams them.

``mmgpt-data shard DIR OUT`` writes ``OUT/<split>-000000.tar, ...`` (:mod:`.format` describes the layout) and
``data=shards data.root=OUT`` trains on them without ever holding the set in memory or on one disk: shards can
live anywhere a path reaches. The package is split by job: :mod:`.writing` (the shard command), :mod:`.partition`
(which worker reads which shards), :mod:`.dataset` (streaming and decoding), :mod:`.datamodule`.

Splitting is explicit and exact: shard ``i`` of a split goes to the data-loading worker ``i mod (ranks x
workers)``, so every sample is read exactly once per epoch across all DDP ranks and their workers (the tests
check it). Shard order is shuffled per epoch with a seed shared by all ranks. The resumable streaming loader
sits beside the map-style one in :mod:`mmgpt.datamodules.resumable`.
"""

from mmgpt.datamodules.resumable import StreamLoader, delivered_before
from mmgpt.datamodules.shards.datamodule import ShardDataModule
from mmgpt.datamodules.shards.dataset import ShardDataset, read_tar
from mmgpt.datamodules.shards.format import ShardError, read_meta, sample_key
from mmgpt.datamodules.shards.partition import first_samples, worker_shards
from mmgpt.datamodules.shards.writing import write_shards

__all__ = [
    "ShardDataModule",
    "ShardDataset",
    "ShardError",
    "StreamLoader",
    "delivered_before",
    "first_samples",
    "read_meta",
    "read_tar",
    "sample_key",
    "worker_shards",
    "write_shards",
]
