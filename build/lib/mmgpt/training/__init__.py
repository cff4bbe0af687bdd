"""Training machinery: everything on the Trainer's side of the line.

The LightningModule (``lit_module``), callbacks, checkpoint I/O and resume (``checkpointing``), loggers and
experiment tracking, progress output, RNG state, optimisers and schedules, distributed wrapping and fine-tuning.
Imports go one way: this package uses the network code (``mmgpt.model``, ``mmgpt.layers``, ...); the network code
never imports from here.
"""
