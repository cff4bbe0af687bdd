"""Crafted values planted into real files of real runs, and the checks that they never ran.

Each payload would leave a marker file (or, for ``oc.env``, put an environment value into the config) if anything
resolved or instantiated it. :func:`refused_in_one_line` runs a command's function the way its entry point does
(:func:`mmgpt.cli.common.user_errors`) and returns the one line it exits with; :func:`files_under` snapshots a tree
so a test can assert that nothing was written outside the folder the command was pointed at.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from mmgpt.cli.common import user_errors

#: A custom resolver a hostile file could name (registered here, as a user's plugin would register one).
RESOLVER = "mmgpt_planted_mark"
#: The environment variable the ``oc.env`` payload reads.
ENV = "MMGPT_PLANTED_SECRET"
SECRET = "planted-secret-value"
#: What the instantiated payloads copy to their marker (Hydra blocks os.system and friends, not shutil.copyfile).
SOURCE = __file__


def _mark(path: str) -> str:
    Path(path).write_text("resolved")
    return "resolved"


OmegaConf.register_new_resolver(RESOLVER, _mark, replace=True)


def interpolations(marker: Path) -> dict[str, str]:
    """name -> a stored string that would run (or read the environment) if resolved."""
    return {
        "oc_create": "${oc.create:{_target_: shutil.copyfile, _args_: ['" + SOURCE + "', '" + str(marker) + "']}}",
        "oc_env": "${oc.env:" + ENV + "}",
        "custom_resolver": "${" + RESOLVER + ":" + str(marker) + "}",
    }


def target_node(marker: Path) -> dict[str, Any]:
    """A mapping that writes ``marker`` if instantiated."""
    return {"_target_": "shutil.copyfile", "_args_": [SOURCE, str(marker)]}


def refused_in_one_line(fn: Callable[..., Any], *args: Any) -> str:
    """Run ``fn(*args)`` as a command would; it must exit with one ``error: ...`` line, which is returned."""
    with pytest.raises(SystemExit) as exc:
        user_errors(fn)(*args)
    message = str(exc.value.code)
    assert message.startswith("error: ") and "\n" not in message, message
    return message


def files_under(root: Path, skip: Path | None = None) -> dict[str, int]:
    """Every file under ``root`` (outside ``skip``) with its modification time: a snapshot to compare."""
    def walk() -> Iterator[Path]:
        for path in root.rglob("*"):
            if path.is_file() and (skip is None or not path.is_relative_to(skip)):
                yield path
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in walk()}


def plant(node: Any, path: list[Any], value: Any) -> None:
    """Replace the value at ``path`` (keys and list indices) in a nested tree."""
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value


def leaves(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    """Every scalar leaf of a tree of mappings and lists, with its path."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from leaves(value, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from leaves(value, (*path, i))
    else:
        yield path, node
