"""Each benchmark's experiment (conf/experiment/<name>.yaml) trains end to end on a fixture written in the
distributed format: the datamodule, the declared modalities' encoders, the task's objective and metrics."""

from __future__ import annotations

import pytest

from tests.helpers.benchmarks import MOSEI_DIMS, write_avmnist, write_hateful_memes, write_mmimdb, write_mmsa

TINY = ["model.dim=16", "model.num_heads=2", "logger=csv", "debug=fdr", "data.num_workers=0", "data.batch_size=4"]


def _write(name: str, root):  # noqa: ANN202
    if name in ("mosi", "mosei"):
        path = root / "unaligned_50.pkl"
        write_mmsa(path, aligned=False, dims=MOSEI_DIMS if name == "mosei" else {"text": 12, "audio": 5,
                                                                                    "vision": 20},
                   seq_lens=(50, 30, 20), sizes={"train": 8, "valid": 4, "test": 4})
        return path
    if name == "avmnist":
        write_avmnist(root, num_train=12, num_test=4)
        return root
    if name == "mmimdb_features":
        from tests.helpers.benchmarks import write_mmimdb_hdf5

        pytest.importorskip("h5py")
        root.mkdir(parents=True)
        write_mmimdb_hdf5(root / "multimodal_imdb.hdf5")
        return root / "multimodal_imdb.hdf5"
    if name == "mmimdb":
        genres = ["Drama", "Comedy", "Horror"]
        movies = {part: [{"id": f"{part}{i}", "plot": [f"plot of {part} {i}"], "genres": [genres[i % 3]]}
                         for i in range(6)] for part in ("train", "dev", "test")}
        write_mmimdb(root, movies)
        return root
    rows = {f: [{"id": k * 10 + i, "label": i % 2, "text": f"meme {i}"} for i in range(6)]
            for k, f in enumerate(("train.jsonl", "dev_seen.jsonl", "test_seen.jsonl"))}
    write_hateful_memes(root, rows)
    return root


@pytest.mark.parametrize(("name", "metric"), [("mosi", "mae"), ("mosei", "acc2_nonzero"), ("avmnist", "acc"),
                                              ("mmimdb", "f1_micro"), ("mmimdb_features", "f1_macro"),
                                              ("hateful_memes", "auroc")])
def test_experiment_trains_on_its_fixture(tmp_path, compose_cfg, name, metric):
    from mmgpt.cli.train import train

    root = _write(name, tmp_path / "data")
    overrides = [f"experiment={name}", f"data.root={root}", *TINY]
    if name == "avmnist":
        overrides.append("data.train_size=9")  # MultiBench's 55000 of 60000, scaled to the fixture
    cfg = compose_cfg(overrides)
    results = train(cfg)
    assert results["global_step"] == 1
    assert f"val/{metric}" in results["val"] and f"test/{metric}" in results["test"]


def test_mosei_with_bert_token_ids_and_a_text_encoder(tmp_path, compose_cfg):
    from mmgpt.cli.train import train

    root = _write("mosei", tmp_path / "data")
    cfg = compose_cfg(["experiment=mosei", f"data.root={root}", "data.text=bert", *TINY,
                       "~model/encoder/features@model.net.encoders.language",
                       "+model/encoder/text@model.net.encoders.language=scratch",
                       "+model.net.encoders.language.vocab_size=30522", "model.net.encoders.language.tokenizer=ids",
                       "data.max_text_length=50"])
    assert train(cfg)["global_step"] == 1


def test_mmgpt_eval_rebuilds_benchmark_data_from_the_checkpoint(tmp_path, compose_cfg):
    """The checkpoint's stored data config names a benchmark datamodule (allowed by safe_load); mmgpt-eval
    reads the MMSA pickle again (through the restricted unpickler) and reproduces the validation MAE."""
    from omegaconf import open_dict

    from mmgpt.cli.evaluate import evaluate
    from mmgpt.cli.train import train

    root = _write("mosei", tmp_path / "data")
    cfg = compose_cfg(["experiment=mosei", f"data.root={root}", *TINY[:3], "data.num_workers=0",
                       "data.batch_size=4", "trainer.max_epochs=1", "model/fusion=late"])
    results = train(cfg)
    eval_cfg = compose_cfg([f"ckpt_path={results['best_ckpt']}"], config_name="eval")
    with open_dict(eval_cfg):
        eval_cfg.paths.output_dir = str(tmp_path / "eval")
    out = evaluate(eval_cfg)
    assert out["metrics"]["val/mae"] == pytest.approx(results["val"]["val/mae"], abs=1e-5)
    assert "acoustic+language+visual" in out["subsets"] and "visual" in out["subsets"]


MMSA_RECIPES = [("mosi_mmsa_tfn", "tensor", 1e-3, 32), ("mosi_mmsa_lmf", "low_rank", 1e-3, 64),
                ("mosi_mmsa_mult", "mult_mmsa", 2e-3, 16), ("mosi_mmsa_lf_dnn", "concat", 1e-3, 128),
                ("mosi_mmsa_ef_lstm", "early_lstm", 1e-3, 32)]


@pytest.mark.parametrize(("experiment", "fusion", "lr", "batch_size"), MMSA_RECIPES)
def test_mmsa_recipes_compose_over_mosi(compose_cfg, experiment, fusion, lr, batch_size):
    """experiment=mosi_mmsa_<model>: MMSA's training recipe for that model (optimizer, constant rate, batch,
    patience; MulT's plateau schedule) and its network (tests/test_mmsa_exact.py), composed over experiment=mosi (its
    data and task; its modalities, with MMSA's sub-networks as their encoders)."""
    cfg = compose_cfg([f"experiment={experiment}", "data.root=unused.pkl"])
    schedule = cfg.model.module.scheduler
    assert cfg.model.fusion.type == fusion
    if experiment == "mosi_mmsa_mult":
        assert (schedule.type, schedule.factor, schedule.patience) == ("plateau", 0.1, 5)
    else:
        assert schedule is None
    assert (cfg.model.module.optimizer.type, cfg.model.module.optimizer.lr) == ("adam", lr)
    assert cfg.data.batch_size == batch_size and cfg.callbacks.early_stopping.patience == 8
    assert cfg.primary_metric.name == "mae" and sorted(cfg.model.net.encoders) == ["acoustic", "language", "visual"]


@pytest.mark.slow
@pytest.mark.parametrize("experiment", [r[0] for r in MMSA_RECIPES])
def test_mmsa_recipes_train(tmp_path, compose_cfg, experiment):
    from mmgpt.cli.train import train

    root = _write("mosi", tmp_path / "data")
    if experiment == "mosi_mmsa_ef_lstm":  # MMSA's EF-LSTM reads the word-aligned file (the same steps everywhere)
        root = tmp_path / "data" / "aligned_50.pkl"
        write_mmsa(root, aligned=True, dims={"text": 12, "audio": 5, "vision": 20}, seq_lens=(50, 50, 50),
                   sizes={"train": 8, "valid": 4, "test": 4})
    cfg = compose_cfg([f"experiment={experiment}", f"data.root={root}", "logger=csv", "debug=fdr"])
    assert train(cfg)["global_step"] == 1
