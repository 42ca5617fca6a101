"""The slice viewer widget both pages show (Streamlit): axis switch, slice slider, pictures.

Thin: the pictures come from `slices.render_slice`; this only lays out the controls. It opens on
the slice with the most foreground (reference and prediction together) along the chosen axis.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import streamlit as st

from nnlite.viewing.slices import AXIS_NAMES, busiest_slice, render_slice

LEGEND = ("outlines: reference green, prediction magenta · errors: false positive red, "
          "false negative blue")
LEGEND_PREDICTION = "outline: prediction magenta"
LEGEND_UNCERTAINTY = ("uncertainty: orange where the model is unsure (normalised entropy, 0 grey … 1 "
                      "orange), prediction outlined magenta")
OVERLAY_LABEL = "Overlay the uncertainty map"


def slice_viewer(key: str, data: np.ndarray, spacing: Sequence[float], pred: np.ndarray,
                 ref: np.ndarray | None = None, channel_names: Sequence[str] | None = None,
                 uncertainty: np.ndarray | None = None) -> None:
    """Controls and pictures for data (C, Z, Y, X) with label maps (Z, Y, X) and, when given, the
    uncertainty map (Z, Y, X) as an overlay (a checkbox, on by default, hides it); `key` names the
    case (a new case opens on its own busiest slice)."""
    axis = st.radio("Axis", (0, 1, 2), format_func=lambda a: AXIS_NAMES[a], horizontal=True,
                    key=f"axis-{key}")
    size = data.shape[1 + axis]
    index = busiest_slice([ref, pred], axis)
    if size > 1:
        index = st.slider(f"Slice along {AXIS_NAMES[axis]}", 0, size - 1, index, key=f"slice-{key}-{axis}")
    if uncertainty is not None and not st.checkbox(OVERLAY_LABEL, value=True, key=f"overlay-{key}"):
        uncertainty = None
    panels = render_slice(data, spacing, axis, index, ref=ref, pred=pred, channel_names=channel_names,
                          uncertainty=uncertainty)
    columns = st.columns(len(panels))
    for column, panel in zip(columns, panels):
        column.image(panel.image, caption=f"{panel.title} · slice {index}", width="stretch",
                     output_format="PNG",  # lossless: one-pixel outlines stay sharp
                     alt=f"slice viewer: {panel.title}, {AXIS_NAMES[axis]} slice {index}")
    st.caption((LEGEND if ref is not None else LEGEND_PREDICTION)
               + (f" · {LEGEND_UNCERTAINTY}" if uncertainty is not None else ""))
