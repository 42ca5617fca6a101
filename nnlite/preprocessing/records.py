"""What a preprocessed folder was made from, so stale arrays are never reused silently.

Beside each folder `WORK/preprocessed/<data_identifier>/` (which holds per-case files only) lies
`WORK/preprocessed/<data_identifier>.json`: the plan fields that decide the arrays (spacing,
transpose, normalization and its statistics, resampling orders, labels, data identifier), the
case list, and a sha256 over both. Batch size and network fields are not part of it, so
configurations that share data (3d_fullres and 3d_cascade_fullres) keep sharing it. A region
dataset's record also names its regions' labels (`REGIONS_FIELD`): the foreground locations are
stored per region, so a folder made before that (locations per label) is redone, never sampled
with the wrong keys; a label dataset's record is as it always was.
`preprocess` redoes a folder whose record does not match its plan; `train` refuses it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Sequence

from nnlite.common.errors import UserError
from nnlite.common.files import read_json
from nnlite.common.schema import to_jsonable
from nnlite.plans import DATA_FIELDS, Plans

# ConfigurationPlan fields that change the preprocessed arrays (not batch size, patch or network)
CONFIGURATION_FIELDS = ("data_identifier", *DATA_FIELDS)
# Plans fields that change them: the axis order, the CT statistics, the channels and labels
PLANS_FIELDS = ("transpose", "intensity_per_channel", "channel_names", "labels")
RECORD_VERSION = 1
REGIONS_FIELD = "location_regions"  # region datasets: the label sets foreground locations are stored per


def record_path(folder: str | Path) -> Path:
    """`WORK/preprocessed/<id>.json` for the folder `WORK/preprocessed/<id>/`."""
    folder = Path(folder)
    return folder.with_name(folder.name + ".json")


def make_record(plans: Plans, config_name: str, cases: Sequence[str]) -> dict[str, Any]:
    """The plan fields a configuration's preprocessed arrays depend on (JSON-native), the sorted
    cases and a sha256 over both."""
    config = to_jsonable(plans.configurations[config_name])
    fields = {name: config[name] for name in CONFIGURATION_FIELDS}
    fields.update({name: to_jsonable(getattr(plans, name)) for name in PLANS_FIELDS})
    if plans.regions:
        fields[REGIONS_FIELD] = [list(region.labels) for region in plans.regions]
    cases = sorted(cases)
    text = json.dumps({"fields": fields, "cases": cases}, sort_keys=True, allow_nan=True)
    return {"version": RECORD_VERSION, "sha256": hashlib.sha256(text.encode()).hexdigest(),
            "fields": fields, "cases": cases}


def read_record(folder: Path) -> dict[str, Any] | None:
    """The folder's record, or None when it has none (or an unreadable one)."""
    try:
        record = read_json(record_path(folder))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and {"sha256", "fields", "cases"} <= set(record) else None


def mismatch(saved: dict[str, Any] | None, wanted: dict[str, Any]) -> str | None:
    """Why data made with `saved` is not the data `wanted` describes (None when it is)."""
    if saved is None:
        return "it has no record of the plan it was made with"
    if saved["sha256"] == wanted["sha256"]:
        return None
    keys = [*wanted["fields"], *(key for key in saved["fields"] if key not in wanted["fields"])]
    changed = [key for key in keys if saved["fields"].get(key) != wanted["fields"].get(key)]
    if changed == [REGIONS_FIELD] and REGIONS_FIELD not in saved["fields"]:
        return "its foreground locations are stored per label; region datasets store them per region"
    if changed:
        return f"plans.json changed since it was made ({', '.join(changed)})"
    gone = sorted(set(saved["cases"]) - set(wanted["cases"]))
    added = sorted(set(wanted["cases"]) - set(saved["cases"]))
    if gone or added:
        return f"the dataset's cases changed since it was made ({len(gone)} gone, {len(added)} new)"
    return "its record does not match the plan"


def check_matches_plan(folder: Path, plans: Plans, config_name: str, work: Path) -> list[str]:
    """The cases of a preprocessed folder made with this plan; otherwise a UserError naming the
    configuration and the fix. Training calls this before it creates anything."""
    saved = read_record(folder)
    if saved is None and not folder.is_dir():
        raise UserError(folder, f"not preprocessed for {config_name}",
                        hint=f"python -m nnlite.preprocess {work} --configs {config_name}")
    cases = saved["cases"] if saved is not None else []
    problem = mismatch(saved, make_record(plans, config_name, cases))
    if problem is not None:
        raise UserError(folder, f"preprocessed data of {config_name} does not match plans.json: {problem}",
                        hint=f"python -m nnlite.preprocess {work} --configs {config_name}")
    return list(saved["cases"])
