"""The benchmark datamodules' batches: declared modalities with the documented shapes, labels of the task's type."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmgpt.datamodules.benchmarks import (
    AVMNISTDataModule,
    BenchmarkError,
    HatefulMemesDataModule,
    MMIMDbDataModule,
    MMSADataModule,
)
from tests.helpers.benchmarks import MOSI_DIMS, write_avmnist, write_hateful_memes, write_mmimdb, write_mmsa


def test_mmsa_batches_float_labels_and_masks_by_length(tmp_path):
    data = write_mmsa(tmp_path / "unaligned_50.pkl", aligned=False, seq_lens=(50, 40, 30))
    dm = MMSADataModule(root=str(tmp_path / "unaligned_50.pkl"), batch_size=3, shuffle=False)
    assert dm.modalities == {"acoustic": "features", "language": "features", "visual": "features"}
    assert dm.task == "regression" and dm.class_names == ["sentiment"]
    batch = next(iter(dm.test_dataloader()))
    d = data["test"]
    assert batch.labels.dtype == torch.float32
    assert torch.equal(batch.labels, torch.as_tensor(d["regression_labels"][:3]))
    assert batch.inputs["language"].shape == (3, 50, MOSI_DIMS["text"])
    assert batch.masks["acoustic"].sum(1).tolist() == d["audio_lengths"][:3]
    assert batch.masks["visual"].sum(1).tolist() == d["vision_lengths"][:3]
    assert batch.ids == list(d["id"][:3])
    raw = MMSADataModule(root=str(tmp_path / "unaligned_50.pkl"), text="raw", batch_size=2)
    assert raw.modalities["language"] == "text"
    bert = MMSADataModule(root=str(tmp_path / "unaligned_50.pkl"), text="bert", batch_size=2, shuffle=False)
    ids = next(iter(bert.train_dataloader()))
    assert ids.inputs["language"].dtype == torch.long and ids.inputs["language"].shape == (2, 50)
    assert torch.equal(ids.inputs["language"], torch.as_tensor(data["train"]["text_bert"][:2, 0]).long())


def test_avmnist_batches(tmp_path):
    write_avmnist(tmp_path, num_train=12, num_test=5)
    dm = AVMNISTDataModule(root=str(tmp_path), train_size=9, batch_size=5, shuffle=False)
    assert dm.num_classes == 10 and dm.modalities == {"image": "image", "spectrogram": "features"}
    batch = next(iter(dm.test_dataloader()))
    assert batch.inputs["image"].shape == (5, 3, 28, 28) and batch.inputs["spectrogram"].shape == (5, 112, 112)
    assert batch.labels.dtype == torch.long
    assert [len(dm.split(s)) for s in ("train", "val", "test")] == [9, 3, 5]
    assert sum(b.batch_size for b in dm.train_dataloader()) == 9


def test_mmimdb_batches_multi_hot(tmp_path):
    movies = {part: [{"id": f"{part}{i}", "plot": [f"plot {i}"], "genres": [["Drama", "Comedy"][i % 2], "War"]}
                     for i in range(4)] for part in ("train", "dev", "test")}
    write_mmimdb(tmp_path, movies)
    dm = MMIMDbDataModule(root=str(tmp_path), batch_size=4, image_size=16, shuffle=False, num_workers=0)
    assert dm.task == "multilabel" and sorted(dm.class_names) == ["Comedy", "Drama", "War"]
    batch = next(iter(dm.val_dataloader()))
    assert batch.labels.shape == (4, 3) and batch.labels.sum(1).tolist() == [2.0] * 4
    assert batch.inputs["poster"].shape == (4, 3, 16, 16) and batch.present["plot"].all()


def test_hateful_memes_batches_and_splits(tmp_path):
    write_hateful_memes(tmp_path, {
        "train.jsonl": [{"id": i, "label": i % 2, "text": f"t{i}"} for i in range(4)],
        "dev.jsonl": [{"id": 10 + i, "label": i % 2, "text": f"d{i}"} for i in range(2)],
        "test.jsonl": [{"id": 20, "text": "no label"}]})
    dm = HatefulMemesDataModule(root=str(tmp_path), batch_size=4, image_size=16, num_workers=0, shuffle=False)
    assert dm.class_names == ["not_hateful", "hateful"] and dm.task == "binary"
    assert dm.has_split("val") and not dm.has_split("test")  # phase-1 test.jsonl is unlabelled
    batch = next(iter(dm.train_dataloader()))
    assert batch.labels.tolist() == [0, 1, 0, 1] and batch.inputs["image"].shape == (4, 3, 16, 16)
    with pytest.raises(BenchmarkError, match="train.jsonl: not found"):
        HatefulMemesDataModule(root=str(tmp_path / "nothing"))
    assert np.isfinite(batch.inputs["image"].numpy()).all()


def test_mmimdb_hdf5_datamodule_declares_features(tmp_path):
    pytest.importorskip("h5py")
    from tests.helpers.benchmarks import write_mmimdb_hdf5

    write_mmimdb_hdf5(tmp_path / "multimodal_imdb.hdf5")
    dm = MMIMDbDataModule(root=str(tmp_path / "multimodal_imdb.hdf5"), batch_size=3, num_workers=0, shuffle=False)
    assert dm.modalities == {"plot": "features", "poster": "features"} and dm.num_classes == 4
    batch = next(iter(dm.test_dataloader()))
    assert batch.inputs["plot"].shape == (3, 1, 300) and batch.inputs["poster"].shape == (3, 1, 4096)
    assert batch.labels.shape == (3, 4) and batch.labels.dtype == torch.float32


# --- A batch of a table's rows gathered at once (Rows) is the batch the per-sample path builds.


def _per_sample(dm, split: str, indices: list[int], collate):
    ds = dm.make_dataset(split)
    return collate([ds[i] for i in indices]), collate(ds.rows(indices))


def _assert_same_batch(a, b) -> None:
    assert sorted(a.inputs) == sorted(b.inputs)
    for m in a.inputs:
        assert a.inputs[m].dtype == b.inputs[m].dtype, m
        assert torch.equal(a.inputs[m], b.inputs[m]), m
        assert torch.equal(a.masks[m], b.masks[m]) and torch.equal(a.present[m], b.present[m]), m
    assert a.labels.dtype == b.labels.dtype and torch.equal(a.labels, b.labels)
    assert a.ids == b.ids and a.captions == b.captions


@pytest.mark.parametrize("aligned", [False, True])
def test_mmsa_rows_gathered_at_once_give_the_per_sample_batch(tmp_path, aligned):
    import pickle

    data = write_mmsa(tmp_path / "x_50.pkl", aligned=aligned, sizes={"train": 9, "valid": 3, "test": 4},
                      seq_lens=(12, 10, 8))
    if not aligned:  # a sample without audio steps (missing), garbage in the padding (NaN must not leak)
        data["train"]["audio_lengths"][2] = 0
        data["train"]["audio"][:, 9:] = np.nan
        (tmp_path / "x_50.pkl").write_bytes(pickle.dumps(data, protocol=4))
    dm = MMSADataModule(root=str(tmp_path / "x_50.pkl"), batch_size=4)
    dm.setup("fit")
    for indices in ([0, 1, 2, 3], [8, 2, 5], [2], list(range(9))):
        _assert_same_batch(*_per_sample(dm, "train", indices, dm.collate))
    if not aligned:
        a, _ = _per_sample(dm, "train", [2, 0], dm.collate)
        assert not a.present["acoustic"][0] and a.present["acoustic"][1]
        assert not torch.isnan(a.inputs["acoustic"]).any()


def test_mmsa_loader_batches_are_the_same_with_and_without_rows(tmp_path, monkeypatch):
    """Through the resumable loader, with modality dropout (seeded per batch) and shuffling."""
    from mmgpt.datamodules.base import ProcessedDataset

    write_mmsa(tmp_path / "unaligned_50.pkl", aligned=False, sizes={"train": 11, "valid": 3, "test": 4},
               seq_lens=(12, 10, 8))
    dm = MMSADataModule(root=str(tmp_path / "unaligned_50.pkl"), batch_size=4,
                        modality_dropout={"acoustic": 0.5, "visual": 0.5})
    dm.setup("fit")
    calls = []
    rows = ProcessedDataset.rows
    monkeypatch.setattr(ProcessedDataset, "rows", lambda self, idx: calls.append(len(idx)) or rows(self, idx))
    fast = list(dm.train_dataloader())
    assert calls == [4, 4, 3]  # the batched path was taken
    monkeypatch.setattr(ProcessedDataset, "rows", lambda self, idx: None)
    slow = list(dm.train_dataloader())
    assert len(fast) == len(slow) == 3
    for a, b in zip(fast, slow):
        _assert_same_batch(a, b)
    assert any(not b.present["acoustic"].all() for b in fast)  # modality dropout took part


def test_rows_are_not_gathered_for_token_ids_or_negative_lengths(tmp_path):
    import pickle

    data = write_mmsa(tmp_path / "unaligned_50.pkl", aligned=False)
    bert = MMSADataModule(root=str(tmp_path / "unaligned_50.pkl"), text="bert", batch_size=2)
    bert.setup("fit")
    assert bert.make_dataset("train").rows([0, 1]) is None  # token ids: one sample at a time
    assert next(iter(bert.train_dataloader())).inputs["language"].dtype == torch.long
    data["train"]["audio_lengths"][1] = -3
    (tmp_path / "unaligned_50.pkl").write_bytes(pickle.dumps(data, protocol=4))
    with pytest.raises(BenchmarkError, match=r"audio_lengths.*negative"):
        MMSADataModule(root=str(tmp_path / "unaligned_50.pkl"), batch_size=2).setup("fit")
