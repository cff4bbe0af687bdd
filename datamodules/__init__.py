"""LightningDataModules for mmgpt. They yield :class:`mmgpt.batch.MultimodalBatch`."""

# datamodules/ sits at the top of the repository and is installed as mmgpt.datamodules (pyproject.toml maps it): with
# the repository root on sys.path it could also be imported as `datamodules`, a second copy of every class.
if __name__ != "mmgpt.datamodules":
    raise ImportError(f"import mmgpt.datamodules, not {__name__}: the data side is part of the mmgpt package")
