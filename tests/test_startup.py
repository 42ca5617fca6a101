"""Commands start without importing what they do not use: --help answers for every stage, and the
light commands (and the worker processes they fork) never import torch. How fast is measured in
benchmarks/preprocess.py, not here."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import pytest

from nnlite.__main__ import STAGES

from command_line import REPO, run_command

# Modules a light command runs: the commands themselves and the library they import in main.
LIGHT_MODULES = [f"nnlite.{stage}" for stage in STAGES] + [
    "nnlite.data.dataset", "nnlite.data.demo_dataset", "nnlite.data.breastdm", "nnlite.planning.work_folder",
    "nnlite.preprocessing.runner", "nnlite.evaluation.metrics", "nnlite.evaluation.scoring_inputs"]


def python(code: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize("stage", STAGES)
def test_every_command_answers_help(stage):
    """`python -m nnlite.<stage> --help` and `nnlite <stage> --help` print the usage, exit 0."""
    result = subprocess.run([sys.executable, "-m", f"nnlite.{stage}", "--help"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.startswith("usage:"), result.stderr
    assert run_command(stage, "--help").returncode == 0


def test_importing_the_light_commands_does_not_import_torch():
    result = python(f"""
        import importlib, sys
        for name in {LIGHT_MODULES!r}:
            importlib.import_module(name)
        print(sorted(m for m in ("torch", "scipy", "nibabel") if m in sys.modules))
        """)
    assert result.returncode == 0, result.stderr
    assert "torch" not in result.stdout, result.stdout


def test_help_imports_no_heavy_library():
    """--help parses arguments only: nibabel, scipy and torch are imported after it, in main."""
    heavy = ("torch", "scipy", "nibabel")
    for stage in STAGES:
        result = python(f"""
            import sys
            import nnlite.{stage} as command
            try:
                command.main(["--help"])
            except SystemExit:
                pass
            print([m for m in {heavy!r} if m in sys.modules])
            """)
        assert result.returncode == 0 and result.stdout.strip().endswith("[]"), (stage, result.stdout, result.stderr)


@pytest.mark.slow
def test_plan_and_preprocess_run_without_torch(tmp_path):
    """A whole plan + preprocess (2 forked workers each) leaves torch unimported everywhere: the
    workers are forked from the command's process, so they hold what it holds."""
    result = python(f"""
        import sys
        from pathlib import Path
        from nnlite.data.demo_dataset import generate_demo_dataset
        from nnlite.planning import fingerprint
        import nnlite.plan, nnlite.preprocess
        fingerprint.FOREGROUND_SAMPLES_TOTAL = 1e4
        raw = generate_demo_dataset(Path({str(tmp_path)!r}) / "raw", n_cases=3, seed=0)
        work = Path({str(tmp_path)!r}) / "work"
        assert nnlite.plan.main([str(raw), str(work), "--configs", "3d_fullres", "--workers", "2"]) == 0
        assert nnlite.preprocess.main([str(work), "--workers", "2"]) == 0
        print("torch" in sys.modules)
        """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "False"
    assert len(list((tmp_path / "work" / "preprocessed").rglob("*_seg.npy"))) == 3
