"""One contract for every failure: exactly one `error: <where>: <problem>` line (and at most one
`hint:` line) on stderr, exit 2, no traceback, nothing half-written; checks that need no data run
before the expensive work, so nothing is logged before the error."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

import pytest

from nnlite.__main__ import STAGES
from nnlite.__main__ import main as nnlite_main
from nnlite.common import files
from nnlite.common.cli import run
from nnlite.convert import main as convert_main
from nnlite.data.demo_dataset import generate_demo_dataset
from nnlite.plan import main as plan_main
from nnlite.planning import work_folder
from tests.command_line import assert_one_line_error, run_command
from tests.work_fixtures import small_work


def stderr_lines(capsys) -> list[str]:
    return capsys.readouterr().err.splitlines()


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    return generate_demo_dataset(tmp_path_factory.mktemp("raw") / "raw", n_cases=3)


@pytest.fixture(scope="module")
def preprocessed(tmp_path_factory) -> Path:
    return small_work(tmp_path_factory.mktemp("cli"))


@pytest.mark.parametrize("stage", STAGES)
def test_a_usage_mistake_is_one_error_line_with_a_hint(stage, capsys):
    with pytest.raises(SystemExit) as exit_:
        nnlite_main([stage, "--no-such-flag"])
    assert exit_.value.code == 2
    err = stderr_lines(capsys)
    assert len(err) == 2 and err[0].startswith(f"error: nnlite {stage}: ")
    assert err[1] == f"hint: nnlite {stage} --help"


def test_an_invalid_choice_names_the_flag(capsys):
    with pytest.raises(SystemExit):
        nnlite_main(["plan", "RAW", "WORK", "--configs", "3d"])
    err = stderr_lines(capsys)
    assert err[0].startswith("error: nnlite plan: argument --configs: invalid choice: '3d'") and len(err) == 2


def test_no_stage_is_one_error_line(capsys):
    assert nnlite_main([]) == 2
    err = stderr_lines(capsys)
    assert err[0].startswith("error: nnlite: no stage given") and len(err) == 2


@pytest.mark.parametrize("stage, positionals", [
    ("plan", "nnlite plan RAW WORK [options]"), ("check", "RAW"), ("preprocess", "WORK"), ("train", "[WORK]"),
    ("predict", "WORK INPUT_DIR OUTPUT_DIR"), ("postprocess", "WORK"), ("evaluate", "PRED_DIR REF_DIR"),
    ("visualize", "IMAGES_DIR REF_DIR PRED_DIR OUT_DIR"), ("best", "WORK")])
def test_help_synopses_name_the_arguments_as_the_docs_do(capsys, stage, positionals):
    with pytest.raises(SystemExit):
        nnlite_main([stage, "--help"])
    usage = capsys.readouterr().out.split("\n\n")[0]
    assert positionals in " ".join(usage.split()) and "[RAW WORK ...]" not in usage


def test_a_work_folder_that_is_a_file_is_refused_before_anything_else(raw, tmp_path):
    not_a_folder = tmp_path / "work"
    not_a_folder.write_text("I am a file")
    result = run_command("plan", raw, not_a_folder)
    assert_one_line_error(result, f"{not_a_folder}: cannot be used as the work folder", "is a file")


def test_an_unwritable_work_folder_is_refused_before_the_fingerprint(raw, tmp_path, monkeypatch, capsys):
    """As root no folder is unwritable, so the write probe itself is made to fail."""
    def refuse(path, data):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    def no_fingerprint(*args, **kwargs):
        raise AssertionError("fingerprinted before checking WORK")

    monkeypatch.setattr(Path, "write_bytes", refuse)
    monkeypatch.setattr(work_folder, "extract_fingerprint", no_fingerprint)
    assert run(plan_main, [str(raw), str(tmp_path / "work")]) == 2
    assert stderr_lines(capsys) == [f"error: {tmp_path / 'work'}: cannot write to the work folder "
                                    f"(Permission denied)"]


def test_an_environment_failure_anywhere_is_one_error_line(capsys):
    def disk_full(argv):
        raise OSError(errno.ENOSPC, "No space left on device", "/work/plans.json.tmp")

    assert run(disk_full) == 2
    assert stderr_lines(capsys) == ["error: /work/plans.json.tmp: No space left on device"]


def test_convert_leaves_no_staging_folder_when_the_final_rename_fails(tmp_path, monkeypatch, capsys):
    def refuse(staging, final):
        raise PermissionError(errno.EACCES, "Permission denied", str(final))

    monkeypatch.setattr(files, "publish_staging_dir", refuse)
    assert run(convert_main, ["demo", str(tmp_path / "raw"), "--cases", "1"]) == 2
    assert stderr_lines(capsys) == [f"error: {tmp_path / 'raw'}: Permission denied"]
    assert sorted(tmp_path.iterdir()) == []


def test_convert_under_a_file_is_one_error_line(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    assert run(convert_main, ["demo", str(tmp_path / "file" / "raw"), "--cases", "1"]) == 2
    err = stderr_lines(capsys)
    assert len(err) == 1 and "is a file, not a folder" in err[0]


def one_channel_copy(raw: Path, target: Path) -> Path:
    """The same cases with only channel 0 (dataset.json says so)."""
    shutil.copytree(raw, target)
    for path in (target / "imagesTr").glob("*_000[12].nii.gz"):
        path.unlink()
    text = (target / "dataset.json").read_text()
    import json

    meta = json.loads(text)
    meta["channel_names"] = {"0": "VIBRANT"}
    (target / "dataset.json").write_text(json.dumps(meta))
    return target


def test_preprocess_raw_of_another_dataset_is_refused_up_front(preprocessed, tmp_path):
    planned_raw = preprocessed.parent / "raw"
    other = one_channel_copy(planned_raw, tmp_path / "other")
    result = run_command("preprocess", preprocessed, "--raw", other)
    line = assert_one_line_error(result, str(other / "dataset.json"), "has channels ['VIBRANT']",
                                 "plans.json was made for ['VIBRANT', 'VIBRANT_C2', 'SUB2']")
    assert "preprocessing" not in result.stderr and line


def test_preprocess_raw_with_other_cases_is_refused_up_front(preprocessed, tmp_path):
    more = generate_demo_dataset(tmp_path / "more", n_cases=4)
    result = run_command("preprocess", preprocessed, "--raw", more)
    assert_one_line_error(result, str(more), "has case 'demo_004' that was not planned")


@pytest.mark.parametrize("cpus, expected", [(3, 3), (64, 8), (None, 1)])
def test_every_workers_flag_defaults_to_the_cpu_count_capped(monkeypatch, capsys, cpus, expected):
    from nnlite.training.config import load_train_config
    from nnlite.training.run_setup import loader_workers

    monkeypatch.setattr("os.cpu_count", lambda: cpus)
    for stage in ("check", "plan", "preprocess"):
        with pytest.raises(SystemExit):
            nnlite_main([stage, "--help"])
        assert f"(default: the CPU count, at most 8: {expected})" in " ".join(capsys.readouterr().out.split())
    assert loader_workers(load_train_config("default")) == expected


def test_train_with_an_unusable_results_folder_is_one_error_line(preprocessed, tmp_path, capsys):
    from nnlite.train import main as train_main

    work = Path(shutil.copytree(preprocessed, tmp_path / "work"))
    (work / "results").write_text("not a folder")
    assert run(train_main, [str(work), "--device", "cpu", "--train-config", "debug"]) == 2
    err = stderr_lines(capsys)
    assert len(err) == 1 and err[0].startswith(f"error: {work / 'results'}: cannot be used as the results folder")
