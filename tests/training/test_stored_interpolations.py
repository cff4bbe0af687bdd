"""A stored config is data: an interpolation planted in a checkpoint or a run directory is never resolved.

One real tiny run per module; each test plants one value (``${oc.create:...}``, ``${oc.env:...}`` or a custom
resolver) into one stored section of its checkpoint or its ``config.yaml`` and runs the command that reads it:
no marker file appears, nothing is written outside the command's own folder, and the command exits with one
line naming the file and the key.
"""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict

from mmgpt import stored_config
from mmgpt.cli.compare import changed_keys
from mmgpt.cli.evaluate import evaluate
from mmgpt.cli.train import resume_state, train
from mmgpt.config import CONFIG_DIR
from mmgpt.training.lit_module import MultimodalModule
from tests.helpers.planted import (
    ENV,
    SECRET,
    files_under,
    interpolations,
    leaves,
    plant,
    refused_in_one_line,
)

PAYLOADS = ["oc_create", "oc_env", "custom_resolver"]


def _cfg(name: str, overrides: list[str], out: Path):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(name, overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
        cfg.paths.log_dir = str(out / "logs")
    return cfg


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The directory of a real tiny training run: its config.yaml and checkpoints/last.ckpt."""
    out = tmp_path_factory.mktemp("trained") / "run"
    train(_cfg("train", ["experiment=smoke", "logger=csv", "test=false", "trainer.max_steps=2",
                         "trainer.limit_val_batches=1", "callbacks.progress=null"], out))
    return out


@pytest.fixture(autouse=True)
def _secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, SECRET)


def _first_leaf(node: Any) -> list[Any]:
    return list(next(iter(leaves(node)))[0])


def test_the_payloads_are_live(tmp_path: Path) -> None:
    """Resolved and instantiated the way a config used to be, each payload writes its marker or reads the env:
    the tests below could fail."""
    marker = tmp_path / "marker"
    for name, value in interpolations(marker).items():
        node = OmegaConf.create({"value": value})
        if name == "oc_env":
            assert node.value == SECRET
        else:
            instantiate(node)
            assert marker.is_file(), name
            marker.unlink()


#: The checkpoint's stored sections: (where in the checkpoint, the key path the error must name).
HPARAMS = ["net", "objectives", "optimizer", "scheduler", "class_names"]
RUN_CONFIG = ["data", "model", "trainer"]


def _craft(run_dir: Path, tmp: Path, edit) -> Path:
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    edit(ckpt)
    path = tmp / "crafted.ckpt"
    torch.save(ckpt, path)
    return path


def _plant_in(ckpt: dict, root: list[str], value: str) -> str:
    """Plant ``value`` at the first leaf of ``ckpt[root...]``; return its dotted key as errors name it."""
    node = ckpt
    for key in root:
        node = node[key]
    path = _first_leaf(node) if node not in (None, [], {}) else []
    if path:
        plant(node, path, value)
    else:
        plant(ckpt, root, value)
    return ".".join([*root, *(f"[{p}]" if isinstance(p, int) else str(p) for p in path)]).replace(".[", "[")


@pytest.mark.parametrize("payload", PAYLOADS)
@pytest.mark.parametrize("section", [*(f"hyper_parameters.{s}" for s in HPARAMS),
                                     *(f"mmgpt.config.{s}" for s in RUN_CONFIG)])
def test_mmgpt_eval_never_resolves_a_stored_interpolation(run_dir, tmp_path, section, payload):
    marker = tmp_path / "marker"
    keys: list[str] = []
    crafted = _craft(run_dir, tmp_path, lambda c: keys.append(
        _plant_in(c, section.split("."), interpolations(marker)[payload])))
    before = files_under(tmp_path)
    message = refused_in_one_line(evaluate, _cfg("eval", [f"ckpt_path={crafted}"], tmp_path / "eval"))
    assert f"{crafted}: {keys[0]}: " in message and "interpolation" in message, message
    assert SECRET not in message and not marker.exists()
    assert files_under(tmp_path, skip=tmp_path / "eval") == before


@pytest.mark.parametrize("payload", PAYLOADS)
def test_load_from_checkpoint_never_resolves_a_stored_interpolation(run_dir, tmp_path, payload):
    marker = tmp_path / "marker"
    crafted = _craft(run_dir, tmp_path,
                     lambda c: c["hyper_parameters"]["optimizer"].__setitem__("lr", interpolations(marker)[payload]))
    message = refused_in_one_line(MultimodalModule.load_from_checkpoint, crafted)
    assert f"{crafted}: hyper_parameters.optimizer.lr: " in message and not marker.exists()


@pytest.mark.parametrize("payload", PAYLOADS)
def test_a_resumed_run_never_resolves_a_stored_wandb_id(run_dir, tmp_path, payload):
    marker = tmp_path / "marker"
    crafted = _craft(run_dir, tmp_path, lambda c: c["mmgpt"].__setitem__("wandb_id", interpolations(marker)[payload]))
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    module = SimpleNamespace(hparams={"net": saved["hyper_parameters"]["net"]})  # the network being trained
    message = refused_in_one_line(resume_state, OmegaConf.create({"ckpt_path": str(crafted)}), tmp_path, module)
    assert f"{crafted}: mmgpt.wandb_id: " in message and SECRET not in message and not marker.exists()


@pytest.mark.parametrize("payload", PAYLOADS)
@pytest.mark.parametrize("section", RUN_CONFIG)
def test_a_run_directory_config_yaml_is_never_resolved(run_dir, tmp_path, section, payload):
    """``mmgpt-compare resume=DIR`` compares a finished run's config.yaml with the sweep's (changed_keys)."""
    marker = tmp_path / "marker"
    copied = tmp_path / "run"
    copied.mkdir()
    saved = OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml"))
    path = _first_leaf(saved[section])
    plant(saved[section], path, interpolations(marker)[payload])
    OmegaConf.save(OmegaConf.create(saved), copied / "config.yaml")
    cfg = OmegaConf.load(run_dir / "config.yaml")  # the sweep's own config: the stored one, unplanted
    before = files_under(tmp_path)
    message = refused_in_one_line(changed_keys, copied, cfg)
    key = ".".join([section, *map(str, path)])
    assert f"{copied / 'config.yaml'}: {key}: " in message, message
    assert not marker.exists() and SECRET not in message and files_under(tmp_path) == before


def test_a_legitimate_run_config_and_checkpoint_read_back_unchanged(run_dir):
    """Nothing refused in what a real run stores: the checks only ever refuse planted values."""
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert stored_config.checkpoint_run_config(ckpt, "last.ckpt") == ckpt["mmgpt"]["config"]
    assert stored_config.checkpoint_hparams(ckpt, "last.ckpt") == ckpt["hyper_parameters"]
    assert stored_config.run_config(run_dir) == OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml"))


def _load_as_mmgpt_eval_does(path: Path, out: Path) -> None:
    """What ``mmgpt-eval`` builds from a checkpoint before running anything: the module, the stored data config,
    the datamodule."""
    from mmgpt.cli.common import build_datamodule
    from mmgpt.training.lit_module import MultimodalModule
    from mmgpt.training.safe_load import read_checkpoint, safe_data_config, stored_run_config

    module = MultimodalModule.load_from_checkpoint(path)
    run_cfg = stored_run_config(read_checkpoint(path), path)
    build_datamodule(safe_data_config(run_cfg["data"], path, out), module.hparams.net)


@pytest.mark.slow
def test_no_string_of_a_stored_checkpoint_config_ever_runs_when_replaced(run_dir, tmp_path):
    """Property: every string value of a real checkpoint's stored config (``hyper_parameters`` and
    ``mmgpt.config``), replaced in turn by an interpolation and by a ``{_target_: ...}`` mapping, is refused or
    ignored by loading, never run; a refusal is a UserError (one line from the commands), never another error."""
    from mmgpt.errors import UserError
    from tests.helpers.planted import target_node

    marker = tmp_path / "marker"
    real = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    sections = {"hyper_parameters": real["hyper_parameters"], "mmgpt.config": real["mmgpt"]["config"]}
    crafted, tried, refused = tmp_path / "crafted.ckpt", 0, 0
    for name, section in sections.items():
        for path, value in list(leaves(section)):
            if not isinstance(value, str):
                continue
            for planted in (interpolations(marker)["custom_resolver"], target_node(marker)):
                ckpt = copy.deepcopy(real)
                plant(ckpt["hyper_parameters"] if name == "hyper_parameters" else ckpt["mmgpt"]["config"],
                      list(path), copy.deepcopy(planted))
                torch.save(ckpt, crafted)
                tried += 1
                try:
                    _load_as_mmgpt_eval_does(crafted, tmp_path / "eval")
                except UserError:
                    refused += 1
                assert not marker.exists(), f"{name}.{'.'.join(map(str, path))} ran {planted!r}"
    assert tried > 100 and refused >= tried // 2, (tried, refused)  # every interpolation at least is refused
