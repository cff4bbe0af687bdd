"""How a data check lists what it found: the problems (at most ``limit`` of them), then their count."""

from __future__ import annotations

from collections.abc import Sequence


def problem_lines(problems: Sequence[str], limit: int | None = None) -> list[str]:
    """The problems to print, ``... and N more problems`` when ``limit`` cut the list, then the count line."""
    shown = list(problems if limit is None else problems[:limit])
    if len(shown) < len(problems):
        shown.append(f"... and {len(problems) - len(shown)} more problems")
    shown.append(f"{len(problems)} problems" if problems else "no problems")
    return shown
