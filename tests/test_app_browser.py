"""The web app in a real browser: `python -m nnlite.app` on a WORK made by `nnlite.train`, driven
by headless Chromium through selenium.

Results: the page opens on the worst validation case, the case is picked, its slice pictures load
and its Dice is on the page; ordered by the quality score (the final validation's uncertainty
score), the least trustworthy case comes first with its uncertainty overlay. Predict: a case is
uploaded (its three channel files), predicted with its quality score and review hint, and its
label map downloaded and read back; a bad upload shows one message and the app keeps serving.
Screenshots of both pages land in the test's temporary folder.

Outside CI the test skips when Chromium or its driver is missing; `.ci/run` installs both and sets
NNLITE_REQUIRE_BROWSER=1, which turns that skip into a failure.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from app_fixtures import trained_work
from nnlite.data.image_io import read_image
from nnlite.viewing.runs import BY_SCORE, SCORE_COLUMN, case_table, find_sources, most_recent, read_summary, sort_rows

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
REQUIRE_BROWSER = "NNLITE_REQUIRE_BROWSER"  # set by .ci/run: no browser is a failure, not a skip
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
DRIVERS = ("chromedriver",)
# Chromium in a closed container: no sandbox (root), no GPU, nothing fetched from the network.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1400,1000")
WAIT_S = 180  # a page run that predicts on a shared CPU


def find_program(names: tuple[str, ...]) -> str | None:
    return next((path for name in names if (path := shutil.which(name) or _usr_bin(name))), None)


def _usr_bin(name: str) -> str | None:
    path = Path("/usr/bin") / name
    return str(path) if path.is_file() else None


@pytest.fixture(scope="module")
def browser_programs() -> tuple[str, str]:
    # Everything the test needs is checked here, before any skip: under NNLITE_REQUIRE_BROWSER=1
    # a missing Streamlit fails the test like a missing browser.
    browser, driver = find_program(BROWSERS), find_program(DRIVERS)
    streamlit = importlib.util.find_spec("streamlit") is not None
    if browser is None or driver is None or _selenium() is None or not streamlit:
        missing = ("Chromium" if browser is None else "chromedriver" if driver is None
                   else "selenium" if _selenium() is None else "streamlit")
        reason = (f"no {missing}: the browser test needs the chromium and chromium-driver packages, "
                  "selenium and the optional extra nnlite[app]")
        if os.environ.get(REQUIRE_BROWSER) == "1":
            pytest.fail(f"{reason} ({REQUIRE_BROWSER}=1)")
        pytest.skip(reason)
    return browser, driver


def _selenium():
    try:
        import selenium
    except ImportError:
        return None
    return selenium


SERVED = re.compile(r"nnlite app: serving .* at (http://127\.0\.0\.1:\d+) \(Ctrl-C stops it\)")


def start_app(work: Path, outputs: Path) -> tuple[str, subprocess.Popen]:
    """`python -m nnlite.app --port 0` (the command picks a free port and prints it once the app
    answers there): (its URL, the running server)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    server = subprocess.Popen([sys.executable, "-m", "nnlite.app", str(work), "--port", "0",
                               "--outputs", str(outputs)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    seen = []
    for line in server.stdout:  # ends when the server stops: it prints its address or fails
        seen.append(line)
        if found := SERVED.fullmatch(line.strip()):
            print(f"the app serves {found.group(1)}")
            threading.Thread(target=server.stdout.read, daemon=True).start()  # never block its output
            return found.group(1), server
    server.wait()
    pytest.fail(f"the app stopped without serving:\n{''.join(seen)}")


@pytest.fixture(scope="module")
def served(tmp_path_factory, browser_programs):
    """(url, WORK, outputs): `python -m nnlite.app` serving a freshly trained WORK."""
    root = tmp_path_factory.mktemp("app")
    work = trained_work(root)
    url, server = start_app(work, root / "outputs")
    try:
        yield url, work, root
    finally:
        server.terminate()  # the command stops its Streamlit child too
        server.wait(timeout=60)


@pytest.fixture(scope="module")
def browser(browser_programs, tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver = browser_programs
    downloads = tmp_path_factory.mktemp("downloads")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    chrome = webdriver.Chrome(service=Service(executable_path=driver), options=options)
    chrome.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    chrome.downloads = downloads
    try:
        yield chrome
    finally:
        chrome.quit()


def wait_for(browser, condition, what: str):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(browser, WAIT_S, poll_frequency=0.3).until(condition)
    except TimeoutException:
        pytest.fail(f"waited {WAIT_S} s for {what}; the page says:\n{page_text(browser)}")


def page_text(browser) -> str:
    return browser.find_element("tag name", "body").text


def text_appears(text: str):
    return lambda browser: text in page_text(browser)


def choose(browser, label: str, option: str) -> None:
    """Pick `option` in the selectbox labelled `label` (Streamlit's combobox)."""
    wait_for(browser, lambda b: b.find_element("xpath", f"//input[@role='combobox'][@aria-label='{label}']"),
             f"the selectbox {label}").click()
    wait_for(browser, lambda b: b.find_element("xpath", f"//*[@role='option'][normalize-space()='{option}']"),
             f"option {option} of {label}").click()


def slice_pictures_loaded(browser) -> list:
    pictures = browser.find_elements("css selector", "img[alt^='slice viewer:']")
    loaded = [p for p in pictures if browser.execute_script("return arguments[0].naturalWidth", p) > 0]
    return loaded if loaded and len(loaded) == len(pictures) else []


def test_results_page_shows_the_worst_case_with_its_slices_and_dice(served, browser):
    url, work, root = served
    rows = case_table(read_summary(most_recent(find_sources(work))))
    worst = rows[0]
    browser.get(url)
    wait_for(browser, text_appears(f"Worst case: {worst['case']}"), "the worst case named without a click")
    choose(browser, "Case", worst["case"])
    dice = f"{worst['mean dice']:.4f}"
    wait_for(browser, text_appears(f"{worst['case']}: mean foreground Dice {dice}"), "the case's Dice")
    pictures = wait_for(browser, slice_pictures_loaded, "the slice viewer's pictures")
    assert len(pictures) == 5  # three channels, the error map and the uncertainty overlay
    browser.save_screenshot(str(root / "results.png"))
    assert (root / "results.png").stat().st_size > 10_000


def test_results_page_orders_by_the_quality_score_and_overlays_the_uncertainty_map(served, browser):
    url, work, root = served
    rows = sort_rows(case_table(read_summary(most_recent(find_sources(work)))), BY_SCORE)
    assert all(SCORE_COLUMN in row for row in rows), "the final validation scored no case's uncertainty"
    first = rows[0]  # the highest score: the case to review first
    assert rows[0][SCORE_COLUMN] > rows[-1][SCORE_COLUMN], "equal scores: the order would not show"
    browser.get(url)
    wait_for(browser, text_appears("Worst case"), "the Results page")
    click_radio(browser, BY_SCORE)
    wait_for(browser, text_appears(f"Cases by {BY_SCORE}"), "the table ordered by the score")
    wait_for(browser, text_appears(f"{first['case']}: mean foreground Dice {first['mean dice']:.4f}; "
                                   f"quality score {first[SCORE_COLUMN]:.4f}"), "the least trustworthy case first")
    pictures = wait_for(browser, slice_pictures_loaded, "the slice viewer's pictures")
    titles = [p.get_attribute("alt").split(": ")[1].split(",")[0] for p in pictures]
    assert titles[-1] == "uncertainty" and len(pictures) == 5  # three channels, errors, the overlay
    browser.save_screenshot(str(root / "results-by-score.png"))


def click_radio(browser, option: str) -> None:
    wait_for(browser, lambda b: b.find_element("xpath", f"//label[@data-testid='stRadioOption']"
                                                        f"[normalize-space()='{option}']"),
             f"the radio option {option}").click()


def test_predict_page_uploads_a_case_and_gives_its_label_map_back(served, browser):
    url, work, root = served
    raw_images = sorted((root / "raw" / "imagesTr").glob("demo_003_*.nii.gz"))
    open_predict_page(browser, url)
    upload(browser, raw_images[:1])  # one file for a three-channel model
    click_button(browser, "Predict")
    wait_for(browser, text_appears("upload: 1 file(s) for a model with 3 channel(s)"),
             "the bad upload's message")
    open_predict_page(browser, url)  # the app is still serving: a new session predicts
    upload(browser, raw_images)
    click_button(browser, "Predict")
    wait_for(browser, text_appears("demo_003: label map demo_003.nii.gz written"), "the prediction")
    wait_for(browser, text_appears("Quality score"), "the case's quality score")
    assert "Review this case first" in page_text(browser) or "No sign of trouble" in page_text(browser)
    pictures = wait_for(browser, slice_pictures_loaded, "the predicted case's slices")
    assert pictures[-1].get_attribute("alt").startswith("slice viewer: uncertainty")
    browser.save_screenshot(str(root / "predict.png"))
    click_button(browser, "Download the label map")
    downloaded = wait_for(browser, lambda b: _complete(b.downloads / "demo_003.nii.gz"), "the download")
    label_map = read_image(downloaded)
    assert label_map.array.shape == read_image(raw_images[0]).array.shape
    assert set(label_map.array.ravel().tolist()) <= {0.0, 1.0}


def open_predict_page(browser, url: str) -> None:
    browser.get(url)
    wait_for(browser, text_appears("Worst case"), "the app")
    wait_for(browser, lambda b: b.find_element("xpath", "//*[@data-testid='stSidebar']//label"
                                               "[@data-testid='stRadioOption'][normalize-space()='Predict']"),
             "the Predict page's radio button").click()
    wait_for(browser, text_appears("One image file per channel"), "the Predict page")


def _complete(path: Path) -> Path | None:
    return path if path.is_file() and not path.with_name(path.name + ".crdownload").exists() else None


def upload(browser, paths: list[Path]) -> None:
    field = browser.find_element("css selector", "input[type='file']")
    field.send_keys("\n".join(str(p) for p in paths))
    wait_for(browser, lambda b: all(p.name in page_text(b) for p in paths), "the uploaded file names")


def click_button(browser, label: str) -> None:
    wait_for(browser, lambda b: b.find_element("xpath", f"//button[normalize-space()='{label}']"),
             f"the {label} button").click()
