"""Contributions: exact SHAP values of one candidate's raw (log-odds) acceptance score.

The one entry point for SHAP in offerdesk, so the engine behind it can change without its
callers noticing. It must never return contributions that do not add up to the raw score the
model gave, and never approximate: a reason shown to an agent is an honest share of the score.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import catboost
import numpy as np

__all__ = ["ADDITIVITY_TOLERANCE", "Contributions", "contributions"]

#: relative tolerance of `sum(values) + expected == raw` (scaled by max(1, |raw|))
ADDITIVITY_TOLERANCE = 1e-9


@dataclass(frozen=True)
class Contributions:
    """SHAP values of one row (log-odds, model feature order) that add up to its raw score.

    `expected` is the base value (the model's mean raw score over its training leaves) and
    `raw` the RawFormulaVal; `sum(values) + expected == raw` is checked here, so a
    Contributions that does not add up cannot exist.
    """

    values: tuple[float, ...]
    expected: float
    raw: float

    def __post_init__(self) -> None:
        if not isinstance(self.values, tuple):
            raise TypeError(f"values: expected a tuple, got {type(self.values).__name__}")
        # `type(...) is float`, not isinstance: numpy.float64 subclasses float but would not
        # survive the canonical JSON encoding of the audit record unchanged.
        for i, v in enumerate(self.values):
            if type(v) is not float:
                raise TypeError(f"values[{i}]: expected a float, got {type(v).__name__}")
            if not math.isfinite(v):
                raise ValueError(f"values[{i}]: not finite ({v})")
        for name in ("expected", "raw"):
            v = getattr(self, name)
            if type(v) is not float:
                raise TypeError(f"{name}: expected a float, got {type(v).__name__}")
            if not math.isfinite(v):
                raise ValueError(f"{name}: not finite ({v})")
        gap = math.fsum(self.values) + self.expected - self.raw
        if abs(gap) > ADDITIVITY_TOLERANCE * max(1.0, abs(self.raw)):
            raise ValueError(
                f"contributions do not add up to the raw score: sum(values) + expected - raw "
                f"= {gap:.3e} (raw {self.raw!r})"
            )


def contributions(
    model: catboost.CatBoostClassifier,
    row: np.ndarray,
    cat_features: Sequence[int],
) -> Contributions:
    """Exact (Regular, path-dependent TreeSHAP) contributions of `row` to `model`'s raw score.

    `row` is one model row as a numpy object array, shape (n_features,) or (1, n_features),
    encoded exactly as for scoring; `cat_features` are the indices of its categorical columns.
    Raises ValueError on a malformed row, a non-binary model, or values that do not add up.
    """
    matrix = np.asarray(row, dtype=object)
    if matrix.ndim == 1:
        matrix = matrix.reshape(1, -1)
    if matrix.ndim != 2 or matrix.shape[0] != 1:
        raise ValueError(f"row: expected shape (n,) or (1, n), got {np.shape(row)}")
    n_features = len(model.feature_names_)
    if matrix.shape[1] != n_features:
        raise ValueError(f"row: model has {n_features} features, row has {matrix.shape[1]}")

    # One Pool for both calls, so the raw score and the SHAP values see the same quantised row.
    pool = catboost.Pool(matrix, cat_features=list(cat_features))
    # "Regular" is exact TreeSHAP; "Approximate" also adds up but gives other values, and
    # "UsePreCalc" costs ~60x more for a single row (reference/stack-measurements.md §2).
    shap = model.get_feature_importance(
        type="ShapValues",
        data=pool,
        shap_mode="NoPreCalc",
        shap_calc_type="Regular",
        thread_count=1,
        verbose=False,
    )
    raw = model.predict(pool, prediction_type="RawFormulaVal", thread_count=1)
    if shap.shape != (1, n_features + 1) or np.shape(raw) != (1,):
        # A multiclass model gives (1, classes, n + 1): its "raw score" is not one number.
        raise ValueError(f"model: expected a binary classifier, SHAP shape is {shap.shape}")

    return Contributions(
        values=tuple(float(v) for v in shap[0, :n_features]),
        expected=float(shap[0, n_features]),
        raw=float(raw[0]),
    )
