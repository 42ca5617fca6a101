"""nnU-Net's image file names: channel C of a case is `<case>_<CCCC><ending>` (`case_001_0000.nii.gz`).

One rule for every reader of names (the raw dataset, `predict`'s input folder, a TIFF's sidecar),
imported by them all, so this module imports nothing of nnlite's.
"""

from __future__ import annotations

import re

CHANNEL_DIGITS = 4  # image files are <case>_<CCCC><ending>
CHANNEL_STEM = re.compile(rf"^(?P<case>.+)_(?P<channel>\d{{{CHANNEL_DIGITS}}})$")


def split_channel_stem(stem: str) -> tuple[str, int] | None:
    """A file name without its ending, `<case>_<CCCC>` → (case, channel); None for any other name."""
    match = CHANNEL_STEM.match(stem)
    return (match["case"], int(match["channel"])) if match else None
