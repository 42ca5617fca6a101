"""The app's settings: what `python -m nnlite.app` is given, checked, and handed to the page script.

The command parses them (with the address to serve on) and passes WORK, `--inputs` and
`--outputs` on to the Streamlit page script (`pages.py`), which parses them again with the same
parser: one definition of the app's options.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from nnlite.common.layout import plans_file
from nnlite.common.cli import ArgumentParser
from nnlite.common.errors import UserError
from nnlite.common.files import ensure_writable_dir

# kept here, not in uploads (which reads images): `app --help` must not import the image libraries
MAX_UPLOAD_MB = 1024  # the largest upload (all channel files together) the app accepts

DEFAULT_HOST = "127.0.0.1"  # this machine only, unless --host says otherwise
DEFAULT_PORT = 8501  # Streamlit's usual port


@dataclass(frozen=True)
class AppSettings:
    work: Path
    inputs: Path | None = None  # a folder of <case>_<CCCC> files the Predict page may pick from
    outputs: Path | None = None  # where predictions go (None: a temporary folder per app run)
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    max_upload_mb: int = MAX_UPLOAD_MB

    @property
    def address(self) -> str:
        return f"http://{self.host}:{self.port}"


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="nnlite app",
        description="Serve a local web app: browse WORK's validation results and predict new cases.")
    parser.add_argument("work", type=Path, metavar="WORK", help="work directory (plans.json, results/)")
    parser.add_argument("--inputs", type=Path, default=None, metavar="DIR",
                        help="folder of <case>_<CCCC>.nii.gz cases the Predict page can pick from")
    parser.add_argument("--outputs", type=Path, default=None, metavar="DIR",
                        help="folder for predictions (default: a temporary folder, removed at exit)")
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help=f"address to bind (default {DEFAULT_HOST}: this machine only)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help=f"port (default {DEFAULT_PORT}; 0: any free port, printed once served)")
    parser.add_argument("--max-upload-mb", type=int, default=MAX_UPLOAD_MB, metavar="MB",
                        help=f"largest upload, all files of a case together (default {MAX_UPLOAD_MB})")
    return parser


def parse_settings(argv: Sequence[str] | None) -> AppSettings:
    args = build_parser().parse_args(argv)
    if not 0 <= args.port < 65536:
        build_parser().error("--port must be in 0–65535 (0: any free port)")
    if args.max_upload_mb < 1:
        build_parser().error("--max-upload-mb must be ≥ 1")
    return AppSettings(args.work, args.inputs, args.outputs, args.host, args.port, args.max_upload_mb)


def check_settings(settings: AppSettings) -> None:
    """Before the server starts: WORK is planned, --inputs is a folder, --outputs can be written."""
    if not (plans_file(settings.work)).is_file():
        raise UserError(settings.work, "is not a planned work folder (no plans.json)",
                        hint="python -m nnlite.plan RAW WORK, then train")
    if settings.inputs is not None and not settings.inputs.is_dir():
        raise UserError("--inputs", f"{settings.inputs} is not a folder")
    if settings.outputs is not None:
        ensure_writable_dir(settings.outputs, "output folder")


def page_arguments(settings: AppSettings) -> list[str]:
    """The page script's arguments (absolute paths: the script may run in another folder)."""
    args = [str(settings.work.resolve()), "--max-upload-mb", str(settings.max_upload_mb)]
    if settings.inputs is not None:
        args += ["--inputs", str(settings.inputs.resolve())]
    if settings.outputs is not None:
        args += ["--outputs", str(settings.outputs.resolve())]
    return args
