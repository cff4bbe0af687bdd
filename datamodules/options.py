"""The options every datamodule shares (``data.*``), declared once.

:class:`DataOptions` is the one declaration: :class:`~mmgpt.datamodules.base.MultimodalDataModule` takes them as
keyword arguments and checks them against it; each datamodule's signature is extended with them (so a misspelt
``data.*`` key is refused when the config is checked, and ``help()`` shows them); the processors read their
defaults; every ``conf/data/*.yaml`` starts from them (``defaults: [options, _self_]``: the ``data/options`` node
:func:`mmgpt.config.register_schemas` stores). A new shared option is one field here.
"""

from __future__ import annotations

import dataclasses
import inspect
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mmgpt.datamodules.decode import DEFAULT_MAX_IMAGE_PIXELS
from mmgpt.errors import UserError


@dataclass(frozen=True)
class DataOptions:
    """The shared ``data.*`` options and their defaults.

    Attributes:
        batch_size: per-process batch size.
        num_workers: DataLoader worker processes (0: load in the training process).
        image_size: side of the square images.
        sample_rate: audio sample rate in Hz.
        max_audio_seconds: longer clips are cropped (``round(max_audio_seconds * sample_rate)`` samples).
        max_text_length: token limit of the byte tokenizer.
        max_image_pixels: larger images are refused as a named problem (None: no limit).
        augment: randomly flip training images horizontally.
        modality_dropout: per-modality probability of dropping that modality from a training sample (never a
            sample's last one), e.g. ``{"audio": 0.2}``.
        pin_memory: pin batches for faster host-to-GPU copies; None pins when CUDA is available.
        shuffle: shuffle the training split each epoch.
        seed: shuffling and data-randomness seed (the configs set it to the run's ``seed``).
        num_train: use only the first ``num_train`` training samples (None: all); num_val, num_test likewise.

    Which modalities the data has is not a shared option: a datamodule whose data can hold any declares them
    (``modalities``), a benchmark's files fix them.
    """

    batch_size: int = 64
    num_workers: int = 0
    image_size: int = 32
    sample_rate: int = 8000
    max_audio_seconds: float = 1.0
    max_text_length: int = 64
    max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS
    augment: bool = False
    modality_dropout: Mapping[str, float] | None = None
    pin_memory: bool | None = None
    shuffle: bool = True
    seed: int = 0
    num_train: int | None = None
    num_val: int | None = None
    num_test: int | None = None

    @classmethod
    def of(cls, options: Mapping[str, Any], where: str = "data") -> DataOptions:
        """The options given in ``options`` over the defaults.

        Raises:
            TypeError: naming ``<where>.<key>`` for a key that is not a shared option.
        """
        unknown = sorted(set(options) - set(FIELDS))
        if unknown:
            raise TypeError(f"{where}.{unknown[0]}: not a data option (the shared ones: {', '.join(FIELDS)})")
        for key, value in options.items():
            check_type(key, value, where)
        return cls(**options)

    @classmethod
    def given(cls, config: Mapping[str, Any]) -> DataOptions:
        """The shared options set (not None) in a data config that may hold other keys too."""
        return cls(**{k: v for k, v in config.items() if k in FIELDS and v is not None})

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


#: The shared option names, in declaration order.
FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(DataOptions))
#: The annotation of each shared option (text: this module postpones annotations).
FIELD_TYPES: dict[str, Any] = {f.name: f.type for f in dataclasses.fields(DataOptions)}
#: Defaults that a config takes from the run rather than from :class:`DataOptions`.
CONFIG_VALUES: dict[str, str] = {"seed": "${seed}"}


#: The scalar kind of each shared option that has one (its annotation's first type), checked by :func:`check_type`.
_KINDS = {"int": (numbers.Integral, "an integer"), "float": (numbers.Real, "a number"), "bool": (bool, "true or false")}


def check_type(key: str, value: Any, where: str = "data") -> None:
    """Refuse a value of the wrong type for the shared option ``key`` (``data.batch_size=abc``) in one line.

    Raises:
        UserError: ``<where>.<key>=<value>: expected ...``.
    """
    annotation = str(FIELD_TYPES.get(key, ""))
    kind = _KINDS.get(annotation.split("|")[0].strip())
    if kind is None or (value is None and "None" in annotation):
        return
    expected, text = kind
    if not isinstance(value, expected) or (expected is not bool and isinstance(value, bool)):
        raise UserError(f"{where}.{key}={value!r}: expected {text}" + (" or null" if "None" in annotation else ""))


def config_defaults() -> dict[str, Any]:
    """The ``data/options`` config node every ``conf/data/*.yaml`` starts from: the defaults of
    :class:`DataOptions` (a mapping value as a plain dict), the run's seed."""
    return {**{k: dict(v) if isinstance(v, Mapping) else v for k, v in DataOptions().as_dict().items()},
            **CONFIG_VALUES}


def with_options(init: Any) -> inspect.Signature:
    """A datamodule constructor's signature with the shared options its ``**options`` takes spelled out (keyword
    only, after its own parameters; the ones it names itself keep its own default)."""
    own = inspect.signature(init)
    params = [p for name, p in own.parameters.items() if name != "self" and p.kind is not p.VAR_KEYWORD]
    named = {p.name for p in params}
    extra = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=f.type)
             for f in dataclasses.fields(DataOptions) if f.name not in named]
    positional = [p for p in params if p.kind is not p.KEYWORD_ONLY]
    keyword = [p for p in params if p.kind is p.KEYWORD_ONLY]
    return own.replace(parameters=[*positional, *keyword, *extra], return_annotation=inspect.Signature.empty)
