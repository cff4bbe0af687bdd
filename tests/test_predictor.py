"""``mmgpt.load(...).predict`` on files equals ``mmgpt-eval``'s predictions of the same samples, bit for bit on CPU
(every fusion, a scratch and a tiny ``hf`` backbone model, samples lacking modalities); ``generate`` equals
``mmgpt-generate``."""

from __future__ import annotations

import pytest

import mmgpt
from tests.datamodules.conftest import good_rows, make_folder, media  # noqa: F401  (fixtures)
from tests.helpers.predict import assert_same_as_eval, train_and_eval

FUSIONS = ["late", "cross_attention", "tensor", "low_rank", "mult", "bottleneck", "resampler", "unimodal_text"]


def _check(compose_cfg, make_folder, tmp_path, *overrides: str) -> None:  # noqa: F811
    root = make_folder(train=good_rows(16), val=good_rows(10), test=good_rows(4))
    ckpt, saved = train_and_eval(compose_cfg, root, tmp_path, *overrides)
    assert_same_as_eval(mmgpt.load(ckpt), root, saved)


def test_predict_equals_eval(compose_cfg, make_folder, tmp_path) -> None:  # noqa: F811
    _check(compose_cfg, make_folder, tmp_path, "model/fusion=early")


@pytest.mark.slow
@pytest.mark.parametrize("fusion", FUSIONS)
def test_predict_equals_eval_every_fusion(compose_cfg, make_folder, tmp_path, fusion) -> None:  # noqa: F811
    _check(compose_cfg, make_folder, tmp_path, f"model/fusion={fusion}")


@pytest.mark.slow
def test_predict_equals_eval_hf_backbone(compose_cfg, make_folder, tmp_path) -> None:  # noqa: F811
    from tests.helpers.backbones import make_bert

    bert = make_bert(tmp_path / "bert")
    _check(compose_cfg, make_folder, tmp_path, "model/fusion=early", f"encoders.text=hf:{bert}")
