"""Contributions: exact SHAP values of one candidate's raw (log-odds) acceptance score.

The one entry point for SHAP in offerdesk, so the engine behind it can change without its
callers noticing. It must never return contributions that do not add up to the raw score the
model gave, and never approximate: a reason shown to an agent is an honest share of the score.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import catboost
import numpy as np

__all__ = ["ADDITIVITY_TOLERANCE", "Contributions", "ShapTable", "contributions"]

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


#: the largest tree depth tabulated: a table has trees × 2^depth rows and its build walks
#: 2^depth subsets of each leaf's features (depth 4, 200 trees: 0.26 s once per model)
MAX_TABLE_DEPTH = 5


#: where each split type of CatBoost's JSON export names its feature
_SPLIT_INDEX = {"FloatFeature": "float_feature_index", "OneHotFeature": "cat_feature_index"}


class ShapTable:
    """Every leaf's exact SHAP values, computed once per model, so one row's are a table sum.

    In an oblivious tree the row's path — and so its exact path-dependent TreeSHAP values —
    is fixed by the leaf it falls in. So the values of each (tree, leaf) are computed once, by
    brute force over the tree's own features with CatBoost's conventions (the value function
    of tests/test_contributions.py's oracle: the last split at the root, unknown features
    weighed by their node's training weight, an empty subtree worth 0), and a row costs one
    leaf-index call and a sum. Written for a measured reason: CatBoost's own ShapValues call
    costs ~1.0 ms per row for the served 200 × depth-4 ranker (0.83 ms inside CatBoost; a
    1-tree model still 0.22 ms), while this costs ~0.14 ms; its values equal CatBoost's
    Regular ones to 3e-16 on 2,000 logged rows. Deeper models fall back to CatBoost's call.
    """

    def __init__(self, table: np.ndarray, expected: float) -> None:
        self.table = table  # (trees, leaves, features)
        self.expected = expected
        self._trees = np.arange(table.shape[0])

    @classmethod
    def of(cls, model: catboost.CatBoostClassifier) -> ShapTable | None:
        """The model's table, or None when its trees are too deep to tabulate cheaply."""
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.json"
            model.save_model(str(path), format="json")
            doc = json.loads(path.read_text())
        trees = doc.get("oblivious_trees")
        if not trees or any(
            len(t["splits"]) > MAX_TABLE_DEPTH or len(t["leaf_values"]) != 1 << len(t["splits"])
            for t in trees
        ):
            return None  # deep trees, or not one value per leaf (multiclass)
        info = doc["features_info"]
        flat = {
            ("FloatFeature", f["feature_index"]): f["flat_feature_index"]
            for f in info.get("float_features", [])
        }
        flat.update(
            {
                ("OneHotFeature", f["feature_index"]): f["flat_feature_index"]
                for f in info.get("categorical_features", [])
            }
        )
        scale, biases = doc["scale_and_bias"]
        expected = float(biases[0])
        depth = max(len(t["splits"]) for t in trees)
        table = np.zeros((len(trees), 1 << depth, len(model.feature_names_)))
        for i, tree in enumerate(trees):
            features = []
            for split in tree["splits"]:
                kind = split["split_type"]
                index = split.get(_SPLIT_INDEX.get(kind, ""))
                if (kind, index) not in flat:
                    return None  # a split this table does not know (e.g. CTRs): use CatBoost
                features.append(flat[(kind, index)])
            values = [v * scale for v in tree["leaf_values"]]
            weights = tree["leaf_weights"]
            for leaf in range(1 << len(features)):
                phi, base = _leaf_shapley(features, values, weights, leaf)
                for f, v in phi.items():
                    table[i, leaf, f] += v
            expected += base
        return cls(table, expected)

    def values(self, model: catboost.CatBoostClassifier, pool: catboost.Pool) -> np.ndarray:
        """SHAP values of the pool's one row (model feature order)."""
        leaves = model.calc_leaf_indexes(pool, thread_count=1)[0]
        return np.asarray(self.table[self._trees, leaves].sum(axis=0), dtype=float)


def _leaf_shapley(
    features: Sequence[int], values: Sequence[float], weights: Sequence[float], leaf: int
) -> tuple[dict[int, float], float]:
    """Shapley values of one tree's features for a row in `leaf`, and the tree's base value."""
    depth = len(features)
    memo: dict[frozenset[int], float] = {}

    def value(known: frozenset[int]) -> float:
        if known not in memo:

            def walk(bit: int, first: int) -> float:
                if bit < 0:
                    return values[first]
                half = 1 << bit
                if features[bit] in known:
                    return walk(bit - 1, first + half * ((leaf >> bit) & 1))
                w0 = math.fsum(weights[first : first + half])
                w1 = math.fsum(weights[first + half : first + 2 * half])
                if w0 + w1 == 0:
                    return 0.0
                return (w0 * walk(bit - 1, first) + w1 * walk(bit - 1, first + half)) / (w0 + w1)

            memo[known] = walk(depth - 1, 0)
        return memo[known]

    distinct = sorted(set(features))
    n = len(distinct)
    phi = {}
    for f in distinct:
        others = [g for g in distinct if g != f]
        total = 0.0
        for k in range(n):
            weight = math.factorial(k) * math.factorial(n - k - 1) / math.factorial(n)
            for subset in combinations(others, k):
                known = frozenset(subset)
                total += weight * (value(known | {f}) - value(known))
        phi[f] = total
    return phi, value(frozenset())


def catboost_shap(model: catboost.CatBoostClassifier, pool: catboost.Pool) -> np.ndarray:
    """CatBoost's own exact SHAP values of `pool`, shape (rows, n_features + 1), as served.

    "Regular" is exact TreeSHAP; "Approximate" also adds up but gives other values, and
    "UsePreCalc" costs ~60x more for a single row (reference/stack-measurements.md §2).
    """
    return np.asarray(
        model.get_feature_importance(
            type="ShapValues",
            data=pool,
            shap_mode="NoPreCalc",
            shap_calc_type="Regular",
            thread_count=1,
            verbose=False,
        )
    )


def contributions(
    model: catboost.CatBoostClassifier,
    row: np.ndarray,
    cat_features: Sequence[int],
    table: ShapTable | None = None,
) -> Contributions:
    """Exact (Regular, path-dependent TreeSHAP) contributions of `row` to `model`'s raw score.

    `row` is one model row as a numpy object array, shape (n_features,) or (1, n_features),
    encoded exactly as for scoring; `cat_features` are the indices of its categorical columns.
    With `table` (ShapTable.of(model)) the values come from the table, else from CatBoost.
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
    raw = model.predict(pool, prediction_type="RawFormulaVal", thread_count=1)
    if table is not None:
        # The raw score still comes from CatBoost: the additivity check below holds the table
        # to the model's own prediction.
        values = table.values(model, pool)
        return Contributions(
            values=tuple(float(v) for v in values),
            expected=float(table.expected),
            raw=float(raw[0]),
        )
    shap = catboost_shap(model, pool)
    if shap.shape != (1, n_features + 1) or np.shape(raw) != (1,):
        # A multiclass model gives (1, classes, n + 1): its "raw score" is not one number.
        raise ValueError(f"model: expected a binary classifier, SHAP shape is {shap.shape}")

    return Contributions(
        values=tuple(float(v) for v in shap[0, :n_features]),
        expected=float(shap[0, n_features]),
        raw=float(raw[0]),
    )
