"""Command-line entry points: thin Hydra apps around plain functions."""

from mmgpt.config import register_schemas

register_schemas()
