"""Every fusion trains on top of pretrained backbones (tiny random ones, loaded by path): configs composed with the
encoder groups as a user writes them, the datamodule built with the encoders' processors, loss going down; and
mmgpt-train / mmgpt-eval end to end. One family set per fusion family in the default suite, the matrix `slow`."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from mmgpt.cli.common import build_datamodule
from mmgpt.config import CONFIG_DIR
from mmgpt.presets import FEATURE_FUSIONS
from mmgpt.registry import build_network
from tests.helpers.backbones import FAMILIES, TIMM_KWARGS, TIMM_MODEL

pytest.importorskip("transformers")
pytest.importorskip("timm")

#: every fusion but MMSA's feature-only ones (concat, early_lstm: per-modality vectors / aligned features)
FUSIONS = sorted(p.stem for p in (CONFIG_DIR / "model" / "fusion").glob("*.yaml") if p.stem not in FEATURE_FUSIONS)
#: modality -> family of each backbone set (the others stay scratch)
SETS = {
    "bert+vit+wav2vec2": {"text": "bert", "image": "vit", "audio": "wav2vec2"},
    "gpt2+clip+whisper": {"text": "gpt2", "image": "clip", "audio": "whisper"},
    "timm": {"image": "timm"},
}
FAST = {("late", "bert+vit+wav2vec2"), ("cross_attention", "gpt2+clip+whisper"), ("early", "timm")}


def backbone_overrides(families: dict[str, str], backbones: dict[str, Path]) -> list[str]:
    """The command-line overrides that place each backbone at its modality (the README's syntax)."""
    out = []
    for modality, family in families.items():
        kind = FAMILIES[family][1]
        at = f"model.net.encoders.{modality}"
        if family == "timm":
            out += [f"model/encoder/{kind}@{at}=timm", f"{at}.model_name={TIMM_MODEL}",
                    f"{at}.checkpoint_path={backbones[family]}",
                    "+" + f"{at}.model_kwargs=" + "{" + ",".join(f"{k}:{v}" for k, v in TIMM_KWARGS.items()) + "}"]
        else:
            out += [f"model/encoder/{kind}@{at}=hf", f"{at}.name_or_path={backbones[family]}"]
    return out


def short_run(compose_cfg, backbones, fusion: str, families: dict[str, str], steps: int = 12) -> tuple[float, float]:
    cfg = compose_cfg(["experiment=smoke", f"model/fusion={fusion}", "model.dim=16", "data.num_train=16",
                       "data.batch_size=16", "data.augment=false", "data.max_audio_seconds=0.5",
                       *backbone_overrides(families, backbones)])
    net_spec = OmegaConf.to_container(cfg.model.net, resolve=True)
    datamodule = build_datamodule(cfg.data, net_spec)
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    torch.manual_seed(0)
    net = build_network(net_spec, datamodule.num_classes)
    for modality in families:  # the backbone and its processor are the chosen ones (unless a unimodal fusion
        assert type(datamodule.processors[modality]).__module__.endswith("hf_processors")  # leaves it unbuilt)
        assert modality not in net.encoders or len(net.encoders[modality].identity.sha256) == 64
    optimizer = torch.optim.AdamW(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(net(batch).logits, batch.labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    return losses[0], min(losses[-3:])


@pytest.mark.parametrize("fusion,families", [
    pytest.param(f, s, marks=() if (f, s) in FAST else pytest.mark.slow) for f in FUSIONS for s in SETS])
def test_every_fusion_trains_on_backbones(compose_cfg, backbones, fusion, families):
    first, last = short_run(compose_cfg, backbones, fusion, SETS[families])
    assert last < 0.9 * first, (first, last)


def test_the_default_config_is_unchanged_by_the_encoder_groups(compose_cfg):
    cfg = compose_cfg([])
    text = OmegaConf.to_container(cfg.model.net.encoders.text)
    assert list(cfg.model.net.encoders) == ["text", "image", "audio"]
    assert text == {"type": "text_encoder", "dim": "${model.dim}", "num_layers": "${model.encoder_layers}",
                    "num_heads": "${model.num_heads}", "max_length": "${data.max_text_length}", "tokenizer": None,
                    "causal": False,
                    "mlp_ratio": "${model.mlp_ratio}", "dropout": "${model.dropout}"}
    assert cfg.model.net.encoders.image.stem.type == "conv_stem"


def test_two_image_modalities_place_two_image_encoders(compose_cfg, backbones):
    cfg = compose_cfg(["+model/encoder/image@model.net.encoders.image2=hf",
                       f"model.net.encoders.image2.name_or_path={backbones['vit']}"])
    assert cfg.model.net.encoders.image.type == "image_encoder"
    assert cfg.model.net.encoders.image2.type == "hf_image"


@pytest.mark.slow
def test_train_then_eval_reproduces_with_backbones(backbones, tmp_path):
    import json
    import subprocess
    import sys

    run = tmp_path / "run"
    overrides = backbone_overrides(SETS["bert+vit+wav2vec2"], backbones)
    subprocess.run([sys.executable, "-m", "mmgpt.cli.train", "experiment=smoke", f"hydra.run.dir={run}",
                    "logger=csv", "model.dim=16", *overrides], check=True, capture_output=True)
    results = json.loads((run / "results.json").read_text())
    subprocess.run([sys.executable, "-m", "mmgpt.cli.evaluate", f"ckpt_path={results['best_ckpt']}", "split=test",
                    "subsets=false", f"hydra.run.dir={tmp_path / 'eval'}"], check=True, capture_output=True)
    evaluated = json.loads((tmp_path / "eval" / "eval_results.json").read_text())
    assert evaluated["metrics"]["test/loss"] == pytest.approx(results["test"]["test/loss"], abs=1e-5)


@pytest.mark.slow
def test_captioning_on_backbones_then_generate_from_an_image_file(backbones, tmp_path):
    """mmgpt-generate builds its batch through the processors the checkpoint's encoders declare (a CLIP image
    processor here, not the scratch 32 px resize)."""
    import subprocess
    import sys

    from PIL import Image

    run = tmp_path / "run"
    overrides = backbone_overrides({"image": "clip", "audio": "whisper"}, backbones)
    subprocess.run([sys.executable, "-m", "mmgpt.cli.train", "experiment=smoke", "task=caption", "test=false",
                    f"hydra.run.dir={run}", "logger=csv", "model.dim=16", *overrides], check=True, capture_output=True)
    image = tmp_path / "a.png"
    Image.new("RGB", (50, 40), (200, 30, 30)).save(image)
    ckpt = next((run / "checkpoints").glob("best*.ckpt"))
    done = subprocess.run([sys.executable, "-m", "mmgpt.cli.generate", f"ckpt_path={ckpt}", f"image={image}",
                           "max_new_tokens=4"], capture_output=True, text=True, check=True)
    assert [line for line in done.stdout.splitlines() if line.startswith("[0]")]  # one text per sample
