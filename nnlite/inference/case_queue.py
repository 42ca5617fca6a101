"""The loop of `predict` over a folder's cases: read one case ahead in a reader thread, predict,
export in a writer thread (one case's probabilities in flight at most); under predict --memory-gb
(`case_memory.MemoryGate`) a case too large to overlap with others runs alone, and a case that
cannot fit fails by name. A failing case is recorded in the report; the others still finish.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Sequence

import numpy as np
from tqdm import tqdm

from nnlite.inference.case_memory import MemoryGate, shapes_of
from nnlite.inference.options import PredictReport, record_failure

# a case as read (predictor.CaseInput) and as predicted (predictor.CasePrediction)
CaseInput = Any
CasePrediction = Any


def predict_cases(predictor: Callable[[str, CaseInput], CasePrediction], todo: Sequence[str], read: Callable[[str], CaseInput],
                  write: Callable[[str, CasePrediction], object], report: PredictReport,
                  gate: MemoryGate | None = None) -> dict[str, np.ndarray]:
    """Read one case ahead, predict, write in the background; failures go into `report`. Under
    `gate` (predict --memory-gb), cases too large to overlap run one at a time and a case that
    cannot fit fails. Returns the case-class probabilities of the cases whose models have a
    classification head."""
    class_rows: dict[str, np.ndarray] = {}
    with ThreadPoolExecutor(1) as reader, ThreadPoolExecutor(1) as writer:
        def read_after(i: int) -> Future | None:
            return reader.submit(read, todo[i + 1]) if i + 1 < len(todo) else None

        upcoming = reader.submit(read, todo[0]) if todo else None
        pending = None
        for i, case in enumerate(tqdm(todo, desc="predict", unit="case")):
            current, upcoming = upcoming, None
            try:
                given = current.result()
                alone = gate is not None and not _may_overlap(gate, case, given)
                if alone:  # the previous case's export first, the next case read afterwards
                    pending = _collect(pending, report)
                else:
                    upcoming = read_after(i)
                prediction = predictor(case, given)
                del given
            except Exception as error:  # noqa: BLE001  report the case, finish the others
                record_failure(report, case, error)
            else:
                if prediction.class_probs is not None:
                    class_rows[case] = prediction.class_probs
                _collect(pending, report)
                pending = (case, writer.submit(write, case, prediction))
                if alone:
                    pending = _collect(pending, report)
            upcoming = upcoming or read_after(i)
        _collect(pending, report)
    return class_rows


def _may_overlap(gate: MemoryGate, case: str, given: CaseInput) -> bool:
    """Whether `case` may be predicted while another is read and exported; raises when it cannot fit."""
    network = [np.shape(data) for data, _ in given.data.values()]
    raw_shape = np.shape(given.raw.data) if given.raw is not None else network[0]
    footprint = gate.footprint(shapes_of(tuple(raw_shape), [tuple(s) for s in network]))
    gate.check(case, footprint)
    return gate.may_overlap(footprint)


def _collect(pending: tuple[str, Future] | None, report: PredictReport) -> None:
    """Wait for the previous case's export (keeps one case's probabilities in flight at most);
    returns None, what is pending afterwards."""
    if pending is None:
        return None
    case, future = pending
    try:
        future.result()
        report.predicted.append(case)
    except Exception as error:  # noqa: BLE001  one case's failure must not stop the others
        record_failure(report, case, error)
