"""Peak anonymous memory of the manifest data path (check, one loader pass, DDP ranks x workers) vs folder size.

    python bench/memory.py build DIR --num-train 6000 [--chunk 3000]      # an exported synthetic folder, in chunks
    python bench/memory.py link DIR60K --from DIR --copies 10              # 10 x DIR's training rows, hard links
    python bench/memory.py watch -- CMD ...                                # peak RssAnon / USS of CMD and children
    python bench/memory.py loader ROOT CACHE [--workers 1] [--ddp 2]       # one pass over the training loader

Memory is what a process owns: ``RssAnon`` from ``/proc/<pid>/status`` (anonymous resident pages, not the
file-backed pages of the store, which the OS page cache holds once for every process) and USS
(``Private_Clean + Private_Dirty`` from ``/proc/<pid>/smaps_rollup``), summed over the process and all its
descendants, sampled every 50 ms (USS every 0.5 s) while the command runs. This file is run by path (not ``-m``) so
that the same scenario runs against another checkout's code (``PYTHONPATH=/work/main``: the in-memory cache).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def children(pid: int) -> list[int]:
    """``pid`` and all its descendants that still exist."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                todo += [int(c) for c in Path(f"/proc/{p}/task/{task}/children").read_text().split()]
        except OSError:
            pass
    return out


def _status_kb(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def rollup_kb(pid: int) -> dict[str, int]:
    """USS (Private_Clean + Private_Dirty), its dirty part, and Pss_Anon + Pss_Shmem of ``pid``, in KiB.

    Private_Clean holds file pages no other process maps at the moment (shared libraries included), so USS
    moves with whatever else runs on the machine; the dirty part and proportional anonymous memory do not."""
    try:
        fields = {line.split(":")[0]: int(line.split()[1]) for line in Path(f"/proc/{pid}/smaps_rollup").read_text()
                  .splitlines()[1:] if line.split()[-1] == "kB"}
    except (OSError, ValueError, IndexError):
        return {"uss": 0, "uss_dirty": 0, "pss_anon": 0}
    return {"uss": fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0),
            "uss_dirty": fields.get("Private_Dirty", 0),
            "pss_anon": fields.get("Pss_Anon", 0) + fields.get("Pss_Shmem", 0)}


def watch(cmd: list[str], env: dict[str, str] | None = None, interval: float = 0.05, uss_every: float = 0.5) -> dict:
    """Run ``cmd``; peak summed RssAnon and USS (MiB) of its process tree, its largest process, and wall time."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env)
    peak_anon = peak_one = 0
    peak = {"uss": 0, "uss_dirty": 0, "pss_anon": 0}
    last_uss = 0.0
    procs_seen = 1
    while proc.poll() is None:
        pids = children(proc.pid)
        procs_seen = max(procs_seen, len(pids))
        anon = [_status_kb(p, "RssAnon") for p in pids]
        peak_anon, peak_one = max(peak_anon, sum(anon)), max(peak_one, max(anon, default=0))
        if time.perf_counter() - last_uss >= uss_every:
            rollups = [rollup_kb(p) for p in pids]
            peak = {k: max(v, sum(r[k] for r in rollups)) for k, v in peak.items()}
            last_uss = time.perf_counter()
        time.sleep(interval)
    return {"cmd": " ".join(cmd), "rc": proc.returncode, "wall_s": round(time.perf_counter() - t0, 1),
            "peak_rss_anon_mb": round(peak_anon / 1024, 1), "peak_rss_anon_one_process_mb": round(peak_one / 1024, 1),
            **{f"peak_{k}_mb": round(v / 1024, 1) for k, v in peak.items()}, "processes": procs_seen}


def build(out: Path, num_train: int, chunk: int, image_size: int, sample_rate: int) -> None:
    """An exported synthetic folder of ``num_train`` training samples, written ``chunk`` samples at a time.

    The exporter holds all its samples in memory, so a large folder is ``num_train / chunk`` exports (seeds
    0, 1, ...; part ``k`` in ``part<k>/``) whose rows are concatenated with ids prefixed by ``p<k>-``; val and
    test (500 each) come from part 0.
    """
    from mmgpt.datamodules.synthetic.export import export_synthetic

    out.mkdir(parents=True, exist_ok=True)
    rows: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for k in range((num_train + chunk - 1) // chunk):
        n = min(chunk, num_train - k * chunk)
        part = out / f"part{k}"
        if not (part / "train.jsonl").exists():
            t0 = time.perf_counter()
            export_synthetic(part, num_train=n, num_val=500 if k == 0 else 1, num_test=500 if k == 0 else 1,
                             seed=1000 * k, image_size=image_size, sample_rate=sample_rate)
            print(f"part {k}: {n} samples in {time.perf_counter() - t0:.0f}s", flush=True)
        for split in rows if k == 0 else ["train"]:
            for line in (part / f"{split}.jsonl").read_text().splitlines():
                r = json.loads(line)
                r.update(id=f"p{k}-{r['id']}", image=f"part{k}/{r['image']}", audio=f"part{k}/{r['audio']}")
                rows[split].append(json.dumps(r))
    for split, lines in rows.items():
        (out / f"{split}.jsonl").write_text("".join(line + "\n" for line in lines))
    (out / "labels.txt").write_text((out / "part0" / "labels.txt").read_text())
    print(f"wrote {out}: { {k: len(v) for k, v in rows.items()} }")


def link(out: Path, source: Path, copies: int) -> None:
    """A folder of ``copies`` x ``source``'s training rows: ``source``'s files hard-linked under ``copy<k>/`` (distinct
    paths, so each is checked and stored separately, at no extra disk space or export time), ids prefixed by
    ``c<k>-``; val, test and labels.txt are ``source``'s."""
    out.mkdir(parents=True, exist_ok=True)
    train = (source / "train.jsonl").read_text().splitlines()
    with open(out / "train.jsonl", "w") as f:
        for k in range(copies):
            for line in train:
                r = json.loads(line)
                for key in ("image", "audio"):
                    if r.get(key) is None:
                        continue
                    dst = out / f"copy{k}" / r[key]
                    if not dst.exists():
                        dst.parent.mkdir(parents=True, exist_ok=True)
                        os.link(source / r[key], dst)
                    r[key] = f"copy{k}/{r[key]}"
                r["id"] = f"c{k}-{r['id']}"
                f.write(json.dumps(r) + "\n")
    for name in ("val.jsonl", "test.jsonl", "labels.txt"):
        if (source / name).exists():
            (out / name).write_text((source / name).read_text())
    for split in ("val", "test"):  # their media paths resolve inside out: link source's files under the same paths
        if not (source / f"{split}.jsonl").exists():
            continue
        for line in (source / f"{split}.jsonl").read_text().splitlines():
            r = json.loads(line)
            for key in ("image", "audio"):
                if r.get(key) is not None and not (out / r[key]).exists():
                    (out / r[key]).parent.mkdir(parents=True, exist_ok=True)
                    os.link(source / r[key], out / r[key])
    print(f"wrote {out}: {copies * len(train)} training rows ({copies} x {source})")


def loader(root: str, cache: str, workers: int, image_size: int, sample_rate: int, ddp: int, rank: int,
           batch_size: int = 64, max_seconds: float | None = None) -> None:
    """Set up the manifest datamodule (its validation pass) and make one pass over the training loader."""
    if ddp > 1 and rank < 0:  # the launcher: start the ranks and wait (kept light: it imports nothing big)
        port = str(20000 + os.getpid() % 20000)
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "WORLD_SIZE": str(ddp)}
        procs = [subprocess.Popen([sys.executable, __file__, "loader", root, cache, "--workers", str(workers),
                                   "--image-size", str(image_size), "--sample-rate", str(sample_rate),
                                   "--ddp", str(ddp), "--rank", str(r), "--batch-size", str(batch_size)],
                                  env={**env, "RANK": str(r)})
                 for r in range(ddp)]
        sys.exit(max(p.wait() for p in procs))
    import torch
    import torch.distributed as dist

    from mmgpt.datamodules.manifest import ManifestDataModule

    # One intra-op thread, as in a loader worker: on a shared machine OpenMP threads of the main process
    # spin against other jobs and make a 0-worker pass many times slower (memory is the same either way).
    torch.set_num_threads(1)
    if ddp > 1:
        dist.init_process_group("gloo", rank=rank, world_size=ddp)
    t0 = time.perf_counter()
    dm = ManifestDataModule(root, image_size=image_size, sample_rate=sample_rate, cache_dir=cache,
                            num_workers=workers, batch_size=batch_size, report_dir=None, pin_memory=False)
    if rank <= 0:  # as Lightning does: prepare_data on (local) rank 0, the others wait, then setup everywhere
        dm.prepare_data()
    if ddp > 1:
        dist.barrier()
    dm.setup("fit")
    t1 = time.perf_counter()
    n = 0
    loader = dm.train_dataloader()
    for batch in loader:
        n += batch.batch_size
        assert torch.isfinite(batch.inputs["image"]).all()
        if max_seconds is not None and time.perf_counter() - t1 > max_seconds:
            break
    t2 = time.perf_counter()
    total = len(loader.sampler)  # type: ignore[arg-type]
    print(f"rank {max(rank, 0)}: setup {t1 - t0:.1f}s, {n} of {total} samples in {t2 - t1:.1f}s "
          f"({n / (t2 - t1):,.0f}/s)", flush=True)
    if ddp > 1:
        dist.barrier()
        dist.destroy_process_group()


SIZES = ("60", "6k", "20k", "30k", "60k")
ROWS = [
    ("new check full cold", "`mmgpt-data check` (data.check=full), empty store"),
    ("new check full warm", "`mmgpt-data check`, store filled"),
    ("new check headers", "`mmgpt-data check --check headers`, no store"),
    ("new loader 1proc w0", "setup + one training-loader pass, 0 workers"),
    ("new loader 1proc w1", "setup + one training-loader pass, 1 worker (default)"),
    ("new loader ddp2 w2", "2 DDP ranks x 2 workers: setup + one pass"),
    ("new loader ddp2 w2 b16", "2 DDP ranks x 2 workers, batch 16: setup + one pass"),
    ("new epoch", "`mmgpt-train` one epoch (1 worker)"),
    ("main check full warm", "before rows on disk (rows parsed into memory): `mmgpt-data check`, store filled"),
    ("main loader 1proc w1", "before rows on disk: setup + one training-loader pass, 1 worker"),
    ("old check full cold", "today's cache: `mmgpt-data check`, empty cache"),
    ("old loader 1proc w0", "today's cache: setup + one pass, 0 workers"),
    ("old loader 1proc w1", "today's cache: setup + one pass, 1 worker"),
    ("old loader 1proc w0 b16", "today's cache: setup + one pass, 0 workers, batch 16"),
]


def report(results: Path, note: str = "") -> None:
    """BENCHMARKS.md's memory section (bench/results/memory.md) from the JSON lines ``watch`` appended."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from bench.common import save

    runs = {}
    for line in results.read_text().splitlines():
        r = json.loads(line)
        runs[r["label"]] = r  # the last run of a label wins
    sizes = [s for s in SIZES if any(k.endswith(" " + s) for k in runs)]

    def cell(label: str, size: str, key: str) -> str:
        r = runs.get(f"{label} {size}")
        return "" if r is None or r["rc"] != 0 else f"{r[key]:,.0f}"

    lines = [
        "## Memory vs data set size (media store)",
        "",
        "Synthetic manifest folders at `image_size=224`, `sample_rate=16000` (how each was made: the note below; "
        "`bench/memory.py build DIR --num-train N` exports a large one in chunks). Peak anonymous resident memory "
        "(`RssAnon`, MiB) and peak unique memory (USS = "
        "Private_Clean + Private_Dirty from `smaps_rollup`, MiB), each summed over the process and its children and "
        "sampled while the command ran (`python bench/memory.py watch -- CMD`). `new` is the media store, `old` "
        "today's in-memory cache (same scenario run with `PYTHONPATH` at the previous code). A sum of RssAnon counts "
        "pages a forked worker still shares with its parent once per process; USS does not.",
        "",
        "| run | " + " | ".join(f"RssAnon {s}" for s in sizes) + " | " + " | ".join(f"USS {s}" for s in sizes)
        + " | " + " | ".join(f"s {s}" for s in sizes) + " |",
        "|---|" + "---:|" * (3 * len(sizes)),
    ]
    for label, what in ROWS:
        if not any(f"{label} {s}" in runs for s in sizes):
            continue
        lines.append(f"| {what} | " + " | ".join(cell(label, s, "peak_rss_anon_mb") for s in sizes) + " | "
                     + " | ".join(cell(label, s, "peak_uss_mb") for s in sizes) + " | "
                     + " | ".join(cell(label, s, "wall_s") for s in sizes) + " |")

    def get(label: str, key: str = "peak_rss_anon_mb") -> float | None:
        r = runs.get(label)
        return None if r is None or r["rc"] != 0 or key not in r else float(r[key])

    big = next((s for s in ("60k", "30k", "20k") if s in sizes), None)
    lines.append("")
    if big:
        for label, what in [("new check full cold", "`mmgpt-data check`"),
                            ("new check full warm", "`mmgpt-data check` (warm)"),
                            ("main check full warm", "`mmgpt-data check` (warm), before rows on disk"),
                            ("new loader 1proc w0", "one loader pass (0 workers)"),
                            ("new loader 1proc w1", "one loader pass (1 worker, summed)")]:
            a, b = get(f"{label} 6k"), get(f"{label} {big}")
            if a and b:
                lines.append(f"- {what}: peak RssAnon {b:,.0f} MiB at {big} vs {a:,.0f} MiB at 6k: "
                             f"**{100 * (b / a - 1):+.1f}%** (target: within 10%).")
    for suffix, batch_note in [("", "batch 64 (a 60-sample folder gives each rank one batch of 30)"),
                         (" b16", "batch 16 (whole batches in both folders)")]:
        n60, n6k = (get(f"new loader ddp2 w2{suffix} {c}", "peak_uss_mb") for c in ("60", "6k"))
        o60, o6k = (get(f"old loader 1proc w0{suffix} {c}", "peak_uss_mb") for c in ("60", "6k"))
        if None in (n60, n6k, o60, o6k) or o6k <= o60:
            continue
        lines.append(f"- {batch_note}: 2 DDP ranks x 2 workers, summed USS {n60:,.0f} -> {n6k:,.0f} MiB from 60 to 6k "
                     f"samples (growth {n6k - n60:,.0f} MiB); one process with today's cache {o60:,.0f} -> {o6k:,.0f} "
                     f"MiB (growth {o6k - o60:,.0f} MiB): **{100 * (n6k - n60) / (o6k - o60):.0f}%** "
                     "(target: below 20%).")
        dirty = [get(f"{k}{suffix} {c}", "peak_uss_dirty_mb") for k in ("new loader ddp2 w2", "old loader 1proc w0")
                 for c in ("60", "6k")]
        if None not in dirty and dirty[3] > dirty[2]:
            lines.append(f"  Private_Dirty only (USS without clean file pages, which move with other jobs' use of "
                         f"the same libraries): {dirty[0]:,.0f} -> {dirty[1]:,.0f} MiB vs {dirty[2]:,.0f} -> "
                         f"{dirty[3]:,.0f} MiB: **{100 * (dirty[1] - dirty[0]) / (dirty[3] - dirty[2]):.0f}%**.")
    if note:
        lines += ["", note]
    save("memory", {"runs": runs}, "\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("out", type=Path)
    b.add_argument("--num-train", type=int, required=True)
    b.add_argument("--chunk", type=int, default=3000)
    b.add_argument("--image-size", type=int, default=224)
    b.add_argument("--sample-rate", type=int, default=16000)
    lk = sub.add_parser("link")
    lk.add_argument("out", type=Path)
    lk.add_argument("--from", dest="source", type=Path, required=True)
    lk.add_argument("--copies", type=int, required=True)
    w = sub.add_parser("watch")
    w.add_argument("--json", type=Path, default=None, help="append the result as a JSON line to this file")
    w.add_argument("--label", default="")
    w.add_argument("command", nargs=argparse.REMAINDER)
    lo = sub.add_parser("loader")
    lo.add_argument("root")
    lo.add_argument("cache")
    lo.add_argument("--workers", type=int, default=1)
    lo.add_argument("--image-size", type=int, default=224)
    lo.add_argument("--sample-rate", type=int, default=16000)
    lo.add_argument("--ddp", type=int, default=1)
    lo.add_argument("--rank", type=int, default=-1)
    lo.add_argument("--batch-size", type=int, default=64)
    lo.add_argument("--max-seconds", type=float, default=None, help="stop the pass after this long")
    r = sub.add_parser("report")
    r.add_argument("results", type=Path, help="the JSON lines file of watch --json")
    r.add_argument("--note", default="", help="a paragraph appended to the section")
    a = p.parse_args()
    if a.cmd == "report":
        report(a.results, a.note)
        return
    if a.cmd == "link":
        link(a.out, a.source, a.copies)
    elif a.cmd == "build":
        build(a.out, a.num_train, a.chunk, a.image_size, a.sample_rate)
    elif a.cmd == "loader":
        loader(a.root, a.cache, a.workers, a.image_size, a.sample_rate, a.ddp, a.rank, a.batch_size, a.max_seconds)
    else:
        command = a.command[1:] if a.command[:1] == ["--"] else a.command
        result = {"label": a.label, **watch(command)}
        print(json.dumps(result), flush=True)
        if a.json is not None:
            with open(a.json, "a") as f:
                f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
