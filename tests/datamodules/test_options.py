"""The shared data options, declared once (datamodules/options.py): every datamodule's signature, every data
config and the misspelt-key check read the one declaration."""

from __future__ import annotations

import inspect

import pytest
from hydra import compose, initialize_config_dir

from mmgpt.config import CONFIG_DIR, ConfigKeyError, check_targets
from mmgpt.datamodules.benchmarks import HatefulMemesDataModule, MMSADataModule
from mmgpt.datamodules.options import FIELDS, DataOptions, config_defaults
from mmgpt.datamodules.synthetic import SyntheticDataModule

DATA = sorted(p.stem for p in (CONFIG_DIR / "data").glob("*.yaml"))


def test_options_refuse_an_unknown_key_naming_it() -> None:
    with pytest.raises(TypeError, match=r"data\.batch_sizee: not a data option"):
        DataOptions.of({"batch_sizee": 3})
    with pytest.raises(TypeError, match=r"data\.batch_sizee"):
        SyntheticDataModule(num_train=2, num_val=2, num_test=2, batch_sizee=3)


def test_a_datamodule_signature_shows_the_shared_options_with_its_own_defaults() -> None:
    params = inspect.signature(HatefulMemesDataModule).parameters
    assert set(FIELDS) <= set(params)
    assert params["image_size"].default == 64 and params["shuffle"].default is True  # its own, then the shared
    assert "modalities" not in inspect.signature(MMSADataModule).parameters  # its files fix them
    assert "modalities" in inspect.signature(SyntheticDataModule).parameters


def test_a_synthetic_datamodule_reads_the_options() -> None:
    dm = SyntheticDataModule(num_train=4, num_val=2, num_test=2, batch_size=2, image_size=16, max_text_length=8)
    assert dm.options == DataOptions(num_train=4, num_val=2, num_test=2, batch_size=2, image_size=16,
                                     max_text_length=8, augment=True)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert batch.inputs["image"].shape == (2, 3, 16, 16) and batch.inputs["text"].shape[1] <= 8


@pytest.mark.parametrize("data", DATA)
def test_every_data_config_starts_from_the_shared_defaults_and_refuses_a_misspelt_key(data: str) -> None:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"data={data}", "+data.batch_sizee=3"])
    assert set(FIELDS) <= set(cfg.data)
    assert cfg.data.seed == cfg.seed  # the run's seed, as config_defaults says
    assert config_defaults()["seed"] == "${seed}"
    with pytest.raises(ConfigKeyError, match=r"data\.batch_sizee.*is not a parameter"):
        check_targets(cfg.data, "data")


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("batch_size", "abc", "an integer"), ("batch_size", 2.5, "an integer"), ("num_train", "x", "an integer or null"),
    ("max_audio_seconds", "long", "a number"), ("augment", "yes", "true or false"),
])
def test_a_wrong_type_is_one_line_naming_the_key(key: str, value: object, expected: str) -> None:
    """``data.batch_size=abc`` was a ValueError from ``int()`` deep inside the constructor, which Hydra printed as
    "Error in call to target ... full_key: data" without the key; now a UserError naming it, one line."""
    from hydra.utils import instantiate

    from mmgpt.cli.common import user_errors
    from mmgpt.errors import UserError

    with pytest.raises(UserError, match=rf"^data\.{key}={value!r}: expected {expected}$"):
        DataOptions.of({key: value})
    cfg = {"_target_": "mmgpt.datamodules.synthetic.SyntheticDataModule", "num_train": 2, "num_val": 2,
           "num_test": 2, key: value}
    with pytest.raises(SystemExit, match=rf"^error: data\.{key}="):  # through Hydra's instantiate, as mmgpt-train
        user_errors(instantiate)(cfg)
    assert DataOptions.of({"max_audio_seconds": 2, "num_train": None, "pin_memory": None}).max_audio_seconds == 2
