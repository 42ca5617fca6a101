"""The cascade's training inputs: each case's 3d_lowres cross-validation prediction, prepared.

Every training case of `3d_cascade_fullres` needs a low-resolution prediction from a model that
never saw it: the 3d_lowres cross-validation. Fold k's validation folder provides exactly the cases
of fold k's "val" list (`planning.splits.fold_sources`), so a case's extra channels come from the one lowres
model that did not train on it. Each prediction (a label map in the original geometry,
`fold_<k>/validation/<case>.nii.gz`) is brought into the cascade's preprocessed space by
`preprocessing.cascade.seg_to_stage_input` and stored as

    WORK/preprocessed/<lowres>_predicted_next_stage/<case>_prev.npy   int8 (1, Z, Y, X)
    WORK/preprocessed/<lowres>_predicted_next_stage/<case>_prev.json  provenance (fold, source file
                                                                      and its SHA-256)

A case is redone exactly when its source prediction's content (or fold, or path) changed.
Under torchrun the cases are shared between the ranks in rounds (`distributed.for_each_shared`):
no rank waits in a collective longer than one case's conversion.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from nnlite.common.layout import plans_file, preprocessed_folder
from nnlite.common.errors import UserError
from nnlite.common.files import read_json, remove_tmp_leftovers, save_npy_atomic, write_json_atomic
from nnlite.data.image_io import read_image
from nnlite.plans import Plans
from nnlite.preprocessing.cascade import (PREV_FILE, previous_stage_dir, previous_stage_name,
                                          seg_to_stage_input)
from nnlite.preprocessing.pipeline import load_case_properties
from nnlite.training.distributed import Rank, barrier, for_each_shared, share, sum_across_ranks
from nnlite.planning.splits import fold_sources

log = logging.getLogger(__name__)

PREV_INFO_FILE = "{case}_prev.json"


def prepare_previous_stage(work: Path, plans: Plans, config_name: str, rank: Rank = Rank()) -> Path:
    """Write `<case>_prev.npy` for every preprocessed training case from the lowres CV (see the
    module docstring); files whose source prediction did not change are kept. Returns the folder.
    Every rank of a torchrun job calls this and converts its share of the cases."""
    work = Path(work)
    lowres = previous_stage_name(plans, config_name)
    out = previous_stage_dir(work, plans, config_name)
    if lowres not in plans.configurations:
        raise UserError(plans_file(work), f"'{config_name}' needs '{lowres}', which is not planned")
    data_dir = preprocessed_folder(work, plans.configurations[config_name].data_identifier)
    cases = sorted(p.name[: -len("_seg.npy")] for p in data_dir.glob("*_seg.npy"))
    if not cases:
        raise UserError(data_dir, "no preprocessed training cases; run `python -m nnlite.preprocess` first")
    sources = fold_sources(work, lowres)
    missing = [case for case in cases if case not in sources]
    if missing:
        raise UserError(missing[0], f"has no {lowres} cross-validation prediction (no fold of "
                        f"splits.json validates it)")
    if rank.is_main:
        for r in range(rank.world_size):  # the rank is named only when there are several
            log.info("%spreparing %d of %d previous-stage inputs", f"rank {r}: " if rank.world_size > 1 else "",
                     len(share(cases, Rank(r, rank.world_size))), len(cases))
        # before any rank writes: a .tmp file here is a leftover of a killed run
        out.mkdir(parents=True, exist_ok=True)
        remove_tmp_leftovers(out)
    barrier(rank)
    with tqdm(total=len(share(cases, rank)), desc=f"{lowres} → {config_name}", unit="case", leave=False,
              disable=not rank.is_main) as bar:
        def write(case: str) -> bool:
            bar.update(1)
            return _write_previous_stage(out, data_dir, case, *sources[case], lowres, plans, config_name)

        mine = sum(for_each_shared(cases, rank, write).values())
    written = int(sum_across_ranks(torch.tensor([mine], dtype=torch.int64), rank))
    log.info("%s: previous-stage inputs of %d cases in %s (%d rewritten)", config_name, len(cases),
             out, written)
    return out


def _write_previous_stage(out: Path, data_dir: Path, case: str, fold: int, source: Path, lowres: str,
                          plans: Plans, config_name: str) -> bool:
    """Write `<case>_prev.npy` and its provenance unless they are up to date; True if written."""
    # keyed on the prediction's content, not its modification time (coarse or copied clocks
    # would keep a stale input); hashing a label map costs far less than resampling it
    info = {"case": case, "configuration": lowres, "fold": fold, "source": str(source.resolve()),
            "source_sha256": hashlib.sha256(source.read_bytes()).hexdigest()}
    info_path = out / PREV_INFO_FILE.format(case=case)
    if (out / PREV_FILE.format(case=case)).is_file() and info_path.is_file() and read_json(info_path) == info:
        return False
    seg = np.rint(read_image(source).array).astype(np.int16)
    props = load_case_properties(data_dir / f"{case}.json")
    info_path.unlink(missing_ok=True)  # the JSON goes last: it marks a complete file
    save_npy_atomic(out / PREV_FILE.format(case=case), seg_to_stage_input(seg, props, plans, config_name))
    write_json_atomic(info_path, info)
    return True


def prepare_if_cascade(work: Path, plans: Plans, config_name: str, rank: Rank = Rank()) -> None:
    """Before training `config_name`: prepare its previous-stage inputs when it is a cascade stage."""
    config = plans.configurations.get(config_name)
    if config is not None and config.previous_stage:
        prepare_previous_stage(work, plans, config_name, rank)
