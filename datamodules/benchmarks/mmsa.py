"""CMU-MOSI and CMU-MOSEI in the MMSA toolkit's pickled feature format (``aligned_50.pkl``, ``unaligned_50.pkl``).

The format, as MMSA's own loader reads it (thuiar/MMSA, ``src/MMSA/data_loader.py``, ``MMDataset.__init_mosi``,
which MOSEI and SIMS share) and its config sizes it (``src/MMSA/config/config_regression.json``,
``datasetCommonParams``): the pickle is a dict with the splits ``train``, ``valid``, ``test``, each a dict of

================  =============  ===========================================================================
key               shape          meaning
================  =============  ===========================================================================
``text``          (N, Lt, Ft)    pre-extracted text features, float (``feature_dims[0]`` = 768: BERT)
``text_bert``     (N, 3, Lt)     BERT input ids, input mask, segment ids (read by MMSA when ``use_bert``)
``audio``         (N, La, Fa)    acoustic features (COVAREP; Fa = 5 for MOSI, 74 for MOSEI); ``-inf`` -> 0
``vision``        (N, Lv, Fv)    visual features (Facet; Fv = 20 for MOSI, 35 for MOSEI)
``raw_text``      (N,)           the transcript
``id``            (N,)           segment id
``regression_labels`` (N,)       sentiment in [-3, 3] (MMSA's label ``M``), float32
``audio_lengths`` (N,)           unaligned files only: the true number of steps of each sequence (the
``vision_lengths`` (N,)          rest is padding); aligned files have Lt = La = Lv = 50 (``seq_lens``)
================  =============  ===========================================================================

Like MMSA: every array is read as float32, ``-inf`` acoustic values become 0, and in unaligned files a
sequence is cut to its length (MMSA's models pack sequences by these lengths). MMSA's optional time averaging
(``need_normalized``, for TFN/LMF/LF-DNN) is a model choice and not applied here. The pickle is read with the
restricted unpickler (:mod:`mmgpt.datamodules.safe_pickle`): opening it never runs code.

Modalities: ``language`` -- the ``text`` features (``text=features``), or a ``text`` modality of BERT token ids
from ``text_bert`` (``text=bert``: the ids up to the input mask's length, for a text encoder with BERT's
vocabulary, e.g. ``model.net.encoders.language.vocab_size=30522``), or the ``raw_text`` strings for the
modality's tokenizer (``text=raw``) -- ``acoustic`` and ``visual`` (``features``). Task: regression, one output.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmgpt.datamodules import safe_pickle
from mmgpt.datamodules.benchmarks.common import (
    BenchmarkDataModule,
    BenchmarkError,
    BenchmarkSplit,
    require_file,
    require_keys,
)
from mmgpt.datamodules.processors import Processor

log = logging.getLogger(__name__)

#: mmgpt split -> the MMSA pickle's split key.
SPLIT_KEYS: dict[str, str] = {"train": "train", "val": "valid", "test": "test"}
#: mmgpt modality -> the MMSA key of its features.
FEATURE_KEYS: dict[str, str] = {"language": "text", "acoustic": "audio", "visual": "vision"}
#: Unaligned files: the key of each sequence's true length.
LENGTH_KEYS: dict[str, str] = {"acoustic": "audio_lengths", "visual": "vision_lengths"}
TEXT_CHOICES: tuple[str, ...] = ("features", "bert", "raw")


def read_mmsa(path: str | Path, *, text: str = "features") -> dict[str, BenchmarkSplit]:
    """Every split of an MMSA feature pickle (``train``/``val``/``test``; see the module doc).

    Args:
        path: ``aligned_50.pkl`` or ``unaligned_50.pkl`` (MOSI or MOSEI).
        text: ``features``: the ``language`` modality is the ``text`` feature array; ``bert``: the token ids of
            ``text_bert`` (int64, cut to the input mask); ``raw``: the ``raw_text`` strings.

    Raises:
        BenchmarkError: a missing file, split or key, or arrays whose sizes disagree (naming them).
    """
    if text not in TEXT_CHOICES:
        raise BenchmarkError(f"data.text={text!r}: expected one of {', '.join(TEXT_CHOICES)}")
    path = require_file(Path(path), "an MMSA feature pickle, e.g. MOSEI/Processed/unaligned_50.pkl")
    data = safe_pickle.load(path)
    require_keys(data, list(SPLIT_KEYS.values()), str(path))
    return {split: _read_split(data[key], text=text, where=f"{path}[{key!r}]") for split, key in SPLIT_KEYS.items()}


def _read_split(d: dict[str, Any], *, text: str, where: str) -> BenchmarkSplit:
    keys = ["audio", "vision", "id", "regression_labels", {"raw": "raw_text", "bert": "text_bert"}.get(text, "text")]
    require_keys(d, keys, where)
    columns: dict[str, Any] = {}
    for name, key in FEATURE_KEYS.items():
        if name == "language" and text == "raw":
            columns[name] = [str(t) for t in d["raw_text"]]
            continue
        if name == "language" and text == "bert":
            columns[name] = _bert_ids(d["text_bert"], f"{where}['text_bert']")
            continue
        array = np.asarray(d[key], dtype=np.float32)
        if array.ndim != 3:
            raise BenchmarkError(f"{where}[{key!r}]: shape {array.shape}, expected (samples, steps, features)")
        if key == "audio":
            array[np.isneginf(array)] = 0.0  # as MMSA's loader does
        columns[name] = array
    lengths = {}
    if all(k in d for k in LENGTH_KEYS.values()):  # unaligned
        for name, key in LENGTH_KEYS.items():
            lengths[name] = np.asarray(d[key], dtype=np.int64).reshape(-1)
            if (lengths[name] > columns[name].shape[1]).any():
                raise BenchmarkError(f"{where}[{key!r}]: a length exceeds the {columns[name].shape[1]} steps stored")
            if (lengths[name] < 0).any():
                raise BenchmarkError(f"{where}[{key!r}]: a negative length ({int(lengths[name].min())})")
    labels = np.asarray(d["regression_labels"], dtype=np.float32).reshape(-1)
    return BenchmarkSplit(ids=[str(i) for i in d["id"]], labels=labels, columns=columns, lengths=lengths)


def _bert_ids(text_bert: Any, where: str) -> list[torch.Tensor]:
    """(N, 3, L) rows of input ids, input mask, segment ids -> each sample's ids up to its mask's length."""
    array = np.asarray(text_bert)
    if array.ndim != 3 or array.shape[1] != 3:
        raise BenchmarkError(f"{where}: shape {array.shape}, expected (samples, 3, tokens): ids, mask, segments")
    ids, mask = array[:, 0].astype(np.int64), array[:, 1] > 0
    return [torch.from_numpy(row[m]) for row, m in zip(ids, mask)]


class TokenIdsProcessor(Processor):
    """A text modality given as token ids (B, T) already: padded with ``pad_id`` and masked at collation."""

    kind = "text"

    def __init__(self, *, pad_id: int = 0) -> None:
        self.pad_id = pad_id

    def is_present(self, value: Any) -> bool:
        return value is not None and len(value) > 0

    def collate(self, values: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        lengths = [len(v) if self.is_present(v) else 0 for v in values]
        ids = torch.full((len(values), max(1, max(lengths))), self.pad_id, dtype=torch.long)  # (B, T)
        mask = torch.zeros(ids.shape, dtype=torch.bool)
        for i, (v, n) in enumerate(zip(values, lengths)):
            ids[i, :n], mask[i, :n] = torch.as_tensor(v)[:n], True
        return ids, mask, torch.tensor([n > 0 for n in lengths])

    def fingerprint(self) -> str:
        return f"token_ids:{self.pad_id}"


class MMSADataModule(BenchmarkDataModule):
    """``data=mosi`` / ``data=mosei``: CMU-MOSI or CMU-MOSEI from an MMSA feature pickle (regression).

    Args:
        root: the pickle, e.g. ``.../MOSEI/Processed/unaligned_50.pkl`` (aligned or unaligned).
        text: ``features`` (the pickle's ``text`` array), ``bert`` (``text_bert`` token ids) or ``raw``
            (``raw_text`` strings).
        max_steps: crop every feature sequence to this many steps (None: as stored).
        The rest: the shared data options (:class:`~mmgpt.datamodules.base.MultimodalDataModule`).
    """

    task = "regression"

    def __init__(self, root: str, text: str = "features", max_steps: int | None = None, batch_size: int = 32,
                 processors: Mapping[str, Processor] | None = None, **options: Any) -> None:
        self.tables = read_mmsa(root, text=text)
        train = self.tables["train"]
        modalities: dict[str, Any] = {}
        for name, column in train.columns.items():
            if isinstance(column, np.ndarray):
                modalities[name] = {"kind": "features", "dim": int(column.shape[2]), "max_steps": max_steps}
            else:
                modalities[name] = "text"
        super().__init__(root=root, modalities=modalities, batch_size=batch_size, processors=processors, **options)
        if text == "bert":  # ids already: the scratch text processor would tokenize strings
            self.use_processor("language", TokenIdsProcessor())
        self.save_hyperparameters(ignore=["processors"])
        log.info("%s: %s", root, ", ".join(f"{s} {len(t)}" for s, t in self.tables.items()))

    @property
    def class_names(self) -> list[str]:
        return ["sentiment"]

    def read_split(self, split: str) -> BenchmarkSplit:
        return self.tables[split]
