"""Issue 10 item 7, data side: each bad input a user can feed, fed exactly, ending in a named problem or a correct
value."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from mmgpt.cli.data import main as data_main
from mmgpt.datamodules.decode import DecodeError, load_audio, load_image
from mmgpt.datamodules.manifest import (
    ManifestDataModule,
    ManifestError,
    MediaFiles,
    check_folder,
    read_index,
)
from mmgpt.datamodules.options import DataOptions
from mmgpt.datamodules.processors import TextProcessor, declared_processors
from mmgpt.tokenizer import ByteTokenizer
from tests.datamodules.conftest import FolderFactory, good_rows
from tests.helpers.media import write_bomb_png, write_png16

# Pillow warns about images above its own threshold; mmgpt refuses them itself (and silences that warning, but
# pytest re-enables warnings in every test).
pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")

LIMIT = "is larger than the limit of 89,478,485 (data.max_image_pixels)"


@pytest.fixture(scope="module")
def bombs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 14000 x 14000 PNG (196 M pixels: past Pillow's error threshold) and a 12000 x 12000 one (144 M: past
    its warning threshold only), each a few hundred KB."""
    base = tmp_path_factory.mktemp("bombs")
    return {"14k": write_bomb_png(base / "bomb14k.png", 14000), "12k": write_bomb_png(base / "bomb12k.png", 12000)}


# -- (1) decompression-bomb style images ----------------------------------------------------------------------------
@pytest.mark.parametrize("name, pixels", [("14k", "196,000,000 pixels"), ("12k", "12000x12000 = 144,000,000 pixels")])
def test_a_huge_image_is_refused_from_its_header_with_a_named_problem(bombs: dict[str, Path], name: str,
                                                                      pixels: str) -> None:
    assert bombs[name].stat().st_size < 300_000
    t0 = time.perf_counter()
    with pytest.raises(DecodeError, match=re.escape(f"image of {pixels} {LIMIT}")):
        load_image(bombs[name], 32)
    assert time.perf_counter() - t0 < 1.0  # nothing decoded


def test_the_pixel_limit_is_configurable_and_a_large_image_below_it_decodes_reduced(bombs: dict[str, Path]) -> None:
    with pytest.raises(DecodeError, match="larger than the limit of 1,000"):
        load_image(bombs["12k"], 8, max_pixels=1000)
    image = load_image(bombs["12k"], 8, max_pixels=150_000_000)  # decoded once, reduced at once
    assert image.shape == (3, 8, 8) and int(image.max()) == 0


def test_a_large_image_is_reduced_at_once_not_converted_at_full_size(bombs: dict[str, Path]) -> None:
    # In a fresh process, so its peak memory is this decode's: the 144 M grey pixels once (144 MB), never the
    # full-size RGB conversion (432 MB more) the decoder used to make before resizing.
    code = ("import resource\n"
            "from mmgpt.datamodules.decode import load_image\n"
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            f"load_image({str(bombs['12k'])!r}, 32, max_pixels=150_000_000)\n"
            "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)\n")
    grown_mb = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                    cwd=Path(__file__).parents[2]).stdout)
    assert grown_mb < 250, grown_mb


def _bomb_folder(make_folder: FolderFactory, bombs: dict[str, Path]) -> Path:
    root = make_folder(train=good_rows(6) + [{"id": "big", "text": "t", "image": "img/bomb14k.png", "label": "cat"},
                                             {"id": "gone", "text": "t", "audio": "wav/gone.wav", "label": "dog"},
                                             {"id": "big2", "text": "t", "image": "img/bomb12k.png", "label": "dog"}],
                       val=good_rows(3))
    for name in ("14k", "12k"):
        (root / "img" / bombs[name].name).symlink_to(bombs[name])
    return root


def test_check_reports_huge_images_among_every_other_problem(make_folder: FolderFactory, bombs: dict[str, Path],
                                                             capsys: pytest.CaptureFixture) -> None:
    root = _bomb_folder(make_folder, bombs)
    assert data_main(["check", str(root)]) == 1
    out = capsys.readouterr().out
    assert f"train.jsonl:7: image 'img/bomb14k.png': image of 196,000,000 pixels {LIMIT}" in out
    assert "train.jsonl:8: audio 'wav/gone.wav': missing file" in out
    assert f"train.jsonl:9: image 'img/bomb12k.png': image of 12000x12000 = 144,000,000 pixels {LIMIT}" in out
    assert "train: 6 usable samples, 3 bad rows" in out
    assert data_main(["check", str(root), "--max-image-pixels", "0"]) == 1  # no limit: the 12k one decodes
    assert "bomb12k" not in capsys.readouterr().out


def test_training_with_on_error_skip_skips_huge_images_and_writes_the_report(make_folder: FolderFactory,
                                                                             bombs: dict[str, Path],
                                                                             tmp_path: Path) -> None:
    root = _bomb_folder(make_folder, bombs)
    with pytest.raises(ManifestError, match="bomb14k"):
        ManifestDataModule(str(root), image_size=16, report_dir=str(tmp_path / "r1")).setup("fit")
    assert (tmp_path / "r1" / "data_report.json").is_file()
    dm = ManifestDataModule(str(root), image_size=16, batch_size=4, on_error="skip", report_dir=str(tmp_path / "r2"))
    dm.setup("fit")
    assert sum(b.batch_size for b in dm.train_dataloader()) == 6
    report = json.loads((tmp_path / "r2" / "data_report.json").read_text())
    assert report["skipped_rows"] == ["train.jsonl:7", "train.jsonl:8", "train.jsonl:9"]
    assert any("bomb14k" in p and "data.max_image_pixels" in p for p in report["problems"])


# -- (2) audio at an awkward sample rate ------------------------------------------------------------------------
def test_audio_at_44111_hz_resamples_fast_in_bounded_memory_and_keeps_its_pitch(tmp_path: Path) -> None:
    path = tmp_path / "odd.wav"
    t = np.arange(44111) / 44111
    sf.write(str(path), (0.5 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32), 44111, subtype="PCM_16")
    # In a fresh process, so its peak memory is this decode's (before: 35 s and 6.6 GB).
    code = ("import resource, time, numpy as np\n"
            "from mmgpt.datamodules.decode import load_audio\n"
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "t0 = time.perf_counter()\n"
            f"w = load_audio({str(path)!r}, 8000, 8000).numpy()\n"
            "dt = time.perf_counter() - t0\n"
            "grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024\n"
            "peak = np.fft.rfftfreq(len(w), 1 / 8000)[np.abs(np.fft.rfft(w)).argmax()]\n"
            "print(len(w), dt, grown, peak)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).parents[2]).stdout.split()
    n, seconds, grown_mb, peak_hz = int(out[0]), float(out[1]), float(out[2]), float(out[3])
    assert n == 8000 and seconds < 5.0 and grown_mb < 200, out
    assert abs(peak_hz - 440.0) <= 1.0  # the sine's frequency survives (1 Hz bins)
    wave = load_audio(path, 8000, 8000).numpy()
    assert 0.45 < np.abs(wave[100:-100]).max() < 0.55  # and its amplitude


# -- (3) high bit depths ----------------------------------------------------------------------------------------
def test_16_bit_grey_png_is_scaled_not_saturated(tmp_path: Path) -> None:
    grey = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)  # 0 .. 65520
    path = write_png16(tmp_path / "g16.png", grey)
    assert Image.open(path).mode.startswith("I")
    out = load_image(path, 64).numpy().astype(np.float64)  # (3, 64, 64)
    assert np.abs(out - grey / 257.0).max() <= 0.5 + 1e-9
    assert (out == 255).mean() < 0.01  # before: 99.6% white


def test_48_bit_rgb_png_keeps_its_colours(tmp_path: Path) -> None:
    ramp = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)
    rgb = np.stack([ramp, 65535 - ramp, np.full_like(ramp, 30000)], axis=-1)
    out = load_image(write_png16(tmp_path / "rgb48.png", rgb), 64).numpy().transpose(1, 2, 0).astype(np.float64)
    assert np.abs(out - rgb / 257.0).max() <= 1.0


def test_float_tiff_in_0_1_is_scaled_and_an_out_of_range_one_is_refused(tmp_path: Path) -> None:
    pixels = np.random.default_rng(0).random((32, 32), dtype=np.float32)
    Image.fromarray(pixels).save(tmp_path / "f.tiff")
    out = load_image(tmp_path / "f.tiff", 32).numpy().astype(np.float64)
    assert np.abs(out - pixels * 255.0).max() <= 0.5 + 1e-4
    pixels[0, 0], pixels[0, 1] = -10.0, 990.0
    Image.fromarray(pixels).save(tmp_path / "bad.tiff")
    with pytest.raises(DecodeError, match=r"float image with values in \[-10, 990\]: expected \[0, 1\] or \[0, 255\]"):
        load_image(tmp_path / "bad.tiff", 32)


# -- (4) a folder without test.jsonl ------------------------------------------------------------------------------
def test_a_folder_without_a_test_split_says_so(make_folder: FolderFactory) -> None:
    root = make_folder(train=good_rows(4), val=good_rows(2))
    dm = ManifestDataModule(str(root), image_size=16)
    assert dm.has_split("train") and dm.has_split("val") and not dm.has_split("test")
    with_test = ManifestDataModule(str(make_folder(test=good_rows(2))), image_size=16)
    assert with_test.has_split("test")


def test_training_on_a_folder_without_a_test_split_ends_with_results(compose_cfg, make_folder: FolderFactory) -> None:
    from mmgpt.cli.train import train

    root = make_folder(train=good_rows(8), val=good_rows(4))
    cfg = compose_cfg(["experiment=smoke", "data=manifest", f"data.root={root}", "data.image_size=16",
                       "data.batch_size=4", "model.dim=16", "logger=csv", "trainer.max_epochs=1"])
    results = train(cfg)
    assert results["test"] == {} and "val/acc" in results["val"]
    assert json.loads((Path(cfg.paths.output_dir) / "results.json").read_text())["test"] == {}


# -- (5) the same sample in train and val/test -------------------------------------------------------------------
def test_samples_shared_by_train_and_evaluation_splits_are_warned_about(make_folder: FolderFactory,
                                                                        capsys: pytest.CaptureFixture,
                                                                        tmp_path: Path,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    train = good_rows(4)
    val = [{"id": "s1", "text": "again", "label": "dog"},  # same id as train's s1
           {"id": "v2", "text": "t", "image": "img/./red.png", "label": "cat"}]  # same image as train's s0
    root = make_folder(train=train, val=val)
    index = read_index(root)
    assert len(index.warnings) == 1
    warning = index.warnings[0]
    assert "val.jsonl: 2 sample(s) also in train.jsonl" in warning
    assert "id 's1' (val.jsonl:1 and train.jsonl:2)" in warning
    assert "image 'img/./red.png' (val.jsonl:2, id 'v2', and train.jsonl:1, id 's0')" in warning
    assert data_main(["check", str(root)]) == 0  # a warning, not a problem
    assert "warning: val.jsonl: 2 sample(s)" in capsys.readouterr().out
    dm = ManifestDataModule(str(root), image_size=16, report_dir=str(tmp_path))
    dm.setup("fit")
    assert json.loads((tmp_path / "data_report.json").read_text())["warnings"] == [warning]
    assert any("leakage" in r.getMessage() for r in caplog.records)
    distinct = [{"id": "v1", "text": "t", "audio": "wav/tone.flac", "label": "cat"}]  # tone.flac is not in train
    assert read_index(make_folder(val=distinct)).warnings == []  # distinct ids and files: silent


# -- (6) a CSV manifest without a label column --------------------------------------------------------------------
def test_a_csv_without_a_label_column_is_one_problem_about_its_header(media: Path) -> None:
    (media / "train.csv").write_text("id,text,image\n" + "".join(f"r{i},text {i},img/red.png\n" for i in range(50)))
    (media / "val.csv").write_text("id,text,label\nv1,hello,cat\n")
    report = check_folder(media, MediaFiles(declared_processors(None, DataOptions(image_size=16))))
    train_problems = [str(p) for p in report.problems if p.file == "train.csv"]
    assert train_problems == ["train.csv:1: the header has no 'label' column (columns: ['id', 'text', 'image'])"]
    assert report.fatal


# -- (7) an empty text is not a modality ------------------------------------------------------------------------
def test_an_empty_text_alone_is_no_modality_and_never_counts_as_present(make_folder: FolderFactory) -> None:
    root = make_folder(train=good_rows(4) + [{"id": "e", "text": "", "label": "cat"},
                                             {"id": "w", "text": "  ", "image": "img/red.png", "label": "dog"}],
                       val=good_rows(2))
    index = read_index(root)
    assert [str(p) for p in index.problems] == [
        "train.jsonl:5: no modality: text, image and audio are all missing (an empty text counts as missing)"]
    dm = ManifestDataModule(str(root), image_size=16, batch_size=5, on_error="skip", shuffle=False)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch.ids[-1] == "w" and not batch.present["text"][-1] and batch.present["image"][-1]
    _, _, present = TextProcessor(tokenizer=ByteTokenizer(8)).collate(["", " \n", None, "a"])
    assert present.tolist() == [False, False, False, True]
