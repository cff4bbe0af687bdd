"""``data=manifest`` end to end: configs compose, every fusion trains on samples lacking any modalities."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from mmgpt.batch import MODALITIES
from mmgpt.cli.train import build_module, train
from mmgpt.config import check_targets
from mmgpt.datamodules.collate import Collate, random_modality_dropout
from mmgpt.datamodules.manifest import ManifestDataModule
from mmgpt.datamodules.options import DataOptions
from mmgpt.datamodules.processors import declared_processors
from tests.datamodules.conftest import FolderFactory, good_rows

FUSIONS = [
    ["model/fusion=early"],
    ["model/fusion=late"],
    ["model/fusion=late", "model/fusion/combiner=logit_average"],
    ["model/fusion=cross_attention"],
]


def manifest_cfg(compose_cfg: Callable[..., DictConfig], root: Path, *overrides: str) -> DictConfig:
    return compose_cfg(["experiment=smoke", "data=manifest", f"data.root={root}", "data.image_size=16",
                        "logger=csv", *overrides])


def test_manifest_config_composes_and_requires_root(compose_cfg: Callable[..., DictConfig],
                                                    make_folder: FolderFactory) -> None:
    root = make_folder(train=good_rows(6), val=good_rows(3))
    cfg = manifest_cfg(compose_cfg, root)
    check_targets(cfg)
    dm = instantiate(cfg.data, _convert_="all")
    assert isinstance(dm, ManifestDataModule) and dm.hparams.num_train == 128  # experiment=smoke limits splits
    assert Path(dm.hparams.cache_dir).parent == Path(cfg.paths.log_dir)
    bare = compose_cfg(["data=manifest"])
    with pytest.raises(Exception, match="root"):
        instantiate(bare.data)


@pytest.mark.parametrize("overrides", FUSIONS, ids=lambda o: "+".join(x.split("=")[1] for x in o))
def test_every_fusion_handles_any_missing_subset(compose_cfg: Callable[..., DictConfig], make_folder: FolderFactory,
                                                 overrides: list[str]) -> None:
    root = make_folder(train=good_rows(7), val=good_rows(3))
    cfg = manifest_cfg(compose_cfg, root, *overrides, "data.batch_size=7")
    dm = instantiate(cfg.data, _convert_="all")
    dm.setup("fit")
    torch.manual_seed(0)
    module = build_module(cfg, dm)
    batch = next(iter(dm.train_dataloader()))
    # Give the 7 samples every non-empty subset of modalities, one each.
    subsets = [set(c) for r in (1, 2, 3) for c in itertools.combinations(MODALITIES, r)]
    present = {m: torch.tensor([m in s for s in subsets]) for m in MODALITIES}
    batch.present = present
    out = module.net(batch)
    assert out.logits.shape == (7, 2) and torch.isfinite(out.logits).all()
    loss = torch.nn.functional.cross_entropy(out.logits, batch.labels)
    loss.backward()
    # Every parameter takes part (DDP needs no find_unused_parameters) and no gradient is NaN.
    for name, p in module.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"
    # A sample's prediction depends only on its own present modalities: changing an absent input changes nothing.
    with torch.no_grad():
        before = module.net(batch).logits
        batch.inputs["image"][~present["image"]] += 3.0
        assert torch.allclose(module.net(batch).logits, before, atol=1e-5)


def test_modality_dropout_drops_only_in_training_and_never_everything(make_folder: FolderFactory) -> None:
    root = make_folder(train=good_rows(10), val=good_rows(10))
    dm = ManifestDataModule(str(root), image_size=16, batch_size=10, modality_dropout={"image": 0.9, "text": 0.9})
    dm.setup("fit")
    torch.manual_seed(0)
    train_present = [next(iter(dm.train_dataloader())).present for _ in range(20)]
    val = next(iter(dm.val_dataloader()))
    dropped = sum(int(p["image"].sum()) for p in train_present)
    assert dropped < 0.5 * 20 * int(val.present["image"].sum())  # most images dropped in training...
    assert int(val.present["image"].sum()) == 8  # ...none in validation (2 of the 10 rows have no image)
    for p in train_present:
        assert torch.stack([p[m] for m in MODALITIES]).any(dim=0).all()  # every sample keeps a modality
    # The rule itself: a sample's only modality is never dropped.
    only = {"audio": torch.tensor([True, False]), "image": torch.tensor([False, True]),
            "text": torch.tensor([False, False])}
    kept = random_modality_dropout(only, {"audio": 0.99, "image": 0.99})
    assert kept["audio"].tolist() == [True, False] and kept["image"].tolist() == [False, True]
    with pytest.raises(ValueError, match=r"modality_dropout.audio=1.0"):
        Collate(declared_processors(None, DataOptions(image_size=16, sample_rate=100, max_audio_seconds=1.0,
                                                      max_text_length=8)),
                modality_dropout={"audio": 1.0})


def test_synthetic_datamodule_takes_modality_dropout(compose_cfg: Callable[..., DictConfig]) -> None:
    cfg = compose_cfg(["experiment=smoke", "data.num_train=16", "data.num_val=8", "data.num_test=8",
                       "data.modality_dropout.audio=0.5"])
    check_targets(cfg)
    dm = instantiate(cfg.data, _convert_="all")
    dm.setup("fit")
    torch.manual_seed(0)
    batch = next(iter(dm.train_dataloader()))
    assert 0 < int(batch.present["audio"].sum()) < 16
    assert bool(next(iter(dm.val_dataloader())).present["audio"].all())


def test_mmgpt_train_runs_on_a_manifest_folder_and_skips_bad_rows(compose_cfg: Callable[..., DictConfig],
                                                                  make_folder: FolderFactory) -> None:
    train_rows = good_rows(12) + [{"id": "bad", "text": "t", "audio": "wav/corrupt.wav", "label": "cat"}]
    root = make_folder(train=train_rows, val=good_rows(6), test=good_rows(6), labels=["cat", "dog"])
    cfg = manifest_cfg(compose_cfg, root, "data.on_error=skip", "data.batch_size=6", "model.dim=16")
    results = train(cfg)
    assert set(results["val"]) >= {"val/acc", "val/loss"} and "test/acc" in results["test"]
    report = json.loads((Path(cfg.paths.output_dir) / "data_report.json").read_text())
    assert report["skipped_rows"] == ["train.jsonl:13"] and report["samples"]["train"] == 12
    ckpt = torch.load(results["best_ckpt"], map_location="cpu", weights_only=False)
    assert ckpt["hyper_parameters"]["class_names"] == ["cat", "dog"]
