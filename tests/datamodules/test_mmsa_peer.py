"""mmgpt's ``data=mosi`` against the MMSA toolkit's own loader and models, on small synthetic pickles written in
MMSA's layout (bench/mmsa_data.py): the same arrays are read, both trainings learn the planted signal, and where
the two loaders disagree on a file, the disagreement is the documented one.

These need the ``mmsa`` package (the dev extra) and import it, which takes seconds: marked slow.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from bench.mmsa_data import Shape, compare_loaders, mmsa_split, write_pickle
from mmgpt.datamodules.benchmarks import BenchmarkError, read_mmsa

pytest.importorskip("MMSA")
pytestmark = pytest.mark.slow

SMALL = Shape({"train": 384, "valid": 64, "test": 128}, {"text": 32, "audio": 5, "vision": 20}, (12, 16, 10))


@pytest.fixture(scope="module")
def pickles(tmp_path_factory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("mmsa")
    return {kind: write_pickle(root / f"{kind}_50.pkl", aligned=kind == "aligned", shape=SMALL)
            for kind in ("aligned", "unaligned")}


@pytest.mark.parametrize("kind", ["aligned", "unaligned"])
def test_mmsa_and_mmgpt_read_identical_arrays(pickles, kind):
    assert compare_loaders(pickles[kind], aligned=kind == "aligned") == []


def test_the_comparison_sees_a_difference(pickles, tmp_path):
    """A value past a sequence's length is kept by MMSA's loader (padded arrays) and dropped by mmgpt's (cut to
    the length): the comparison reports it, so an empty report above means something."""
    data = pickle.loads(pickles["unaligned"].read_bytes())
    lengths = data["test"]["vision_lengths"]
    i = int(np.argmin(lengths))
    assert lengths[i] < data["test"]["vision"].shape[1]
    data["test"]["vision"][i, lengths[i]:] = 1.0
    changed = tmp_path / "unaligned_50.pkl"
    changed.write_bytes(pickle.dumps(data, protocol=4))
    assert compare_loaders(changed, aligned=False) == [
        "test.vision: MMSA keeps non-zero values past a length, which mmgpt drops"]


def test_a_length_past_the_stored_steps_mmsa_reads_and_mmgpt_refuses(pickles, tmp_path):
    """The documented loader difference (README, "mmgpt vs MMSA"): MMSA never checks ``*_lengths`` against the
    stored steps (its TFN, LMF, LF-DNN and MulT do not use the lengths), mmgpt cuts each sequence to its length
    and refuses a length it cannot honour, naming the key."""
    data = pickle.loads(pickles["unaligned"].read_bytes())
    data["valid"]["audio_lengths"][3] = data["valid"]["audio"].shape[1] + 5
    bad = tmp_path / "unaligned_50.pkl"
    bad.write_bytes(pickle.dumps(data, protocol=4))
    assert len(mmsa_split(bad, "valid", aligned=False)) == SMALL.sizes["valid"]
    with pytest.raises(BenchmarkError, match=r"\['valid'\]\['audio_lengths'\]: a length exceeds the 16 steps"):
        read_mmsa(bad)


def test_a_file_without_raw_text_mmgpt_reads_and_mmsa_refuses(pickles, tmp_path):
    """The reverse: MMSA's loader reads ``raw_text`` for every model, mmgpt only for ``data.text=raw``."""
    data = pickle.loads(pickles["aligned"].read_bytes())
    for split in data.values():
        del split["raw_text"]
    path = tmp_path / "aligned_50.pkl"
    path.write_bytes(pickle.dumps(data, protocol=4))
    assert len(read_mmsa(path)["train"]) == SMALL.sizes["train"]
    with pytest.raises(KeyError, match="raw_text"):
        mmsa_split(path, "train", aligned=True)


def test_mmgpt_tensor_and_mmsa_tfn_both_beat_the_constant_predictor(pickles, tmp_path):
    """One short training of each on the unaligned pickle: test MAE below that of the best constant (the median
    of the training labels), and a positive correlation."""
    from bench.peer_mmsa import run_mmgpt, run_mmsa

    splits = read_mmsa(pickles["unaligned"])
    constant = float(np.abs(splits["test"].labels - np.median(splits["train"].labels)).mean())
    runs = [run_mmsa("TFN", pickles["unaligned"], 1111, max_epochs=6, patience=6, work=tmp_path),
            run_mmgpt("tensor", pickles["unaligned"], 1111, max_epochs=6, patience=6, work=tmp_path)]
    for run in runs:
        assert run.epochs == 6
        assert run.metrics["mae"] < constant, (run.side, run.metrics, constant)
        assert run.metrics["corr"] > 0.2, (run.side, run.metrics)
