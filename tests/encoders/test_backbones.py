"""Pretrained backbone encoders (transformers, timm) on tiny random models saved with save_pretrained and loaded by
path, as a user's download would be: parity with the library's own processor + model (end to end from a file),
padding invariance, the processor is the backbone's, offline errors, trust_remote_code, data-key contradictions."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from mmgpt.datamodules.encoder_processors import build_processors
from mmgpt.datamodules.processors import TextProcessor
from mmgpt.errors import UserError
from mmgpt.registry import SpecError, build, check_spec, for_checkpoint
from tests.helpers.backbones import FAMILIES, SAMPLE_RATE, TEXTS, TIMM_KWARGS, TIMM_MODEL, encoder_spec

pytest.importorskip("transformers")
pytest.importorskip("timm")

DATA = {"image_size": 32, "sample_rate": 8000, "max_audio_seconds": 1.0, "max_text_length": 32, "augment": False}
ATOL = 1e-5


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    """A sentence file, an odd-sized RGB image (resize + crop do work) and a 16-bit WAV clip at 22.05 kHz
    (resampled to the backbone's 16 kHz by the pipeline, as the library user would before its extractor)."""
    root = tmp_path_factory.mktemp("media")
    rng = np.random.default_rng(0)
    (root / "a.txt").write_text(TEXTS[0])
    Image.fromarray(rng.integers(0, 256, (45, 61, 3), dtype=np.uint8)).save(root / "a.png")
    sf.write(root / "a.wav", rng.uniform(-0.5, 0.5, 11025).astype(np.float32), SAMPLE_RATE, subtype="PCM_16")
    sf.write(root / "b.wav", rng.uniform(-0.5, 0.5, 4000).astype(np.float32), SAMPLE_RATE, subtype="PCM_16")
    return {"text": root / "a.txt", "image": root / "a.png", "audio": root / "a.wav", "short": root / "b.wav"}


def encoder_and_processor(family: str, path: Path, data: dict = DATA):
    spec = encoder_spec(family, path)
    encoder = build(spec, f"encoders.{family}", "encoder").eval()
    return encoder, build_processors({"encoders": {"x": spec}}, data)["x"]


def through_mmgpt(processor, source, encoder) -> torch.Tensor:
    """A raw file through mmgpt's pipeline (decode -> transform -> collate) and encoder.hidden -> (N, H)."""
    value = source.read_text() if processor.kind == "text" else processor.transform(processor.decode(source),
                                                                                   train=False)
    x, mask, _ = processor.collate([value])
    with torch.no_grad():
        return encoder.hidden(x, mask).tokens[0]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_built_from_a_spec_with_identity_and_layers(backbones, family):
    encoder = build(encoder_spec(family, backbones[family]), f"encoders.{family}", "encoder")
    assert len(encoder.identity.sha256) == 64
    assert len(encoder.layers()) == 2
    assert encoder.proj.out_features == 16
    assert not any(n.startswith(("decoder.", "text_model.")) for n, _ in encoder.backbone.named_parameters())


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_text_parity_with_the_library(backbones, media, family):
    from transformers import AutoModel, AutoTokenizer

    encoder, processor = encoder_and_processor(family, backbones[family])
    ours = through_mmgpt(processor, media["text"], encoder)
    tok = AutoTokenizer.from_pretrained(backbones[family])
    ref = tok(media["text"].read_text(), return_tensors="pt")
    ids, _, _ = processor.collate([media["text"].read_text()])
    assert ids[0].tolist() == ref["input_ids"][0].tolist()  # the backbone's own tokenizer
    with torch.no_grad():
        expected = AutoModel.from_pretrained(backbones[family]).eval()(**ref).last_hidden_state[0]
    torch.testing.assert_close(ours, expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("family", ["vit", "clip", "siglip", "convnext"])
def test_image_parity_with_the_library(backbones, media, family):
    import transformers

    encoder, processor = encoder_and_processor(family, backbones[family])
    ours = through_mmgpt(processor, media["image"], encoder)
    library = transformers.AutoImageProcessor.from_pretrained(backbones[family])
    pixels = library(images=Image.open(media["image"]), return_tensors="pt")["pixel_values"]
    x, _, _ = processor.collate([processor.transform(processor.decode(media["image"]), train=False)])
    torch.testing.assert_close(x, pixels, atol=1e-6, rtol=0)  # size, resample, crop, mean / std all the backbone's
    towers = {"clip": transformers.CLIPVisionModel, "siglip": transformers.SiglipVisionModel}
    model = towers.get(family, transformers.AutoModel).from_pretrained(backbones[family]).eval()
    with torch.no_grad():
        expected = model(pixel_values=pixels).last_hidden_state[0]
    if family == "convnext":  # a (H, h, w) feature map: h * w tokens, row-major
        assert ours.shape == (16, 16)  # stride-4 stem, one stride-2 stage: 32 px -> 4 x 4
        expected = expected.flatten(1).T
    torch.testing.assert_close(ours, expected, atol=ATOL, rtol=0)


def test_timm_parity_with_the_library(backbones, media):
    import timm
    from timm.data import create_transform, resolve_data_config

    encoder, processor = encoder_and_processor("timm", backbones["timm"])
    ours = through_mmgpt(processor, media["image"], encoder)
    model = timm.create_model(TIMM_MODEL, pretrained=False, checkpoint_path=str(backbones["timm"]), **TIMM_KWARGS)
    config = resolve_data_config({"input_size": (3, 32, 32)}, model=model.eval())  # as for img_size=32 models
    transform = create_transform(**config, is_training=False)
    pixels = transform(Image.open(media["image"]).convert("RGB"))[None]
    assert processor.size == tuple(pixels.shape[-2:])
    with torch.no_grad():
        expected = model.forward_features(pixels)[0]
    torch.testing.assert_close(ours, expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("family", ["wav2vec2", "whisper", "ast"])
def test_audio_parity_with_the_library(backbones, media, family):
    from transformers import AutoFeatureExtractor, AutoModel, WhisperModel

    encoder, processor = encoder_and_processor(family, backbones[family])
    assert processor.sample_rate == SAMPLE_RATE and processor.derived() == {"sample_rate": SAMPLE_RATE}
    ours = through_mmgpt(processor, media["audio"], encoder)
    wave, rate = sf.read(media["audio"], dtype="float32")
    assert rate == SAMPLE_RATE
    extractor = AutoFeatureExtractor.from_pretrained(backbones[family])
    inputs = extractor(wave, sampling_rate=rate, return_tensors="pt")
    with torch.no_grad():
        if family == "whisper":
            expected = WhisperModel.from_pretrained(backbones[family]).eval().encoder(
                inputs["input_features"]).last_hidden_state[0]
        else:
            expected = AutoModel.from_pretrained(backbones[family]).eval()(**inputs).last_hidden_state[0]
    torch.testing.assert_close(ours, expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("family", ["bert", "gpt2", "wav2vec2", "whisper"])
def test_a_sample_alone_equals_the_sample_padded_in_a_batch(backbones, media, family):
    encoder, processor = encoder_and_processor(family, backbones[family])
    if processor.kind == "text":
        short, longer = TEXTS[2], TEXTS[3] + " " + TEXTS[0]
    else:
        short = processor.transform(processor.decode(media["short"]), train=False)
        longer = processor.transform(processor.decode(media["audio"]), train=False)
    with torch.no_grad():
        alone = encoder.hidden(*processor.collate([short])[:2])
        batch = encoder.hidden(*processor.collate([longer, short, None])[:2])
    n = int(alone.mask[0].sum())
    assert alone.mask[0].all() or family == "whisper"  # Whisper: its fixed window is masked past the clip
    assert int(batch.mask[1].sum()) == n and batch.mask[1, :n].all() and not batch.mask[1, n:].any()
    assert int(batch.mask[0].sum()) > n  # the longer sample has more valid tokens
    torch.testing.assert_close(batch.tokens[1, :n], alone.tokens[0, :n], atol=ATOL, rtol=0)


def test_whisper_masks_frames_past_the_clip_after_the_encoder(backbones, media):
    encoder, processor = encoder_and_processor("whisper", backbones["whisper"])
    clip = processor.transform(processor.decode(media["short"]), train=False)  # 0.25 s of a 1 s window
    x, mask, _ = processor.collate([clip])
    assert x.shape == (1, 16, 100) and int(mask.sum()) == 25  # frames of 160 samples
    out = encoder.hidden(x, mask)
    assert out.tokens.shape[1] == 50 and int(out.mask.sum()) == 13  # (25 - 1) // 2 + 1 after the stride-2 conv


def test_image_stored_at_another_size_goes_through_the_backbone_resize(backbones):
    _, processor = encoder_and_processor("clip", backbones["clip"])
    rendered = torch.randint(0, 256, (3, 20, 20), dtype=torch.uint8)  # e.g. the synthetic set at data.image_size
    assert processor.transform(rendered, train=False).shape == (3, 32, 32)


def test_fingerprints_name_every_setting(backbones):
    _, vit = encoder_and_processor("vit", backbones["vit"])
    _, clip = encoder_and_processor("clip", backbones["clip"])
    _, w2v = encoder_and_processor("wav2vec2", backbones["wav2vec2"])
    _, whisper = encoder_and_processor("whisper", backbones["whisper"])
    assert len({vit.fingerprint(), clip.fingerprint()}) == 2
    assert len({w2v.fingerprint(), whisper.fingerprint()}) == 2
    _, bert = encoder_and_processor("bert", backbones["bert"])
    _, bert_short = encoder_and_processor("bert", backbones["bert"], {**DATA, "max_text_length": 8})
    assert bert.fingerprint() != bert_short.fingerprint()


def test_scratch_encoders_keep_the_default_processors():
    from tests.helpers.tiny import IMAGE_SIZE, tiny_spec

    processors = build_processors(tiny_spec(decoder=False), DATA)
    assert isinstance(processors["text"], TextProcessor) and processors["text"].tokenizer.max_length == 32
    assert processors["image"].image_size == IMAGE_SIZE != DATA["image_size"]  # the encoder's own size
    assert processors["audio"].sample_rate == 8000  # the encoder names none: data.sample_rate


def test_an_explicit_data_key_contradicting_the_backbone_is_refused(backbones):
    net = {"encoders": {"audio": encoder_spec("wav2vec2", backbones["wav2vec2"]),
                        "image": encoder_spec("vit", backbones["vit"])}}
    build_processors(net, DATA)  # the data config's defaults: the backbone's values are taken
    with pytest.raises(UserError, match=r"data\.sample_rate=8000 contradicts model\.net\.encoders\.audio .*"
                                        r"sample_rate=16000"):
        build_processors(net, DATA, explicit={"sample_rate"})
    with pytest.raises(UserError, match=r"data\.image_size=64 contradicts model\.net\.encoders\.image"):
        build_processors(net, {**DATA, "image_size": 64}, explicit={"image_size"})
    build_processors(net, {**DATA, "sample_rate": 16000, "image_size": 32}, explicit={"sample_rate", "image_size"})


@pytest.mark.slow  # ~30 s on the shared machine: a whole mmgpt-train start-up
def test_a_hub_id_without_network_fails_fast_in_one_line(tmp_path):
    """mmgpt-train with a hub id, HF_HUB_OFFLINE=1 and an empty cache: one `error:` line naming the id, no traceback,
    no wait for a download."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PYTHONPATH": os.getcwd()}
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "mmgpt.cli.train", "experiment=smoke", f"hydra.run.dir={tmp_path}",
                           "model/encoder/text@model.net.encoders.text=hf",
                           "model.net.encoders.text.name_or_path=someone/no-such-model"],
                          env=env, capture_output=True, text=True, timeout=180)
    assert time.perf_counter() - t0 < 120  # imports and composing on a shared machine; no download attempt
    assert done.returncode == 1 and "Traceback" not in done.stderr + done.stdout
    errors = [line for line in (done.stderr + done.stdout).splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "'someone/no-such-model'" in errors[0] and "name_or_path=DIR" in errors[0]


@pytest.mark.parametrize("where", ["encoder", "processor"])
def test_offline_message_names_the_id_in_one_line(monkeypatch, tmp_path, where):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    spec = {"type": "hf_image", "name_or_path": "someone/no-such-model", "dim": 8}
    t0 = time.perf_counter()
    with pytest.raises(UserError, match=r"name_or_path='someone/no-such-model' is not a local folder") as e:
        if where == "encoder":
            build(spec, "model.net.encoders.image", "encoder")
        else:
            build_processors({"encoders": {"image": spec}}, DATA)
    assert "\n" not in str(e.value) and "name_or_path=DIR" in str(e.value)
    assert time.perf_counter() - t0 < 20  # no download attempt, no retries


def test_trust_remote_code_only_explicitly_on_a_backbone_and_never_from_a_checkpoint():
    spec = {"type": "hf_text", "name_or_path": "dir", "dim": 8, "trust_remote_code": True}
    check_spec(spec, "model.net.encoders.text", "encoder")  # the user's explicit choice
    assert for_checkpoint(spec)["trust_remote_code"] is False  # rebuilding a checkpoint never runs model code
    with pytest.raises(SpecError, match=r"text\.trust_remote_code"):
        check_spec({"type": "text_encoder", "dim": 8, "num_layers": 1, "num_heads": 2, "trust_remote_code": True},
                   "model.net.encoders.text", "encoder")
    with pytest.raises(SpecError, match=r"trust_remote_code='yes'"):
        check_spec({**spec, "trust_remote_code": "yes"}, "model.net.encoders.text", "encoder")


def test_hidden_layer_choice_and_bad_layer(backbones):
    from transformers import AutoModel

    spec = encoder_spec("bert", backbones["bert"], layer=1)
    encoder = build(spec, "e", "encoder").eval()
    ids = torch.tensor([[2, 5, 7, 3]])
    with torch.no_grad():
        ref = AutoModel.from_pretrained(backbones["bert"]).eval()(input_ids=ids, output_hidden_states=True)
        torch.testing.assert_close(encoder.hidden(ids).tokens, ref.hidden_states[1], atol=ATOL, rtol=0)
    with pytest.raises(UserError, match="layer=7"):
        build(encoder_spec("bert", backbones["bert"], layer=7), "e", "encoder")


def test_a_timm_checkpoint_that_is_missing_is_named():
    with pytest.raises(UserError, match=r"checkpoint_path='/no/such\.pth'"):
        build({"type": "timm_image", "model_name": TIMM_MODEL, "checkpoint_path": "/no/such.pth", "dim": 8},
              "e", "encoder")


def test_manifest_and_shards_decode_through_the_backbone_processors(backbones, tmp_path):
    """A folder of files (48 px PNGs, 8 kHz WAVs) read by the manifest datamodule (through the media store) and by
    the shards datamodule: images as the library's image processor makes them, clips at the backbone's 16 kHz."""
    from transformers import AutoImageProcessor

    from mmgpt.datamodules.manifest import ManifestDataModule
    from mmgpt.datamodules.options import DataOptions
    from mmgpt.datamodules.processors import declared_processors
    from mmgpt.datamodules.shards import ShardDataModule, write_shards
    from mmgpt.datamodules.synthetic.export import export_synthetic

    export_synthetic(tmp_path / "folder", num_train=6, num_val=2, num_test=2, image_size=48, sample_rate=8000)
    write_shards(tmp_path / "folder", tmp_path / "shards", samples_per_shard=4)
    net = {"encoders": {"image": encoder_spec("clip", backbones["clip"]),
                        "audio": encoder_spec("wav2vec2", backbones["wav2vec2"])}}
    library = AutoImageProcessor.from_pretrained(backbones["clip"])
    batches = {}
    for name, make in {
        "manifest": lambda p: ManifestDataModule(str(tmp_path / "folder"), batch_size=6, shuffle=False, processors=p,
                                                 cache_dir=str(tmp_path / "store"), report_dir=str(tmp_path)),
        "shards": lambda p: ShardDataModule(str(tmp_path / "shards"), batch_size=6, num_workers=0, shuffle=False,
                                            processors=p),
    }.items():
        dm = make(build_processors(net, DATA))
        dm.setup("fit")
        batches[name] = batch = next(iter(dm.train_dataloader()))
        assert batch.inputs["image"].shape == (6, 3, 32, 32)
        for i, sample_id in enumerate(batch.ids):
            wav = tmp_path / "folder" / "audio" / "train" / f"{sample_id}.wav"
            assert int(batch.masks["audio"][i].sum()) == min(2 * sf.info(wav).frames, SAMPLE_RATE)  # 8 -> 16 kHz
            png = tmp_path / "folder" / "images" / "train" / f"{sample_id}.png"
            expected = library(images=Image.open(png), return_tensors="pt")["pixel_values"][0]
            torch.testing.assert_close(batch.inputs["image"][i], expected, atol=1e-6, rtol=0)
    assert batches["manifest"].ids == batches["shards"].ids
    torch.testing.assert_close(batches["manifest"].inputs["audio"], batches["shards"].inputs["audio"])
    # The scratch processors keep the media store's keys of before (a warm store stays warm).
    scratch = declared_processors(None, DataOptions(image_size=32, sample_rate=8000, max_audio_seconds=1.0,
                                                    max_text_length=16))
    assert scratch["image"].fingerprint() == "image:v3:size=32:max_pixels=89478485"  # the keys of the stores
    assert scratch["audio"].fingerprint() == "audio:v3:rate=8000:max=8000"  # written with DecodeSettings


@pytest.mark.slow  # a fresh interpreter (the hub cache location is read at import)
def test_a_cached_hub_id_loads_offline_with_the_same_identity(backbones, tmp_path):
    """A hub id already in the Hugging Face cache loads with HF_HUB_OFFLINE=1 (nothing fetched), model and
    tokenizer, and its identity hash is that of the same files loaded by path."""
    import shutil

    snapshot = tmp_path / "hub" / "models--someone--tiny-bert" / "snapshots" / "0123abcd"
    shutil.copytree(backbones["bert"], snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0123abcd")
    code = ("from mmgpt.registry import build\n"
            "from mmgpt.datamodules.encoder_processors import build_processors\n"
            "spec = {'type': 'hf_text', 'name_or_path': 'someone/tiny-bert', 'dim': 8}\n"
            "encoder = build(spec, 'e', 'encoder')\n"
            "processor = build_processors({'encoders': {'text': spec}}, {})['text']\n"
            "print(encoder.identity.sha256, processor.collate(['the red square'])[0].tolist())\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub"), "PYTHONPATH": os.getcwd()}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    sha, ids = done.stdout.strip().splitlines()[-1].split(" ", 1)
    assert sha == build(encoder_spec("bert", backbones["bert"]), "e", "encoder").identity.sha256
    assert ids == "[[2, 5, 7, 10, 3]]"
