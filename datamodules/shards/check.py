"""``mmgpt-data check ROOT`` on a shard set (a folder or a URL with ``shards.json``): stream every shard of every
split, parse every sample and decode its media as training would, and report every shard that fails, by URL."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mmgpt.datamodules.problems import problem_lines
from mmgpt.datamodules.remote import RemoteError
from mmgpt.datamodules.shards.datamodule import ShardDataModule
from mmgpt.datamodules.shards.format import ShardError


@dataclass
class ShardReport:
    """Samples read per split, and one problem per shard that could not be read to its end."""

    root: str
    samples: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def format(self, limit: int | None = None) -> str:
        lines = [f"{self.root}: " + ", ".join(f"{s} {n} samples" for s, n in self.samples.items())]
        return "\n".join([*lines, *problem_lines(self.problems, limit)])


def check_shards(root: str, progress: Callable[[int, int], None] | None = None, **options: Any) -> ShardReport:
    """Stream and decode every sample of the shard set at ``root``; ``options`` are :class:`ShardDataModule`
    options (``storage_options``, ``cache_dir``, ``image_size``...).

    Raises:
        RemoteError: the store cannot be reached, or a shard is missing or of another size than written (found
            before anything is streamed).
    """
    dm = ShardDataModule(root, batch_size=1, num_workers=0, shuffle=False, **options)
    report = ShardReport(root=str(dm.root))
    splits = [s for s in ("train", "val", "test") if dm.has_split(s)]
    total, done = sum(int(dm.meta["splits"][s].get("samples") or 0) for s in splits), 0
    for split in splits:
        dataset = dm.make_dataset(split)
        report.samples[split] = 0
        for shard in dataset.shards:
            try:
                for raw in dataset._read_runs([(shard, dataset.sizes.get(shard))]):
                    dataset._decode(raw)
                    report.samples[split] += 1
                    done += 1
                    if progress is not None:
                        progress(done, total)
            except (ShardError, RemoteError) as e:
                report.problems.append(str(e))
    return report
