"""A backbone or decoder folder someone sent you (issue 21, item 4): tiny models written with ``save_pretrained``,
then one file tampered with. Code shipped with the model, an unknown model type, pickled weights holding a call and
a weight index pointing outside the folder are each refused in one line naming the folder and why; nothing runs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mmgpt.encoders.model_folder import ModelFolderError, check_model_folder
from tests.helpers.tiny import DIM, tiny_hf_lm

transformers = pytest.importorskip("transformers")


class _Marker:
    """Pickles to a call of ``os.system`` that creates ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory) -> Path:
    from tests.helpers.backbones import make_bert

    return make_bert(tmp_path_factory.mktemp("backbones"))


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("lm")
    tiny_hf_lm(path)
    return path


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def _remote_code(folder: Path, marker: Path, file: str = "config.json", **changes) -> None:
    """An ``auto_map`` naming a module shipped in the folder, which would write ``marker`` on import."""
    (folder / "custom.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    _edit_json(folder / file, auto_map={"AutoConfig": "custom.Config", "AutoModel": "custom.Model",
                                        "AutoTokenizer": ["custom.Tokenizer", None]}, **changes)


def _pickled_weights(folder: Path, value: object) -> None:
    """The safetensors weights replaced by a ``pytorch_model.bin`` pickle of ``value``."""
    for file in folder.glob("*.safetensors"):
        file.unlink()
    torch.save(value, folder / "pytorch_model.bin")


def _text_encoder(folder: Path):
    from mmgpt.encoders.hf import HFTextEncoder

    return HFTextEncoder(name_or_path=str(folder), dim=DIM)


def _decoder(folder: Path):
    from mmgpt.decoder import NoConditioning
    from mmgpt.hf_decoder import HFDecoder

    return HFDecoder(conditioner=NoConditioning(), name_or_path=str(folder), dim=DIM)


def test_remote_code_in_config_json_is_refused_in_one_line_before_anything_is_imported(bert_dir, tmp_path):
    folder, marker = _copy(bert_dir, tmp_path / "sent"), tmp_path / "imported"
    _remote_code(folder, marker, model_type="custom_bert")
    with pytest.raises(ModelFolderError) as refused:
        _text_encoder(folder)
    message = str(refused.value)
    assert message.startswith(f"name_or_path={folder}: config.json has an auto_map (code shipped with the model: "
                              "custom.Config, custom.Model, custom.Tokenizer) and no class of transformers' own; "
                              "refused")
    assert "\n" not in message and not marker.exists()


def test_an_auto_map_beside_a_known_model_type_loads_transformers_own_class_and_runs_nothing(bert_dir, tmp_path):
    """Many published folders keep an auto_map after transformers gained the model: with trust_remote_code off,
    transformers builds its own class, so the folder loads and the shipped module is never imported."""
    folder, marker = _copy(bert_dir, tmp_path / "sent"), tmp_path / "imported"
    _remote_code(folder, marker)
    assert type(_text_encoder(folder).backbone).__name__ == "BertModel" and not marker.exists()


def test_an_unknown_model_type_is_refused(bert_dir, tmp_path):
    folder = _copy(bert_dir, tmp_path / "sent")
    _edit_json(folder / "config.json", model_type="not_a_transformers_model")
    with pytest.raises(ModelFolderError, match=r"config\.json names model_type 'not_a_transformers_model', which "
                                               r"transformers does not know; refused"):
        _text_encoder(folder)


def test_remote_code_in_the_tokenizer_config_is_refused(bert_dir, tmp_path):
    from mmgpt.datamodules.hf_processors import hf_text_processor

    folder, marker = _copy(bert_dir, tmp_path / "sent"), tmp_path / "imported"
    _remote_code(folder, marker, "tokenizer_config.json", tokenizer_class="CustomTokenizer")
    with pytest.raises(ModelFolderError, match=r"sent: tokenizer_config\.json has an auto_map .*refused"):
        hf_text_processor({"type": "hf_text", "name_or_path": str(folder), "dim": DIM}, {"max_text_length": 16})
    assert not marker.exists()


def test_pickled_weights_holding_a_call_are_refused_and_plain_ones_load(bert_dir, tmp_path):
    plain = _copy(bert_dir, tmp_path / "plain")
    state = transformers.AutoModel.from_pretrained(bert_dir).state_dict()
    _pickled_weights(plain, state)
    assert _text_encoder(plain).backbone is not None  # a plain pickled state dict is data: it loads
    folder, marker = _copy(bert_dir, tmp_path / "sent"), tmp_path / "ran"
    _pickled_weights(folder, {**state, "extra": _Marker(marker)})
    with pytest.raises(ModelFolderError) as refused:
        _text_encoder(folder)
    assert str(refused.value).startswith(
        f"name_or_path={folder}: pytorch_model.bin is not plain weights (Trying to load unsupported GLOBAL "
        "posix.system")
    assert "weights-only loading only, nothing was run" in str(refused.value) and not marker.exists()


def test_a_weight_index_naming_a_file_outside_the_folder_is_refused(bert_dir, tmp_path):
    folder = _copy(bert_dir, tmp_path / "sent")
    shutil.copy(folder / "model.safetensors", tmp_path / "elsewhere.safetensors")
    (folder / "model.safetensors").unlink()
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {"embeddings.word_embeddings.weight": "../elsewhere.safetensors"}}))
    with pytest.raises(ModelFolderError, match=r"model\.safetensors\.index\.json names the weight file "
                                               r"'\.\./elsewhere\.safetensors', outside the folder; refused"):
        _text_encoder(folder)


def test_a_config_that_is_not_a_json_object_is_one_line(bert_dir, tmp_path):
    folder = _copy(bert_dir, tmp_path / "sent")
    (folder / "config.json").write_text('["a", "list"]')
    with pytest.raises(ModelFolderError, match=r"config\.json holds a JSON list, not an object$"):
        check_model_folder(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ModelFolderError, match=r"config\.json is not readable JSON"):
        check_model_folder(folder)


@pytest.mark.parametrize("case", ["auto_map", "pickle"])
def test_the_decoder_folder_is_checked_the_same_way(lm_dir, tmp_path, case):
    folder, marker = _copy(lm_dir, tmp_path / "lm"), tmp_path / "ran"
    if case == "auto_map":
        _remote_code(folder, marker, model_type="custom_lm")
    else:
        _pickled_weights(folder, {"lm_head.weight": torch.zeros(2), "x": _Marker(marker)})
    with pytest.raises(ModelFolderError, match=rf"^model\.net\.decoder\.name_or_path={folder}: .*refused"):
        _decoder(folder)
    assert not marker.exists()


def test_a_timm_checkpoint_holding_a_call_is_refused(tmp_path):
    pytest.importorskip("timm")
    from mmgpt.encoders.timm_encoder import create_timm_model
    from tests.helpers.backbones import TIMM_KWARGS, TIMM_MODEL

    marker, path = tmp_path / "ran", tmp_path / "weights.pth"
    torch.save({"pos_embed": _Marker(marker)}, path)
    with pytest.raises(ModelFolderError, match=rf"^checkpoint_path={path}: weights\.pth is not plain weights "
                                               r"\(Trying to load unsupported GLOBAL posix\.system"):
        create_timm_model(TIMM_MODEL, checkpoint_path=str(path), model_kwargs=TIMM_KWARGS)
    assert not marker.exists()


@pytest.mark.slow  # a whole mmgpt-train start-up (~30 s on the shared machine)
def test_mmgpt_train_on_a_folder_with_remote_code_prints_one_line(bert_dir, tmp_path):
    folder, marker = _copy(bert_dir, tmp_path / "sent"), tmp_path / "imported"
    _remote_code(folder, marker, model_type="custom_bert")
    done = subprocess.run([sys.executable, "-m", "mmgpt.cli.train", "experiment=smoke", f"hydra.run.dir={tmp_path}",
                           "model/encoder/text@model.net.encoders.text=hf",
                           f"model.net.encoders.text.name_or_path={folder}"],
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "Traceback" not in done.stderr + done.stdout, done.stderr[-2000:]
    errors = [line for line in (done.stderr + done.stdout).splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"name_or_path={folder}: config.json has an auto_map" in errors[0]
    assert not marker.exists()
