"""Ranker: the acceptance model and the organic-purchase model, scored in one batch each.

A `Models` bundle is immutable and versioned by content; decide() asks it for p(accept) of every
eligible offer × variant, p(buys anyway) of every offer, and exact SHAP of the chosen one.
Input is always a prepared numpy object array wrapped in one Pool: never a DataFrame per request.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from catboost import CatBoostClassifier, Pool

from explain.contributions import Contributions, ShapTable, contributions
from service.errors import ModelError
from service.features import ORGANIC_FEATURES, RANKER_FEATURES, FeatureSet


@dataclass(frozen=True)
class Models:
    """One deployable model version: ranker + organic model + their card."""

    version: str
    ranker: CatBoostClassifier
    organic: CatBoostClassifier
    card: dict[str, Any]
    #: every leaf's exact SHAP values (explain.contributions.ShapTable), built at load
    _shap_table: ShapTable | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name, model, featureset in (
            ("ranker", self.ranker, RANKER_FEATURES),
            ("organic", self.organic, ORGANIC_FEATURES),
        ):
            got = tuple(model.feature_names_ or ())
            if got and got != featureset.names:
                raise ModelError(
                    f"{name} model {self.version} was trained on features {list(got)}, "
                    f"but this service defines {list(featureset.names)}"
                )
        # Built once here, at load, so no decision pays for it (explain.contributions).
        object.__setattr__(self, "_shap_table", ShapTable.of(self.ranker))

    def p_accept(self, rows: np.ndarray) -> np.ndarray:
        return _proba(self.ranker, rows, RANKER_FEATURES)

    def p_anyway(self, rows: np.ndarray) -> np.ndarray:
        return _proba(self.organic, rows, ORGANIC_FEATURES)

    def explain(self, row: np.ndarray) -> Contributions:
        """Exact SHAP of the ranker's raw score for one candidate (additivity checked)."""
        return contributions(self.ranker, row, RANKER_FEATURES.cat_indices, self._shap_table)


def _proba(model: CatBoostClassifier, rows: np.ndarray, featureset: FeatureSet) -> np.ndarray:
    if len(rows) == 0:
        return np.empty(0)
    pool = Pool(rows, cat_features=featureset.cat_indices)
    return np.asarray(model.predict_proba(pool, thread_count=1)[:, 1], dtype=float)
