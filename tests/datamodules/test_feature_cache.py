"""The frozen-feature cache (datamodules/feature_cache/) on tiny random ViT / BERT backbones saved by path.

Checked: cached == uncached network outputs (float32 storage: 1e-5; float16 storage: 1e-3 absolute on the logits,
the tolerance README states); the key changes with the weights, the layer and the preprocessing; two processes
filling one cache at once leave it valid and complete; augmentation or a trained backbone is not cached; a run of
mmgpt-train fills the cache, and a second run trains from it without running the backbones.
"""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import pytest
import torch
from omegaconf import open_dict

from mmgpt.datamodules.base import ProcessedDataset
from mmgpt.datamodules.collate import Collate
from mmgpt.datamodules.feature_cache import CachedFeatures, FeatureCache, FeatureCacheMiss, FeatureMiss, fill, install
from mmgpt.datamodules.processors import ImageProcessor
from mmgpt.datamodules.synthetic import SyntheticDataModule
from mmgpt.registry import build_network

pytest.importorskip("transformers")
from tests.helpers.cache_backbones import BertBackbone, ViTBackbone, save_bert, save_vit  # noqa: E402

DIM, SIZE = 16, 16


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("backbones")
    return {"vit": save_vit(d / "vit", image_size=SIZE), "vit2": save_vit(d / "vit2", image_size=SIZE, seed=1),
            "bert": save_bert(d / "bert")}


def spec(models: dict[str, Path], vit: str = "vit", layer: int = -1, tuning: dict | None = None) -> dict:
    sizes = {"dim": DIM, "num_layers": 1, "num_heads": 2}
    return {
        "encoders": {
            "image": {"type": "cache_vit", "path": str(models[vit]), "dim": DIM, "layer": layer,
                      **({"tuning": tuning} if tuning else {})},
            "text": {"type": "cache_bert", "path": str(models["bert"]), "dim": DIM},
            "audio": {"type": "audio_encoder", **sizes, "n_mels": 16, "n_fft": 128, "hop_length": 80},
        },
        "fusion": {"type": "early", **sizes, "modalities": ["audio", "image", "text"]},
        "head": {"type": "classification_head", "dim": DIM},
    }


def datamodule(**kw) -> SyntheticDataModule:
    dm = SyntheticDataModule(**{"num_train": 24, "num_val": 12, "num_test": 8, "image_size": SIZE, "augment": False,
                                "batch_size": 6, **kw})
    dm.setup()
    return dm


@pytest.mark.parametrize(("dtype", "atol"), [("float32", 1e-5), ("float16", 1e-3)])
def test_cached_outputs_equal_uncached(models, tmp_path, dtype, atol):
    torch.manual_seed(0)
    net = build_network(spec(models), 15).eval()
    dm = datamodule()
    plain = dict(dm.processors)
    processors = install(dm, net, root=tmp_path / "cache", dtype=dtype)
    assert sorted(processors) == ["image", "text"]  # the scratch audio encoder is not a backbone
    report = fill(dm, net, processors, batch_size=5)
    assert report.samples == 24 + 12 + 8 and report.computed["image"] == 44

    val = dm.make_dataset("val")
    uncached = ProcessedDataset(val.items, val.fields, plain, train=False)
    for rows in (range(0, 6), range(6, 12)):  # two batches: padding differs between them
        a = Collate(plain)([uncached[i] for i in rows])
        b = dm.collate([val[i] for i in rows])
        assert b.precomputed == {"image", "text"} and b.inputs["image"].shape[-1] == 32  # hidden size H
        calls = ViTBackbone.calls, BertBackbone.calls
        with torch.no_grad():
            out_a, out_b = net(a), net(b)
        assert (ViTBackbone.calls, BertBackbone.calls) == (calls[0] + 1, calls[1] + 1)  # only the uncached pass
        torch.testing.assert_close(out_b.logits, out_a.logits, atol=atol, rtol=0)
        for m in ("image", "text"):
            ea, eb = out_a.encoded[m], out_b.encoded[m]
            n = eb.mask.shape[1]
            assert torch.equal(ea.mask[:, :n], eb.mask) and not ea.mask[:, n:].any()
            torch.testing.assert_close(eb.tokens[eb.mask], ea.tokens[:, :n][eb.mask], atol=atol, rtol=0)


def _misses(dm: SyntheticDataModule, processor: CachedFeatures, split: str = "val") -> int:
    ds = dm.make_dataset(split)
    values = [processor.transform(ds.fields(item)[processor.name], train=False) for item in ds.items]
    return sum(isinstance(v, FeatureMiss) for v in values if v is not None)


def test_key_changes_with_weights_layer_and_preprocessing(models, tmp_path):
    root = tmp_path / "cache"
    net = build_network(spec(models), 15)
    dm = datamodule()
    fill(dm, net, install(dm, net, root=root), batch_size=8)
    cache = FeatureCache(root)

    def cached(net, dm, name: str = "image") -> CachedFeatures:
        inner = dm.processors[name]
        inner = inner.inner if isinstance(inner, CachedFeatures) else inner
        enc = net.encoders[name]
        return CachedFeatures(name=name, inner=inner, cache=cache, encoder_fingerprint=enc.feature_fingerprint(),
                              hidden_size=enc.proj.in_features)

    assert _misses(dm, cached(net, dm)) == 0 and _misses(dm, cached(net, dm, "text")) == 0  # same key: all hit
    other_weights = build_network(spec(models, vit="vit2"), 15)
    assert _misses(dm, cached(other_weights, dm)) == 12
    other_layer = build_network(spec(models, layer=1), 15)
    assert _misses(dm, cached(other_layer, dm)) == 12
    dm_norm = datamodule()  # other normalisation: other pixels reach the backbone
    dm_norm.processors["image"] = ImageProcessor(image_size=SIZE, mean=0.4, std=0.3)
    assert _misses(dm_norm, cached(net, dm_norm)) == 12
    dm_len = datamodule(max_text_length=32)  # another tokenizer length: the processor's fingerprint differs
    assert _misses(dm_len, cached(net, dm_len, "text")) > 0


def _fill_in_child(models: dict[str, Path], root: str, barrier) -> None:  # noqa: ANN001
    torch.set_num_threads(1)
    net = build_network(spec(models), 15)
    dm = datamodule()
    processors = install(dm, net, root=root)
    for p in processors.values():
        p.cache.store.segment_bytes = 4096  # many commits, interleaved with the other writer's
    barrier.wait()
    fill(dm, net, processors, batch_size=3)


def test_two_processes_filling_at_once_leave_a_valid_cache(models, tmp_path):
    root = tmp_path / "cache"
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_fill_in_child, args=(models, str(root), barrier)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    assert not list(root.glob("tmp-*")) and len(list(root.glob("seg-*.idx.npz"))) > 2

    net = build_network(spec(models), 15).eval()
    dm = datamodule()
    processors = install(dm, net, root=root)
    again = fill(dm, net, processors)
    assert sum(again.computed.values()) == 0 and again.cached["image"] == 44  # complete: nothing left to compute
    val = dm.make_dataset("val")
    with torch.no_grad():  # every entry holds this sample's states (a torn write would not match)
        for i in range(len(val)):
            cached = val[i]["image"]
            x = processors["image"].inner.transform(val.fields(val.items[i])["image"], train=False)
            ref = net.encoders["image"].hidden(x[None]).tokens[0]
            torch.testing.assert_close(cached.tokens, ref, atol=5e-3, rtol=5e-3)


def test_ranks_fill_disjoint_shares_that_complete_the_cache(models, tmp_path):
    net = build_network(spec(models), 15)
    dm = datamodule()
    processors = install(dm, net, root=tmp_path / "cache")
    count = fill(dm, net, processors, compute=False)
    assert count.missing["image"] == 44 and sum(count.computed.values()) == 0  # counted, nothing run
    shares = [fill(dm, net, processors, rank=r, world_size=2) for r in (0, 1)]
    assert [s.samples for s in shares] == [22, 22]
    assert shares[0].computed["image"] + shares[1].computed["image"] == 44
    processors["image"].cache.refresh()
    assert sum(fill(dm, net, processors).computed.values()) == 0


def test_not_cached_with_augmentation_or_a_trained_backbone(models, tmp_path):
    net = build_network(spec(models), 15)
    assert sorted(install(datamodule(augment=True), net, root=tmp_path)) == ["text"]  # random flips: image not
    for tuning in ({"freeze": False}, {"unfreeze_last": 1}):
        net = build_network(spec(models, tuning=tuning), 15)
        assert sorted(install(datamodule(), net, root=tmp_path)) == ["text"]


def test_a_missing_entry_is_an_error_naming_the_fix(models, tmp_path):
    net = build_network(spec(models), 15)
    dm = datamodule()
    install(dm, net, root=tmp_path / "empty")
    val = dm.make_dataset("val")
    with pytest.raises(FeatureCacheMiss, match="mmgpt-data features"):
        dm.collate([val[0], val[1]])


def _train_cfg(compose_cfg, models: dict[str, Path], cache: Path):
    cfg = compose_cfg(["experiment=smoke", "logger=csv", "data.image_size=16", "data.augment=false",
                       "data.num_train=32", "data.num_val=16", "data.num_test=16", "model.dim=16",
                       "plugins=[tests.helpers.cache_backbones]", f"feature_cache.dir={cache}"])
    with open_dict(cfg):
        cfg.model.net.encoders.image = {"type": "cache_vit", "path": str(models["vit"]), "dim": 16}
        cfg.model.net.encoders.text = {"type": "cache_bert", "path": str(models["bert"]), "dim": 16}
    return cfg


def test_training_fills_the_cache_then_trains_from_it(models, tmp_path, compose_cfg):
    from mmgpt.cli.train import train

    cache = tmp_path / "features"
    calls = ViTBackbone.calls
    first = train(_train_cfg(compose_cfg, models, cache))
    assert ViTBackbone.calls > calls  # filled: 64 images, batches of 32
    segments = sorted(cache.glob("seg-*.idx.npz"))
    assert segments and first["global_step"] == 1

    calls = ViTBackbone.calls, BertBackbone.calls
    second = train(_train_cfg(compose_cfg, models, cache))
    assert (ViTBackbone.calls, BertBackbone.calls) == calls  # trained, validated and tested without the backbones
    assert sorted(cache.glob("seg-*.idx.npz")) == segments  # nothing new to store
    assert second["val"]["val/loss"] == pytest.approx(first["val"]["val/loss"], abs=1e-6)  # same run, same result

    from mmgpt.cli.evaluate import evaluate  # mmgpt-eval reads the same cache: the run's own test metrics exactly

    eval_cfg = compose_cfg([f"ckpt_path={second['best_ckpt']}", "split=test", "subsets=false",
                            "plugins=[tests.helpers.cache_backbones]", f"feature_cache.dir={cache}"], "eval")
    with open_dict(eval_cfg):
        eval_cfg.paths.output_dir = str(tmp_path / "eval")
    out = evaluate(eval_cfg)
    assert (ViTBackbone.calls, BertBackbone.calls) == calls
    assert out["metrics"]["test/loss"] == pytest.approx(second["test"]["test/loss"], abs=1e-6)


def test_mmgpt_data_features_fills_what_training_reads(models, tmp_path, compose_cfg, capsys):
    from mmgpt.cli.data import main
    from mmgpt.cli.train import train

    cache = tmp_path / "features"
    cfg = _train_cfg(compose_cfg, models, cache)
    overrides = ["experiment=smoke", "data.image_size=16", "data.augment=false", "data.num_train=32",
                 "data.num_val=16", "data.num_test=16", "model.dim=16", "plugins=[tests.helpers.cache_backbones]",
                 f"feature_cache.dir={cache}", "~model.net.encoders.image", "~model.net.encoders.text",
                 f"+model.net.encoders.image={{type:cache_vit,path:'{models['vit']}',dim:16}}",
                 f"+model.net.encoders.text={{type:cache_bert,path:'{models['bert']}',dim:16}}",
                 f"paths.log_dir={tmp_path / 'logs'}"]
    assert main(["features", *overrides, "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "image: 64 computed, 0 already cached" in out and str(cache) in out
    calls = ViTBackbone.calls, BertBackbone.calls
    train(cfg)
    assert (ViTBackbone.calls, BertBackbone.calls) == calls  # training found every entry
    assert main(["features", *overrides]) == 0
    assert "image: 0 computed, 64 already cached" in capsys.readouterr().out


def test_content_key_follows_the_content_only():
    from mmgpt.datamodules.feature_cache import content_key

    x = torch.rand(3, 8, 8)
    assert content_key(x) == content_key(x.clone()) == content_key(x.numpy())
    assert content_key(x) != content_key(x.clone().index_put_((torch.tensor(0),) * 3, torch.tensor(2.0)))
    assert content_key(x) != content_key(x.half()) != content_key(x.reshape(3, 64))
    assert content_key("a cat") != content_key(b"a cat")
    assert content_key({"ids": [1, 2], "x": x}) == content_key({"x": x.clone(), "ids": [1, 2]})
    with pytest.raises(TypeError, match="cannot key"):
        content_key(object())


@pytest.mark.slow
def test_ddp_ranks_fill_their_shares_then_train_from_the_cache(models, tmp_path):
    """Two CPU processes (trainer=ddp_sim): each rank fills half the samples, waits at the barrier, and trains."""
    import json
    import os
    import subprocess
    import sys

    cache = tmp_path / "features"
    args = ["trainer=ddp_sim", "experiment=smoke", "logger=csv", "data.image_size=16", "data.augment=false",
            "data.num_train=32", "data.num_val=16", "data.num_test=16", "model.dim=16",
            "plugins=[tests.helpers.cache_backbones]", f"feature_cache.dir={cache}", "~model.net.encoders.image",
            f"+model.net.encoders.image={{type:cache_vit,path:'{models['vit']}',dim:16}}"]
    env = {**os.environ, "MMGPT_LOG_DIR": str(tmp_path / "logs"), "CI": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([str(Path(sys.executable).parent / "mmgpt-train"), *args], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (results,) = (tmp_path / "logs").glob("train/runs/*/results.json")
    assert json.loads(results.read_text())["world_size"] == 2
    writers = {p.name.split("-")[2] for p in cache.glob("seg-*.idx.npz")}  # seg-<time>-<pid>-<rand>
    assert len(writers) == 2  # both ranks stored their share
    from mmgpt.datamodules.disk_store import DiskStore

    assert len(DiskStore(cache)) == 32 + 16 + 16  # every image of every split once (the text encoder is scratch)


@pytest.mark.parametrize("family", ["vit", "timm", "bert", "wav2vec2", "whisper"])
def test_real_backbones_cached_equal_uncached(family, tmp_path):
    """The HF / timm encoders with their own processors (as mmgpt-train builds them): float32 storage reproduces
    the uncached network's outputs, batches padded as in training."""
    from mmgpt.datamodules.encoder_processors import build_processors
    from tests.helpers.backbones import FAMILIES, encoder_spec

    factory, kind, _ = FAMILIES[family]
    net_spec = spec({"vit": tmp_path, "bert": tmp_path})
    sizes = {"dim": DIM, "num_layers": 1, "num_heads": 2}
    net_spec["encoders"] = {
        "text": {"type": "text_encoder", **sizes, "max_length": 64},
        "image": {"type": "image_encoder", **sizes, "image_size": 32, "patch_size": 8},
        "audio": {"type": "audio_encoder", **sizes, "n_mels": 16, "n_fft": 128, "hop_length": 80},
        kind: encoder_spec(family, factory(tmp_path / "models"), dim=DIM),
    }
    torch.manual_seed(0)
    net = build_network(net_spec, 15).eval()
    data = {"image_size": 32, "augment": False}
    dm = datamodule(image_size=32, processors=build_processors(net_spec, data), num_train=8, num_test=4)
    plain = dict(dm.processors)
    processors = install(dm, net, root=tmp_path / "cache", dtype="float32")
    assert list(processors) == [kind]
    fill(dm, net, processors, batch_size=4)
    val = dm.make_dataset("val")
    uncached = ProcessedDataset(val.items, val.fields, plain, train=False)
    rows = range(0, 6)
    with torch.no_grad():
        out_a = net(Collate(plain)([uncached[i] for i in rows]))
        out_b = net(dm.collate([val[i] for i in rows]))
    torch.testing.assert_close(out_b.logits, out_a.logits, atol=1e-5, rtol=1e-4)


def test_a_changed_file_misses_and_the_others_hit(models, tmp_path):
    """A manifest folder through the media store: rewriting one image file invalidates only its entry."""
    from mmgpt.datamodules.manifest import ManifestDataModule
    from tests.datamodules.conftest import write_png, write_rows

    root = tmp_path / "data"
    for i in range(6):
        write_png(root / f"img/{i}.png", (20, 20), "RGB", (40 * i, 100, 200))
    rows = [{"id": f"s{i}", "image": f"img/{i}.png", "text": f"sample {i}", "label": "ab"[i % 2]} for i in range(6)]
    write_rows(root / "train.jsonl", rows[:4])
    write_rows(root / "val.jsonl", rows[4:])
    net = build_network(spec(models), 2)

    def filled() -> dict[str, int]:
        dm = ManifestDataModule(str(root), image_size=SIZE, batch_size=4, cache_dir=str(tmp_path / "media"),
                                report_dir=None)
        dm.setup("fit")
        return fill(dm, net, install(dm, net, root=tmp_path / "features"), batch_size=4).computed

    assert filled() == {"image": 6, "text": 6}
    assert filled() == {"image": 0, "text": 0}
    write_png(root / "img/2.png", (20, 20), "RGB", (0, 0, 0))  # new content (and size / mtime)
    assert filled() == {"image": 1, "text": 0}


def test_an_entry_that_is_not_hidden_states_of_the_width_is_computed_again(models, tmp_path, caplog):
    """A cache folder from elsewhere is data: an entry under a sample's key that is not (N, H) float hidden states
    (here: one column too many) is a miss with one warning, and filling computes it again."""
    import logging

    import numpy as np

    from mmgpt.datamodules.feature_cache import NAMESPACE, content_key

    net = build_network(spec(models), 15).eval()
    dm = datamodule()
    processors = install(dm, net, root=tmp_path / "cache")
    fill(dm, net, processors, batch_size=5)
    image = processors["image"]
    val = dm.make_dataset("val")
    key = content_key(image.inner.transform(val.fields(val.items[0])["image"], train=False))
    image.cache.store.put(NAMESPACE, image.key, key, np.zeros((3, image.hidden_size + 1), np.float16))
    image.cache.flush()
    with caplog.at_level(logging.WARNING):
        assert _misses(dm, image) == 1
    assert "is not hidden states of width 32; computing it again" in caplog.text
    assert fill(dm, net, processors, batch_size=5).computed["image"] == 1
    assert _misses(dm, image) == 0
