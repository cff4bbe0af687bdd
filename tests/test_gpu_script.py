"""bench/gpu.sh, the one prepared GPU script, starts and finishes here without CUDA (its dry run), and the GPU
suite is collected and skipped cleanly, so both are known to run before a GPU is ever available."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # minutes on 2 CPUs: in CI's slow run (make test-slow)
@pytest.mark.skipif(torch.cuda.is_available(), reason="the dry run is for machines without CUDA")
def test_gpu_script_dry_run_skips_gpu_sections_and_exits_0(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path / "out"), "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu.sh")], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    summary = (tmp_path / "out" / "summary.txt").read_text()
    for section in ("wheels", "env", "test-gpu", "backbone-tuning", "gpu-step-smoke", "lightning-overhead",
                    "backbone-cache"):
        assert f"{section}:" in summary, summary
    assert "test-gpu: skipped (no CUDA)" in summary and "gpu-step-smoke: ok" in summary
    rows = json.loads((tmp_path / "out" / "gpu_step.json").read_text())["rows"]
    assert rows[0]["fusion"] == "early" and rows[0]["step_ms"] > 0 and rows[0]["tflop_per_step"] > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the skip where there is no CUDA")
def test_gpu_suite_is_collected_and_skipped_without_cuda():
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
                           str(ROOT / "tests" / "gpu")], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert "skipped" in last and "passed" not in last and "failed" not in last and "error" not in last, last
    assert int(last.split(" skipped")[0].split()[-1]) >= 10  # every GPU test was collected
