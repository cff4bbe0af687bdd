"""The Python API: ``import mmgpt`` is light, options become overrides, ``mmgpt.train`` and ``mmgpt-train`` write
the same files and metrics, and every code block of docs/api.md runs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import mmgpt
from mmgpt.api import overrides_of

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def test_import_mmgpt_does_not_load_the_training_stack() -> None:
    code = ("import sys, mmgpt; heavy = [m for m in ('pytorch_lightning', 'hydra', 'transformers', 'timm') "
            "if m in sys.modules]; assert not heavy, heavy; assert callable(mmgpt.load) and callable(mmgpt.train)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_options_become_overrides() -> None:
    got = overrides_of(["model/fusion=late"], {"seed": 1, "trainer": {"max_epochs": 2, "precision": "bf16-mixed"},
                                               "tags": ["a b", "c"], "ckpt_path": None, "train": False,
                                               "data": {"root": Path("/d/my data")}, "model/fusion": "early"})
    assert got == ["model/fusion=late", "seed=1", "trainer.max_epochs=2", "trainer.precision=bf16-mixed",
                   "tags=['a b',c]", "ckpt_path=null", "train=false", "data.root='/d/my data'", "model/fusion=early"]
    with pytest.raises(TypeError):
        overrides_of("seed=1", {})  # type: ignore[arg-type]


def _files(run_dir: Path) -> set[str]:
    return {str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_train_function_and_command_write_the_same_files_and_metrics(tmp_path: Path) -> None:
    args = ["experiment=smoke", "logger=csv", "trainer.max_epochs=1", "data.num_train=64", "data.num_val=32",
            "data.num_test=32", f"paths.log_dir={tmp_path / 'logs'}"]
    cli_dir, api_dir = tmp_path / "cli", tmp_path / "api"
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    subprocess.run([str(BIN / "mmgpt-train"), *args, f"hydra.run.dir={cli_dir}"], check=True, env=env,
                   capture_output=True)
    results = mmgpt.train([*args, f"hydra.run.dir={api_dir}"])
    assert results.run_dir == api_dir
    assert _files(cli_dir) == _files(api_dir)
    cli = json.loads((cli_dir / "results.json").read_text())
    api = json.loads((api_dir / "results.json").read_text())
    assert cli["val"] == api["val"] == results.val and cli["test"] == api["test"] == results.test
    assert cli["params"] == api["params"]
    assert cli["stamp"]["command"].startswith("mmgpt-train experiment=smoke")
    assert api["stamp"]["command"].startswith("mmgpt.train experiment=smoke")


def _python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


@pytest.mark.slow
def test_every_code_block_of_docs_api_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = _python_blocks(ROOT / "docs" / "api.md")
    assert len(blocks) >= 5
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MMGPT_LOG_DIR", str(tmp_path / "logs"))
    namespace: dict = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"docs/api.md block {i + 1}", "exec"), namespace)  # noqa: S102
    assert namespace["comparison"].report.is_file() and len(namespace["comparison"].runs) == 2
