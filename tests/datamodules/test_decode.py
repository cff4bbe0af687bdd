"""Decoding with the per-decode limits and the exact-ratio resampler of ``mmgpt.datamodules.decode`` (issue 22
item 7): resampling matches the sampled signal at odd ratios with an exact length, and a data config's pixel limit
never changes Pillow's process-wide setting."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from mmgpt.datamodules.decode import DecodeError, load_audio, load_image, resample
from tests.helpers.media import write_bomb_png

pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")

ODD_RATIOS = [(44100, 16000), (22050, 8000), (44111, 8000), (8000, 44100)]


def _tones(rate: int, n: int, freqs: tuple[float, ...]) -> np.ndarray:
    t = np.arange(n) / rate
    return sum(0.3 * np.sin(2 * np.pi * f * t + i) for i, f in enumerate(freqs)).astype(np.float32)


@pytest.mark.parametrize("orig, new", ODD_RATIOS)
def test_resampling_at_an_odd_ratio_matches_the_signal_sampled_at_the_new_rate(orig: int, new: int) -> None:
    """The reference is the same tones sampled directly at the new rate (below both Nyquist frequencies)."""
    n = orig // 2  # half a second
    freqs = (440.0, 1000.0, 0.4 * min(orig, new))
    out = resample(_tones(orig, n, freqs), orig, new)
    assert out.dtype == np.float32 and len(out) == round(n * new / orig)
    reference = _tones(new, len(out), freqs)
    edge = new // 50  # 20 ms: the filter's start-up at both ends
    assert np.abs(out[edge:-edge] - reference[edge:-edge]).max() < 5e-4  # measured: 1.1e-4 at most


def test_a_rate_that_is_already_right_is_not_touched() -> None:
    wave = _tones(16000, 1000, (440.0,))
    assert resample(wave, 16000, 16000) is wave


@pytest.mark.parametrize("orig, new", ODD_RATIOS)
def test_decoded_audio_has_the_exact_length_at_the_new_rate(tmp_path: Path, orig: int, new: int) -> None:
    path = tmp_path / f"{orig}.wav"
    sf.write(str(path), _tones(orig, orig, (440.0,)), orig, subtype="PCM_16")  # one second
    assert load_audio(path, new, 10 * new).shape == (new,)  # all of it: one second at the new rate
    assert load_audio(path, new, new // 3).shape == (new // 3,)  # cropped


@pytest.fixture(scope="module")
def bomb14k(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 14000 x 14000 PNG: 196 M pixels, past Pillow's own refusal threshold (2 x 89,478,485)."""
    return write_bomb_png(tmp_path_factory.mktemp("bomb") / "bomb14k.png", 14000)


def test_a_config_limit_does_not_change_pillows_global_setting(tmp_path: Path, bomb14k: Path) -> None:
    before = Image.MAX_IMAGE_PIXELS
    small = tmp_path / "small.png"
    Image.new("RGB", (40, 30), (255, 0, 0)).save(small)
    assert load_image(small, 8, max_pixels=10**12).shape == (3, 8, 8)
    with pytest.raises(DecodeError):
        load_image(bomb14k, 8, max_pixels=300_000_000)
    assert Image.MAX_IMAGE_PIXELS == before


def test_an_image_over_the_config_limit_is_refused_in_one_line(tmp_path: Path, bomb14k: Path) -> None:
    path = tmp_path / "wide.png"
    Image.new("RGB", (200, 100)).save(path)
    with pytest.raises(DecodeError) as small:
        load_image(path, 8, max_pixels=10_000)
    with pytest.raises(DecodeError) as huge:
        load_image(bomb14k, 8, max_pixels=10_000)
    assert str(small.value) == ("image of 200x100 = 20,000 pixels is larger than the limit of 10,000 "
                                "(data.max_image_pixels)")
    assert str(huge.value) == "image of 196,000,000 pixels is larger than the limit of 10,000 (data.max_image_pixels)"


def test_an_image_within_the_config_limit_but_past_pillows_own_says_which_limit(bomb14k: Path) -> None:
    with pytest.raises(DecodeError) as e:
        load_image(bomb14k, 8, max_pixels=300_000_000)
    message = str(e.value)
    assert "\n" not in message and "within data.max_image_pixels" in message
    assert f"Pillow's own limit of {2 * Image.MAX_IMAGE_PIXELS:,} pixels" in message
