"""The web app: its pages through Streamlit's AppTest (no browser), and the `nnlite app` command.

The pages run on a hand-made WORK whose worst validation case (`case_c`, Dice 0) is known.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("streamlit", reason="the app needs the optional extra nnlite[app]")
from streamlit.testing.v1 import AppTest  # noqa: E402

from app_fixtures import SPACING_AFFINE, case_image, handmade_work, inputs_folder  # noqa: E402
from nnlite.common.errors import UserError  # noqa: E402
from nnlite.app import main as app_main, streamlit_command  # noqa: E402
from nnlite.viewing.models import REVIEW_SCORE  # noqa: E402
from nnlite.viewing.settings import parse_settings  # noqa: E402
from tests.command_line import assert_one_line_error, run_command  # noqa: E402

PAGES = Path(__file__).resolve().parents[1] / "nnlite" / "viewing" / "pages.py"
TIMEOUT = 120  # s per script run: a prediction on a CPU shared with other tests


@pytest.fixture
def work(tmp_path) -> Path:
    return handmade_work(tmp_path)


def open_app(monkeypatch, *args) -> AppTest:
    """Run the page script as `streamlit run pages.py -- *args` would."""
    monkeypatch.setattr(sys, "argv", [str(PAGES), *map(str, args)])
    app = AppTest.from_file(str(PAGES), default_timeout=TIMEOUT).run()
    assert not app.exception, app.exception
    return app


def texts(app: AppTest) -> str:
    return "\n".join([m.value for m in app.markdown] + [e.value for e in app.error]
                     + [s.value for s in app.success] + [i.value for i in app.info])


def images(app: AppTest) -> list:
    """The pictures on the page (caption, alt, url), in order."""
    return [picture for element in app.get("image") for picture in element.proto.imgs]


def test_results_open_on_the_worst_case_of_the_latest_fold_with_its_slices(work, tmp_path, monkeypatch):
    app = open_app(monkeypatch, work, "--outputs", tmp_path / "out")
    assert "Worst case: case_c" in texts(app) and "mean foreground Dice 0.0000" in texts(app)
    assert app.selectbox[0].value.fold == "0"
    assert list(app.dataframe[0].value["case"]) == ["case_c", "case_b", "case_a"]
    assert len(app.get("vega_lite_chart")) == 4  # loss, pseudo-Dice, learning rate, epoch time
    shown = images(app)
    assert [i.caption.split(" · ")[0] for i in shown] == ["ch0", "ch1", "errors"]
    assert app.slider[0].value == 1  # case_c's busiest slice: its false positive at z = 1–2


def test_picking_a_case_and_an_axis_shows_its_slices(work, tmp_path, monkeypatch):
    app = open_app(monkeypatch, work, "--outputs", tmp_path / "out")
    app.selectbox[1].set_value("case_b").run()
    assert "**case_b**: mean foreground Dice 0.5000" in texts(app)
    assert app.slider[0].value in range(4, 10) and app.slider[0].max == 11
    app.main.radio[0].set_value(2).run()  # the x axis: 16 slices
    assert app.slider[0].max == 15 and "x slice" in images(app)[0].alt
    app.slider[0].set_value(0).run()
    assert not app.exception and images(app)[0].caption.endswith("slice 0")


def test_results_without_training_say_what_to_do(work, tmp_path, monkeypatch):
    for summary in work.glob("results/*/fold_*/validation/summary.json"):
        summary.unlink()
    app = open_app(monkeypatch, work, "--outputs", tmp_path / "out")
    assert "No scored validation" in texts(app)


def nifti(tmp_path: Path, seed: int, channel: int, name: str) -> tuple[str, bytes, str]:
    from nnlite.data.image_io import write_image

    path = write_image(tmp_path / "upload" / name, case_image(seed)[channel], SPACING_AFFINE)
    return (name, path.read_bytes(), "application/gzip")


def predict_page(monkeypatch, *args) -> AppTest:
    app = open_app(monkeypatch, *args)
    app.sidebar.radio[0].set_value("Predict").run()
    return app


def test_predict_an_upload_then_survive_a_bad_one(work, tmp_path, monkeypatch):
    outputs = tmp_path / "out"
    app = predict_page(monkeypatch, work, "--outputs", outputs)
    app.get("file_uploader")[0].set_value([nifti(tmp_path, 0, 1, "me_0001.nii.gz"),
                                           nifti(tmp_path, 0, 0, "me_0000.nii.gz")])
    app.button[0].click().run()
    assert not app.exception and "me: label map me.nii.gz written" in texts(app)
    assert len(list(outputs.glob("upload-*/prediction/me.nii.gz"))) == 1
    assert len(app.get("download_button")) == 1  # two channels and the uncertainty, no errors panel
    assert [i.caption.split(" · ")[0] for i in images(app)] == ["ch0", "ch1", "uncertainty"]
    score = float(texts(app).split("**Quality score ")[1].split("**")[0])  # the case's uncertainty.csv score
    hint = ([w.value for w in app.warning] + [i.value for i in app.info])[0]
    assert hint.startswith("Review this case first" if score >= REVIEW_SCORE else "No sign of trouble")
    app.get("file_uploader")[0].set_value([nifti(tmp_path, 0, 0, "only_0000.nii.gz")])
    app.button[0].click().run()
    assert not app.exception
    assert [e.value for e in app.error] == ["upload: 1 file(s) for a model with 2 channel(s) (ch0, ch1): "
                                            "upload one file per channel"]
    app.get("file_uploader")[0].set_value([("x_0000.nii.gz", b"not an image", "application/gzip"),
                                           nifti(tmp_path, 0, 1, "x_0001.nii.gz")])
    app.button[0].click().run()
    assert not app.exception and app.error[0].value.startswith("upload 'x_0000.nii.gz': unreadable")


def test_predict_a_case_picked_from_inputs(work, tmp_path, monkeypatch):
    inputs = inputs_folder(tmp_path, cases=2)
    app = predict_page(monkeypatch, work, "--inputs", inputs, "--outputs", tmp_path / "out")
    app.main.radio[0].set_value("From --inputs").run()
    app.selectbox[1].set_value("new_1").run()
    app.button[0].click().run()
    assert not app.exception and "new_1: label map new_1.nii.gz written" in texts(app)
    assert sorted(p.name for p in inputs.iterdir()) == sorted(  # --inputs is only read
        f"new_{k}_{c:04d}.nii.gz" for k in range(2) for c in range(2))


def test_the_command_binds_this_machine_on_8501_by_default(work):
    command = streamlit_command(parse_settings([str(work)]))
    assert command[command.index("--server.address") + 1] == "127.0.0.1"
    assert command[command.index("--server.port") + 1] == "8501"
    assert command[command.index("--browser.gatherUsageStats") + 1] == "false"
    assert command[command.index("--") + 1] == str(work.resolve())
    other = streamlit_command(parse_settings([str(work), "--host", "0.0.0.0", "--port", "9000"]))
    assert other[other.index("--server.address") + 1] == "0.0.0.0" and "9000" in other


def test_a_work_folder_without_plans_is_one_error_line(tmp_path, capsys):
    assert_one_line_error(run_command("app", tmp_path), f"{tmp_path}: is not a planned work folder")
    with pytest.raises(SystemExit):
        parse_settings([str(tmp_path), "--port", "65536"])
    assert capsys.readouterr().err.startswith("error: nnlite app: --port must be in 0–65535 (0: any free port)")


def test_inputs_that_are_not_a_folder_stop_before_serving(work, tmp_path):
    with pytest.raises(UserError, match="is not a folder"):
        app_main([str(work), "--inputs", str(tmp_path / "missing")])


@pytest.mark.slow
def test_the_command_prints_its_address_serves_and_stops_with_its_server(work):
    import contextlib
    import os
    import re
    import signal
    import subprocess
    import urllib.request

    env = {**os.environ, "PYTHONPATH": str(PAGES.parents[2])}
    app = subprocess.Popen([sys.executable, "-m", "nnlite", "app", str(work), "--port", "0"],
                           stdout=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        # --port 0: the command picks a free port itself and prints it once the app answers there
        served = re.compile(rf"nnlite app: serving {re.escape(str(work))} at http://127\.0\.0\.1:(\d+) "
                            r"\(Ctrl-C stops it\)")
        found = next((m for line in app.stdout if (m := served.fullmatch(line.strip()))), None)
        assert found is not None, "the command never printed its address"
        health = f"http://127.0.0.1:{found.group(1)}/_stcore/health"
        with urllib.request.urlopen(health, timeout=10) as reply:
            assert reply.status == 200
        app.send_signal(signal.SIGTERM)
        assert app.wait(timeout=60) == 0
        with pytest.raises(OSError):  # the Streamlit child has stopped with it
            urllib.request.urlopen(health, timeout=2)
    finally:  # whatever happened, nothing of the app outlives the test
        with contextlib.suppress(ProcessLookupError):
            os.killpg(app.pid, signal.SIGKILL)
        app.wait()


@pytest.mark.slow
def test_any_free_port_replaces_a_port_taken_between_its_choice_and_the_bind(work, monkeypatch, tmp_path):
    import os
    import socket

    from nnlite import app as app_command

    taken = socket.socket()  # another program holds the first port the app is offered
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    offered = iter([taken.getsockname()[1], app_command.free_port("127.0.0.1")])
    monkeypatch.setattr(app_command, "free_port", lambda host: next(offered))
    settings = parse_settings([str(work), "--port", "0", "--outputs", str(tmp_path / "out")])
    env = {**os.environ, "PYTHONPATH": str(PAGES.parents[2])}
    try:
        served, child = app_command.start_on_a_free_port(settings, env)
        try:
            assert served.port not in (0, taken.getsockname()[1])
            assert child.poll() is None
        finally:
            app_command.stop(child)
    finally:
        taken.close()


def test_results_order_cases_by_the_quality_score_and_overlay_the_uncertainty_map(tmp_path, monkeypatch):
    from app_fixtures import handmade_work
    from nnlite.viewing.runs import BY_SCORE
    from nnlite.viewing.viewer import OVERLAY_LABEL

    app = open_app(monkeypatch, handmade_work(tmp_path, scored=True), "--outputs", tmp_path / "out")
    assert list(app.dataframe[0].value["case"]) == ["case_c", "case_b", "case_a"]  # Dice first, as before
    app.radio(key="order").set_value(BY_SCORE).run()
    assert list(app.dataframe[0].value["case"]) == ["case_a", "case_c", "case_b"]  # least trustworthy first
    assert list(app.dataframe[0].value["quality score"]) == [0.6, 0.3, 0.05]
    assert "**case_a**: mean foreground Dice 1.0000; quality score 0.6000" in texts(app)  # opens on it
    shown = images(app)
    assert [i.caption.split(" · ")[0] for i in shown] == ["ch0", "ch1", "errors", "uncertainty"]
    next(box for box in app.checkbox if box.label == OVERLAY_LABEL).uncheck().run()
    assert [i.caption.split(" · ")[0] for i in images(app)] == ["ch0", "ch1", "errors"]

