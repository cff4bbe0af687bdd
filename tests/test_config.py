"""Every config option composes and instantiates; misspelt keys fail early with a message naming the key."""

from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException, InstantiationException
from hydra.utils import instantiate
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError as OmegaConfKeyError

from mmgpt.cli.common import instantiate_group
from mmgpt.cli.train import build_module
from mmgpt.config import CONFIG_DIR, ConfigKeyError, apply_objectives, check_model_specs, check_targets
from mmgpt.registry import SpecError, build_network


def options(group: str) -> list[str]:
    return sorted(f"{group}={p.stem}" for p in (CONFIG_DIR / group).glob("*.yaml"))


ALL_OPTIONS = [
    *options("data"),
    *options("model/fusion"),
    *options("trainer"),
    *options("logger"),
    *options("callbacks"),
    *options("experiment"),
    *options("debug"),
]


#: Options that need a folder of data from the user: composed and key-checked here, built in their own tests
#: (tests/datamodules/test_manifest*.py, test_shards.py, test_hf.py, test_benchmark*.py).
BENCHMARKS = ("mosi", "mosei", "avmnist", "mmimdb", "mmimdb_features", "hateful_memes")
NEEDS_DATA = {"data=manifest", "data=shards", "data=hf", *(f"{g}={b}" for g in ("data", "experiment")
                                                             for b in BENCHMARKS),
              *(o for o in ALL_OPTIONS if o.startswith("experiment=mosi_mmsa"))}  # MMSA's recipes on data=mosi


def extra_overrides(option: str, tmp_path: Path) -> list[str]:
    if option in ("model/fusion=concat", "model/fusion=mult_mmsa"):  # outputs wider than dim: the head takes it
        return ["model.net.head.dim=null"]
    if option == "data=hf":
        return [f"data.path={tmp_path}"]
    return [f"data.root={tmp_path}"] if option in NEEDS_DATA else []


def test_groups_have_the_documented_options():
    assert {"model/fusion=early", "model/fusion=late", "model/fusion=cross_attention"} <= set(ALL_OPTIONS)
    assert {"trainer=cpu", "trainer=gpu", "trainer=ddp", "trainer=ddp_sim"} <= set(ALL_OPTIONS)
    assert {"logger=csv", "logger=tensorboard", "logger=wandb", "logger=many"} <= set(ALL_OPTIONS)


@pytest.mark.parametrize("option", ALL_OPTIONS)
def test_option_composes_and_instantiates(option, compose_cfg, tmp_path):
    cfg = compose_cfg([option, *extra_overrides(option, tmp_path)])
    check_targets(cfg)
    if cfg.trainer.accelerator == "gpu" or option in NEEDS_DATA:
        return  # composes and every key is valid; building it needs a GPU / a data folder
    datamodule = instantiate(cfg.data, _convert_="all")
    module = build_module(cfg, datamodule)
    assert module.net.param_counts()["total"] > 0
    callbacks = instantiate_group(cfg.callbacks)
    loggers = instantiate_group(cfg.logger)
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    assert trainer is not None


@pytest.mark.parametrize("combiner", ["concat_mlp", "logit_average"])
def test_late_fusion_combiners(combiner, compose_cfg):
    cfg = compose_cfg(["model/fusion=late", f"model/fusion/combiner={combiner}"])
    check_targets(cfg)
    check_model_specs(cfg)
    assert cfg.model.fusion.combiner.type == combiner
    net = build_network(OmegaConf.to_container(cfg.model.net, resolve=True), num_classes=3)
    assert type(net.fusion.combiner).__name__ == {"concat_mlp": "ConcatMLP", "logit_average": "LogitAverage"}[combiner]


def test_misspelt_override_fails_at_compose_time(compose_cfg):
    with pytest.raises(ConfigCompositionException, match="max_epocs"):
        compose_cfg(["trainer.max_epocs=3"])


def test_schema_rejects_a_misspelt_key_in_a_yaml_file(compose_cfg, tmp_path):
    (tmp_path / "extra" / "experiment").mkdir(parents=True)
    (tmp_path / "extra" / "experiment" / "typo.yaml").write_text("# @package _global_\nmodel:\n  dimm: 8\n")
    with pytest.raises((ConfigCompositionException, OmegaConfKeyError), match="dimm"):
        compose_cfg([f"hydra.searchpath=[file://{tmp_path / 'extra'}]", "experiment=typo"])


@pytest.mark.parametrize("override", ["+trainer.max_epocs=3", "+model.dimm=8", "+seeed=1"])
def test_appended_unknown_keys_are_rejected_before_anything_is_built(override, compose_cfg):
    key = override.lstrip("+").split("=")[0]
    cfg = compose_cfg([override])  # Hydra lets `+` force a key in ...
    with pytest.raises(ConfigKeyError, match=key.replace(".", r"\.")):
        check_targets(cfg)  # ... and the check that train() runs first refuses it


def test_misspelt_key_under_a_part_names_the_key_and_the_part(compose_cfg):
    cfg = compose_cfg(["+model.fusion.num_layer=3"])
    with pytest.raises(SpecError, match=r"model\.net\.fusion\.num_layer.*'early'.*num_layers"):
        check_model_specs(cfg)


def test_unknown_part_is_reported(compose_cfg):
    cfg = compose_cfg(["model.net.encoders.text.type=no_such_encoder"])
    with pytest.raises(SpecError, match=r"model\.net\.encoders\.text\.type.*no_such_encoder.*text_encoder"):
        check_model_specs(cfg)


def test_part_of_the_wrong_kind_is_reported(compose_cfg):
    cfg = compose_cfg(["model.net.encoders.text.type=early"])
    with pytest.raises(SpecError, match=r"model\.net\.encoders\.text\.type: 'early' is a fusion"):
        check_model_specs(cfg)


def test_import_path_in_the_network_spec_is_refused(compose_cfg):
    cfg = compose_cfg(["+model.net.encoders.text._target_=shutil.copyfile"])
    with pytest.raises(SpecError, match=r"model\.net\.encoders\.text\._target_.*import paths are not accepted"):
        check_model_specs(cfg)


def test_shared_sizes_reach_every_part(compose_cfg):
    cfg = compose_cfg(["model.dim=24", "model.num_heads=3", "model/fusion=cross_attention"])
    from mmgpt.datamodules.synthetic import SyntheticDataModule

    module = build_module(cfg, SyntheticDataModule())
    for name, p in module.net.named_parameters():
        if p.ndim == 1 and "norm" in name and "weight" in name and "norm_in" not in name:  # norm_in: over mel bins
            assert p.shape == (24,), name


def test_objectives_shorthand_sets_the_task_weights_and_turns_the_rest_off(compose_cfg):
    cfg = compose_cfg(["task=pretrain", "objectives={lm:1.0,mlm:0.5}"])
    apply_objectives(cfg)
    weights = {name: o.weight for name, o in cfg.model.module.objectives.items()}
    assert weights == {"classify": 0.0, "lm": 1.0, "contrastive": 0.0, "mlm": 0.5, "matching": 0.0}
    dm = instantiate(cfg.data, _convert_="all")
    assert set(build_module(cfg, dm).objectives) == {"lm", "mlm"}  # weight-0 objectives are left out


def test_objectives_shorthand_refuses_names_the_task_does_not_define(compose_cfg):
    apply_objectives(compose_cfg(["objectives={classify:1.0}"]))  # task=classify: the default objective
    with pytest.raises(ConfigKeyError, match=r"objectives.lm: the task defines no objective .*task=pretrain"):
        apply_objectives(compose_cfg(["+objectives.lm=1.0"]))
    with pytest.raises(ConfigKeyError, match=r"objectives.mlm=-1.0: weights must be >= 0"):
        apply_objectives(compose_cfg(["task=pretrain", "objectives={mlm:-1.0}"]))


def test_common_slips_get_a_message_naming_the_key(compose_cfg):
    from mmgpt.cli.train import train

    with pytest.raises(ConfigKeyError, match=r"model.fusion='late': .*model/fusion=late"):
        train(compose_cfg(["experiment=smoke", "model.fusion=late"]))
    with pytest.raises(InstantiationException, match=r"data.batch_size=-4: expected a positive integer"):
        instantiate(compose_cfg(["data.batch_size=-4"]).data, _convert_="all")
    with pytest.raises(FileNotFoundError, match=r"ckpt_path=/nowhere/x.ckpt: no such checkpoint file"):
        train(compose_cfg(["experiment=smoke", "ckpt_path=/nowhere/x.ckpt"]))


def test_credentials_under_storage_options_are_redacted_from_what_runs_save():
    from mmgpt.secrets import is_secret_key, redacted

    cfg = {"data": {"root": "s3://b/set", "storage_options": {
        "endpoint_url": "http://store:9000", "key": "AKIA", "secret": "s3cr3t", "token": "t",
        "client_kwargs": {"aws_secret_access_key": "x", "region_name": "eu"}}}, "model": {"key": "kept"}}
    assert redacted(cfg) == {"data": {"root": "s3://b/set", "storage_options": {
        "endpoint_url": "http://store:9000", "client_kwargs": {"region_name": "eu"}}}, "model": {"key": "kept"}}
    assert is_secret_key("data.storage_options.secret") and is_secret_key("+data.storage_options.client_kwargs.token")
    assert not is_secret_key("data.storage_options.endpoint_url") and not is_secret_key("model.key")
