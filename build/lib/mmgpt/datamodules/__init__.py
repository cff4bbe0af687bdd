"""LightningDataModules for mmgpt. They yield :class:`mmgpt.batch.MultimodalBatch`."""
