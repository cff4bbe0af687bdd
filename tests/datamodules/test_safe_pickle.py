"""The restricted unpickler: data pickles load, pickles that would run code are refused before anything runs."""

from __future__ import annotations

import os
import pickle
from collections import OrderedDict

import numpy as np
import pytest

from mmgpt.datamodules import safe_pickle
from mmgpt.datamodules.safe_pickle import UnsafePickleError


class _CreatesFile:
    """Unpickling this calls ``builtins.open(path, "w")``: the file would appear."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


class _RunsShell:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def _mmsa_like() -> dict:
    rng = np.random.default_rng(0)
    return {"train": {"vision": rng.normal(size=(3, 5, 4)).astype(np.float32),
                      "regression_labels": np.array([-1.2, 0.0, 2.4], dtype=np.float32),
                      "raw_text": np.array(["a b", "c", "d e f"], dtype=object),
                      "id": np.array(["v1$_$1", "v1$_$2", "v2$_$1"], dtype=object),
                      "audio_lengths": [5, 3, 1], "scale": np.float64(0.5), "n": 3, "ok": True, "none": None,
                      "pair": (1, "x"), "raw": b"\x00\x01", "order": OrderedDict(a=1)}}


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_data_pickles_load_with_every_protocol(tmp_path, protocol):
    data = _mmsa_like()
    path = tmp_path / "features.pkl"
    path.write_bytes(pickle.dumps(data, protocol=protocol))
    got = safe_pickle.load(path)["train"]
    for key, value in data["train"].items():
        if isinstance(value, np.ndarray):
            assert got[key].dtype == value.dtype and np.array_equal(got[key], value), key
        else:
            assert got[key] == value, key


@pytest.mark.parametrize("payload", [_CreatesFile, _RunsShell])
def test_a_pickle_that_would_create_a_file_is_refused_and_nothing_runs(tmp_path, payload):
    target = tmp_path / "pwned"
    crafted = tmp_path / "unaligned_50.pkl"
    crafted.write_bytes(pickle.dumps({"train": {"vision": np.zeros(2), "x": payload(str(target))}}))
    # Plain pickle would create the file: the payload is real.
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(payload(str(probe))))
    assert probe.exists()
    with pytest.raises(UnsafePickleError) as e:
        safe_pickle.load(crafted)
    message = str(e.value)
    assert str(crafted) in message and ("io.open" in message or "posix.system" in message)
    assert "\n" not in message
    assert not target.exists()


def test_codecs_encode_only_for_latin1(tmp_path):
    # Protocol-2 pickles carry bytes as _codecs.encode(text, 'latin1'); any other codec is refused.
    ok = pickle.dumps(b"\xff\x00", protocol=2)
    assert b"_codecs" in ok and safe_pickle.loads(ok) == b"\xff\x00"
    bad = ok.replace(b"latin1", b"rot13_")
    with pytest.raises(UnsafePickleError, match="rot13"):
        safe_pickle.loads(bad, source="x.pkl")


def test_a_class_instance_is_refused_naming_the_global(tmp_path):
    path = tmp_path / "obj.pkl"
    path.write_bytes(pickle.dumps({"ok": [1, 2.5, "s"], "bad": ValueError("x")}))
    with pytest.raises(UnsafePickleError, match=r"obj.pkl: the pickle names the global builtins.ValueError"):
        safe_pickle.load(path)


def test_not_a_pickle_is_one_line(tmp_path):
    path = tmp_path / "garbage.pkl"
    path.write_bytes(b"this is not a pickle")
    with pytest.raises(UnsafePickleError, match="garbage.pkl: not a readable data pickle"):
        safe_pickle.load(path)
    with pytest.raises(ValueError, match="missing.pkl: cannot read"):
        safe_pickle.load(tmp_path / "missing.pkl")
