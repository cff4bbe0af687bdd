import math

import pytest
import torch

from mmgpt.encoders import AudioEncoder, ImageEncoder, TextEncoder
from mmgpt.encoders.image import ConvStem
from tests.conftest import DIM, HEADS, IMAGE_SIZE, SAMPLE_RATE


def test_text_shapes_and_mask():
    enc = TextEncoder(dim=DIM, num_layers=1, num_heads=HEADS, max_length=16)
    x = torch.randint(0, 256, (2, 9))
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, 5:] = False
    out = enc(x, mask)
    assert out.tokens.shape == (2, 9, DIM)
    assert torch.equal(out.mask, mask)


def test_text_causal_mode_has_no_future_leakage():
    torch.manual_seed(0)
    enc = TextEncoder(dim=DIM, num_layers=2, num_heads=HEADS, max_length=16, causal=True).eval()
    x = torch.randint(0, 256, (1, 10))
    x2 = x.clone()
    x2[0, 6:] = (x2[0, 6:] + 1) % 256
    a, b = enc(x).tokens, enc(x2).tokens
    torch.testing.assert_close(a[:, :6], b[:, :6])
    assert not torch.allclose(a[:, 6:], b[:, 6:])


def test_text_bidirectional_mode_sees_the_whole_sentence():
    torch.manual_seed(0)
    enc = TextEncoder(dim=DIM, num_layers=1, num_heads=HEADS, max_length=16, causal=False).eval()
    x = torch.randint(0, 256, (1, 10))
    x2 = x.clone()
    x2[0, -1] = (x2[0, -1] + 1) % 256
    assert not torch.allclose(enc(x).tokens[:, 0], enc(x2).tokens[:, 0])


def test_text_too_long_is_a_clear_error():
    with pytest.raises(ValueError, match="max_length"):
        TextEncoder(dim=DIM, num_layers=1, num_heads=HEADS, max_length=4)(torch.zeros(1, 5, dtype=torch.long))


@pytest.mark.parametrize("stem", [None, "conv"])
def test_image_shapes(stem):
    s = ConvStem(dim=DIM, patch_size=4) if stem else None
    enc = ImageEncoder(dim=DIM, num_layers=1, num_heads=HEADS, image_size=IMAGE_SIZE, patch_size=4, stem=s)
    out = enc(torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE))
    assert out.tokens.shape == (2, (IMAGE_SIZE // 4) ** 2, DIM)
    assert out.mask.shape == (2, 16) and out.mask.all()


def test_image_wrong_size_is_a_clear_error():
    with pytest.raises(ValueError, match="16x16"):
        ImageEncoder(dim=DIM, num_layers=1, num_heads=HEADS, image_size=16, patch_size=4)(torch.randn(1, 3, 20, 20))


def test_audio_shapes_and_masks_follow_lengths():
    enc = audio_encoder()
    wave = torch.randn(2, 8000) * 0.1
    mask = torch.ones(2, 8000, dtype=torch.bool)
    mask[1, 4000:] = False
    out = enc(wave, mask)
    frames = 8000 // 80 + 1  # centred STFT frames
    expected = math.ceil(math.ceil(frames / 2) / 2)  # two stride-2 convolutions
    assert out.tokens.shape == (2, expected, DIM)
    assert out.mask[0].all()
    assert 0 < out.mask[1].sum() < expected
    assert out.mask[1].sum() == pytest.approx(expected / 2, abs=2)


def test_audio_tokens_do_not_depend_on_padding_length():
    torch.manual_seed(0)
    enc = audio_encoder().eval()
    clip = torch.randn(3000) * 0.2

    def encode_padded(total: int):
        wave = torch.zeros(1, total)
        wave[0, :3000] = clip
        mask = torch.zeros(1, total, dtype=torch.bool)
        mask[0, :3000] = True
        return enc(wave, mask)

    a, b = encode_padded(4000), encode_padded(8000)
    n = int(a.mask.sum())
    assert n == int(b.mask.sum())
    torch.testing.assert_close(a.tokens[:, :n], b.tokens[:, :n], atol=1e-5, rtol=1e-4)
    alone = encode_padded(3000)  # the longest clip of its batch: no padding after it
    torch.testing.assert_close(alone.tokens[:, :n], a.tokens[:, :n], atol=1e-5, rtol=1e-4)


def test_audio_empty_clip_has_no_real_tokens():
    enc = audio_encoder()
    out = enc(torch.zeros(2, 1000), torch.tensor([[True] * 1000, [False] * 1000]))
    assert out.mask[0].any() and not out.mask[1].any()
    assert torch.isfinite(out.tokens).all()


def audio_encoder() -> AudioEncoder:
    return AudioEncoder(dim=DIM, num_layers=1, num_heads=HEADS, sample_rate=SAMPLE_RATE, n_mels=16, n_fft=128,
                        hop_length=80)
