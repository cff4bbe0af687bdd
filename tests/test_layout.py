"""The package layout: every module has one importable name, and imports run the documented way.

``datamodules/`` and ``conf/`` sit at the top of the repository and are installed as ``mmgpt.datamodules`` and
``mmgpt/conf`` (pyproject.toml maps them). With the repository root on ``sys.path`` (pytest's ``pythonpath``,
``python -m``) the folders must not be importable under their own names too: two names give two module objects,
and ``isinstance`` across them fails.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import sys
from pathlib import Path

import pytest

import mmgpt

ROOT = Path(mmgpt.__file__).resolve().parents[1]
#: The folders holding Python that ships in the wheel or runs from the checkout (tests excepted: pytest imports
#: conftest files under names of its own).
SOURCE_FOLDERS = ("mmgpt", "datamodules", "conf", "bench", "scripts")
#: Where pyproject.toml maps the top-level folders into the package.
MAPPED = {"datamodules": "mmgpt.datamodules", "conf": "mmgpt.conf"}


def _python_files() -> list[Path]:
    return sorted(p for folder in SOURCE_FOLDERS for p in (ROOT / folder).rglob("*.py")
                  if "__pycache__" not in p.parts)


def _dotted(relative: Path) -> str | None:
    parts = list(relative.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts) if parts and all(p.isidentifier() for p in parts) else None


def _candidate_names(path: Path) -> set[str]:
    """Every dotted name ``path`` could be imported as: relative to each ``sys.path`` folder above it, and its
    installed name where pyproject.toml maps its top-level folder into the package."""
    names = set()
    for entry in {Path(e or ".").resolve() for e in sys.path if isinstance(e, str)} | {ROOT}:
        if entry in path.parents:
            names.add(_dotted(path.relative_to(entry)))
    relative = path.relative_to(ROOT)
    if relative.parts[0] in MAPPED:
        names.add(_dotted(Path(*MAPPED[relative.parts[0]].split("."), *relative.parts[1:])))
    return names - {None}


def _resolves_to(name: str, path: Path) -> bool:
    """Whether ``import name`` gives ``path``: the parent packages are imported, and a package itself (whose
    ``__init__`` may refuse the name), but not a plain module."""
    try:
        if path.name == "__init__.py":
            origin = importlib.import_module(name).__file__
        else:
            spec = importlib.util.find_spec(name)
            origin = spec.origin if spec is not None else None
    except ImportError:
        return False
    return origin is not None and Path(origin).resolve() == path


def test_every_module_has_one_importable_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT))  # as under pytest's pythonpath or `python -m` from the checkout
    doubled = {}
    for path in _python_files():
        names = sorted(n for n in _candidate_names(path) if _resolves_to(n, path))
        if len(names) > 1:
            doubled[str(path.relative_to(ROOT))] = names
    assert not doubled, f"modules importable under more than one name: {doubled}"


@pytest.mark.parametrize("name,message", [("datamodules", "import mmgpt.datamodules, not datamodules"),
                                          ("datamodules.base", "import mmgpt.datamodules, not datamodules"),
                                          ("conf", "Hydra config folder"), ("conf.data", "Hydra config folder")])
def test_top_level_folders_refuse_their_own_name(monkeypatch: pytest.MonkeyPatch, name: str, message: str) -> None:
    monkeypatch.syspath_prepend(str(ROOT))
    with pytest.raises(ImportError, match=message) as raised:
        importlib.import_module(name)
    assert "\n" not in str(raised.value)
    assert name.split(".")[0] not in sys.modules


def test_installed_names_are_the_package_ones() -> None:
    import mmgpt.datamodules.base as base
    from mmgpt.config import CONFIG_DIR

    assert Path(base.__file__).resolve() == ROOT / "datamodules" / "base.py"
    assert (CONFIG_DIR / "train.yaml").is_file()


def test_pyproject_lists_every_package() -> None:
    """pyproject.toml lists the packages (setuptools cannot find those under a mapped folder): one forgotten
    there would be missing from the wheel."""
    tomllib = pytest.importorskip("tomllib" if sys.version_info >= (3, 11) else "tomli")
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert setuptools["package-dir"] == {installed: folder for folder, installed in MAPPED.items()}
    on_disk = {"mmgpt.conf"} | {
        _dotted(Path(*MAPPED.get(p.relative_to(ROOT).parts[0], p.relative_to(ROOT).parts[0]).split("."),
                     *p.relative_to(ROOT).parts[1:]))
        for folder in ("mmgpt", "datamodules", "hydra_plugins") for p in (ROOT / folder).rglob("__init__.py")}
    assert set(setuptools["packages"]) == on_disk


# -- imports run one way ------------------------------------------------------------------------------------------
#: The rooms of the package, by module prefix (the longest prefix decides).
ROOMS: dict[str, str] = {
    "mmgpt": "core", "mmgpt.errors": "core", "mmgpt.batch": "core", "mmgpt.tokenizer": "core",
    "mmgpt.secrets": "core", "mmgpt.paths": "core", "mmgpt.stored_config": "core", "mmgpt.stamp": "core",
    "mmgpt.presets": "network", "mmgpt.sweep_folder": "report",
    **{f"mmgpt.{m}": "api" for m in ("api", "predictor", "exported")},
    **{f"mmgpt.{m}": "network" for m in ("layers", "encoders", "fusion", "model", "decoder", "hf_decoder",
                                         "objectives", "generation", "lora", "registry")},
    "mmgpt.datamodules": "data", "mmgpt.training": "training", "mmgpt.report": "report", "mmgpt.config": "config",
    "mmgpt.cli": "cli",
}
#: The rooms each room may import (its own included): the rule docs/development.md ("Layout") states.
MAY_IMPORT: dict[str, set[str]] = {
    "core": {"core"},
    "network": {"core", "network"},
    "data": {"core", "network", "data"},
    "training": {"core", "network", "training"},
    "report": {"core", "network", "training", "report"},
    "config": {"core", "network", "data", "config"},
    "api": set(ROOMS.values()),
    "cli": set(ROOMS.values()),
}
#: Single modules another room may import besides: the data loaders' seeding helpers (no imports of their own).
ALSO_ALLOWED: dict[str, set[str]] = {"data": {"mmgpt.training.rng"}}


def room(module: str) -> str:
    parts = module.split(".")
    return next(ROOMS[".".join(parts[:i])] for i in range(len(parts), 0, -1) if ".".join(parts[:i]) in ROOMS)


def _package_modules() -> dict[str, Path]:
    """Installed name -> file of every module of the package (datamodules/ under its mapped name)."""
    out = {}
    for folder, prefix in (("mmgpt", "mmgpt"), ("datamodules", "mmgpt.datamodules")):
        for path in (ROOT / folder).rglob("*.py"):
            name = _dotted(Path(*prefix.split("."), *path.relative_to(ROOT / folder).parts))
            out[name] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(path: Path, modules: dict[str, Path]) -> list[tuple[str, int]]:
    """The package modules ``path`` imports at run time (top level or inside functions; not under
    ``if TYPE_CHECKING:``), with line numbers. ``from pkg import name`` counts as importing ``pkg.name`` when that
    is a module."""
    found: list[tuple[str, int]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend((alias.name, node.lineno) for alias in node.names if alias.name.split(".")[0] == "mmgpt")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "mmgpt":
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.append((sub if sub in modules else node.module, node.lineno))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    return found


def _import_graph() -> tuple[dict[str, Path], dict[str, dict[str, int]]]:
    modules = _package_modules()
    graph = {name: {} for name in modules}
    for name, path in modules.items():
        for target, line in _imports(path, modules):
            if target != name:
                graph[name].setdefault(target, line)
    return modules, graph


def test_imports_run_the_documented_way() -> None:
    modules, graph = _import_graph()
    wrong = [f"{modules[a].relative_to(ROOT)}:{line}: {a} ({room(a)}) imports {b} ({room(b)})"
             for a, targets in graph.items() for b, line in targets.items()
             if room(b) not in MAY_IMPORT[room(a)] and b not in ALSO_ALLOWED.get(room(a), ())]
    assert not wrong, "imports against the documented direction (docs/development.md, Layout):\n" + "\n".join(wrong)


def _cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, {}):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return out


def test_no_import_cycles() -> None:
    """No module imports, even inside a function, a module that imports it back (a package ``__init__`` that
    re-exports its submodules is not an edge from them: they import the submodules they use)."""
    _, graph = _import_graph()
    assert not _cycles(graph), f"import cycles: {_cycles(graph)}"


def test_the_checks_catch_a_wrong_import_and_a_cycle() -> None:
    graph = {"mmgpt.layers.block": {"mmgpt.training.optim": 3}, "mmgpt.training.optim": {"mmgpt.layers.block": 1}}
    assert room("mmgpt.layers.block") == "network" and room("mmgpt.datamodules.hf.source") == "data"
    assert "training" not in MAY_IMPORT[room("mmgpt.layers.block")]
    assert _cycles(graph) == [["mmgpt.layers.block", "mmgpt.training.optim"]]
