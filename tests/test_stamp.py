"""Run stamps: the commit (and dirty flag), versions, command, host and devices reach results.json, the loggers' run
config and the compare report (which warns when its runs come from different commits); ``--version``; the config
tree printed at the start of a run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from mmgpt.cli.common import config_tree
from mmgpt.cli.train import train
from mmgpt.report import load_runs, summarize
from mmgpt.report.write import render_markdown
from mmgpt.stamp import commit_of, describe_commits, run_stamp, spec_libraries, version_line
from tests.report.test_write import make_run

BIN = Path(sys.executable).parent


def test_stamp_names_code_libraries_command_host_devices() -> None:
    stamp = run_stamp(["mmgpt-train", "seed=1"], ["transformers"])
    commit, dirty = commit_of()
    assert stamp["commit"] == commit and stamp["dirty"] == dirty
    if (Path(__file__).resolve().parents[1] / ".git").exists():  # a checkout (a worktree has a .git file)
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout
        assert commit == head.strip() and isinstance(dirty, bool)
    assert {"python", "torch", "pytorch_lightning", "transformers"} <= set(stamp["versions"])
    assert stamp["command"] == "mmgpt-train seed=1" and stamp["host"] and stamp["devices"]


def test_spec_libraries_are_the_backbones_ones() -> None:
    spec = {"encoders": {"text": {"type": "hf_text", "tuning": {"lora": {"r": 4}}},
                         "image": {"type": "timm_image"}, "audio": {"type": "audio_encoder"}}}
    assert spec_libraries(spec) == ["peft", "timm", "transformers"]
    assert spec_libraries({"encoders": {"text": {"type": "text_encoder"}}}) == []


def test_results_and_logger_config_carry_the_stamp(compose_cfg, tmp_path: Path, capsys) -> None:
    cfg = compose_cfg(["experiment=smoke", "debug=fdr", "logger=csv"])
    results = train(cfg)
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["stamp"] == results["stamp"] and saved["stamp"]["commit"] == commit_of()[0]
    hparams = yaml.safe_load((tmp_path / "run" / "hparams.yaml").read_text())  # the CSV logger's run config
    assert hparams["stamp"]["command"] == saved["stamp"]["command"]


def test_compare_report_names_commits_and_warns_when_they_differ(tmp_path: Path) -> None:
    for i, commit in enumerate(("a" * 40, "a" * 40, "b" * 40)):
        run = make_run(tmp_path, f"{i}_early_seed{i}", "early", i, 0.5, 0.5)
        results = json.loads((run / "results.json").read_text())
        results["stamp"] = {"commit": commit, "dirty": i == 2}
        (run / "results.json").write_text(json.dumps(results))
    text = render_markdown(summarize(load_runs(tmp_path)), tmp_path, [])
    assert "- code: aaaaaaaaaaaa (2 runs), bbbbbbbbbbbb+dirty (1 run)" in text
    assert "warning: the runs come from different commits" in text
    assert describe_commits([{"commit": "c" * 40, "dirty": False}] * 2) == ("cccccccccccc (2 runs)", False)
    assert describe_commits([None]) == ("unknown (1 run)", False)


def _version_of(program: str) -> str:
    return subprocess.run([str(BIN / program), "--version"], capture_output=True, text=True, check=True).stdout


def test_version_flag_prints_version_and_commit() -> None:
    out = _version_of("mmgpt")
    assert out.strip() == version_line("mmgpt") and "mmgpt-fusion" in out
    commit = commit_of()[0]
    assert commit is None or commit[:12] in version_line()


@pytest.mark.slow
@pytest.mark.parametrize("program", ["mmgpt-train", "mmgpt-eval", "mmgpt-compare", "mmgpt-generate", "mmgpt-export"])
def test_every_command_prints_this_projects_version(program: str) -> None:
    assert _version_of(program).strip() == version_line(program)  # not Hydra's own --version


def test_config_tree_plain_and_coloured() -> None:
    cfg = OmegaConf.create({"seed": 0, "model": {"dim": 16, "net": {"fusion": {"type": "early"}}},
                            "data": {"batch_size": 4}, "hydra": {"run": {"dir": "x"}}})
    plain = config_tree(cfg, color=False)
    assert "\x1b[" not in plain and "hydra" not in plain
    assert plain.index("data") < plain.index("model") < plain.index("seed") and "dim: 16" in plain
    assert "\x1b[" in config_tree(cfg, color=True)
