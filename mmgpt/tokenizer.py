"""Tokenizers of mmgpt's text encoders and decoders, all with one interface (:class:`Tokenizer`).

* :class:`ByteTokenizer`: every UTF-8 byte is a token, plus a few special tokens. No vocabulary file; the default.
* :class:`BPETokenizer`: a byte-level BPE trained on a data folder with :func:`train_bpe` (``mmgpt-data tokenizer``),
  read from its ``tokenizer.json`` with the ``tokenizers`` library (imported only when one is used).
* :class:`HFTokenizer`: a Hugging Face ``AutoTokenizer`` from a pretrained model's folder (the ``hf_decoder``'s).

Every tokenizer wraps a text as ``<bos> text <eos>`` (truncated to ``max_length`` tokens, specials included),
pads with ``PAD`` and decodes up to the first ``EOS``. :func:`load_tokenizer` turns a spec's ``tokenizer:`` value
(None or a path) into one.
"""

from __future__ import annotations

import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mmgpt.errors import UserError

log = logging.getLogger(__name__)

#: The special tokens of mmgpt's own tokenizers, in id order (after the bytes, or after a trained BPE's tokens).
SPECIAL_TOKENS: tuple[str, ...] = ("<pad>", "<bos>", "<eos>", "<sep>", "<mask>")


class Tokenizer(ABC):
    """The interface every mmgpt tokenizer keeps (encoders' processors, the LM objective, generation).

    Attributes:
        PAD, BOS, EOS: special ids (``PAD`` may equal ``EOS`` for a pretrained tokenizer that has no pad token:
            targets are masked by position, never by id).
        vocab_size: ids are in ``[0, vocab_size)``.
        max_length: token limit of :meth:`encode` (BOS and EOS included).
    """

    PAD: int
    BOS: int
    EOS: int
    vocab_size: int
    max_length: int

    @abstractmethod
    def encode_text(self, text: str) -> list[int]:
        """The ids of ``text`` alone (no specials, no truncation)."""

    @abstractmethod
    def decode_ids(self, ids: list[int]) -> str:
        """Ids (specials already dropped) back to text."""

    @property
    def special_ids(self) -> frozenset[int]:
        """Ids that are never text (dropped by :meth:`decode`, never masked by MLM)."""
        return frozenset({self.PAD, self.BOS, self.EOS})

    def encode(self, text: str, add_special: bool = True, max_length: int | None = None) -> list[int]:
        """``<bos> text <eos>`` (or the bare ids), truncated to ``max_length`` (default: the tokenizer's)."""
        limit = min(self.max_length, max_length or self.max_length)
        ids = self.encode_text(text)
        if not add_special:
            return ids[:limit]
        return [self.BOS, *ids[: limit - 2], self.EOS]

    def decode(self, ids: Sequence[int] | Tensor) -> str:
        """Ids back to text: a leading BOS is skipped, stops at the next EOS, special tokens are dropped."""
        if isinstance(ids, Tensor):
            ids = ids.tolist()
        if len(ids) and ids[0] == self.BOS:  # GPT-2's BOS is its EOS: it must not end the text it starts
            ids = ids[1:]
        special, out = self.special_ids, []
        for i in ids:
            if i == self.EOS:
                break
            if i not in special and 0 <= i < self.vocab_size:
                out.append(int(i))
        return self.decode_ids(out)

    def batch_encode(self, texts: Sequence[str | None], max_length: int | None = None) -> tuple[Tensor, Tensor]:
        """Encode and right-pad texts. None (a missing text) becomes an all-padding row.

        Returns:
            ids (B, T) int64 and mask (B, T) bool, True = real token; T >= 1.
        """
        encoded = [self.encode(t, max_length=max_length) if t is not None else [] for t in texts]
        T = max(1, max(len(e) for e in encoded))
        ids = torch.full((len(texts), T), self.PAD, dtype=torch.long)
        mask = torch.zeros(len(texts), T, dtype=torch.bool)
        for i, e in enumerate(encoded):
            ids[i, : len(e)] = torch.tensor(e, dtype=torch.long)
            mask[i, : len(e)] = True
        return ids, mask

    def fingerprint(self) -> str:
        """A stable string of what decides the ids (store keys, processor fingerprints)."""
        return f"{type(self).__name__}:{self.max_length}"


def _check_max_length(max_length: int) -> int:
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2 (room for BOS and EOS), got {max_length}")
    return int(max_length)


class ByteTokenizer(Tokenizer):
    """Byte-level tokenizer. Ids 0..255 are bytes; specials follow.

    Args:
        max_length: token limit; longer texts are truncated (BOS/EOS included in the count).
    """

    PAD, BOS, EOS, SEP, MASK = 256, 257, 258, 259, 260
    SPECIALS = {"<pad>": PAD, "<bos>": BOS, "<eos>": EOS, "<sep>": SEP, "<mask>": MASK}
    vocab_size = 261

    def __init__(self, max_length: int = 128) -> None:
        self.max_length = _check_max_length(max_length)

    @property
    def special_ids(self) -> frozenset[int]:
        return frozenset(self.SPECIALS.values())

    def encode_text(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode_ids(self, ids: list[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


def _tokenizer_file(path: str | Path) -> Path:
    path = Path(path)
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        raise UserError(f"tokenizer {path}: no such file (expected a tokenizer.json written by "
                        "`mmgpt-data tokenizer DIR`, or its folder)")
    return file


class BPETokenizer(Tokenizer):
    """A byte-level BPE (``tokenizers`` library) trained by :func:`train_bpe`, plus mmgpt's special tokens.

    The special tokens (:data:`SPECIAL_TOKENS`) take the ids after the BPE's own vocabulary, as the byte
    tokenizer's follow the bytes: they are never produced from text, so a text that contains ``<eos>`` is just
    text, and the file is a plain BPE ``tokenizer.json``.

    Args:
        path: the ``tokenizer.json`` file, or the folder holding it.
        max_length: token limit (BOS/EOS included).
    """

    def __init__(self, path: str | Path, max_length: int = 128) -> None:
        from tokenizers import Tokenizer as _Tokenizer

        self.path = _tokenizer_file(path)
        self.max_length = _check_max_length(max_length)
        try:
            self._tok = _Tokenizer.from_file(str(self.path))
        except Exception as e:  # noqa: BLE001 - the library raises a bare Exception on a bad file
            raise UserError(f"tokenizer {self.path}: not a readable tokenizer.json ({e})") from e
        n = self._tok.get_vocab_size()
        self.PAD, self.BOS, self.EOS, self.SEP, self.MASK = range(n, n + len(SPECIAL_TOKENS))
        self.vocab_size = n + len(SPECIAL_TOKENS)
        self._hash = _file_hash(self.path)

    @property
    def special_ids(self) -> frozenset[int]:
        return frozenset({self.PAD, self.BOS, self.EOS, self.SEP, self.MASK})

    def encode_text(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode_ids(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=False)

    def fingerprint(self) -> str:
        return f"BPETokenizer:{self._hash}:{self.max_length}"


def _file_hash(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def train_bpe(texts: Iterable[str], vocab_size: int, out: str | Path, min_frequency: int = 2) -> BPETokenizer:
    """Train a byte-level BPE on ``texts`` and save it as ``out/tokenizer.json`` (``out`` may be the file).

    Byte-level: any text encodes (unseen characters fall back to their bytes), and decoding gives the text back.
    The BPE learns ``vocab_size - 5`` tokens (the 256 byte symbols and the merges); the 5 special tokens take the
    ids after them (:class:`BPETokenizer`).

    Args:
        texts: the training texts.
        vocab_size: the vocabulary size, special tokens and the 256 byte symbols included.
        out: the folder (created) or ``.json`` file to write.
        min_frequency: pairs seen fewer times are not merged (the vocabulary may then stay smaller).
    Returns:
        the saved tokenizer, loaded back.
    """
    from tokenizers import Tokenizer as _Tokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    floor = len(SPECIAL_TOKENS) + 256
    if vocab_size <= floor:
        raise UserError(f"--vocab-size {vocab_size}: must exceed {floor} (5 special tokens + 256 bytes)")
    tok = _Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - len(SPECIAL_TOKENS), min_frequency=min_frequency,
                                  show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    out = Path(out)
    file = out if out.suffix == ".json" else out / "tokenizer.json"
    file.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(file))
    return BPETokenizer(file)


class HFTokenizer(Tokenizer):
    """A pretrained model's own tokenizer (``transformers.AutoTokenizer``), e.g. GPT-2's BPE.

    BOS is the tokenizer's ``bos_token`` (or its ``eos_token``: GPT-2 uses ``<|endoftext|>`` for both), EOS its
    ``eos_token``, PAD its ``pad_token`` or else EOS.

    Args:
        name_or_path: the model folder (or hub id) holding the tokenizer files.
        max_length: token limit (BOS/EOS included).
        vocab_size: the size of the model's output layer; ids above it are refused.
        trust_remote_code: passed to ``AutoTokenizer`` (runs code shipped with the model; off by default).
        local_files_only: never reach the network (a hub id must be in the local cache).
    """

    def __init__(self, name_or_path: str, max_length: int, vocab_size: int | None = None,
                 trust_remote_code: bool = False, local_files_only: bool = False) -> None:
        from transformers import AutoTokenizer

        self.name_or_path = str(name_or_path)
        self.max_length = _check_max_length(max_length)
        self._tok = AutoTokenizer.from_pretrained(self.name_or_path, trust_remote_code=trust_remote_code,
                                                  local_files_only=local_files_only)
        eos = self._tok.eos_token_id
        if eos is None:
            raise UserError(f"{name_or_path}: its tokenizer has no eos_token (a decoder needs one to stop)")
        self.EOS = int(eos)
        self.BOS = int(self._tok.bos_token_id if self._tok.bos_token_id is not None else eos)
        self.PAD = int(self._tok.pad_token_id if self._tok.pad_token_id is not None else eos)
        self.vocab_size = int(vocab_size if vocab_size is not None else len(self._tok))
        if len(self._tok) > self.vocab_size:
            raise UserError(f"{name_or_path}: the tokenizer has {len(self._tok)} tokens, the model only "
                            f"{self.vocab_size} embeddings")

    @property
    def special_ids(self) -> frozenset[int]:
        return frozenset({self.PAD, self.BOS, self.EOS, *self._tok.all_special_ids})

    def encode_text(self, text: str) -> list[int]:
        return list(self._tok(text, add_special_tokens=False)["input_ids"])

    def decode_ids(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=True)

    def fingerprint(self) -> str:
        return f"HFTokenizer:{self.name_or_path}:{self.max_length}"


#: ``tokenizer: ids``: the data's text modality comes as token ids (MMSA's ``text=bert``); its processor stays.
TOKEN_IDS = "ids"


def load_tokenizer(spec: str | Path | None, max_length: int) -> Tokenizer:
    """The tokenizer a spec's ``tokenizer:`` names: None for bytes, or the path of a trained BPE."""
    if spec is None or str(spec) in ("", "byte"):
        return ByteTokenizer(max_length)
    if str(spec) == TOKEN_IDS:
        raise UserError("tokenizer=ids: the data gives token ids already, so there is no tokenizer to encode text "
                        "with (name the tokenizer.json the ids came from instead)")
    file = _tokenizer_file(spec)
    kind = _model_type(file) if file.suffix == ".json" else None
    if kind != "BPE":
        raise UserError(f"tokenizer {spec}: expected a BPE tokenizer.json (model type {kind!r})")
    return BPETokenizer(file, max_length)


def _model_type(file: Path) -> Any:
    """The ``model.type`` of a ``tokenizer.json`` (None where it has none), read as data: one line if unreadable."""
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"tokenizer {file}: not a readable tokenizer.json ({e})") from None
    model = data.get("model") if isinstance(data, dict) else None
    return model.get("type") if isinstance(model, dict) else None


def tokenizer_vocab(spec: str | Path | None, vocab_size: int | None, where: str) -> int:
    """The vocabulary size of a part with ``tokenizer: spec``: the tokenizer's; a given ``vocab_size`` must agree."""
    if str(spec) == TOKEN_IDS:
        if vocab_size is None:
            raise UserError(f"{where}: tokenizer=ids (the data gives token ids) needs vocab_size, the size of the "
                            "vocabulary the ids come from (e.g. 30522 for bert-base-uncased)")
        return int(vocab_size)
    size = load_tokenizer(spec, 2).vocab_size
    if vocab_size is not None and int(vocab_size) != size:
        raise UserError(f"{where}: vocab_size={vocab_size} but the tokenizer {spec or 'byte'} has {size} tokens "
                        "(leave vocab_size out: it follows the tokenizer)")
    return size


def texts_of(rows: Iterable[dict[str, Any]], keys: Sequence[str] = ("text", "caption")) -> Iterable[str]:
    """The non-empty string values of ``keys`` in each row (what :func:`train_bpe` is trained on)."""
    for row in rows:
        for key in keys:
            value = row.get(key)
            if isinstance(value, str) and value.strip():
                yield value
