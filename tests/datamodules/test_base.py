"""The shared datamodule base: one option set for every datamodule, and what ``shards`` gained from it
(augmentation, modality dropout, pin memory) with exact resumes; ``has_split``; one audio-length rule."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir

from mmgpt.config import CONFIG_DIR
from mmgpt.datamodules.base import MultimodalDataModule
from mmgpt.datamodules.manifest import ManifestDataModule
from mmgpt.datamodules.options import FIELDS as SHARED_OPTIONS
from mmgpt.datamodules.options import config_defaults
from mmgpt.datamodules.resumable import StreamLoader
from mmgpt.datamodules.shards import ShardDataModule
from mmgpt.datamodules.synthetic import SyntheticDataModule
from tests.helpers.folders import export_and_shard

CONF = Path(__file__).parents[2] / "conf" / "data"
DATAMODULES = {"synthetic": SyntheticDataModule, "manifest": ManifestDataModule, "shards": ShardDataModule}


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """50 samples in 9 shards (two workers stream 26 and 24)."""
    return export_and_shard(tmp_path_factory.mktemp("base"), num_train=50, samples_per_shard=6, seed=1)


def test_every_datamodule_takes_every_shared_option_and_its_config_sets_it() -> None:
    """The signature a config is checked against (the class's: its own parameters and the shared options), and the
    composed data config (the YAML over the ``data/options`` node)."""
    shared = set(SHARED_OPTIONS)
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        for name, cls in DATAMODULES.items():
            params = set(inspect.signature(cls).parameters)
            assert shared <= params, (name, shared - params)
            assert "processors" in params, name  # the commands inject the encoders' processors
            assert issubclass(cls, MultimodalDataModule)
            keys = set(compose("train", overrides=[f"data={name}"]).data)
            assert shared <= keys, (name, shared - keys)


def test_a_shared_option_is_declared_once() -> None:
    """The data YAML files set only what differs from the shared defaults, and no datamodule lists the shared
    options it does not change (a new one is one field of DataOptions)."""
    defaults = config_defaults()
    for path in sorted(CONF.glob("*.yaml")):
        node = yaml.safe_load(path.read_text())
        repeated = [k for k in SHARED_OPTIONS if k in node and node[k] == defaults[k]]
        assert not repeated, f"{path.name} repeats the shared defaults of {repeated}"
    for name, cls in DATAMODULES.items():
        own = inspect.signature(cls.__init__).parameters
        listed = [k for k in SHARED_OPTIONS if k in own and own[k].default == defaults[k]]
        assert not listed, f"{name} lists the shared options {listed} with their shared defaults"


def _epoch(dm: ShardDataModule, num_workers: int, epoch: int, batches: int = 0) -> list[tuple]:
    """The training batches of ``epoch`` (from batch ``batches`` on): ids, images and presence."""
    loader = StreamLoader(dm.dataset("train"), batch_size=4, num_workers=num_workers, collate_fn=dm.train_collate)
    loader.load_state_dict({"epoch": epoch, "batches": batches})
    return [(b.ids, b.inputs["image"], torch.stack([b.present[m] for m in sorted(b.present)])) for b in loader]


def _same(a: list[tuple], b: list[tuple]) -> bool:
    return len(a) == len(b) and all(x[0] == y[0] and torch.equal(x[1], y[1]) and torch.equal(x[2], y[2])
                                    for x, y in zip(a, b))


def test_shards_augment_and_drop_modalities_in_training_only(shard_dir: Path) -> None:
    plain = ShardDataModule(str(shard_dir), batch_size=4, num_workers=0, shuffle=False)
    dm = ShardDataModule(str(shard_dir), batch_size=4, num_workers=0, shuffle=False, augment=True,
                         modality_dropout={"audio": 0.5, "image": 0.5})
    base, aug = _epoch(plain, 0, 0), _epoch(dm, 0, 0)
    images = torch.cat([b[1] for b in base]), torch.cat([b[1] for b in aug])
    flipped = [torch.equal(a.flip(-1), b) and not torch.equal(a, b) for a, b in zip(*images)]
    assert 10 < sum(flipped) < 40  # about half of 50 flipped, the rest unchanged
    assert all(f or torch.equal(a, b) for f, a, b in zip(flipped, *images))
    present = torch.cat([b[2] for b in aug], dim=1)  # (M, N)
    assert 10 < int((~present).sum()) and present.any(dim=0).all()  # modalities dropped, never all of a sample's
    assert _epoch(dm, 0, 1)[0][1].shape == aug[0][1].shape and not _same(_epoch(dm, 0, 1), aug)  # new draws
    val = next(iter(dm.val_dataloader()))
    assert all(bool(p.all()) for p in val.present.values())  # no dropout outside training
    ref = next(iter(plain.val_dataloader()))
    assert torch.equal(val.inputs["image"], ref.inputs["image"])  # and no flips


@pytest.mark.parametrize("num_workers", [0, 2])
def test_shard_randomness_follows_the_sample_so_workers_and_resumes_change_nothing(shard_dir: Path,
                                                                                   num_workers: int) -> None:
    dm = ShardDataModule(str(shard_dir), batch_size=4, num_workers=num_workers, shuffle=True, augment=True,
                         modality_dropout={"audio": 0.3, "image": 0.3, "text": 0.3})
    full = _epoch(dm, num_workers, epoch=1)
    if num_workers:  # each sample's flips do not depend on which worker read it
        by_id = {i: img for ids, imgs, _ in _epoch(dm, 0, 1) for i, img in zip(ids, imgs)}
        assert all(torch.equal(by_id[i], img) for ids, imgs, _ in full for i, img in zip(ids, imgs))
    for consumed in (1, 5, len(full) - 1):
        assert _same(_epoch(dm, num_workers, 1, consumed), full[consumed:]), consumed


def test_loading_shards_leaves_the_training_process_generators_alone(shard_dir: Path) -> None:
    dm = ShardDataModule(str(shard_dir), batch_size=4, num_workers=0, augment=True, modality_dropout={"audio": 0.5})
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    for _ in dm.train_dataloader():
        pass
    assert torch.equal(torch.rand(3), expected)


def test_pin_memory_reaches_every_datamodule_loader(shard_dir: Path) -> None:
    folder = shard_dir.parent / "folder"
    made = [ShardDataModule(str(shard_dir), batch_size=4, num_workers=0, pin_memory=True),
            ManifestDataModule(str(folder), batch_size=4, num_workers=0, pin_memory=True),
            SyntheticDataModule(num_train=8, num_val=4, num_test=4, batch_size=4, pin_memory=True)]
    for dm in made:
        dm.setup("fit")
        assert dm.train_dataloader().pin_memory and dm.val_dataloader().pin_memory, type(dm).__name__
    assert not ShardDataModule(str(shard_dir), pin_memory=False).train_dataloader().pin_memory
    auto = ShardDataModule(str(shard_dir), pin_memory=None)
    assert auto.train_dataloader().pin_memory == torch.cuda.is_available()


def test_has_split_everywhere(shard_dir: Path, tmp_path: Path) -> None:
    synthetic = SyntheticDataModule(num_train=4, num_val=2, num_test=2)
    assert all(synthetic.has_split(s) for s in ("train", "val", "test")) and not synthetic.has_split("dev")
    shards = ShardDataModule(str(shard_dir))
    assert all(shards.has_split(s) for s in ("train", "val", "test"))
    no_test = tmp_path / "no_test"
    no_test.mkdir()
    meta = json.loads((shard_dir / "shards.json").read_text())
    del meta["splits"]["test"]
    for split in ("train", "val"):
        for shard in meta["splits"][split]["shards"]:
            (no_test / shard).symlink_to(shard_dir / shard)
    (no_test / "shards.json").write_text(json.dumps(meta))
    dm = ShardDataModule(str(no_test), batch_size=4, num_workers=0)
    assert dm.has_split("val") and not dm.has_split("test")
    with pytest.raises(ValueError, match="has no test split"):
        dm.test_dataloader()


def test_one_audio_length_rule_for_every_datamodule(shard_dir: Path) -> None:
    # 0.99999 s at 8 kHz is 7999.92 samples: round() gives 8000 everywhere (int() used to give 7999 in two of them)
    folder = shard_dir.parent / "folder"
    options = {"max_audio_seconds": 0.99999, "sample_rate": 8000, "batch_size": 4}
    made = [SyntheticDataModule(num_train=4, num_val=4, num_test=4, **options),
            ManifestDataModule(str(folder), num_workers=0, **options),
            ShardDataModule(str(shard_dir), num_workers=0, **options)]
    assert {dm.processors["audio"].max_samples for dm in made} == {8000}
