"""Decoding real image and audio files, checking their headers, and storing them in the media store."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from mmgpt.datamodules.manifest import DecodeError, MediaFiles, load_audio, load_image
from mmgpt.datamodules.options import DataOptions
from mmgpt.datamodules.processors import declared_processors
from tests.datamodules.conftest import write_png, write_wav


@pytest.mark.parametrize("name", ["red.png", "gray.jpg", "clear.png", "palette.png"])
def test_every_image_kind_becomes_rgb_of_the_configured_size(media: Path, name: str) -> None:
    x = load_image(media / "img" / name, 32)
    assert x.shape == (3, 32, 32) and x.dtype == torch.uint8


def test_image_pixels_survive_conversion(media: Path) -> None:
    red = load_image(media / "img/red.png", 8)
    assert red[0].min() == 255 and red[1].max() == 0 and red[2].max() == 0
    gray = load_image(media / "img/gray.jpg", 8).int()
    assert (gray - 100).abs().max() <= 2 and (gray[0] == gray[1]).all()  # grey stays grey in all channels
    assert (load_image(media / "img/clear.png", 8) == 255).all()  # transparency composited onto white
    blue = load_image(media / "img/palette.png", 8)
    assert blue[2].min() == 255 and blue[0].max() == 0


@pytest.mark.parametrize("name", ["corrupt.png", "empty.png"])
def test_broken_images_raise_decode_error(media: Path, name: str) -> None:
    with pytest.raises(DecodeError, match="cannot decode image"):
        load_image(media / "img" / name, 32)


def test_audio_is_resampled_and_mixed_down(media: Path) -> None:
    mono = load_audio(media / "wav/mono8k.wav", 8000, 16000)
    assert mono.shape == (4000,) and mono.dtype == torch.float32
    stereo = load_audio(media / "wav/stereo44k.wav", 8000, 16000)
    assert abs(stereo.shape[0] - 4000) <= 1
    # The right channel is silent: the mix-down halves the left's 0.5 amplitude; the 440 Hz tone survives.
    assert 0.22 < stereo.abs().max() < 0.28
    spectrum = torch.fft.rfft(stereo).abs()
    assert abs(spectrum.argmax().item() * 8000 / stereo.shape[0] - 440) < 5


def test_flac_and_ogg_decode_like_wav(media: Path) -> None:
    wav = load_audio(media / "wav/mono8k.wav", 8000, 8000)
    flac = load_audio(media / "wav/tone.flac", 8000, 8000)
    assert flac.shape == wav.shape
    assert torch.allclose(flac, wav, atol=0.02)  # same tone, recorded at 16 kHz and resampled
    if (media / "wav/tone.ogg").exists():
        assert load_audio(media / "wav/tone.ogg", 8000, 8000).shape[0] == pytest.approx(4000, abs=2)


def test_long_audio_is_cropped(media: Path) -> None:
    assert load_audio(media / "wav/long.wav", 8000, 8000).shape == (8000,)


def test_empty_and_corrupt_audio_raise(media: Path) -> None:
    with pytest.raises(DecodeError, match="empty audio"):
        load_audio(media / "wav/empty.wav", 8000, 8000)
    with pytest.raises(DecodeError, match="cannot decode audio"):
        load_audio(media / "wav/corrupt.wav", 8000, 8000)


def test_store_decodes_once_and_redecodes_changed_files(media: Path, tmp_path: Path) -> None:
    settings = declared_processors(None, DataOptions(image_size=16))
    paths = [str(media / p) for p in ("img/red.png", "img/gray.jpg", "img/corrupt.png", "img/nope.png")]
    first = MediaFiles(settings, tmp_path / "store")
    out = first.check_many("image", paths)
    assert first.decoded == 3  # the missing file is not decoded, it is reported
    assert "cannot decode image" in out[paths[2]] and out[paths[3]] == "missing file"
    red = first.get("image", paths[0])
    first.flush()

    second = MediaFiles(settings, tmp_path / "store")
    again = second.check_many("image", paths)
    assert second.decoded == 0 and again == out  # errors are remembered too
    assert torch.equal(second.get("image", paths[0]), red) and second.decoded == 0

    write_png(Path(paths[0]), (30, 20), "RGB", (0, 255, 0))
    os.utime(paths[0], ns=(1, 1))  # a different mtime, whatever the clock resolution
    third = MediaFiles(settings, tmp_path / "store")
    third.check_many("image", paths)
    assert third.decoded == 1 and third.get("image", paths[0])[1].min() == 255
    third.flush()
    assert MediaFiles(settings, tmp_path / "store").get("image", paths[0])[1].min() == 255  # the newer entry wins

    other = MediaFiles(declared_processors(None, DataOptions(image_size=8)), tmp_path / "store")  # other keys
    other.check_many("image", paths[:1])
    assert other.decoded == 1


def test_get_decodes_what_the_store_lacks_and_raises_decode_errors(media: Path) -> None:
    files = MediaFiles(declared_processors(None, DataOptions(image_size=16)))  # a temporary store
    wave = files.get("audio", str(media / "wav/mono8k.wav"))
    assert wave.shape == (4000,) and files.decoded == 1
    assert torch.equal(files.get("audio", str(media / "wav/mono8k.wav")), wave) and files.decoded == 1
    with pytest.raises(DecodeError, match="cannot decode audio"):
        files.get("audio", str(media / "wav/corrupt.wav"))
    with pytest.raises(DecodeError, match="missing file"):
        files.get("image", str(media / "img/nope.png"))


@pytest.mark.parametrize("kind,name,message", [("image", "img/corrupt.png", "cannot decode image"),
                                               ("image", "img/empty.png", "cannot decode image"),
                                               ("audio", "wav/corrupt.wav", "cannot decode audio"),
                                               ("audio", "wav/empty.wav", "empty audio")])
def test_headers_check_catches_broken_headers_without_decoding(media: Path, kind: str, name: str, message: str,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    files = MediaFiles(declared_processors(None, DataOptions(image_size=16)))
    good = "img/red.png" if kind == "image" else "wav/stereo44k.wav"
    out = files.check_many(kind, [str(media / name), str(media / good)], mode="headers")
    assert message in out[str(media / name)] and out[str(media / good)] is None
    assert files.decoded == 0 and len(files.store) == 0  # nothing decoded, nothing stored


def test_headers_check_catches_a_truncated_png_header_and_a_wrong_wav_header(tmp_path: Path) -> None:
    png = write_png(tmp_path / "a.png", (30, 20))
    (tmp_path / "cut.png").write_bytes(png.read_bytes()[:20])  # signature + part of IHDR
    wav = write_wav(tmp_path / "a.wav", 0.5, 8000)
    data = bytearray(wav.read_bytes())
    data[20:22] = (0x7777).to_bytes(2, "little")  # fmt chunk: an audio format code libsndfile does not know
    (tmp_path / "wrong.wav").write_bytes(bytes(data))
    files = MediaFiles(declared_processors(None, DataOptions(image_size=16)))
    cut, wrong = str(tmp_path / "cut.png"), str(tmp_path / "wrong.wav")
    assert "cannot decode image" in files.check_many("image", [cut], mode="headers")[cut]
    assert "cannot decode audio" in files.check_many("audio", [wrong], mode="headers")[wrong]
    assert files.check_many("audio", [str(wav)], mode="headers")[str(wav)] is None


def test_write_helpers_make_real_files(tmp_path: Path) -> None:
    wav = write_wav(tmp_path / "a.wav", 0.25, 44100, 2)
    info = sf.info(str(wav))
    assert (info.samplerate, info.channels, info.frames) == (44100, 2, 11025)
    assert np.asarray(load_image(write_png(tmp_path / "b.png"), 4)).shape == (3, 4, 4)
