# conf/ holds mmgpt's Hydra configs (YAML), not Python. This file exists so that the folder is not importable as a
# namespace package when the repository root is on sys.path; mmgpt.config.CONFIG_DIR is the folder's path.
raise ImportError(f"{__name__} is mmgpt's Hydra config folder, not a module: use mmgpt.config.CONFIG_DIR (its path)")
