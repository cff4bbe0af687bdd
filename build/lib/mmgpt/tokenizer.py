"""GPT-style byte-level tokenizer: every UTF-8 byte is a token, plus a few special tokens. No vocabulary file."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


class ByteTokenizer:
    """Byte-level tokenizer. Ids 0..255 are bytes; specials follow.

    Args:
        max_length: token limit; longer texts are truncated (BOS/EOS included in the count).
    """

    PAD, BOS, EOS, SEP, MASK = 256, 257, 258, 259, 260
    SPECIALS = {"<pad>": PAD, "<bos>": BOS, "<eos>": EOS, "<sep>": SEP, "<mask>": MASK}
    vocab_size = 261

    def __init__(self, max_length: int = 128) -> None:
        if max_length < 2:
            raise ValueError(f"max_length must be >= 2 (room for BOS and EOS), got {max_length}")
        self.max_length = max_length

    def encode(self, text: str, add_special: bool = True) -> list[int]:
        """UTF-8 bytes of ``text``, wrapped in BOS/EOS, truncated to ``max_length``."""
        ids = list(text.encode("utf-8"))
        if not add_special:
            return ids[: self.max_length]
        return [self.BOS, *ids[: self.max_length - 2], self.EOS]

    def decode(self, ids: Sequence[int] | Tensor) -> str:
        """Bytes back to text; special tokens are dropped, stops at EOS, invalid UTF-8 is replaced."""
        if isinstance(ids, Tensor):
            ids = ids.tolist()
        out = bytearray()
        for i in ids:
            if i == self.EOS:
                break
            if 0 <= i < 256:
                out.append(i)
        return out.decode("utf-8", errors="replace")

    def batch_encode(self, texts: Sequence[str | None]) -> tuple[Tensor, Tensor]:
        """Encode and right-pad texts. None (a missing text) becomes an all-padding row.

        Returns:
            ids (B, T) int64 and mask (B, T) bool, True = real token; T >= 1.
        """
        encoded = [self.encode(t) if t is not None else [] for t in texts]
        T = max(1, max(len(e) for e in encoded))
        ids = torch.full((len(texts), T), self.PAD, dtype=torch.long)
        mask = torch.zeros(len(texts), T, dtype=torch.bool)
        for i, e in enumerate(encoded):
            ids[i, : len(e)] = torch.tensor(e, dtype=torch.long)
            mask[i, : len(e)] = True
        return ids, mask
