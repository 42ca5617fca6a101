"""`python -m nnlite.app WORK [--port N] [--host H] [--inputs DIR] [--outputs DIR]`: the web app.

Starts Streamlit on the page script `nnlite/viewing/pages.py` bound to 127.0.0.1:8501 unless told
otherwise, prints the address and serves until Ctrl-C. `--port 0` serves on any free port and prints
the address once the app answers there (a port taken by another program between the choice and the
bind is replaced by another, up to PORT_TRIES times). Without `--outputs`, predictions go to a
temporary folder that is removed when the app stops.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import Sequence

from nnlite.common.cli import EXIT_OK, run
from nnlite.common.errors import UserError
from nnlite.viewing.settings import AppSettings, check_settings, page_arguments, parse_settings

STOP_GRACE_S = 10  # seconds the server gets to close its sessions when asked to stop
ANY_PORT = 0
PORT_TRIES = 5
START_TIMEOUT_S = 300  # a cold start on a busy machine imports torch and Streamlit


def streamlit_command(settings: AppSettings) -> list[str]:
    """`python -m streamlit run pages.py …`: headless, no usage statistics, our upload limit."""
    script = importlib.util.find_spec("nnlite.viewing.pages").origin
    return [sys.executable, "-m", "streamlit", "run", script,
            "--server.address", settings.host, "--server.port", str(settings.port),
            "--server.headless", "true", "--browser.gatherUsageStats", "false",
            "--server.maxUploadSize", str(settings.max_upload_mb),
            "--server.fileWatcherType", "none", "--global.developmentMode", "false",
            "--client.toolbarMode", "viewer",  # no "Deploy" button: the app is local
            "--", *page_arguments(settings)]


def serve(settings: AppSettings) -> int:
    """Run the Streamlit server in a child process until it stops; returns its exit code."""
    if importlib.util.find_spec("streamlit") is None:
        raise UserError("nnlite app", "needs Streamlit, which is not installed",
                        hint="pip install 'nnlite[app]'")
    package_root = str(Path(__file__).resolve().parents[1])  # the child imports this very nnlite
    paths = [package_root, os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    if settings.port == ANY_PORT:
        settings, child = start_on_a_free_port(settings, env)
    else:
        child = subprocess.Popen(streamlit_command(settings), env=env)
    print(f"nnlite app: serving {settings.work} at {settings.address} (Ctrl-C stops it)", flush=True)
    previous = signal.signal(signal.SIGTERM, _raise_stop)
    try:
        return child.wait()
    except (KeyboardInterrupt, StopServing):  # Ctrl-C reaches the server too (same process group)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stop(child)
        return EXIT_OK
    finally:
        signal.signal(signal.SIGTERM, previous)


def start_on_a_free_port(settings: AppSettings, env: dict[str, str]) -> tuple[AppSettings, subprocess.Popen]:
    """The server started on a port the system called free, and answering there; another port when
    something else took that one before Streamlit bound it."""
    for _ in range(PORT_TRIES):
        chosen = replace(settings, port=free_port(settings.host))
        child = subprocess.Popen(streamlit_command(chosen), env=env)
        if answers(chosen, child):
            return chosen, child
        if child.poll() is None:  # alive but silent: not a port clash
            stop(child)
            raise UserError("nnlite app", f"the server did not answer at {chosen.address} within "
                                          f"{START_TIMEOUT_S} s")
    raise UserError("nnlite app", f"no free port could be bound after {PORT_TRIES} tries")


def free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def answers(settings: AppSettings, child: subprocess.Popen) -> bool:
    """True once Streamlit's health check answers at the settings' address while `child` runs (not
    another program that took the port); False when `child` stopped first or the time ran out."""
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "") else settings.host
    health = f"http://{host}:{settings.port}/_stcore/health"
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline and child.poll() is None:
        try:
            with urllib.request.urlopen(health, timeout=2) as reply:
                if reply.status == 200 and child.poll() is None:
                    return True
        except OSError:
            time.sleep(0.3)
    return False


class StopServing(Exception):
    """SIGTERM while serving: leaves the wait for the server (a handler must not wait itself)."""


def _raise_stop(signum: int, frame: object) -> None:
    raise StopServing


def stop(child: subprocess.Popen) -> None:
    """Ask the server to stop; kill it when it has not within STOP_GRACE_S."""
    child.terminate()
    try:
        child.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_settings(argv)
    check_settings(settings)
    if settings.outputs is not None:
        return serve(settings) or EXIT_OK
    with tempfile.TemporaryDirectory(prefix="nnlite-app-") as scratch:
        return serve(replace(settings, outputs=Path(scratch))) or EXIT_OK


if __name__ == "__main__":
    sys.exit(run(main))
