"""Training: ranker and organic-purchase rows from logged history, and the two CatBoost models.

Rows are built only through service.features (`build_matrix`) from the customer, ticket and
contact snapshots logged at decision time, so a model sees exactly what serving saw. It must
never write files or pick a model to serve: the caller saves what `fit` returns.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import catboost
import numpy as np
import pyarrow as pa
from catboost import CatBoostClassifier, Pool

from service.catalog import Catalog
from service.features import ORGANIC_FEATURES, RANKER_FEATURES, FeatureSet, build_matrix

#: called as progress(model, iterations done, iterations in all); model is "ranker" or "organic"
Progress = Callable[[str, int, int], None]

#: the newest share of decision time held out to measure each model
VALIDATION_SHARE = 0.2
# Model size is a latency decision as much as an accuracy one: decide() computes exact SHAP for
# the chosen candidate, and its cost grows with trees x 2^depth. On the default simulation
# (2 cores) 200 trees of depth 4 explain one row in ~1.1-1.5 ms (300 x depth 6: ~6.5 ms) and
# hold out as well as the larger sizes tried (ranker AUC 0.74 vs 0.72-0.74; organic 0.755 vs
# 0.757), while fitting both models in ~9 s.
DEFAULT_ITERATIONS = 200
DEFAULT_DEPTH = 4
DEFAULT_LEARNING_RATE = 0.08
#: every categorical feature has at most a dozen values: one-hot them rather than learn
#: target statistics — ~4x faster to fit on 2 cores, with equal or better held-out AUC
ONE_HOT_MAX_SIZE = 16


@dataclass(frozen=True, eq=False)
class TrainingRows:
    """Model inputs and labels for one model, one row per (decision, offer).

    `X` is what `build_matrix` makes (object array of floats and strings, in `featureset`
    order); `y` is 1 when the customer accepted (ranker) or bought unprompted (organic).
    `propensity` is the logging policy's probability of the shown action (ranker rows only),
    kept for off-policy evaluation; training does not weight by it.
    """

    featureset: FeatureSet
    X: np.ndarray
    y: np.ndarray
    decided_at: np.ndarray  # datetime64[us], UTC
    decision_id: np.ndarray
    offer_id: np.ndarray
    catalog_version: str
    propensity: np.ndarray | None = field(default=None)

    def __post_init__(self) -> None:
        n = len(self.y)
        width = len(self.featureset.names)
        if self.X.ndim != 2 or self.X.shape != (n, width):
            raise ValueError(f"X must have shape ({n}, {width}), got {self.X.shape}")
        if self.y.ndim != 1 or not np.isin(self.y, (0, 1)).all():
            raise ValueError("y must be a 1-D array of 0/1 labels")
        if self.decided_at.shape != (n,) or self.decided_at.dtype.kind != "M":
            raise ValueError(f"decided_at must be {n} datetime64 values")
        for name in ("decision_id", "offer_id"):
            if getattr(self, name).shape != (n,):
                raise ValueError(f"{name} must have {n} values")
        if self.propensity is not None and (
            self.propensity.shape != (n,)
            or not ((self.propensity > 0) & (self.propensity <= 1)).all()
        ):
            raise ValueError(f"propensity must be {n} probabilities in (0, 1]")
        if not self.catalog_version:
            raise ValueError("catalog_version must not be empty")

    def __len__(self) -> int:
        return len(self.y)

    def select(self, mask: np.ndarray) -> TrainingRows:
        """The rows where `mask` is true."""
        return TrainingRows(
            self.featureset,
            self.X[mask],
            self.y[mask],
            self.decided_at[mask],
            self.decision_id[mask],
            self.offer_id[mask],
            self.catalog_version,
            None if self.propensity is None else self.propensity[mask],
        )


def training_rows_from_history(
    history: pa.Table, catalog: Catalog
) -> tuple[TrainingRows, TrainingRows]:
    """(ranker rows, organic rows) from the simulator's history.parquet layout.

    Ranker rows: one per shown offer, label `accepted`, features RANKER_FEATURES with the
    shown variant's terms. Organic rows: one per ticket × offer not shown, label `bought`,
    features ORGANIC_FEATURES with the offer's full-price terms (discount 0). The offers'
    terms come from `catalog`, which must be the catalog the history was logged with.
    """
    if history.num_rows == 0:
        raise ValueError("history has no rows")
    logged = set(history.column("catalog_version").unique().to_pylist())
    if logged != {catalog.version}:
        raise ValueError(
            f"history was logged with catalog {sorted(logged)}, not {catalog.version}: "
            "offer terms must come from the catalog each decision was made with"
        )
    offers = {o.id: o for o in catalog.offers}
    # Catalog.terms is the one construction serving uses too; the full-price variant carries
    # no discount, as decide() asks the organic model.
    full_terms = {o.id: catalog.terms(o, o.full_price) for o in catalog.offers}
    ranker: dict[str, list[Any]] = {k: [] for k in ("X", "y", "at", "id", "offer", "p")}
    organic: dict[str, list[Any]] = {k: [] for k in ("X", "y", "at", "id", "offer")}
    columns = (
        "decision_id",
        "decided_at",
        "customer",
        "ticket",
        "contact",
        "offer_id",
        "variant_id",
        "propensity",
        "accepted",
        "organic",
    )
    for r in history.select(list(columns)).to_pylist():
        customer, ticket, contact = (json.loads(r[k]) for k in ("customer", "ticket", "contact"))
        if r["offer_id"] is not None:
            offer = offers[r["offer_id"]]
            variant = next(v for v in offer.variants if v.id == r["variant_id"])
            terms = catalog.terms(offer, variant)
            ranker["X"].append(build_matrix(RANKER_FEATURES, customer, ticket, contact, [terms]))
            ranker["y"].append(int(r["accepted"]))
            ranker["at"].append(r["decided_at"])
            ranker["id"].append(r["decision_id"])
            ranker["offer"].append(offer.id)
            ranker["p"].append(r["propensity"])
        labels = r["organic"]
        if labels:
            candidates = [full_terms[e["offer_id"]] for e in labels]
            organic["X"].append(
                build_matrix(ORGANIC_FEATURES, customer, ticket, contact, candidates)
            )
            for e in labels:
                organic["y"].append(int(e["bought"]))
                organic["at"].append(r["decided_at"])
                organic["id"].append(r["decision_id"])
                organic["offer"].append(e["offer_id"])
    return (
        _rows(RANKER_FEATURES, ranker, catalog.version, np.array(ranker["p"], dtype=float)),
        _rows(ORGANIC_FEATURES, organic, catalog.version, None),
    )


def _rows(
    featureset: FeatureSet,
    parts: Mapping[str, list[Any]],
    catalog_version: str,
    propensity: np.ndarray | None,
) -> TrainingRows:
    width = len(featureset.names)
    X = np.concatenate(parts["X"]) if parts["X"] else np.empty((0, width), dtype=object)
    return TrainingRows(
        featureset,
        X,
        np.array(parts["y"], dtype=np.int8),
        np.array([_utc_naive(t) for t in parts["at"]], dtype="datetime64[us]"),
        np.array(parts["id"], dtype=object),
        np.array(parts["offer"], dtype=object),
        catalog_version,
        propensity,
    )


def _utc_naive(t: datetime) -> datetime:
    # numpy's datetime64 has no zone: store UTC wall time, never local time.
    return t.astimezone(UTC).replace(tzinfo=None)


# -- fitting ----------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class TrainedModels:
    """The acceptance model, the organic-purchase model, and the card that describes both.

    Both were fitted on the rows before the card's `data_window.validation_from`; its metrics
    were measured on the rows from then on, so they describe exactly these models.
    """

    ranker: CatBoostClassifier
    organic: CatBoostClassifier
    card: dict[str, Any]


class _Reporter:
    """CatBoost callback that forwards iteration counts; never stops training."""

    def __init__(self, name: str, total: int, progress: Progress) -> None:
        self.name, self.total, self.progress = name, total, progress

    def after_iteration(self, info: Any) -> bool:
        self.progress(self.name, int(info.iteration), self.total)
        return True


def fit(
    ranker_rows: TrainingRows,
    organic_rows: TrainingRows,
    *,
    iterations: int = DEFAULT_ITERATIONS,
    depth: int = DEFAULT_DEPTH,
    learning_rate: float = DEFAULT_LEARNING_RATE,
    seed: int = 0,
    progress: Progress | None = None,
) -> TrainedModels:
    """Fit both models on the older 80% of decision time and measure them on the newest 20%.

    The split is by time, not at random, because a model is always used on decisions after
    the ones it learnt from; one cut-off time serves both models. No class weights: decide()
    multiplies the probabilities by margins, so they must stay calibrated.
    """
    if iterations < 1:
        raise ValueError(f"iterations must be at least 1, got {iterations}")
    if not 1 <= depth <= 10:
        raise ValueError(f"depth must be within 1..10, got {depth}")
    if not 0 < learning_rate <= 1:
        raise ValueError(f"learning_rate must be within (0, 1], got {learning_rate}")
    if ranker_rows.featureset != RANKER_FEATURES:
        raise ValueError("ranker_rows must use RANKER_FEATURES")
    if organic_rows.featureset != ORGANIC_FEATURES:
        raise ValueError("organic_rows must use ORGANIC_FEATURES")
    if ranker_rows.catalog_version != organic_rows.catalog_version:
        raise ValueError(
            f"ranker_rows ({ranker_rows.catalog_version}) and organic_rows "
            f"({organic_rows.catalog_version}) come from different catalogs"
        )
    times = np.unique(np.concatenate([ranker_rows.decided_at, organic_rows.decided_at]))
    if len(times) < 2:
        raise ValueError("rows span fewer than two decision times: nothing to validate on")
    cut = times[int(len(times) * (1 - VALIDATION_SHARE))]
    params: dict[str, Any] = {
        "iterations": iterations,
        "depth": depth,
        "learning_rate": learning_rate,
        "random_seed": seed,
        "one_hot_max_size": ONE_HOT_MAX_SIZE,
        "loss_function": "Logloss",
    }
    models: dict[str, CatBoostClassifier] = {}
    metrics: dict[str, Any] = {}
    counts: dict[str, Any] = {}
    seconds: dict[str, float] = {}
    for name, rows in (("ranker", ranker_rows), ("organic", organic_rows)):
        train, valid = rows.select(rows.decided_at < cut), rows.select(rows.decided_at >= cut)
        for part, label in ((train, "training"), (valid, "validation")):
            if len(set(part.y.tolist())) < 2:
                raise ValueError(
                    f"{name}_rows: the {label} part ({len(part)} rows) needs both accepted and "
                    "declined labels; simulate more history"
                )
        model = CatBoostClassifier(**params, verbose=False, allow_writing_files=False)
        cats = rows.featureset.cat_indices
        started = time.perf_counter()
        model.fit(
            Pool(train.X, train.y, cat_features=cats, feature_names=list(rows.featureset.names)),
            callbacks=[_Reporter(name, iterations, progress)] if progress else None,
        )
        seconds[name] = round(time.perf_counter() - started, 3)
        p = model.predict_proba(Pool(valid.X, cat_features=cats))[:, 1]
        models[name] = model
        metrics[name] = _metrics(valid.y, p, train.y.mean())
        counts[name] = {
            "training": len(train),
            "validation": len(valid),
            "training_positive_rate": round(float(train.y.mean()), 6),
            "validation_positive_rate": round(float(valid.y.mean()), 6),
        }
    card = {
        "catalog_version": ranker_rows.catalog_version,
        "data_window": {
            "start": _iso(times[0]),
            "end": _iso(times[-1]),
            "validation_from": _iso(cut),
            "split": f"by decision time: the newest {VALIDATION_SHARE:.0%} is held out",
        },
        "rows": counts,
        "features": {
            "ranker": list(RANKER_FEATURES.names),
            "organic": list(ORGANIC_FEATURES.names),
            "ranker_categorical": [RANKER_FEATURES.names[i] for i in RANKER_FEATURES.cat_indices],
            "organic_categorical": [
                ORGANIC_FEATURES.names[i] for i in ORGANIC_FEATURES.cat_indices
            ],
        },
        "metrics": metrics,
        "params": {**params, "catboost_version": catboost.__version__},
        "fit_seconds": seconds,
    }
    return TrainedModels(models["ranker"], models["organic"], card)


def _iso(t: np.datetime64) -> str:
    moment: datetime = t.astype("datetime64[us]").item()
    return moment.replace(tzinfo=UTC).isoformat()


def _metrics(y: np.ndarray, p: np.ndarray, prior: float) -> dict[str, float]:
    """Held-out AUC and log loss, against the log loss of always predicting the training rate
    (a model that does not beat that has learnt nothing), and calibration in the large."""
    return {
        "auc": round(auc(y, p), 6),
        "log_loss": round(log_loss(y, p), 6),
        "log_loss_base_rate": round(log_loss(y, np.full(len(y), prior)), 6),
        "mean_predicted": round(float(p.mean()), 6),
        "observed_rate": round(float(y.mean()), 6),
    }


def auc(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve: the chance a random positive outscores a random negative."""
    y = np.asarray(y).astype(bool)
    n1 = int(y.sum())
    n0 = len(y) - n1
    if n1 == 0 or n0 == 0:
        raise ValueError("auc needs both positive and negative labels")
    order = np.argsort(score, kind="mergesort")
    ranked = np.asarray(score)[order]
    _, first, counts = np.unique(ranked, return_index=True, return_counts=True)
    ranks = np.empty(len(y))
    ranks[order] = np.repeat(first + (counts + 1) / 2, counts)  # ties share their mean rank
    return float((ranks[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def log_loss(y: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(np.asarray(p, dtype=float), 1e-15, 1 - 1e-15)
    y = np.asarray(y, dtype=float)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
