"""A tiny model trained on a manifest folder of real files (some samples lacking modalities), evaluated by
``mmgpt-eval``'s function, and the files of its val split predicted through ``mmgpt.load``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import open_dict

import mmgpt
from mmgpt.cli.evaluate import evaluate
from mmgpt.cli.train import train

BATCH = 4


def train_and_eval(compose_cfg: Callable[..., Any], root: Path, out: Path, *overrides: str) -> tuple[str, Any]:
    """Train on the manifest folder ``root``; returns the best checkpoint and ``mmgpt-eval``'s saved val
    predictions (ids, labels, scores, logits)."""
    cfg = compose_cfg(["experiment=smoke", "data=manifest", f"data.root={root}", "data.image_size=16",
                       f"data.batch_size={BATCH}", "logger=csv", "model.dim=16", *overrides])
    results = train(cfg)
    ev = compose_cfg(["logger=csv"], config_name="eval")
    with open_dict(ev):
        ev.ckpt_path, ev.split, ev.subsets = results["best_ckpt"], "val", False
        ev.feature_cache.mode = "off"  # a frozen backbone's hidden states computed, not read from the float16 cache
        ev.paths.output_dir = str(out / "eval")
    evaluate(ev)
    return results["best_ckpt"], np.load(out / "eval" / "predictions_val.npz")


def val_rows(root: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (root / "val.jsonl").read_text().splitlines()]


def predict_files(predictor: mmgpt.Predictor, root: Path, rows: list[dict[str, Any]]) -> mmgpt.Prediction:
    """The rows' text, image and audio files through ``predict`` (None: the modality is missing)."""
    def column(key: str) -> list[Any]:
        return [None if r.get(key) is None else (r[key] if key == "text" else str(root / r[key])) for r in rows]

    inputs = {m: column(m) for m in ("text", "image", "audio") if m in predictor.modalities}  # unimodal: its own
    return predictor.predict(**inputs, batch_size=BATCH)


def assert_same_as_eval(predictor: mmgpt.Predictor, root: Path, saved: Any) -> None:
    """``predict`` on the val files gives ``mmgpt-eval``'s logits and scores bit for bit, and its labels."""
    rows = val_rows(root)
    assert {k for r in rows for k in ("text", "image", "audio") if r.get(k) is None} == {"text", "image", "audio"}
    out = predict_files(predictor, root, rows)
    assert [str(i) for i in saved["ids"]] == [r["id"] for r in rows]
    assert torch.equal(out.logits, torch.from_numpy(saved["logits"])), (out.logits - saved["logits"]).abs().max()
    assert torch.equal(out.probs, torch.from_numpy(saved["scores"]))
    assert out.labels == [predictor.class_names[i] for i in saved["scores"].argmax(1)]
