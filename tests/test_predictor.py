"""``mmgpt.load(...).predict`` on files equals ``mmgpt-eval``'s predictions of the same samples, bit for bit on CPU
(every fusion, a scratch and a tiny ``hf`` backbone model, samples lacking modalities); ``generate`` equals
``mmgpt-generate``."""

from __future__ import annotations

import pytest

import mmgpt
from tests.datamodules.conftest import good_rows, make_folder, media  # noqa: F401  (fixtures)
from tests.helpers.predict import assert_same_as_eval, train_and_eval

FUSIONS = ["late", "cross_attention", "tensor", "low_rank", "mult", "bottleneck", "resampler", "unimodal_text"]


def _check(compose_cfg, make_folder, tmp_path, *overrides: str):  # noqa: F811, ANN202
    root = make_folder(train=good_rows(16), val=good_rows(10), test=good_rows(4))
    ckpt, saved = train_and_eval(compose_cfg, root, tmp_path, *overrides)
    assert_same_as_eval(mmgpt.load(ckpt), root, saved)
    return root


def test_predict_equals_eval(compose_cfg, make_folder, tmp_path) -> None:  # noqa: F811
    root = _check(compose_cfg, make_folder, tmp_path, "model/fusion=early")
    check_in_memory_inputs(mmgpt.load(tmp_path / "run" / "checkpoints" / "last.ckpt"), root)


def check_in_memory_inputs(predictor: mmgpt.Predictor, root) -> None:
    """PIL images, (H, W, 3) arrays and (waveform, rate) pairs predict as their files do; one sample, or one value
    given for a list of others, is repeated; an unknown modality is one line."""
    import numpy as np
    import soundfile as sf
    import torch
    from PIL import Image

    image, audio = root / "img" / "red.png", root / "wav" / "stereo44k.wav"
    wave, rate = sf.read(str(audio), dtype="float32")
    files = predictor.predict(text=["a", "b"], image=str(image), audio=str(audio))
    with Image.open(image) as im:
        pil = predictor.predict(text=["a", "b"], image=im.copy(), audio=(wave, rate))
        array = predictor.predict(text=["a", "b"], image=np.asarray(im.convert("RGB")), audio=str(audio))
    assert torch.equal(files.logits, pil.logits) and torch.equal(files.logits, array.logits)
    one = predictor.predict(text="a", image=str(image), audio=str(audio))
    assert one.logits.shape[0] == 1 and torch.allclose(one.logits[0], files.logits[0], atol=1e-5)
    with pytest.raises(mmgpt.errors.UserError, match="no modality 'poster'"):
        predictor.predict(poster="x.png")


@pytest.mark.slow
@pytest.mark.parametrize("fusion", FUSIONS)
def test_predict_equals_eval_every_fusion(compose_cfg, make_folder, tmp_path, fusion) -> None:  # noqa: F811
    _check(compose_cfg, make_folder, tmp_path, f"model/fusion={fusion}")


@pytest.mark.slow
def test_predict_equals_eval_hf_backbone(compose_cfg, make_folder, tmp_path) -> None:  # noqa: F811
    from tests.helpers.backbones import make_bert

    bert = make_bert(tmp_path / "bert")
    _check(compose_cfg, make_folder, tmp_path, "model/fusion=early", f"encoders.text=hf:{bert}")


@pytest.mark.slow
def test_generate_equals_mmgpt_generate(compose_cfg, tmp_path) -> None:
    import numpy as np
    import soundfile as sf
    from omegaconf import OmegaConf
    from PIL import Image

    from mmgpt.cli.generate import run_generate
    from mmgpt.cli.train import train

    cfg = compose_cfg(["experiment=smoke", "debug=fdr", "task=caption", "model/fusion=cross_attention", "logger=csv",
                       "trainer.fast_dev_run=false", "trainer.max_steps=1", "trainer.limit_val_batches=1",
                       "model.module.objectives.lm.max_new_tokens=4"])
    train(cfg)
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    image, audio = tmp_path / "a.png", tmp_path / "a.wav"
    Image.fromarray((np.random.default_rng(0).random((20, 20, 3)) * 255).astype("uint8")).save(image)
    sf.write(audio, (np.random.default_rng(1).standard_normal(4000) * 0.1).astype("float32"), 16000)
    predictor = mmgpt.load(ckpt)
    for sampling in ({"temperature": 0.0}, {"temperature": 0.8, "top_k": 10, "top_p": 0.95}):
        args = OmegaConf.create({"ckpt_path": str(ckpt), "image": str(image), "audio": str(audio),
                                 "prompt": ["2 red", "1"], "num_samples": 1, "max_new_tokens": 6, "top_k": None,
                                 "top_p": None, "use_cache": True, "seed": 3, "device": "cpu", **sampling})
        expected = run_generate(args)
        got = predictor.generate(image=str(image), audio=str(audio), prompt=["2 red", "1"], max_new_tokens=6,
                                 seed=3, **sampling)
        assert got == expected and got[0].startswith("2 red")
    image_only = predictor.generate(image=str(image), prompt="1", max_new_tokens=4)  # audio missing
    assert len(image_only) == 1 and image_only[0].startswith("1")
