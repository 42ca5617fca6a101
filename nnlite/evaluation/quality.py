"""How well the per-case quality score (inference/uncertainty.py) finds the bad cases.

Against the per-case Dice error (1 − mean foreground Dice of the case): the Spearman rank
correlation, and the share of the total Dice error held by the worst-scored 20 % of the cases,
compared with 20 % picked at random (whose expected share is 20 %). docs/uncertainty.md.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
from scipy import stats

WORST_SHARE = 0.2  # the share of cases a reviewer looks at first


def case_dice_errors(summary: Mapping[str, Any]) -> dict[str, float]:
    """{case: 1 − mean Dice over its scored classes} of a summary.json (classes with NaN Dice —
    empty in both prediction and reference — left out; a case with none is left out)."""
    errors = {}
    for entry in summary["per_case"]:
        dice = [m["dice"] for m in entry["metrics"].values() if not math.isnan(m["dice"])]
        if dice:
            errors[entry["case"]] = 1.0 - float(np.mean(dice))
    return errors


def spearman(scores: Sequence[float], errors: Sequence[float]) -> float:
    """Spearman rank correlation (ties: average ranks); NaN for fewer than 3 cases or no spread."""
    if len(scores) < 3 or np.ptp(scores) == 0 or np.ptp(errors) == 0:
        return math.nan
    return float(stats.spearmanr(scores, errors).statistic)


def worst_share(scores: Sequence[float], errors: Sequence[float], share: float = WORST_SHARE) -> float:
    """The share of Σ errors held by the ceil(share · n) cases with the highest scores."""
    errors = np.asarray(errors, dtype=np.float64)
    if errors.sum() <= 0:
        return math.nan
    n = max(1, math.ceil(share * len(errors)))
    worst = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")[:n]
    return float(errors[worst].sum() / errors.sum())


def oracle_share(errors: Sequence[float], share: float = WORST_SHARE) -> float:
    """The most any score could reach: the share of the ceil(share · n) largest errors."""
    return worst_share(errors, errors, share)


def quality_report(rows: Mapping[str, Mapping[str, float]], errors: Mapping[str, float]) -> dict[str, Any]:
    """Score vs Dice error over the cases in both: n, spearman, worst_20_share, oracle_20_share,
    random_20_share (the expected share of a random pick: 20 %)."""
    cases = sorted(set(rows) & set(errors))
    scores = [rows[case]["score"] for case in cases]
    error = [errors[case] for case in cases]
    return {"cases": len(cases), "spearman_score_vs_dice_error": spearman(scores, error),
            "worst_20_share_of_dice_error": worst_share(scores, error) if cases else math.nan,
            "oracle_20_share_of_dice_error": oracle_share(error) if cases else math.nan,
            "random_20_share_of_dice_error": math.ceil(WORST_SHARE * len(cases)) / len(cases) if cases else math.nan}


def add_quality(summary: dict[str, Any], rows: Mapping[str, Mapping[str, float]]) -> dict[str, Any]:
    """summary.json with each case's uncertainty.csv row beside its metrics ("uncertainty") and the
    score-vs-Dice-error report ("uncertainty" at the top)."""
    for entry in summary["per_case"]:
        if entry["case"] in rows:
            entry["uncertainty"] = dict(rows[entry["case"]])
    summary["uncertainty"] = quality_report(rows, case_dice_errors(summary))
    return summary
