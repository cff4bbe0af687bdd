"""The memory-mapped media store: entries by source identity and fingerprint, concurrent writers, damage repair."""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
from pathlib import Path

import numpy as np
import pytest

from mmgpt.datamodules.disk_store import DiskStore, SourceId


def sources(tmp_path: Path, n: int) -> list[SourceId]:
    out = []
    for i in range(n):
        p = tmp_path / "src" / f"{i}.bin"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(bytes([i % 256]) * (i + 1))
        src = SourceId.of(p)
        assert src is not None
        out.append(src)
    return out


def value(i: int) -> np.ndarray:
    return (np.arange(3 * 5 * (i % 7 + 1), dtype=np.float32) + i).reshape(3, 5, -1)


def fill(root: str, srcs: list[SourceId], order: list[int]) -> None:
    store = DiskStore(root, segment_bytes=4096)  # tiny segments: many commits while the other process writes
    for i in order:
        store.put("media", "fp", srcs[i], value(i) if i % 5 else f"error {i}")
    store.flush()


def test_put_flush_and_read_back_in_another_store_object(tmp_path: Path) -> None:
    srcs = sources(tmp_path, 20)
    fill(str(tmp_path / "s"), srcs, list(range(20)))
    store = DiskStore(tmp_path / "s")
    assert len(store) == 20
    for i, src in enumerate(srcs):
        hit = store.lookup("media", "fp", src)
        assert hit is not None
        if i % 5:
            got = store.read(hit)
            assert got.dtype == np.float32 and np.array_equal(got, value(i))
        else:
            assert hit.error == f"error {i}"
    assert store.lookup("media", "other-fp", srcs[1]) is None  # another preprocessing: another key
    assert store.lookup("features", "fp", srcs[1]) is None


def test_uncommitted_entries_are_visible_to_their_own_process_only(tmp_path: Path) -> None:
    srcs = sources(tmp_path, 2)
    writer = DiskStore(tmp_path / "s")
    writer.put("media", "fp", srcs[0], value(0))
    hit = writer.lookup("media", "fp", srcs[0])
    assert hit is not None and np.array_equal(writer.read(hit), value(0))
    assert DiskStore(tmp_path / "s").lookup("media", "fp", srcs[0]) is None
    writer.flush()
    assert DiskStore(tmp_path / "s").lookup("media", "fp", srcs[0]) is not None


def test_two_processes_filling_one_store_at_once_leave_a_valid_store(tmp_path: Path) -> None:
    srcs = sources(tmp_path, 300)
    ctx = mp.get_context("fork")
    # Both write every key (in opposite orders), as two DDP ranks checking the same folder do.
    procs = [ctx.Process(target=fill, args=(str(tmp_path / "s"), srcs, order))
             for order in (list(range(300)), list(range(299, -1, -1)))]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    store = DiskStore(tmp_path / "s")
    assert len(store) == 300
    assert not list((tmp_path / "s").glob("tmp-*"))  # every writer committed
    assert len(list((tmp_path / "s").glob("seg-*.bin"))) > 2  # several segments from each writer
    for i, src in enumerate(srcs):
        hit = store.lookup("media", "fp", src)
        assert hit is not None
        if i % 5:
            assert np.array_equal(store.read(hit), value(i))
        else:
            assert hit.error == f"error {i}"


def test_a_changed_source_file_misses_and_its_new_entry_wins(tmp_path: Path) -> None:
    srcs = sources(tmp_path, 1)
    store = DiskStore(tmp_path / "s")
    store.put("media", "fp", srcs[0], value(1))
    store.flush()
    path = Path(srcs[0].path)
    path.write_bytes(b"changed")
    os.utime(path, ns=(1, 1))
    changed = SourceId.of(path)
    assert changed is not None and store.lookup("media", "fp", changed) is None  # stale: decode again
    store.put("media", "fp", changed, value(2))
    store.flush()
    fresh = DiskStore(tmp_path / "s")
    hit = fresh.lookup("media", "fp", changed)
    assert hit is not None and np.array_equal(fresh.read(hit), value(2)) and len(fresh) == 1
    assert fresh.lookup("media", "fp", srcs[0]) is None


@pytest.mark.parametrize("damage", ["truncated shard", "truncated index", "missing shard"])
def test_a_damaged_segment_is_detected_dropped_and_rebuilt_with_a_warning(tmp_path: Path, damage: str,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    srcs = sources(tmp_path, 10)
    fill(str(tmp_path / "s"), srcs[:5], list(range(5)))
    fill(str(tmp_path / "s"), srcs, list(range(5, 10)))  # a second segment, left intact
    first = min((tmp_path / "s").glob("seg-*.bin"))
    index = first.with_name(first.name[: -len(".bin")] + ".idx.npz")
    if damage == "truncated shard":
        first.write_bytes(first.read_bytes()[:100])
    elif damage == "truncated index":
        index.write_bytes(index.read_bytes()[:50])
    else:
        first.unlink()
    with caplog.at_level(logging.WARNING):
        store = DiskStore(tmp_path / "s")
    assert "is damaged" in caplog.text and first.stem in caplog.text
    assert not first.exists() and not index.exists()  # dropped, so a later pass rebuilds it
    assert [store.lookup("media", "fp", s) is not None for s in srcs] == [False] * 5 + [True] * 5
    fill(str(tmp_path / "s"), srcs, list(range(5)))  # what a check pass does with the misses
    store = DiskStore(tmp_path / "s")
    for i in range(1, 5):
        hit = store.lookup("media", "fp", srcs[i])
        assert hit is not None and np.array_equal(store.read(hit), value(i))


def test_the_index_loads_without_pickle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    srcs = sources(tmp_path, 3)
    fill(str(tmp_path / "s"), srcs, [1, 2])
    loads = []
    real = np.load

    def spy(*args, **kwargs):
        loads.append(kwargs.get("allow_pickle"))
        return real(*args, **kwargs)

    monkeypatch.setattr(np, "load", spy)
    assert len(DiskStore(tmp_path / "s")) == 2
    assert loads == [False]


@pytest.mark.parametrize("mmap", [False, True])
def test_reads_and_memory_lru_stay_within_its_budget(tmp_path: Path, mmap: bool) -> None:
    srcs = sources(tmp_path, 40)
    store = DiskStore(tmp_path / "s", memory_cache_mb=0.002, mmap=mmap)  # about 2 KB: a few arrays
    for i, src in enumerate(srcs):
        store.put("media", "fp", src, value(i + 1))
    store.flush()
    for _ in range(2):
        for i, src in enumerate(srcs):
            hit = store.lookup("media", "fp", src)
            assert hit is not None and np.array_equal(store.read(hit), value(i + 1))
            assert store._lru_bytes <= store.lru_budget
    assert 0 < len(store._lru) < 40


def test_a_forked_child_writes_its_own_segment(tmp_path: Path) -> None:
    srcs = sources(tmp_path, 2)
    store = DiskStore(tmp_path / "s")
    store.put("media", "fp", srcs[0], value(3))  # open segment in the parent

    def child() -> None:
        store.put("media", "fp", srcs[1], value(4))
        store.flush()

    p = mp.get_context("fork").Process(target=child)
    p.start()
    p.join(60)
    assert p.exitcode == 0
    store.flush()
    fresh = DiskStore(tmp_path / "s")
    for i, src in enumerate(srcs):
        hit = fresh.lookup("media", "fp", src)
        assert hit is not None and np.array_equal(fresh.read(hit), value(3 + i))


def test_entries_by_source_and_fingerprint_round_trip(tmp_path: Path) -> None:
    """An array and a decode error stored under a source and a fingerprint read back from a fresh store; the same
    path with another (size, mtime) is stale."""
    (src,) = sources(tmp_path, 1)
    store = DiskStore(tmp_path / "s")
    assert store.lookup("media", "fp", src) is None
    store.put("media", "fp", src, np.arange(6, dtype=np.uint8).reshape(2, 3))
    store.put("media", "fp2", src, "broken")
    store.flush()
    again = DiskStore(tmp_path / "s")
    hit = again.lookup("media", "fp", src)
    assert hit is not None and np.array_equal(again.read(hit), np.arange(6, dtype=np.uint8).reshape(2, 3))
    assert again.lookup("media", "fp2", src).error == "broken"
    assert again.lookup("media", "fp", SourceId(src.path, 1, 2)) is None  # another stat: stale


# -- a store written by another machine is read as data (issue 21, item 5) ----------------------------------------
class _Marker:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def _rewrite_index(index: Path, **columns) -> None:
    """The segment index with some columns replaced (the rest as written)."""
    with np.load(index, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays.update(columns)
    with open(index, "wb") as f:
        np.savez(f, **arrays)


def _header(index: Path, **changes) -> np.ndarray:
    import json

    with np.load(index, allow_pickle=False) as z:
        header = json.loads(z["header"].tobytes().decode())
    header.update(changes)
    return np.frombuffer(json.dumps(header).encode(), np.uint8)


def _crafted(index: Path, case: str, tmp_path: Path) -> dict:
    with np.load(index, allow_pickle=False) as z:
        offset, nbytes, dtype, shape = z["offset"], z["nbytes"], z["dtype"], z["shape"]
    first = int(np.flatnonzero(nbytes >= 0)[0])  # an entry holding an array

    def at(column: np.ndarray, value) -> np.ndarray:
        column = column.copy()
        column[first] = value
        return column

    return {
        "object dtype": {"offset": np.array([_Marker(tmp_path / "ran")] * len(offset), dtype=object)},
        "float offsets": {"offset": offset.astype(np.float64)},
        "negative offset": {"offset": at(offset, -64)},
        "offset past the end": {"offset": at(offset, 1 << 40)},
        "offset that wraps around": {"offset": at(offset, (1 << 63) - 8)},
        "unknown dtype code": {"dtype": at(dtype, 99)},
        "shape of another size": {"shape": at(shape, [1 << 20, 1 << 20, 1 << 20, 1 << 20])},
        "shape with a hole": {"shape": at(shape, [3, -1, 5, -1])},
        "header not an object": {"header": np.frombuffer(b"[1, 2]", np.uint8)},
        "error of no entry": {"header": _header(index, errors={"999": "x"})},
        "header without bin_bytes": {"header": _header(index, bin_bytes="all")},
    }[case]


@pytest.mark.parametrize("case", ["object dtype", "float offsets", "negative offset", "offset past the end",
                                  "offset that wraps around", "unknown dtype code", "shape of another size",
                                  "shape with a hole", "header not an object", "error of no entry",
                                  "header without bin_bytes"])
def test_a_crafted_index_is_dropped_with_one_warning_and_never_read(tmp_path: Path, case: str,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    srcs = sources(tmp_path, 10)
    fill(str(tmp_path / "s"), srcs[:5], list(range(5)))
    fill(str(tmp_path / "s"), srcs, list(range(5, 10)))  # a second segment, left intact
    first = min((tmp_path / "s").glob("seg-*.idx.npz"))
    _rewrite_index(first, **_crafted(first, case, tmp_path))  # np.savez pickles an object column
    with caplog.at_level(logging.WARNING):
        store = DiskStore(tmp_path / "s")
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "is damaged" in warnings[0].getMessage() and "\n" not in warnings[0].getMessage()
    assert not first.exists() and not (tmp_path / "ran").exists()
    assert [store.lookup("media", "fp", s) is not None for s in srcs] == [False] * 5 + [True] * 5
    for i in range(6, 10):
        assert np.array_equal(store.read(store.lookup("media", "fp", srcs[i])), value(i))


@pytest.mark.parametrize("which", [".bin", ".idx.npz"])
def test_a_segment_linked_to_a_file_outside_the_store_is_never_read(tmp_path: Path, which: str,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    srcs = sources(tmp_path, 4)
    fill(str(tmp_path / "s"), srcs, [1, 2, 3])
    segment = min((tmp_path / "s").glob("seg-*.bin")).name[: -len(".bin")]
    inside = tmp_path / "s" / f"{segment}{which}"
    outside = tmp_path / f"outside{which}"
    outside.write_bytes(inside.read_bytes())
    inside.unlink()
    inside.symlink_to(outside)
    with caplog.at_level(logging.WARNING):
        store = DiskStore(tmp_path / "s")
    assert "a link to a file outside the store" in caplog.text and len(store) == 0
    assert outside.read_bytes() and not inside.is_symlink()  # the link is dropped, what it pointed at is left alone
