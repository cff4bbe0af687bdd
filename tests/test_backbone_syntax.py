"""The short backbone syntax (``encoders.<m>=hf:X``, ``timm:NAME@W``, ``scratch``) builds the spec the long form
builds, works as a sweep value, and a bad form is one line naming the key."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from mmgpt.cli.train import check_config
from mmgpt.config import CONFIG_DIR, ConfigKeyError, apply_backbones, parse_backbone

CASES = [
    (["encoders.text=hf:/m/bert"],
     ["model/encoder/text@model.net.encoders.text=hf", "model.net.encoders.text.name_or_path=/m/bert"]),
    (["encoders.text=hf:bert-base-uncased@v1.0"],
     ["model/encoder/text@model.net.encoders.text=hf", "model.net.encoders.text.name_or_path=bert-base-uncased",
      "model.net.encoders.text.revision=v1.0"]),
    (["encoders.image=timm:convnext_tiny@/models/convnext_tiny.safetensors"],
     ["model/encoder/image@model.net.encoders.image=timm", "model.net.encoders.image.model_name=convnext_tiny",
      "model.net.encoders.image.checkpoint_path=/models/convnext_tiny.safetensors"]),
    (["encoders.image=hf:/m/vit", "encoders.audio=hf:/models/wav2vec2-base", "model.dim=32"],
     ["model/encoder/image@model.net.encoders.image=hf", "model.net.encoders.image.name_or_path=/m/vit",
      "model/encoder/audio@model.net.encoders.audio=hf", "model.net.encoders.audio.name_or_path=/models/wav2vec2-base",
      "model.dim=32"]),
    (["encoders.text=scratch"], []),
    (["data.modalities={text: text, poster: image}", "model/fusion=late", "~model.net.encoders.image",
      "~model.net.encoders.audio", "+encoders.poster=hf:/m/vit"],
     ["data.modalities={text: text, poster: image}", "model/fusion=late", "~model.net.encoders.image",
      "~model.net.encoders.audio", "+model/encoder/image@model.net.encoders.poster=hf",
      "model.net.encoders.poster.name_or_path=/m/vit"]),
]


def _net(overrides: list[str]) -> dict:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    apply_backbones(cfg)
    return OmegaConf.to_container(cfg.model.net, resolve=True)


@pytest.mark.parametrize(("short", "long"), CASES, ids=lambda c: c[0] if isinstance(c, list) and c else "")
def test_short_and_long_forms_build_identical_specs(short: list[str], long: list[str]) -> None:
    assert _net(short) == _net(long)


def test_short_syntax_is_a_sweep_value() -> None:
    parser = OverridesParser.create()
    override = parser.parse_override("encoders.image=hf:/m/vit,timm:convnext_tiny@/m/w.safetensors")
    jobs = [parser.parse_override(f"encoders.image={v}").value() for v in override.sweep_string_iterator()]
    assert jobs == ["hf:/m/vit", "timm:convnext_tiny@/m/w.safetensors"]  # each job's value, as the job parses it


@pytest.mark.parametrize("value", ["bert", "hf:", "hf", "foo:x", "scratch@x", "scratch:x"])
def test_bad_forms_are_one_line(value: str) -> None:
    with pytest.raises(ConfigKeyError, match=r"encoders\.text=.*expected scratch, hf:NAME_OR_PATH") as e:
        parse_backbone(value, "encoders.text")
    assert "\n" not in str(e.value)


def test_family_without_config_for_the_kind_is_named(compose_cfg) -> None:
    cfg = compose_cfg(["encoders.text=timm:convnext_tiny"])
    with pytest.raises(ConfigKeyError, match=r"encoders.text='timm:convnext_tiny': no timm encoder for text"):
        check_config(cfg)
