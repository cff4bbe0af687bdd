import pytest

from mmgpt.tokenizer import ByteTokenizer


def test_roundtrip_utf8():
    tok = ByteTokenizer(64)
    text = "How many 圆 shapes? ünïcode"
    ids = tok.encode(text)
    assert ids[0] == tok.BOS and ids[-1] == tok.EOS
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids[1:]) == text


def test_truncation_keeps_specials():
    tok = ByteTokenizer(10)
    ids = tok.encode("a" * 100)
    assert len(ids) == 10 and ids[0] == tok.BOS and ids[-1] == tok.EOS


def test_batch_encode_pads_and_masks_missing_text():
    tok = ByteTokenizer(32)
    ids, mask = tok.batch_encode(["ab", None, "abcd"])
    assert ids.shape == mask.shape == (3, 6)
    assert mask.sum(1).tolist() == [4, 0, 6]
    assert (ids[~mask] == tok.PAD).all()


def test_rejects_too_small_limit():
    with pytest.raises(ValueError):
        ByteTokenizer(1)
