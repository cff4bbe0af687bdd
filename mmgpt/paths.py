"""Where mmgpt's shipped files are: the Hydra config folder.

The repository's ``conf/`` in a checkout, ``mmgpt/conf`` in a wheel (pyproject.toml maps it in as the data-only
package ``mmgpt.conf``; found, not imported, since it holds no Python). Core: anything may import it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

CONFIG_DIR = Path(importlib.util.find_spec("mmgpt.conf").submodule_search_locations[0])
