"""A synthetic CMU-MOSI in the MMSA toolkit's pickle layout, with a planted cross-modal signal, and the check that
MMSA's own loader and mmgpt's ``data=mosi`` read the same samples from it.

Layout (what ``MMSA/data_loader.py`` ``MMDataset.__init_mosi`` reads; sizes from ``config_regression.json``'s
``datasetCommonParams.mosi``): a dict of splits ``train`` / ``valid`` / ``test`` (MOSI: 1284 / 229 / 686 samples),
each a dict of ``text`` (N, Lt, 768) BERT-like features, ``text_bert`` (N, 3, Lt) BERT ids / input mask /
segment ids, ``audio`` (N, La, 5) COVAREP-like with some ``-inf``, ``vision`` (N, Lv, 20), ``raw_text``, ``id``,
``annotations``, ``classification_labels``, ``regression_labels`` in [-3, 3]; the unaligned file adds
``audio_lengths`` / ``vision_lengths`` (steps past a length are zero padding). The aligned file has
Lt = La = Lv and pads every modality after the sentence's last word, as the word-aligned features do.

The planted signal: each sample has three latent scores ``z_text``, ``z_audio``, ``z_vision`` ~ N(0, 1), written
into its modality as ``z * direction + noise`` on every real step (direction ~ SIGNAL * N(0, 1) per feature, unit
noise), and the label is ``clip(TEXT_WEIGHT * z_text + PAIR_WEIGHT * z_audio * z_vision + noise, -3, 3)`` rounded to
0.2 (so some labels are exactly 0 and the two Acc-2 conventions differ). The product term is invisible to any single
modality and to any sum of per-modality predictions: a model has to combine audio and vision multiplicatively to
explain it.

    python -m bench.mmsa_data OUT_DIR [--quick]    # writes OUT_DIR/{aligned,unaligned}_50.pkl and checks both
"""

from __future__ import annotations

import argparse
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: MOSI's split sizes and feature sizes (MMSA config_regression.json, datasetCommonParams.mosi).
MOSI_SIZES = {"train": 1284, "valid": 229, "test": 686}
MOSI_DIMS = {"text": 768, "audio": 5, "vision": 20}
TEXT_WEIGHT, PAIR_WEIGHT, LABEL_NOISE = 1.0, 1.5, 0.3
SIGNAL = 0.5  # the latent score's weight per feature, against unit noise
#: mmgpt modality -> MMSA key.
MODALITY_KEYS = {"language": "text", "acoustic": "audio", "visual": "vision"}


@dataclass(frozen=True)
class Shape:
    """Sizes of a synthetic file: samples per split, feature sizes, stored steps (text, audio, vision)."""

    sizes: dict[str, int]
    dims: dict[str, int]
    steps: tuple[int, int, int]


#: MOSI itself: its split sizes, feature sizes and stored steps (text 50, unaligned audio 500, vision 375).
MOSI = Shape(MOSI_SIZES, MOSI_DIMS, (50, 500, 375))
#: What bench/peer_mmsa.py trains on by default: a quarter of MOSI's samples per split, 128-wide text features
#: and short sequences, so that ten models x two seeds fit about half an hour on the shared 2-core machine (at a
#: load average of 20 there, MMSA's TFN took 57 s per epoch on half of MOSI's samples with 768-wide text, and its
#: MulT 500 s per epoch on all of them with 32 / 40 / 30 steps). ``--mosi`` trains on MOSI's own shape.
#: (320 training samples, not 321: MMSA's BatchNorm sub-networks fail on a last batch of one sample.)
BENCH = Shape({"train": 320, "valid": 57, "test": 171}, {**MOSI_DIMS, "text": 128}, (20, 24, 16))
QUICK = Shape({"train": 256, "valid": 64, "test": 128}, {"text": 64, "audio": 5, "vision": 20}, (20, 24, 16))


def _modality(rng: np.random.Generator, z: np.ndarray, direction: np.ndarray, lengths: np.ndarray,
              steps: int) -> np.ndarray:
    """(N, steps, F) float32: ``z * direction + N(0, 1)`` on each sample's first ``lengths`` steps, zeros after."""
    x = z[:, None, None] * direction + rng.normal(size=(len(z), steps, len(direction)))  # (N, L, F)
    x[np.arange(steps)[None, :] >= lengths[:, None]] = 0.0
    return x.astype(np.float32)


def _split(rng: np.random.Generator, name: str, n: int, shape: Shape, aligned: bool,
           directions: dict[str, np.ndarray]) -> dict[str, Any]:
    lt, la, lv = shape.steps
    z = rng.normal(size=(3, n))  # text, audio, vision scores
    y = TEXT_WEIGHT * z[0] + PAIR_WEIGHT * z[1] * z[2] + LABEL_NOISE * rng.normal(size=n)
    labels = (np.round(np.clip(y, -3, 3) * 5) / 5).astype(np.float32)
    words = rng.integers(max(3, lt // 4), lt + 1, size=n)  # tokens incl. [CLS] and [SEP]
    if aligned:
        la = lv = lt
        audio_len = vision_len = words
    else:
        audio_len = rng.integers(max(2, la // 4), la + 1, size=n)
        vision_len = rng.integers(max(2, lv // 4), lv + 1, size=n)
    audio = _modality(rng, z[1], directions["audio"], audio_len, la)
    audio[:, :, -1][rng.random(size=(n, la)) < 0.02] = -np.inf  # COVAREP's -inf (MMSA's loader sets 0)
    ids = rng.integers(1000, 30000, size=(n, lt))
    ids[np.arange(lt)[None, :] >= words[:, None]] = 0
    ids[:, 0], ids[np.arange(n), words - 1] = 101, 102  # [CLS] ... [SEP]
    mask = (np.arange(lt)[None, :] < words[:, None]).astype(np.float32)
    d: dict[str, Any] = {
        "raw_text": np.array([f"{name} utterance {i}" for i in range(n)], dtype=object),
        "id": np.array([f"{name}_video{i // 3}$_${i % 3}" for i in range(n)], dtype=object),
        "text": _modality(rng, z[0], directions["text"], words, lt),
        "text_bert": np.stack([ids, mask, np.zeros_like(mask)], axis=1).astype(np.float32),  # (N, 3, Lt)
        "audio": audio,
        "vision": _modality(rng, z[2], directions["vision"], vision_len, lv),
        "annotations": np.array(["Positive" if v > 0 else "Negative" if v < 0 else "Neutral" for v in labels],
                                dtype=object),
        "classification_labels": (np.sign(labels) + 1).astype(np.float32),
        "regression_labels": labels,
    }
    if not aligned:
        d["audio_lengths"] = [int(v) for v in audio_len]
        d["vision_lengths"] = [int(v) for v in vision_len]
    return d


def write_pickle(path: Path, *, aligned: bool, shape: Shape = BENCH, seed: int = 0) -> Path:
    """Write an MMSA feature pickle (aligned or unaligned) with the planted signal; returns ``path``."""
    rng = np.random.default_rng(seed)  # the same seed gives the same latent scores in both files
    # one direction per modality for the whole file (every split), so what is learnt on train holds on test;
    # each feature carries SIGNAL * z against unit noise on average
    directions = {m: SIGNAL * rng.normal(size=shape.dims[m]) for m in ("text", "audio", "vision")}
    data = {name: _split(rng, name, n, shape, aligned, directions) for name, n in shape.sizes.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(data, protocol=4))
    return path


def mmsa_args(model: str, path: Path, **overrides: Any) -> Any:
    """MMSA's own config for ``model`` on MOSI (``get_config_regression``), pointed at ``path``, on the CPU."""
    import torch
    from MMSA import get_config_regression

    args = get_config_regression(model.lower(), "mosi")
    args.update(featurePath=str(path), device=torch.device("cpu"), train_mode="regression", custom_feature=None,
                feature_T=None, feature_A=None, feature_V=None, cur_seed=1, **overrides)
    return args


def mmsa_split(path: Path, split: str, *, aligned: bool, use_bert: bool = False) -> Any:
    """MMSA's ``MMDataset`` of one split of ``path``, read by MMSA's own loader."""
    from MMSA.data_loader import MMDataset

    args = mmsa_args("tfn", path, need_data_aligned=aligned, need_normalized=False, use_bert=use_bert)
    return MMDataset(args, mode=split)


def compare_loaders(path: Path, *, aligned: bool) -> list[str]:
    """Differences between what MMSA's loader and mmgpt's ``read_mmsa`` read from ``path`` (empty: identical).

    Checked per split: ids, labels, every modality's array (mmgpt cuts unaligned sequences to their lengths; what
    MMSA keeps past a length must be the zero padding), the lengths, and the BERT ids of ``text_bert`` up to the
    input mask (mmgpt's ``data.text=bert``).
    """
    from mmgpt.datamodules.benchmarks.mmsa import SPLIT_KEYS, read_mmsa

    ours, ours_bert = read_mmsa(path), read_mmsa(path, text="bert")
    problems: list[str] = []
    for split, key in SPLIT_KEYS.items():
        theirs, bert = mmsa_split(path, key, aligned=aligned), mmsa_split(path, key, aligned=aligned, use_bert=True)
        table = ours[split]
        if [str(i) for i in theirs.ids] != table.ids:
            problems.append(f"{key}: ids differ")
        if not np.array_equal(theirs.labels["M"], table.labels):
            problems.append(f"{key}: labels differ")
        for name, mmsa_key in MODALITY_KEYS.items():
            problems += _compare_modality(f"{key}.{mmsa_key}", getattr(theirs, mmsa_key), table.columns[name],
                                          None if aligned else getattr(theirs, f"{mmsa_key}_lengths", None),
                                          table.lengths.get(name))
        for i, row in enumerate(ours_bert[split].columns["language"]):
            n = int(bert.text[i, 1].sum())
            if not np.array_equal(bert.text[i, 0, :n].astype(np.int64), row.numpy()):
                problems.append(f"{key}: BERT ids of sample {i} differ")
                break
    return problems


def _compare_modality(where: str, theirs: np.ndarray, ours: np.ndarray, their_lengths: Any,
                      our_lengths: np.ndarray | None) -> list[str]:
    if their_lengths is None:  # aligned, or the text of an unaligned file: every stored step
        return [] if np.array_equal(theirs, ours) else [f"{where}: arrays differ"]
    their_lengths = np.asarray(their_lengths, dtype=np.int64)
    if our_lengths is None or not np.array_equal(their_lengths, our_lengths):
        return [f"{where}: lengths differ"]
    steps = np.arange(theirs.shape[1])[None, :, None]
    kept = steps < their_lengths[:, None, None]
    if not np.array_equal(np.where(kept, theirs, 0), np.where(kept, ours[:, : theirs.shape[1]], 0)):
        return [f"{where}: the steps within the lengths differ"]
    if np.any(np.where(kept, 0, theirs)):
        return [f"{where}: MMSA keeps non-zero values past a length, which mmgpt drops"]
    return []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--quick", action="store_true", help="a small file (seconds)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for aligned in (True, False):
        path = write_pickle(args.out / f"{'aligned' if aligned else 'unaligned'}_50.pkl", aligned=aligned,
                            shape=QUICK if args.quick else BENCH, seed=args.seed)
        problems = compare_loaders(path, aligned=aligned)
        print(f"{path}: {'MMSA and mmgpt read identical arrays' if not problems else '; '.join(problems)}")


if __name__ == "__main__":
    main()
