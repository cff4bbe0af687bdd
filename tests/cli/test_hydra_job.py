"""mmgpt/cli/hydra_job.py's helpers: the launcher's quoted run directory, a rank's recorded job, the one parser of a
command's own arguments (mmgpt/cli/common.py). run_hydra_job itself is tested through compare.run_one
(tests/cli/test_compare.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmgpt.cli.common import take_override
from mmgpt.cli.hydra_job import ddp_rank_job, override_value, recorded_overrides
from mmgpt.errors import UserError


def test_take_override_keeps_the_last_value_and_the_rest_in_order() -> None:
    args = ["tune=2", "seed=0,1", "model/fusion=early", "tune=3", "seed.x=1"]
    assert take_override(args, "tune") == ("3", ["seed=0,1", "model/fusion=early", "seed.x=1"])
    assert take_override(args, "seed") == ("0,1", ["tune=2", "model/fusion=early", "tune=3", "seed.x=1"])
    assert take_override(args, "report") == (None, args)


def test_the_launchers_quoted_run_directory_is_read_as_hydra_reads_it(monkeypatch: pytest.MonkeyPatch) -> None:
    assert override_value("hydra.run.dir", '"/tmp/a b/trial0"') == "/tmp/a b/trial0"
    assert override_value("hydra.run.dir", "'/tmp/x'") == "/tmp/x"
    assert override_value("hydra.run.dir", "/tmp/plain") == "/tmp/plain"
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert ddp_rank_job(["seed=0", 'hydra.run.dir="/tmp/a b"', "hydra.job.name=train_ddp_process_1"]) == (
        Path("/tmp/a b"), "train_ddp_process_1")
    assert ddp_rank_job(["seed=0", "hydra.run.dir=/tmp/x", "hydra.job.name=compare"]) is None  # not the launcher's


def test_a_rank_without_its_jobs_record_fails_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"overrides.yaml: not found; a DDP rank process runs the job recorded"):
        recorded_overrides(tmp_path)
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "overrides.yaml").write_text("a: 1\n")
    with pytest.raises(UserError, match=r"overrides.yaml: expected a list of overrides"):
        recorded_overrides(tmp_path)
    (tmp_path / ".hydra" / "overrides.yaml").write_text("- seed=1\n- model/fusion=late\n")
    assert recorded_overrides(tmp_path) == ["seed=1", "model/fusion=late"]
