"""Run stamps: which code, libraries, command and machine produced a result.

:func:`run_stamp` is written into ``results.json``, ``eval_results.json``, the loggers' run config and an exported
model's card; :func:`commit_of` and :func:`version_line` answer ``mmgpt --version``. Only the standard library is
imported at module level (``import mmgpt`` stays light); torch is asked for its devices when it is already loaded.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shlex
import socket
import subprocess
import sys
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

#: The name this project is published under (``mmgpt`` on the package index is another project).
DISTRIBUTION = "mmgpt-fusion"

#: Libraries always recorded; :func:`spec_libraries` adds those a network's parts use.
_ALWAYS = ("torch", "pytorch_lightning", "hydra-core", "omegaconf")

_SOURCE = Path(__file__).resolve().parent


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(_SOURCE), *args], capture_output=True, text=True, timeout=10,
                             check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


@lru_cache(maxsize=1)
def commit_of() -> tuple[str | None, bool | None]:
    """``(commit, dirty)`` of the git checkout mmgpt runs from; ``(None, None)`` for an installed wheel.

    ``dirty``: tracked files differ from the commit (untracked files, such as run directories, do not count).
    """
    top = _git("rev-parse", "--show-toplevel")
    if not top or not (Path(top) / "pyproject.toml").is_file() or _SOURCE.parent != Path(top).resolve():
        return None, None  # not mmgpt's own checkout (e.g. installed into another project's repository)
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no")
    return commit, None if status is None else bool(status)


def version() -> str:
    """This project's version (the installed distribution's, else the package's own)."""
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        from mmgpt import __version__

        return __version__


def version_line(program: str = "mmgpt") -> str:
    """``mmgpt 0.1.0 (mmgpt-fusion, commit 1a2b3c4d5e6f, dirty)``: what ``--version`` prints."""
    commit, dirty = commit_of()
    where = "not a git checkout" if commit is None else f"commit {commit[:12]}{', dirty' if dirty else ''}"
    return f"{program} {version()} ({DISTRIBUTION}, {where})"


def _package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def spec_libraries(spec: Any) -> list[str]:
    """The optional libraries a network spec uses: transformers for ``hf_*`` parts, timm for ``timm_*``, peft for
    LoRA adapters on a backbone (``tuning.lora``)."""
    found: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            kind = str(node.get("type") or "")
            if kind.startswith("hf_"):
                found.add("transformers")
            if kind.startswith("timm_"):
                found.add("timm")
            if isinstance(node.get("tuning"), dict) and node["tuning"].get("lora"):
                found.add("peft")
            for value in node.values():
                visit(value)
        elif isinstance(node, (list, tuple)):
            for value in node:
                visit(value)

    visit(spec)
    return sorted(found)


def library_versions(extra: Iterable[str] = ()) -> dict[str, str]:
    """Python, torch, Lightning, Hydra and OmegaConf, plus the ``extra`` libraries (those the run uses)."""
    out = {"python": platform.python_version()}
    for name in (*_ALWAYS, *extra):
        found = _package_version(name)
        if found is not None:
            out[name] = found
    return out


def device_names() -> list[str]:
    """The accelerators this process can see (CUDA device names), else the CPU's model name."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return [_cpu_name()]


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"cpu: {line.split(':', 1)[1].strip()} x{os.cpu_count()}"
    except OSError:
        pass
    return f"cpu: {platform.processor() or platform.machine()} x{os.cpu_count()}"


_command: list[str] | None = None


@contextmanager
def command_line(argv: Sequence[str]) -> Iterator[None]:
    """Within this block, runs record ``argv`` as their command line (the Python API's call, not the notebook's
    ``sys.argv``)."""
    global _command
    saved, _command = _command, list(argv)
    try:
        yield
    finally:
        _command = saved


def current_command() -> list[str]:
    """The command line a run records: the Python API call being run, else ``sys.argv``."""
    return list(_command if _command is not None else sys.argv)


def run_stamp(argv: Sequence[str] | None = None, libraries: Iterable[str] = ()) -> dict[str, Any]:
    """Where a result comes from: mmgpt's version and git commit (and whether the tree was dirty), the libraries'
    versions, the command line, the host and the devices.

    Args:
        argv: the command line; ``sys.argv`` by default (a Python API call passes its own description).
        libraries: optional libraries the run uses (:func:`spec_libraries`), whose versions are recorded too.
    """
    commit, dirty = commit_of()
    return {
        "mmgpt": version(),
        "commit": commit,
        "dirty": dirty,
        "versions": library_versions(libraries),
        "command": shlex.join([Path(a).name if i == 0 else a for i, a in enumerate(argv or sys.argv)]),
        "host": socket.gethostname(),
        "devices": device_names(),
    }


def describe_commits(stamps: Sequence[dict[str, Any] | None]) -> tuple[str, bool]:
    """A line naming the commits ``stamps`` (of several runs) came from, and whether they differ.

    Runs without a stamp (written before stamps existed, or outside a checkout) are counted as unknown.
    """
    names = []
    for s in stamps:
        commit = (s or {}).get("commit")
        names.append("unknown" if not commit else commit[:12] + ("+dirty" if s.get("dirty") else ""))
    counts = {n: names.count(n) for n in sorted(set(names))}
    line = ", ".join(f"{n} ({c} run{'s' if c > 1 else ''})" for n, c in counts.items())
    return line, len(counts) > 1
