"""The Streamlit script of `python -m nnlite.app`: the Results and Predict pages, kept thin.

Run by Streamlit (`streamlit run pages.py -- WORK [--inputs DIR] [--outputs DIR]`; the command
does this). Every number and picture comes from the plain functions of `runs`, `slices`,
`uploads` and `models`; a `UserError` anywhere becomes one message on the page and the app goes on.
"""

from __future__ import annotations

import math
import sys
import tempfile
from pathlib import Path

import streamlit as st

from nnlite.common.layout import SUMMARY_FILE, plans_file, results_root
from nnlite.common.errors import UserError
from nnlite.data.image_io import SUPPORTED_ENDINGS
from nnlite.plans import load_plans
from nnlite.viewing.models import model_choices, predict_case, review_hint
from nnlite.viewing.runs import (BY_DICE, BY_SCORE, SCORE_COLUMN, Source, case_table, find_sources, has_scores,
                                 label_names, load_case_volumes, most_recent, read_curves, read_summary, sort_rows)
from nnlite.viewing.settings import AppSettings, parse_settings
from nnlite.viewing.uploads import Upload, copy_input_case, input_cases, new_folder, stage_upload
from nnlite.viewing.viewer import slice_viewer

PAGES = ("Results", "Predict")
UPLOAD, FROM_INPUTS = "Upload files", "From --inputs"
CURVE_CHARTS = {  # chart title → {curve of runs.CURVES: its name in the legend}
    "loss": {"train_loss": "train", "val_loss": "validation"},
    "pseudo-Dice": {"mean_pseudo_dice": "pseudo-Dice", "ema_pseudo_dice": "EMA"},
    "learning rate": {"lr": "learning rate"},
    "epoch time (s)": {"epoch_time": "seconds"},
}


def dice_text(value: float) -> str:
    return "n/a (nothing to find, nothing predicted)" if math.isnan(value) else f"{value:.4f}"


@st.cache_data(max_entries=4, show_spinner="reading the case")
def cached_case(work: str, config: str, fold: str, folder: str, training: str | None, case: str,
                scored_at: float):
    """load_case_volumes, remembered for the last few cases (`scored_at`: summary.json's mtime,
    so a fold validated again is read again)."""
    source = Source(config, fold, Path(folder), Path(training) if training else None)
    return load_case_volumes(Path(work), source, case)


def show_curves(source: Source) -> None:
    curves = read_curves(source)
    if not curves or not curves["epoch"]:
        st.caption("no progress curves for this result (metrics.jsonl belongs to single folds)")
        return
    columns = st.columns(len(CURVE_CHARTS))
    for column, (title, names) in zip(columns, CURVE_CHARTS.items()):
        column.caption(title)
        lines = {"epoch": curves["epoch"], **{shown: curves[name] for name, shown in names.items()}}
        column.line_chart(lines, x="epoch", height=200)


def results_page(settings: AppSettings) -> None:
    st.title("Results")
    sources = find_sources(settings.work)
    if not sources:
        st.info(f"No scored validation in {results_root(settings.work)} yet: train a fold first "
                "(python -m nnlite.train WORK …).")
        return
    opened = most_recent(sources)
    source = st.selectbox("Configuration and fold", sources, index=sources.index(opened),
                          format_func=lambda s: s.label)
    plans = load_plans(plans_file(settings.work))
    rows = case_table(read_summary(source), label_names(plans))
    if not rows:
        st.info(f"{source.label} has no scored cases")
        return
    worst = rows[0]
    st.markdown(f"**Worst case: {worst['case']}** (mean foreground Dice {dice_text(worst['mean dice'])})")
    show_curves(source)
    order = BY_DICE
    if has_scores(rows):  # the validation scored each case's uncertainty: triage by it
        order = st.radio("Order cases by", (BY_DICE, BY_SCORE), horizontal=True, key="order")
    rows = sort_rows(rows, order)
    st.subheader(f"Cases by {order}")
    st.dataframe(rows, hide_index=True, height=min(400, 38 + 35 * len(rows)))
    case = st.selectbox("Case", [r["case"] for r in rows], index=0, key=f"case-{order}")
    row = next(r for r in rows if r["case"] == case)
    score = f"; quality score {row[SCORE_COLUMN]:.4f}" if SCORE_COLUMN in row else ""
    st.markdown(f"**{case}**: mean foreground Dice {dice_text(row['mean dice'])}{score}")
    volumes = cached_case(str(settings.work), source.config, source.fold, str(source.folder),
                          str(source.training) if source.training else None, case,
                          (source.folder / SUMMARY_FILE).stat().st_mtime)
    slice_viewer(f"{source.label}-{case}", volumes.data, volumes.spacing, volumes.pred, ref=volumes.ref,
                 channel_names=list(plans.channel_names.values()), uncertainty=volumes.uncertainty)


def staged_case(settings: AppSettings, origin: str, picked, folder: Path, channels: list[str]) -> str:
    """Stage the chosen case in folder/input; returns its case name."""
    input_dir = folder / "input"
    input_dir.mkdir()
    if origin == FROM_INPUTS:
        copy_input_case(settings.inputs, picked, input_dir)
        return picked
    files = [Upload(f.name, f.getvalue()) for f in picked or []]
    return stage_upload(files, input_dir, channels, settings.max_upload_mb)[0]


def run_prediction(settings: AppSettings, choice, origin: str, picked, channels: list[str]) -> None:
    bar = st.progress(0.0, "checking the case")
    try:
        folder = new_folder(settings.outputs or Path(tempfile.gettempdir()))
        case = staged_case(settings, origin, picked, folder, channels)
        result = predict_case(settings.work, choice, folder / "input", folder / "prediction", case,
                              progress=lambda fraction, text: bar.progress(fraction, text))
        st.session_state["predicted"] = result
    except (UserError, OSError) as error:
        st.session_state.pop("predicted", None)
        bar.empty()
        if isinstance(error, UserError):
            st.error(f"{error.where}: {error.problem}")
        else:  # the environment's fault (disk full, permissions): named like the commands do
            st.error(f"{error.filename or 'system'}: {error.strerror or error}")


def predict_page(settings: AppSettings) -> None:
    st.title("Predict")
    plans = load_plans(plans_file(settings.work))
    channels = list(plans.channel_names.values())
    choices = model_choices(settings.work, plans)
    if not choices:
        st.info("No trained model in WORK/results yet (no fold has checkpoint_final.pt).")
        return
    choice = st.selectbox("Model", choices, format_func=lambda c: c.label)
    origin = st.radio("Case", (UPLOAD, FROM_INPUTS), horizontal=True) if settings.inputs else UPLOAD
    if origin == UPLOAD:
        picked = st.file_uploader(f"One image file per channel, in channel order by name "
                                  f"({', '.join(channels)}), or a zip of DICOM series with one folder "
                                  f"per channel; files: {', '.join(SUPPORTED_ENDINGS)}",
                                  accept_multiple_files=True, max_upload_size=settings.max_upload_mb)
    else:
        picked = st.selectbox(f"Case of {settings.inputs}", input_cases(settings.inputs))
    if st.button("Predict", type="primary"):
        run_prediction(settings, choice, origin, picked, channels)
    result = st.session_state.get("predicted")
    if result is not None:
        st.success(f"{result.name}: label map {result.seg_path.name} written to {result.seg_path.parent}")
        st.download_button("Download the label map", result.seg_path.read_bytes(),
                           file_name=result.seg_path.name, mime="application/octet-stream")
        if result.dicom_seg is not None:
            st.download_button("Download the DICOM-SEG", result.dicom_seg.read_bytes(),
                               file_name=result.dicom_seg.name, mime="application/dicom")
        show_score(result.score)
        slice_viewer(f"predicted-{result.seg_path}", result.data, result.spacing, result.pred,
                     channel_names=channels, uncertainty=result.uncertainty)


def show_score(score: float | None) -> None:
    """The predicted case's quality score and what it means for a reviewer."""
    if score is None:
        st.caption("no quality score for this case")
        return
    st.markdown(f"**Quality score {score:.4f}** (the Dice error the model expects of itself; "
                "higher = less trustworthy)")
    review, hint = review_hint(score)
    (st.warning if review else st.info)(hint)


def main(argv: list[str]) -> None:
    st.set_page_config(page_title="nnlite", layout="wide")
    settings = parse_settings(argv)
    page = st.sidebar.radio("Page", PAGES)
    st.sidebar.caption(f"WORK: {settings.work}")
    try:
        (results_page if page == "Results" else predict_page)(settings)
    except UserError as error:
        st.error(f"{error.where}: {error.problem}")


if __name__ == "__main__":
    main(sys.argv[1:])
