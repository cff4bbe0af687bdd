"""``mmgpt.load(...).predict`` on files equals ``mmgpt-eval``'s predictions of the same samples, bit for bit on CPU
(every fusion, a scratch and a tiny ``hf`` backbone model, samples lacking modalities); ``generate`` equals
``mmgpt-generate``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import open_dict

import mmgpt
from mmgpt.cli.evaluate import evaluate
from mmgpt.cli.train import train
from tests.datamodules.conftest import good_rows, make_folder, media  # noqa: F401  (fixtures)

FAST = ["model/fusion=early"]
FUSIONS = ["model/fusion=late", "model/fusion=cross_attention", "model/fusion=tensor", "model/fusion=low_rank",
           "model/fusion=mult", "model/fusion=bottleneck", "model/fusion=resampler"]
BATCH = 4


def _train_and_eval(compose_cfg, root: Path, tmp_path: Path, *overrides: str):
    cfg = compose_cfg(["experiment=smoke", "data=manifest", f"data.root={root}", "data.image_size=16",
                       f"data.batch_size={BATCH}", "logger=csv", "model.dim=16", *overrides])
    results = train(cfg)
    ev = compose_cfg(["logger=csv"], config_name="eval")
    with open_dict(ev):
        ev.ckpt_path, ev.split, ev.subsets = results["best_ckpt"], "val", False
        ev.paths.output_dir = str(tmp_path / "eval")
    evaluate(ev)
    return results["best_ckpt"], np.load(tmp_path / "eval" / "predictions_val.npz")


def _rows(root: Path, split: str) -> list[dict]:
    return [json.loads(line) for line in (root / f"{split}.jsonl").read_text().splitlines()]


def _predict_files(predictor: mmgpt.Predictor, root: Path, rows: list[dict]) -> mmgpt.Prediction:
    def column(key: str) -> list:
        return [None if r.get(key) is None else (r[key] if key == "text" else str(root / r[key])) for r in rows]

    return predictor.predict(text=column("text"), image=column("image"), audio=column("audio"), batch_size=BATCH)


def check_predict_equals_eval(compose_cfg, make_folder, tmp_path, *overrides: str) -> None:  # noqa: F811
    root = make_folder(train=good_rows(16), val=good_rows(10), test=good_rows(4))
    ckpt, saved = _train_and_eval(compose_cfg, root, tmp_path, *overrides)
    rows = _rows(root, "val")
    assert any(r["text"] is None for r in rows) and any(r["image"] is None for r in rows)
    assert any(r["audio"] is None for r in rows)
    predictor = mmgpt.load(ckpt)
    out = _predict_files(predictor, root, rows)
    assert [str(i) for i in saved["ids"]] == [r["id"] for r in rows]
    assert torch.equal(out.logits, torch.from_numpy(saved["logits"])), (out.logits - saved["logits"]).abs().max()
    assert torch.equal(out.probs, torch.from_numpy(saved["scores"]))
    assert out.labels == [predictor.class_names[i] for i in saved["scores"].argmax(1)]


@pytest.mark.parametrize("overrides", [FAST], ids=lambda o: o[0].split("=")[1])
def test_predict_equals_eval(compose_cfg, make_folder, tmp_path, overrides) -> None:  # noqa: F811
    check_predict_equals_eval(compose_cfg, make_folder, tmp_path, *overrides)


@pytest.mark.slow
@pytest.mark.parametrize("overrides", [[f] for f in FUSIONS], ids=lambda o: o[0].split("=")[1])
def test_predict_equals_eval_every_fusion(compose_cfg, make_folder, tmp_path, overrides) -> None:  # noqa: F811
    check_predict_equals_eval(compose_cfg, make_folder, tmp_path, *overrides)
