"""``mmgpt``: the project's version and commit (``mmgpt --version``), and each command under one name
(``mmgpt train ...`` is ``mmgpt-train ...``)."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import wraps
from typing import Any

from mmgpt.stamp import version_line

#: ``mmgpt <command>`` -> the module whose ``main`` runs it.
COMMANDS = {"train": "mmgpt.cli.train", "eval": "mmgpt.cli.evaluate", "compare": "mmgpt.cli.compare",
            "data": "mmgpt.cli.data", "generate": "mmgpt.cli.generate", "export": "mmgpt.cli.export"}


def with_version(program: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``<program> --version`` prints this project's version and commit, before Hydra (whose own ``--version``
    would name Hydra's) sees the command line."""

    def wrap(main: Callable[..., Any]) -> Callable[..., Any]:
        @wraps(main)
        def run(*args: Any, **kwargs: Any) -> Any:
            if sys.argv[1:2] == ["--version"]:
                print(version_line(program))
                return None
            return main(*args, **kwargs)

        return run

    return wrap


@contextmanager
def _argv(argv: list[str]) -> Iterator[None]:
    saved, sys.argv = sys.argv, argv
    try:
        yield
    finally:
        sys.argv = saved


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(f"{version_line()}\nusage: mmgpt --version | mmgpt <command> [arguments]\ncommands: "
              f"{', '.join(COMMANDS)} (the same as mmgpt-<command>)")
        return
    if args[0] == "--version":
        print(version_line())
        return
    if args[0] not in COMMANDS:
        raise SystemExit(f"error: mmgpt {args[0]}: no such command (commands: {', '.join(COMMANDS)})")
    module = importlib.import_module(COMMANDS[args[0]])
    with _argv([f"mmgpt-{args[0]}", *args[1:]]):
        module.main()


if __name__ == "__main__":
    main()
