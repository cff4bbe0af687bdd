"""Every third-party module the library imports is a declared dependency (core or an extra) of pyproject.toml,
and torchaudio, in maintenance mode, is imported by one module only (issue 22 item 7)."""

from __future__ import annotations

import ast
import os
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")

ROOT = Path(__file__).resolve().parents[1]
#: The library's source folders (``mmgpt/datamodules`` is the same folder as ``datamodules``: walked once).
SOURCES = ("mmgpt", "datamodules")
FIRST_PARTY = {"mmgpt", "datamodules", "__future__"}


def _imports() -> dict[str, set[str]]:
    """Top-level third-party module name -> the files (relative paths) that import it."""
    found: dict[str, set[str]] = {}
    for top in SOURCES:
        for folder, _, files in os.walk(ROOT / top):  # symlinked folders are not followed
            for name in files:
                if not name.endswith(".py"):
                    continue
                path = Path(folder) / name
                for node in ast.walk(ast.parse(path.read_text(), str(path))):
                    if isinstance(node, ast.Import):
                        modules = [a.name for a in node.names]
                    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                        modules = [node.module]
                    else:
                        continue
                    for module in modules:
                        top_name = module.split(".")[0]
                        if top_name not in sys.stdlib_module_names and top_name not in FIRST_PARTY:
                            found.setdefault(top_name, set()).add(str(path.relative_to(ROOT)))
    return found


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared() -> set[str]:
    """Distribution names of the core dependencies and of every extra."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        specs += [s for s in extra if not s.startswith("mmgpt[")]
    return {_normalise(re.split(r"[\s<>=!~;\[]", s, maxsplit=1)[0]) for s in specs}


def test_every_imported_third_party_module_is_a_declared_dependency() -> None:
    declared, owners = _declared(), packages_distributions()
    missing = {}
    for module, files in sorted(_imports().items()):
        dists = {_normalise(d) for d in owners.get(module, [])}
        if not dists & declared:
            missing[module] = (sorted(dists) or ["not installed"], sorted(files))
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


def test_the_import_scan_sees_what_the_library_imports() -> None:
    imports = _imports()
    assert {"torch", "numpy", "PIL", "soxr", "tqdm"} <= set(imports)
    assert "os" not in imports and "mmgpt" not in imports


def test_torchaudio_is_imported_by_one_module_only() -> None:
    assert _imports()["torchaudio"] == {"mmgpt/encoders/log_mel.py"}
