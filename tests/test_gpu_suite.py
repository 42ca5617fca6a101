"""benchmarks/gpu_suite.py: its dry run takes every step of the GPU suite on the CPU at tiny sizes,
so the script is known to work before GPU time is spent."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "benchmarks" / "gpu_suite.py"


def run_suite(*args: str, timeout: int = 1200) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(SUITE), *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=ROOT)


@pytest.mark.slow
def test_dry_run_takes_every_step_and_writes_the_report(tmp_path):
    out = tmp_path / "gpu.md"
    result = run_suite("--dry-run", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    report = out.read_text()
    for heading in ("## 1. Peak training memory", "## 2. AMP training throughput", "## 3. Sliding-window inference",
                    "## 4. Training run"):
        assert heading in report
    for plan in ("| Hippocampus |", "| CT abdomen-like |", "| brain MRI-like |"):
        assert plan in report
    assert "| eager |" in report and "| compiled |" in report
    assert "validation Dice (foreground mean)" in report
    assert not (ROOT / "docs" / "benchmarks" / "gpu.md").exists() or "CPU dry run" not in (
        ROOT / "docs" / "benchmarks" / "gpu.md").read_text()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
def test_without_cuda_and_without_dry_run_it_refuses():
    result = run_suite(timeout=300)
    assert result.returncode == 2 and "--dry-run" in result.stderr


def test_dry_run_never_writes_the_committed_report():
    result = run_suite("--dry-run", "--out", str(ROOT / "docs" / "benchmarks" / "gpu.md"), timeout=300)
    assert result.returncode == 2 and "never writes" in result.stderr
