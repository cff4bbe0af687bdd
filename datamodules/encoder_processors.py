"""Which processor each encoder type brings: the network's encoders decide how raw samples become their input.

The table is kept on the data side (registry names are strings here), so that nothing in mmgpt's network code
refers to the datamodules. A user's own encoder keeps the datamodule's default processor of its modality unless
its plugin module adds one with :func:`register_processor`.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any

from mmgpt.datamodules.hf_processors import (
    hf_audio_processor,
    hf_image_processor,
    hf_text_processor,
    timm_image_processor,
)
from mmgpt.datamodules.options import DataOptions
from mmgpt.datamodules.processors import (
    Processor,
    scratch_audio_processor,
    scratch_image_processor,
    scratch_text_processor,
)
from mmgpt.errors import UserError
from mmgpt.registry import part

#: Encoder type (its registered name) -> ``(encoder spec, data options) -> Processor`` (None: the data's own).
ENCODER_PROCESSORS: dict[str, Callable[[Mapping[str, Any], Mapping[str, Any]], Processor | None]] = {
    "text_encoder": scratch_text_processor,
    "image_encoder": scratch_image_processor,
    "audio_encoder": scratch_audio_processor,
    "hf_text": hf_text_processor,
    "hf_image": hf_image_processor,
    "hf_audio": hf_audio_processor,
    "timm_image": timm_image_processor,
}


def register_processor(encoder_type: str, builder: Callable[[Mapping[str, Any], Mapping[str, Any]], Processor | None],
                       ) -> None:
    """Give the encoder registered as ``encoder_type`` (:func:`mmgpt.registry.register`) its own processor:
    ``builder(encoder spec, data options) -> Processor``, used by every datamodule for that encoder's modality."""
    ENCODER_PROCESSORS[encoder_type] = builder


def build_processors(net: Mapping[str, Any], data: Mapping[str, Any], *, explicit: Collection[str] = (),
                     where: str = "model.net.encoders") -> dict[str, Processor]:
    """Modality name -> the processor its encoder builds (:data:`ENCODER_PROCESSORS`), for the datamodule.

    Args:
        net: the network spec (``model.net``, resolved), or just its ``encoders`` mapping.
        data: the data config (``data.*``): its shared options, the missing ones taking their defaults
            (:class:`~mmgpt.datamodules.options.DataOptions`).
        explicit: the ``data.*`` keys the user set explicitly (e.g. on the command line). One of them that
            contradicts a value the backbone decides (:meth:`Processor.derived`) is refused, naming both keys.

    Raises:
        UserError: a contradicting ``data.*`` value, or a backbone processor that cannot be loaded.
    """
    options = DataOptions.given(data).as_dict()
    encoders = net.get("encoders", net)
    out: dict[str, Processor] = {}
    for name in sorted(encoders):
        spec = encoders[name]
        part(spec["type"], "encoder", f"{where}.{name}")  # a registered encoder, or a SpecError naming the key
        builder = ENCODER_PROCESSORS.get(spec["type"])
        if builder is None:  # a user's own encoder: the datamodule's default processor for this modality
            continue
        processor = builder(spec, options)
        if processor is None:  # the encoder takes what the data's own processor gives (e.g. token ids)
            continue
        for key, value in processor.derived().items():
            if key in explicit and data.get(key) is not None and data[key] != value:
                raise UserError(f"data.{key}={data[key]} contradicts {where}.{name} ({spec['type']} "
                                f"{spec.get('name_or_path') or spec.get('model_name')}), whose processor uses "
                                f"{key}={value}: drop data.{key} (the backbone's is used) or choose another backbone")
        out[name] = processor
    return out
