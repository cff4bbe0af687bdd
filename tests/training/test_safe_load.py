"""Opening a checkpoint never runs code it names: crafted checkpoints are refused, naming the key, before any call.

Hydra 1.3 already blocks ``os.system``, ``subprocess.run`` and similar, so the crafted targets here are callables it
does not block (``shutil.copyfile``, ``builtins.open``, ``torch.save``, ``pathlib.Path.write_text``): each would
leave a file behind if it were called.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from mmgpt.cli.evaluate import evaluate
from mmgpt.cli.train import train
from mmgpt.config import CONFIG_DIR
from mmgpt.errors import CheckpointError
from mmgpt.registry import LEGACY_TARGETS
from mmgpt.training.finetune import init_from_checkpoint
from mmgpt.training.lit_module import MultimodalModule
from mmgpt.training.safe_load import read_checkpoint


def _cfg(name: str, overrides: list[str], out: Path):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(name, overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
        cfg.paths.log_dir = str(out / "logs")
    return cfg


@pytest.fixture(scope="module")
def real_ckpt(tmp_path_factory) -> Path:
    """A checkpoint of a real (tiny) training run, with its stored run config."""
    out = tmp_path_factory.mktemp("trained")
    train(_cfg("train", ["experiment=smoke", "model/fusion=cross_attention", "model.fusion.gate_init=0.5",
                         "logger=csv", "test=false", "trainer.max_steps=2", "trainer.limit_val_batches=1"],
               out / "run"))
    return out / "run" / "checkpoints" / "last.ckpt"


def _craft(real: Path, tmp: Path, edit) -> Path:
    ckpt = torch.load(real, map_location="cpu", weights_only=True)
    edit(ckpt)
    path = tmp / "crafted.ckpt"
    torch.save(ckpt, path)
    return path


def _payloads(tmp: Path) -> dict[str, tuple[dict[str, Any], Path]]:
    """name -> (a node that would write a file if called, the file it would write)."""
    src = Path(__file__)
    return {
        "copyfile": ({"_target_": "shutil.copyfile", "_args_": [str(src), str(tmp / "copied")]}, tmp / "copied"),
        "open": ({"_target_": "builtins.open", "_args_": [str(tmp / "opened"), "w"]}, tmp / "opened"),
        "torch_save": ({"_target_": "torch.save", "_args_": [[1], str(tmp / "saved.pt")]}, tmp / "saved.pt"),
        "write_text": ({"_target_": "pathlib.Path.write_text", "_args_": [str(tmp / "written"), "x"]}, tmp / "written"),
        "partial": ({"_target_": "shutil.copyfile", "_partial_": True, "src": str(src), "dst": str(tmp / "part")},
                    tmp / "part"),
    }


def _place(ckpt: dict, where: str, node: Any) -> None:
    hp = ckpt["hyper_parameters"]
    if where == "encoder":
        hp["net"]["encoders"]["text"] = node
    elif where == "nested_list":
        hp["net"]["fusion"]["modalities"] = ["audio", "image", node]
    elif where == "objectives":
        hp["objectives"] = {"classify": node}
    elif where == "optimizer":
        hp["optimizer"] = node
    elif where == "scheduler":
        hp["scheduler"] = node
    elif where == "data":
        ckpt["mmgpt"]["config"]["data"] = node
    elif where == "data_nested":
        ckpt["mmgpt"]["config"]["data"]["modality_dropout"] = node
    else:
        raise AssertionError(where)


KEYS = {
    "encoder": r"hyper_parameters\.net\.encoders\.text\._target_",
    "nested_list": r"hyper_parameters\.net\.fusion\.modalities\[2\]\._target_",
    "objectives": r"hyper_parameters\.objectives\.classify\._target_",
    "optimizer": r"hyper_parameters\.optimizer\._target_",
    "scheduler": r"hyper_parameters\.scheduler\._target_",
    "data": r"config\.data\._target_",
    "data_nested": r"config\.data\.modality_dropout\._target_",
}


@pytest.mark.parametrize("where", sorted(KEYS))
@pytest.mark.parametrize("payload", ["copyfile", "open", "torch_save", "write_text", "partial"])
def test_mmgpt_eval_refuses_a_crafted_checkpoint_and_calls_nothing(real_ckpt, tmp_path, where, payload):
    node, side_effect = _payloads(tmp_path)[payload]
    crafted = _craft(real_ckpt, tmp_path, lambda c: _place(c, where, copy.deepcopy(node)))
    cfg = _cfg("eval", [f"ckpt_path={crafted}"], tmp_path / "eval")
    with pytest.raises(CheckpointError, match=KEYS[where]) as err:
        evaluate(cfg)
    assert str(node["_target_"]) in str(err.value)  # names the target it refused
    assert not side_effect.exists(), f"{node['_target_']} was called"


@pytest.mark.parametrize("where", ["encoder", "objectives", "optimizer", "scheduler", "nested_list"])
def test_load_from_checkpoint_goes_through_the_safe_loader(real_ckpt, tmp_path, where):
    node, side_effect = _payloads(tmp_path)["copyfile"]
    crafted = _craft(real_ckpt, tmp_path, lambda c: _place(c, where, node))
    with pytest.raises(CheckpointError, match=KEYS[where]):
        MultimodalModule.load_from_checkpoint(crafted)
    assert not side_effect.exists()


def test_unknown_hyperparameter_and_trust_remote_code_are_refused(real_ckpt, tmp_path):
    crafted = _craft(real_ckpt, tmp_path, lambda c: c["hyper_parameters"].__setitem__("callback", {"x": 1}))
    with pytest.raises(CheckpointError, match=r"hyper_parameters\.callback"):
        MultimodalModule.load_from_checkpoint(crafted)
    crafted = _craft(real_ckpt, tmp_path,
                     lambda c: c["hyper_parameters"]["net"]["encoders"]["text"].__setitem__("trust_remote_code", True))
    with pytest.raises(CheckpointError, match=r"encoders\.text\.trust_remote_code"):
        MultimodalModule.load_from_checkpoint(crafted)


def test_generate_refuses_a_crafted_checkpoint(real_ckpt, tmp_path):
    from omegaconf import OmegaConf

    from mmgpt.cli.generate import run_generate

    node, side_effect = _payloads(tmp_path)["write_text"]
    crafted = _craft(real_ckpt, tmp_path, lambda c: _place(c, "encoder", node))
    args = OmegaConf.create({"ckpt_path": str(crafted), "image": str(tmp_path / "x.png"), "audio": None,
                             "prompt": "", "num_samples": 1, "max_new_tokens": 2, "temperature": 0.0, "top_k": None,
                             "top_p": None, "use_cache": True, "seed": 0, "device": "cpu"})
    with pytest.raises(CheckpointError, match=KEYS["encoder"]):
        run_generate(args)
    assert not side_effect.exists()


def test_init_from_a_crafted_checkpoint_reads_tensors_only(real_ckpt, tmp_path):
    node, side_effect = _payloads(tmp_path)["copyfile"]
    crafted = _craft(real_ckpt, tmp_path, lambda c: _place(c, "encoder", node))
    module = MultimodalModule.load_from_checkpoint(real_ckpt)
    report = init_from_checkpoint(module.net, crafted)
    assert report.loaded and not side_effect.exists()


def test_a_legitimate_checkpoint_loads_and_the_stored_data_config_writes_only_into_the_eval_run(real_ckpt, tmp_path):
    ckpt = read_checkpoint(real_ckpt)
    module = MultimodalModule.load_from_checkpoint(real_ckpt)
    for name, tensor in module.state_dict().items():
        torch.testing.assert_close(tensor, ckpt["state_dict"][name], rtol=0, atol=0)
    results = evaluate(_cfg("eval", [f"ckpt_path={real_ckpt}", "subsets=false"], tmp_path / "eval"))
    assert 0.0 <= results["metrics"]["val/acc"] <= 1.0


def _to_legacy(node: Any) -> Any:
    """The ``_target_`` form checkpoints stored before the typed spec (the inverse of the legacy table)."""
    inverse = {name: path for path, name in LEGACY_TARGETS.items()}
    if isinstance(node, dict):
        out = {("_target_" if k == "type" else k): (inverse[v] if k == "type" else _to_legacy(v))
               for k, v in node.items()}
        if out.get("_target_") in ("torch.optim.AdamW", "mmgpt.optim.warmup_cosine"):
            out["_partial_"] = True
        return out
    if isinstance(node, list):
        return [_to_legacy(v) for v in node]
    return node


def test_a_checkpoint_written_before_the_typed_spec_still_loads(real_ckpt, tmp_path):
    def legacy(c: dict) -> None:
        hp = c["hyper_parameters"]
        for key in ("net", "optimizer", "scheduler"):
            hp[key] = _to_legacy(hp[key])
        hp["net"]["_target_"] = "mmgpt.model.MultimodalTransformer"
        hp["net"].pop("text_modality", None)
        # the gated cross-attention blocks stored their two gates as one vector
        for name in [k for k in c["state_dict"] if k.endswith(".attn_gate")]:
            stem = name.removesuffix("attn_gate")
            gates = [c["state_dict"].pop(name), c["state_dict"].pop(stem + "ff_gate")]
            c["state_dict"][stem + "gates"] = torch.cat(gates)

    crafted = _craft(real_ckpt, tmp_path, legacy)
    assert any(k.endswith(".gates") for k in torch.load(crafted, weights_only=True)["state_dict"])
    old, new = MultimodalModule.load_from_checkpoint(crafted), MultimodalModule.load_from_checkpoint(real_ckpt)
    for name, tensor in new.state_dict().items():
        torch.testing.assert_close(old.state_dict()[name], tensor, rtol=0, atol=0)


@pytest.mark.parametrize("content", [b"this is a text file, not a checkpoint\n", b""])
def test_not_a_checkpoint_is_one_clear_line(tmp_path, content):
    path = tmp_path / "notes.ckpt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=r"notes\.ckpt: not a"):
        read_checkpoint(path)


def test_truncated_checkpoint_is_one_clear_line(real_ckpt, tmp_path):
    path = tmp_path / "truncated.ckpt"
    path.write_bytes(real_ckpt.read_bytes()[: real_ckpt.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"truncated\.ckpt: not a readable checkpoint \(truncated or damaged"):
        read_checkpoint(path)


@pytest.mark.parametrize("command", ["mmgpt.cli.evaluate", "mmgpt.cli.generate"])
def test_commands_report_a_bad_checkpoint_in_one_line(tmp_path, command):
    path = tmp_path / "notes.ckpt"
    path.write_text("not a checkpoint\n")
    extra = ["image=x.png"] if command.endswith("generate") else [f"hydra.run.dir={tmp_path / 'run'}"]
    proc = subprocess.run([sys.executable, "-m", command, f"ckpt_path={path}", *extra], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert lines[-1].startswith("error: ") and "notes.ckpt: not a checkpoint" in lines[-1], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "generate.log").exists()  # a command without a run directory leaves nothing behind


def test_compare_report_and_resume_do_not_call_what_a_run_directory_names(tmp_path):
    from mmgpt.cli.compare import main as compare_main

    sweep = tmp_path / "sweep"
    run = sweep / "0"
    run.mkdir(parents=True)
    node, side_effect = _payloads(tmp_path)["copyfile"]
    (run / "config.yaml").write_text(json.dumps({"model": {"net": {"encoders": {"text": node}}}, "data": node}))
    (run / "results.json").write_text(json.dumps({"fusion": "early", "seed": 0, "val": {"val/acc": 0.5},
                                                  "test": {"test/acc": 0.5}, "params": {"total": 1}}))
    multirun = {"hydra": {"overrides": {"hydra": [], "task": [f"+callbacks.x._target_={node['_target_']}"]}},
                "compare": {"metric": "acc"}}
    (sweep / "multirun.yaml").write_text(json.dumps(multirun))
    compare_main([f"report={sweep}"])
    assert not side_effect.exists()
    with pytest.raises(SystemExit, match=r"multirun\.yaml: hydra\.overrides\.task\[0\]: .*_target_.* refused"):
        compare_main([f"resume={sweep}"])
    assert not side_effect.exists()


def test_a_run_directory_or_a_malformed_mmgpt_record_is_one_clear_line(tmp_path):
    """`mmgpt-eval ckpt_path=RUN` said only "not a complete sharded checkpoint"; a checkpoint whose `mmgpt` entry
    is not a mapping ended in an AttributeError when its wandb id was read."""
    from mmgpt.stored_config import StoredConfigError, checkpoint_string

    (tmp_path / "checkpoints").mkdir()
    for name in ("best-epoch001.ckpt", "last.ckpt"):
        (tmp_path / "checkpoints" / name).write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"a checkpoint file in it: .*checkpoints/best-epoch001\.ckpt$"):
        read_checkpoint(tmp_path)
    with pytest.raises(StoredConfigError, match=r"x\.ckpt: mmgpt: expected a mapping, got a list"):
        checkpoint_string({"mmgpt": [1]}, "wandb_id", "x.ckpt")
