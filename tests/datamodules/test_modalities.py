"""Named modalities of any kind: four modalities of three kinds (two images, a text, a feature sequence) train with
every fusion, evaluate every modality subset and resume; bad declarations are one line naming the key."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict

from mmgpt.cli.evaluate import evaluate
from mmgpt.cli.train import build_module, train
from mmgpt.datamodules.manifest import ManifestDataModule
from mmgpt.datamodules.manifest.check import ManifestError
from mmgpt.datamodules.processors import ModalityError, parse_modalities
from mmgpt.datamodules.synthetic import SyntheticDataModule
from mmgpt.registry import SpecError
from tests.helpers.modalities import FOUR, FOUR_ENCODERS, FOUR_OVERRIDE, four_modality_folder

FUSIONS = ["early", "late", "cross_attention", "tensor", "low_rank", "mult", "bottleneck", "resampler"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return four_modality_folder(tmp_path_factory.mktemp("four") / "data")


def four_cfg(compose_cfg: Callable[..., DictConfig], root: Path, *overrides: str) -> DictConfig:
    return compose_cfg(["experiment=smoke", "data=manifest", f"data.root={root}", "data.image_size=16",
                        "data.batch_size=4", "data.num_workers=0", "logger=csv", "model.dim=16",
                        FOUR_OVERRIDE, *FOUR_ENCODERS, *overrides])


def test_batches_hold_every_declared_modality_by_kind(folder: Path) -> None:
    dm = ManifestDataModule(str(folder), image_size=16, batch_size=6, num_workers=0, modalities=FOUR, shuffle=False)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert sorted(batch.inputs) == ["photo", "poster", "text", "vision_feats"]
    assert batch.inputs["poster"].shape == batch.inputs["photo"].shape == (6, 3, 16, 16)
    feats, mask = batch.inputs["vision_feats"], batch.masks["vision_feats"]
    assert feats.shape == (6, 4, 6) and mask.sum(dim=1).tolist() == [1, 2, 0, 4, 1, 2]  # 1 + i % 4; row 2 has none
    assert batch.present["vision_feats"].tolist() == [True, True, False, True, True, True]
    assert batch.present["photo"].tolist() == [True, False, True, True, True, True]
    np.testing.assert_allclose(feats[0, :1].numpy(), np.load(folder / "feats/train0.npy"), rtol=1e-6)


@pytest.mark.parametrize("fusion", FUSIONS)
def test_every_fusion_trains_on_four_modalities(compose_cfg: Callable[..., DictConfig], folder: Path,
                                                fusion: str) -> None:
    cfg = four_cfg(compose_cfg, folder, f"model/fusion={fusion}")
    dm = instantiate(cfg.data, _convert_="all")
    dm.setup("fit")
    torch.manual_seed(0)
    module = build_module(cfg, dm)
    assert module.net.modalities == ("photo", "poster", "text", "vision_feats")
    assert module.hparams.net["encoders"]["vision_feats"]["input_dim"] == 6  # filled in from the declaration
    batch = next(iter(dm.train_dataloader()))
    module.objectives["classify"](module.net, batch).loss.backward()
    for name, encoder in module.net.encoders.items():
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder.parameters()), name


def test_train_evaluate_every_subset_and_resume(compose_cfg: Callable[..., DictConfig], folder: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    cfg = four_cfg(compose_cfg, folder, "trainer.max_epochs=1")
    first = train(cfg)
    assert first["epochs"] >= 0 and first["val"]["val/acc"] >= 0
    stored = torch.load(first["best_ckpt"], map_location="cpu", weights_only=False)
    assert stored["mmgpt"]["config"]["data"]["modalities"]["vision_feats"] == {"kind": "features", "dim": 6}
    ev_cfg = compose_cfg([f"ckpt_path={first['best_ckpt']}", "split=test", "subsets=true"], config_name="eval")
    with open_dict(ev_cfg):
        ev_cfg.paths.output_dir = str(Path(cfg.paths.output_dir) / "eval")
    ev = evaluate(ev_cfg)
    assert len(ev["subsets"]) == 15  # every non-empty subset of four modalities
    assert "photo+poster+text+vision_feats" in ev["subsets"] and "vision_feats" in ev["subsets"]
    with open_dict(cfg):
        cfg.trainer.max_epochs = 2
        cfg.resume = "auto"
    with caplog.at_level(logging.INFO, logger="mmgpt.train"):
        resumed = train(cfg)
    assert "resume=auto: continuing from" in caplog.text
    assert resumed["global_step"] == 2 * first["global_step"]


def test_declaration_errors_name_the_key() -> None:
    with pytest.raises(ModalityError, match=r"data.modalities.poster: kind 'picture' is not one of text, image"):
        parse_modalities({"poster": "picture"})
    with pytest.raises(ModalityError, match=r"data.modalities.feats: a features modality needs its feature size"):
        parse_modalities({"feats": "features"})
    with pytest.raises(ModalityError, match=r"data.modalities.label: a modality name must be an identifier"):
        parse_modalities({"label": "text"})
    with pytest.raises(ModalityError, match=r"data.modalities.poster.size: not an option of a image modality"):
        parse_modalities({"poster": {"kind": "image", "size": 3}})
    with pytest.raises(ModalityError, match=r"data.modalities.poster: the synthetic data set has no image modality"):
        SyntheticDataModule(num_train=2, num_val=2, num_test=2, modalities={"poster": "image"})
    assert SyntheticDataModule(num_train=2, num_val=2, num_test=2,
                               modalities={"image": "image", "text": "text"}).modalities == {"image": "image",
                                                                                            "text": "text"}


def test_a_declared_modality_no_row_has_is_an_error_naming_it(folder: Path) -> None:
    dm = ManifestDataModule(str(folder), image_size=16, batch_size=4, num_workers=0,
                            modalities={**FOUR, "acoustic": {"kind": "features", "dim": 3}})
    with pytest.raises(ManifestError, match=r"data.modalities declares 'acoustic' \(features\), but no row has"):
        dm.setup("fit")


def test_an_undeclared_column_is_an_error_naming_it_and_the_declaration(tmp_path: Path, folder: Path) -> None:
    root = tmp_path / "csv"
    root.mkdir()
    (root / "train.csv").write_text("id,text,posterr,label\na,hello,x.png,neg\nb,bye,y.png,pos\n")
    (root / "val.csv").write_text("id,text,label\nc,hello,neg\n")
    dm = ManifestDataModule(str(root), batch_size=2, num_workers=0, modalities={"text": "text", "poster": "image"})
    with pytest.raises(ManifestError) as e:
        dm.setup("fit")
    assert "train.csv:1: unknown column(s) ['posterr']; allowed: ['id', 'poster', 'text', 'label', 'caption']" \
        in str(e.value)
    assert "data.modalities={poster: image, text: text, posterr: <text|image|audio|features>}" in str(e.value)
    rows = [json.loads(line) for line in (folder / "train.jsonl").read_text().splitlines()]
    assert "vision_feats" in rows[0]
    dm = ManifestDataModule(str(folder), image_size=16, batch_size=4, num_workers=0,
                            modalities={k: v for k, v in FOUR.items() if k != "vision_feats"})
    with pytest.raises(ManifestError, match=r"unknown key\(s\) \['vision_feats'\]"):
        dm.setup("fit")


def test_an_encoder_must_match_a_declared_modality_and_its_kind(compose_cfg: Callable[..., DictConfig],
                                                                 folder: Path) -> None:
    cfg = four_cfg(compose_cfg, folder, "+model/encoder/audio@model.net.encoders.sound=scratch")
    dm = instantiate(cfg.data, _convert_="all")
    with pytest.raises(SpecError, match=r"model.net.encoders.sound: the data declares no modality 'sound'"):
        build_module(cfg, dm)
    cfg = four_cfg(compose_cfg, folder, "+model/encoder/text@model.net.encoders.poster=scratch")
    with pytest.raises(SpecError, match=r"model.net.encoders.poster: 'text_encoder' reads text inputs, but "
                                        r"data.modalities.poster is image"):
        build_module(cfg, dm)


def test_mmgpt_data_check_takes_the_declaration(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mmgpt.cli.data import main

    assert main(["check", str(folder), "--modalities", json.dumps(FOUR)]) == 0
    assert "result: OK" in capsys.readouterr().out
    assert main(["check", str(folder)]) == 1  # undeclared: poster, photo, vision_feats are unknown keys
    assert "unknown key(s) ['photo', 'poster', 'vision_feats']" in capsys.readouterr().out
    assert main(["check", str(folder), "--modalities", '{"poster": "picture"}']) == 2
    assert "--modalities.poster: kind 'picture' is not one of" in capsys.readouterr().err


def test_features_collate_pads_with_zeros_masks_and_marks_absent_samples():
    from mmgpt.datamodules.processors import FeaturesProcessor

    proc = FeaturesProcessor(dim=2)
    values = [np.ones((3, 2), dtype=np.float64), None, torch.full((1, 2), 2.0), np.zeros((0, 2))]
    x, mask, present = proc.collate(values)
    assert x.dtype == torch.float32 and x.shape == (4, 3, 2)
    assert mask.tolist() == [[True] * 3, [False] * 3, [True, False, False], [False] * 3]
    assert present.tolist() == [True, False, True, False]
    assert x[0].eq(1).all() and x[1].eq(0).all() and x[2, 0].eq(2).all() and x[2, 1:].eq(0).all()
    x, mask, present = proc.collate([None, None])  # nobody has it: one masked step
    assert x.shape == (2, 1, 2) and not mask.any() and not present.any()
