"""Each benchmark reader reads a fixture written in exactly the distributed format and yields the documented
shapes, splits, ids and labels."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from mmgpt.datamodules.benchmarks import BenchmarkError, read_avmnist, read_jsonl, read_mmimdb, read_mmsa
from mmgpt.datamodules.benchmarks.hateful_memes import split_file
from mmgpt.datamodules.processors import ImageProcessor
from mmgpt.datamodules.safe_pickle import UnsafePickleError
from tests.helpers.benchmarks import MOSEI_DIMS, MOSI_DIMS, write_avmnist, write_hateful_memes, write_mmimdb, write_mmsa


# -- CMU-MOSI / CMU-MOSEI (MMSA pickles) -------------------------------------------------------------------------
@pytest.mark.parametrize("dims", [MOSI_DIMS, MOSEI_DIMS], ids=["mosi", "mosei"])
def test_mmsa_aligned(tmp_path, dims):
    path = tmp_path / "aligned_50.pkl"
    data = write_mmsa(path, aligned=True, dims=dims)
    splits = read_mmsa(path)
    assert set(splits) == {"train", "val", "test"}
    for ours, theirs in (("train", "train"), ("val", "valid"), ("test", "test")):
        t, d = splits[ours], data[theirs]
        assert len(t) == len(d["id"]) and t.ids == list(d["id"])
        assert t.labels.dtype == np.float32 and np.array_equal(t.labels, d["regression_labels"])
        assert t.columns["language"].shape == (len(t), 50, dims["text"])
        assert t.columns["acoustic"].shape == (len(t), 50, dims["audio"])
        assert t.columns["visual"].shape == (len(t), 50, dims["vision"])
        assert not t.lengths  # aligned: every sequence has its 50 steps
        assert np.isfinite(t.columns["acoustic"]).all()  # -inf -> 0, as MMSA's loader
        assert t.columns["acoustic"][0, 0, 0] == 0.0
        np.testing.assert_array_equal(t.columns["visual"], d["vision"])
    assert splits["train"].label(0) == 0.0 and isinstance(splits["train"].label(1), float)


def test_mmsa_unaligned_cuts_sequences_to_their_lengths(tmp_path):
    path = tmp_path / "unaligned_50.pkl"
    data = write_mmsa(path, aligned=False, dims=MOSEI_DIMS, seq_lens=(50, 40, 30))
    t = read_mmsa(path)["val"]
    d = data["valid"]
    for i in range(len(t)):
        a = t.stored(i, "acoustic", None)
        v = t.stored(i, "visual", None)
        assert a.shape == (d["audio_lengths"][i], MOSEI_DIMS["audio"])
        assert v.shape == (d["vision_lengths"][i], MOSEI_DIMS["vision"])
        np.testing.assert_array_equal(v, d["vision"][i, : d["vision_lengths"][i]])
        assert t.stored(i, "language", None).shape == (50, 768)


def test_mmsa_raw_text(tmp_path):
    path = tmp_path / "aligned_50.pkl"
    data = write_mmsa(path, aligned=True)
    t = read_mmsa(path, text="raw")["test"]
    assert t.columns["language"] == list(data["test"]["raw_text"])


def test_mmsa_bert_token_ids_cut_to_the_input_mask(tmp_path):
    path = tmp_path / "aligned_50.pkl"
    data = write_mmsa(path, aligned=True)
    data["train"]["text_bert"][1, 1, 7:] = 0  # sample 1 has 7 real tokens
    path.write_bytes(pickle.dumps(data))
    t = read_mmsa(path, text="bert")["train"]
    ids = t.columns["language"]
    assert ids[1].dtype == torch.int64 and ids[1].tolist() == data["train"]["text_bert"][1, 0, :7].astype(int).tolist()
    assert len(ids[0]) == 50


def test_mmsa_bad_files_are_one_line(tmp_path):
    with pytest.raises(BenchmarkError, match="nothing.pkl: not found"):
        read_mmsa(tmp_path / "nothing.pkl")
    path = tmp_path / "aligned_50.pkl"
    data = write_mmsa(path, aligned=True)
    del data["valid"]["vision"]
    path.write_bytes(pickle.dumps(data))
    with pytest.raises(BenchmarkError, match=r"aligned_50.pkl\['valid'\]: no key 'vision'"):
        read_mmsa(path)
    with pytest.raises(BenchmarkError, match="data.text='glove'"):
        read_mmsa(path, text="glove")


def test_mmsa_pickle_is_read_without_running_code(tmp_path):
    class Payload:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    path = tmp_path / "unaligned_50.pkl"
    path.write_bytes(pickle.dumps({"train": Payload(), "valid": {}, "test": {}}))
    with pytest.raises(UnsafePickleError, match="io.open"):
        read_mmsa(path)
    assert not (tmp_path / "pwned").exists()


# -- AV-MNIST (MultiBench .npy) ----------------------------------------------------------------------------------
def test_avmnist_layout_and_multibench_splits(tmp_path):
    arrays = write_avmnist(tmp_path, num_train=12, num_test=5)
    splits = read_avmnist(tmp_path, num_train=9)  # MultiBench: 55000 of 60000; here 9 of 12
    assert [len(splits[s]) for s in ("train", "val", "test")] == [9, 3, 5]
    assert np.array_equal(splits["val"].labels, arrays["train_labels"][9:])
    assert splits["val"].ids[0] == "train/9" and splits["test"].ids[-1] == "test/4"
    image = splits["val"].stored(1, "image", None)
    assert image.dtype == torch.uint8 and image.shape == (3, 28, 28)
    expected = arrays["train_images"][10].reshape(28, 28)
    assert torch.equal(image[0], torch.as_tensor(expected.astype(np.uint8))) and torch.equal(image[0], image[2])
    spec = splits["test"].stored(4, "spectrogram", None)
    assert spec.shape == (112, 112) and spec.dtype == np.float32
    np.testing.assert_allclose(spec, arrays["test_audio"][4] / 255.0, rtol=1e-6)
    resized = read_avmnist(tmp_path, image_size=32)["train"].stored(0, "image", None)
    assert resized.shape == (3, 32, 32)


def test_avmnist_wrong_shape_is_named(tmp_path):
    write_avmnist(tmp_path)
    np.save(tmp_path / "audio" / "test_data.npy", np.zeros((5, 100, 112), dtype=np.float32))
    with pytest.raises(BenchmarkError, match=r"audio/test_data.npy: shape \(5, 100, 112\), expected \(5, 112, 112\)"):
        read_avmnist(tmp_path)


# -- MM-IMDb ---------------------------------------------------------------------------------------------------
def _movies():
    genres = ["Drama"] * 6 + ["Comedy"] * 4 + ["Horror"] * 2 + ["Western"]
    out = {"train": [], "dev": [], "test": []}
    for i, g in enumerate(genres):
        part = "train" if i % 3 == 0 else "dev" if i % 3 == 1 else "test"
        extra = ["Comedy"] if i == 0 else []
        out[part].append({"id": f"{i:07d}", "plot": ["short", f"the longest plot of movie {i}"], "genres": [g] + extra})
    out["train"].append({"id": "0000100", "plot": ["no poster"], "genres": ["Drama"], "poster": False})
    out["dev"].append({"id": "0000101", "genres": ["Drama"]})  # no plot: left out, as make_dataset.py
    return out


def test_mmimdb_folder(tmp_path):
    write_mmimdb(tmp_path, _movies())
    genres, splits = read_mmimdb(tmp_path, num_genres=3)
    assert genres == ["Drama", "Comedy", "Horror"]  # the most frequent first, 3 kept here (23 in MM-IMDb)
    train = splits["train"]
    assert train.ids == ["0000000", "0000003", "0000006", "0000009", "0000012"]  # 0000100 has no poster
    assert train.columns["plot"][0] == "the longest plot of movie 0"
    assert train.labels.shape == (5, 3) and train.labels.dtype == np.int64
    assert train.labels[0].tolist() == [1, 1, 0] and train.label(0) == [1, 1, 0]
    assert train.labels[4].tolist() == [0, 0, 0]  # Western is outside the kept genres
    assert "0000101" not in splits["val"].ids
    poster = train.stored(1, "poster", ImageProcessor(image_size=16))
    assert poster.shape == (3, 16, 16) and poster.dtype == torch.uint8


def test_mmimdb_labels_json_fixes_the_order(tmp_path):
    write_mmimdb(tmp_path, _movies())
    (tmp_path / "labels.json").write_text(json.dumps({"Western": 0, "Drama": 1}))
    genres, splits = read_mmimdb(tmp_path)
    assert genres == ["Western", "Drama"] and splits["train"].labels[4].tolist() == [1, 0]


def test_mmimdb_missing_movie_is_named(tmp_path):
    write_mmimdb(tmp_path, _movies())
    (tmp_path / "dataset" / "0000001.json").unlink()
    with pytest.raises(BenchmarkError, match=r"0000001.json: not found \(listed in split.json\['dev'\]\)"):
        read_mmimdb(tmp_path)


# -- Hateful Memes ---------------------------------------------------------------------------------------------
def test_hateful_memes_jsonl(tmp_path):
    write_hateful_memes(tmp_path, {
        "train.jsonl": [{"id": 1, "label": 0, "text": "a"}, {"id": 2, "label": 1, "text": "b"}],
        "dev.jsonl": [{"id": 3, "label": 1, "text": "c"}],
        "test.jsonl": [{"id": 4, "text": "unlabelled"}]})
    train = read_jsonl(tmp_path / "train.jsonl", root=tmp_path)
    assert train.ids == ["1", "2"] and train.labels.tolist() == [0, 1] and train.columns["text"] == ["a", "b"]
    image = train.stored(1, "image", ImageProcessor(image_size=8))
    assert image.shape == (3, 8, 8)
    assert split_file(tmp_path, "val") == tmp_path / "dev.jsonl"
    assert split_file(tmp_path, "test") is None  # the first release's test.jsonl has no labels
    write_hateful_memes(tmp_path, {"dev_seen.jsonl": [{"id": 5, "label": 0, "text": "d"}],
                                   "test_seen.jsonl": [{"id": 6, "label": 1, "text": "e"}]})
    assert split_file(tmp_path, "val") == tmp_path / "dev_seen.jsonl"
    assert split_file(tmp_path, "test") == tmp_path / "test_seen.jsonl"
    assert split_file(tmp_path, "val", "dev.jsonl") == tmp_path / "dev.jsonl"


def test_hateful_memes_bad_line_is_named(tmp_path):
    write_hateful_memes(tmp_path, {"train.jsonl": [{"id": 1, "label": 0, "text": "a"}, {"id": 2, "text": "b"}]})
    with pytest.raises(BenchmarkError, match=r"train.jsonl:2: no 'label'"):
        read_jsonl(tmp_path / "train.jsonl", root=tmp_path)
    (tmp_path / "img" / "00001.png").unlink()
    write_hateful_memes(tmp_path, {"train.jsonl": [{"id": 1, "label": 2, "text": "a"}]})
    with pytest.raises(BenchmarkError, match=r"train.jsonl:1: label 2, expected 0 or 1"):
        read_jsonl(tmp_path / "train.jsonl", root=tmp_path)


def test_mmimdb_multibench_hdf5(tmp_path):
    pytest.importorskip("h5py")
    from mmgpt.datamodules.benchmarks.mmimdb import read_mmimdb_hdf5
    from tests.helpers.benchmarks import write_mmimdb_hdf5

    data = write_mmimdb_hdf5(tmp_path / "multimodal_imdb.hdf5", sizes=(6, 3, 3))
    genres, splits = read_mmimdb_hdf5(tmp_path / "multimodal_imdb.hdf5")
    assert genres == data["target_names"] and [len(splits[s]) for s in ("train", "val", "test")] == [6, 3, 3]
    val = splits["val"]
    assert val.ids == ["0000006", "0000007", "0000008"]
    assert np.array_equal(val.labels, data["genres"][6:9]) and val.labels.dtype == np.int64
    np.testing.assert_array_equal(val.stored(1, "plot", None), data["features"][7])
    assert val.stored(1, "poster", None).shape == (4096,)
    _, images = read_mmimdb_hdf5(tmp_path / "multimodal_imdb.hdf5", poster="image", image_size=32)
    poster = images["test"].stored(0, "poster", None)
    assert poster.shape == (3, 32, 32) and poster.dtype == torch.uint8


# -- benchmark files from elsewhere are read as data (issue 21, item 5) ---------------------------------------------
class _Marker:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.path}",))


@pytest.mark.parametrize("case", ["pickle", "object array", "npz archive", "records", "text"])
def test_avmnist_npy_files_are_numeric_arrays_or_one_line(tmp_path, case):
    write_avmnist(tmp_path, num_train=4, num_test=2)
    marker, labels = tmp_path / "ran", tmp_path / "train_labels.npy"
    if case == "pickle":
        labels.write_bytes(pickle.dumps([_Marker(marker)]))
    elif case == "object array":
        np.save(labels, np.array([_Marker(marker)] * 4, dtype=object), allow_pickle=True)
    elif case == "npz archive":
        with open(labels, "wb") as f:
            np.savez(f, labels=np.arange(4))
    elif case == "records":
        np.save(labels, np.zeros(4, dtype=[("a", "i4"), ("b", "f4")]))
    else:
        labels.write_text("0 1 2 3\n")
    with pytest.raises(BenchmarkError) as refused:
        read_avmnist(tmp_path, num_train=3)
    assert str(refused.value).startswith(f"{labels}: ") and "\n" not in str(refused.value)
    assert not marker.exists()


@pytest.mark.parametrize("case", ["external link", "virtual dataset", "external storage", "genre names",
                                  "strings as features"])
def test_mmimdb_hdf5_reads_only_its_own_numbers(tmp_path, case):
    h5py = pytest.importorskip("h5py")
    from mmgpt.datamodules.benchmarks.mmimdb import read_mmimdb_hdf5
    from tests.helpers.benchmarks import write_mmimdb_hdf5

    path, other = tmp_path / "multimodal_imdb.hdf5", tmp_path / "elsewhere.hdf5"
    data = write_mmimdb_hdf5(path, sizes=(2, 1, 1))
    with h5py.File(other, "w") as f:
        f["features"] = data["features"]
    np.asarray(data["features"]).tofile(tmp_path / "raw.bin")
    with h5py.File(path, "a") as f:
        if case == "genre names":
            f["genres"].attrs["target_names"] = "{not json"
            expected = "the genre names or the split table are not readable"
        elif case == "strings as features":
            del f["features"]
            f["features"] = np.asarray([b"x"] * 4, dtype="S1")
            expected = "'features' holds |S1, not numbers"
        else:
            del f["features"]
            if case == "external link":
                f["features"] = h5py.ExternalLink(str(other), "features")
                expected = "'features' is a link to another file"
            elif case == "virtual dataset":
                layout = h5py.VirtualLayout(shape=data["features"].shape, dtype=np.float32)
                layout[:] = h5py.VirtualSource(str(other), "features", shape=data["features"].shape)
                f.create_virtual_dataset("features", layout)
                expected = "'features' reads its data from other files"
            else:
                f.create_dataset("features", shape=data["features"].shape, dtype=np.float32,
                                 external=[(str(tmp_path / "raw.bin"), 0, h5py.h5f.UNLIMITED)])
                expected = "'features' reads its data from other files"
    with pytest.raises(BenchmarkError) as refused:
        read_mmimdb_hdf5(path)
    assert str(refused.value).startswith(f"{path}: {expected}") and "\n" not in str(refused.value)
