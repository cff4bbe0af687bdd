"""The documentation cannot drift from the code: every command in README.md and docs/*.md is exercised.

Each fenced code block of the pages is read, and each command line in it is checked for what can be checked
without training:

- ``mmgpt-train`` / ``mmgpt-eval`` / ``mmgpt-compare`` / ``mmgpt-generate`` (also after ``.venv/bin/``, inside a
  ``torchrun ... $(which mmgpt-train)`` line, or with ``-m``): the overrides compose against the shipped configs
  and their schemas (sweeps ``a,b`` take each value in turn), and a training config passes ``check_config``
  (keys, typed network specs, objectives) — a misspelt key, a removed option or a renamed group fails here;
- ``mmgpt-data SUB ...``: the sub-command and its flags parse;
- ``make TARGET``: the Makefile has the target; ``python -m MODULE``: the module exists;
- relative links ``[text](path)`` name files of the repository.

``...`` in a command stands for "your other overrides" and is left out. A block preceded by
``<!-- docs-check: skip REASON -->`` is not checked (commands that need the reader's own config folders); the
reason is required. Code blocks of docs/api.md are run by tests/test_api_docs.py where that page exists.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from hydra import compose, initialize, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import open_dict

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^(?P<indent> *)```(?P<lang>[\w-]*)\n(?P<body>.*?)^(?P=indent)```", re.S | re.M)
SKIP = re.compile(r"<!--\s*docs-check:\s*skip\s+(?P<reason>\S.*?)\s*-->\s*$")
LINK = re.compile(r"\[[^\]]*\]\((?P<target>[^)\s]+)\)")
COMMANDS = {"mmgpt-train": "train", "mmgpt-eval": "eval", "mmgpt-compare": "compare", "mmgpt-generate": "generate"}
#: mmgpt-compare's own arguments, taken before Hydra composes (``report=DIR``, ``resume=DIR``, ``tune=N``).
COMPARE_OWN = ("report=", "resume=", "tune=")


@dataclass(frozen=True)
class Command:
    """One command line of a page: where it is, and its words."""

    page: str
    line: int
    words: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.page}:{self.line}: {' '.join(self.words)}"


def _blocks(page: Path) -> list[tuple[int, str]]:
    """(first line number, body) of each fenced block not marked ``docs-check: skip``."""
    text = page.read_text(encoding="utf-8")
    out = []
    for m in FENCE.finditer(text):
        before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        if SKIP.search(before):
            continue
        out.append((text.count("\n", 0, m.start()) + 2, m.group("body")))
    return out


def _logical_lines(first: int, body: str) -> list[tuple[int, str]]:
    """Lines with ``\\`` continuations joined and shell comments removed, with their first line number."""
    lines, current, start = [], "", first
    for i, raw in enumerate(body.splitlines()):
        if not current:
            start = first + i
        current += raw.rstrip()
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        lines.append((start, current))
        current = ""
    if current:
        lines.append((start, current))
    return lines


def _words(line: str) -> list[str]:
    try:
        return shlex.split(line, comments=True)
    except ValueError:  # an unbalanced quote: not a shell line (a tree, a table)
        return []


def commands() -> list[Command]:
    """Every command line of every page."""
    found = []
    for page in PAGES:
        rel = str(page.relative_to(ROOT))
        for first, body in _blocks(page):
            for line, text in _logical_lines(first, body):
                words = _words(text)
                if words:
                    found.append(Command(rel, line, tuple(words)))
    return found


def _program(words: tuple[str, ...]) -> tuple[str, list[str]] | None:
    """(program, its arguments) for the commands this test knows, wherever on the line they start."""
    for i, word in enumerate(words):
        name = word.rsplit("/", 1)[-1].rstrip(")")
        if name in COMMANDS or name in ("mmgpt-data", "make"):
            return name, list(words[i + 1:])
        if name in ("python", "python3") and words[i + 1: i + 2] == ("-m",) and i + 2 < len(words):
            return "python -m", [words[i + 2]]
    return None


ALL = commands()
MMGPT = [c for c in ALL if (p := _program(c.words)) and p[0] in COMMANDS]
DATA = [c for c in ALL if (p := _program(c.words)) and p[0] == "mmgpt-data"]
MAKE = [c for c in ALL if (p := _program(c.words)) and p[0] == "make"]
MODULES = [c for c in ALL if (p := _program(c.words)) and p[0] == "python -m"]


def _sweep_points(args: list[str]) -> list[list[str]]:
    """Overrides with each sweep (``a,b``, ``range``...) taken value by value: one list per value of the longest."""
    parser = OverridesParser.create()
    fixed, sweeps = [], []
    for arg in args:
        override = parser.parse_override(arg)
        if override.is_sweep_override():
            values = list(override.sweep_string_iterator())
            key = arg.split("=", 1)[0]
            sweeps.append([f"{key}={v}" for v in values])
        else:
            fixed.append(arg)
    if not sweeps:
        return [fixed]
    longest = max(len(s) for s in sweeps)
    return [[*fixed, *(s[min(i, len(s) - 1)] for s in sweeps)] for i in range(longest)]


def _compose(config: str, overrides: list[str]):
    from mmgpt.config import CONFIG_DIR

    GlobalHydra.instance().clear()
    if config == "generate":
        import mmgpt.cli.generate  # noqa: F401  (stores its schema as the "generate" config)

        with initialize(version_base="1.3", config_path=None):
            return compose(config, overrides=overrides)
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config, overrides=overrides, return_hydra_config=True)


def test_the_pages_have_commands_to_check() -> None:
    """The parser finds the commands (a change of fence syntax would otherwise make every check vacuous)."""
    assert len(MMGPT) >= 30 and MAKE and DATA and MODULES, (len(MMGPT), len(MAKE), len(DATA), len(MODULES))


@pytest.mark.parametrize("command", MMGPT, ids=str)
def test_mmgpt_command_composes(command: Command) -> None:
    import mmgpt.cli  # noqa: F401  (the resolvers and schemas the entry points register)
    from mmgpt.cli.train import check_config

    program, args = _program(command.words)  # type: ignore[misc]
    args = [a for a in args if a not in ("...", "-m", "--multirun")]
    if program == "mmgpt-compare":
        args = [a for a in args if not a.startswith(COMPARE_OWN)]
    assert not any(a.startswith("-") for a in args), f"{command}: flags this check does not know; mark the block"
    for overrides in _sweep_points(args):
        try:
            cfg = _compose(COMMANDS[program], overrides)
            if program == "mmgpt-train":
                with open_dict(cfg):
                    del cfg["hydra"]
                check_config(cfg)
        except Exception as e:  # the failure names the page and line
            pytest.fail(f"{command}\n  -> {type(e).__name__}: {e}")


@pytest.mark.parametrize("command", DATA, ids=str)
def test_mmgpt_data_command_parses(command: Command) -> None:
    from mmgpt.cli.data import build_parser

    _, args = _program(command.words)  # type: ignore[misc]
    try:
        build_parser().parse_args([a for a in args if a != "..."])
    except SystemExit as e:
        pytest.fail(f"{command}\n  -> mmgpt-data refused these arguments (exit {e.code})")


def test_make_targets_exist() -> None:
    targets = {c: _program(c.words)[1][0] for c in MAKE}  # type: ignore[index]
    missing = []
    for command, target in targets.items():
        run = subprocess.run(["make", "-n", "-C", str(ROOT), target], capture_output=True, text=True)
        if "No rule to make target" in run.stderr:
            missing.append(f"{command}: no make target {target!r}")
    assert not missing, "\n".join(missing)


def test_python_modules_exist() -> None:
    missing = [f"{c}: no module {_program(c.words)[1][0]!r}" for c in MODULES  # type: ignore[index]
               if importlib.util.find_spec(_program(c.words)[1][0]) is None]  # type: ignore[index]
    assert not missing, "\n".join(missing)


def test_relative_links_name_files_of_the_repository() -> None:
    broken = []
    for page in PAGES:
        text = FENCE.sub("", page.read_text(encoding="utf-8"))
        for m in LINK.finditer(text):
            target = m.group("target").split("#", 1)[0]
            if not target or re.match(r"^[a-z][a-z0-9+.-]*:", target):  # an anchor or a URL
                continue
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)}: [{target}]")
    assert not broken, "links to files that do not exist:\n" + "\n".join(broken)
