"""Training: ranker and organic-purchase rows from logged history, and the two CatBoost models.

Rows are built only through service.features (`build_matrix`) from the customer, ticket and
contact snapshots logged at decision time, so a model sees exactly what serving saw. It must
never write files or pick a model to serve: the caller saves what `fit` returns.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import catboost
import numpy as np
import pyarrow as pa
from catboost import CatBoostClassifier, Pool

from service.catalog import Catalog
from service.features import ORGANIC_FEATURES, RANKER_FEATURES, FeatureSet, build_matrix
from service.logged import Logged, OrganicLabels

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
#: the largest weight one row gets from propensity weighting (before scaling to mean 1): the
#: greedy action is logged with π ≈ 0.96 and an explored one with ε / |A| ≈ 0.01, so an
#: uncapped explored row would count ~100 greedy ones and dominate the fit
DEFAULT_WEIGHT_CLIP = 20.0
#: one-hot every categorical feature rather than learn target statistics (CTRs): ~4x faster to
#: fit on 2 cores with the example catalog, with equal or better held-out AUC, and only one-hot
#: splits let exact SHAP come from the leaf table (explain.contributions.ShapTable: 0.2 ms
#: instead of 1.0 ms a row). Profile values have a dozen levels at most; offer_id has one per
#: offer, so 255 (CatBoost's largest) keeps catalogs of up to 255 offers one-hot.
ONE_HOT_MAX_SIZE = 255


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

    @classmethod
    def concat(cls, parts: Sequence[TrainingRows]) -> TrainingRows:
        """The rows of every part, in order (same features and catalog)."""
        first = parts[0]
        for p in parts[1:]:
            if p.featureset != first.featureset or p.catalog_version != first.catalog_version:
                raise ValueError("rows from different features or catalogs cannot be combined")
        weighted = [p.propensity is not None for p in parts]
        if any(weighted) and not all(weighted):
            raise ValueError("either every part has propensities or none has")
        return cls(
            first.featureset,
            np.concatenate([p.X for p in parts]),
            np.concatenate([p.y for p in parts]),
            np.concatenate([p.decided_at for p in parts]),
            np.concatenate([p.decision_id for p in parts]),
            np.concatenate([p.offer_id for p in parts]),
            first.catalog_version,
            np.concatenate([p.propensity for p in parts]) if all(weighted) else None,  # type: ignore[misc]
        )

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


def ranker_rows_from_logged(logged: Logged) -> TrainingRows:
    """Ranker rows from logged treated decisions: one per offer shown whose outcome is known
    (accepted or declined), with the logging policy's propensity of showing it."""
    known = logged.shown & (logged.accepted >= 0)
    rows = logged.chosen[known]
    return TrainingRows(
        RANKER_FEATURES,
        logged.X_ranker[rows],
        logged.accepted[known].astype(np.int8),
        logged.at[known],
        logged.decision_id[known],
        logged.offer_id[rows],
        logged.catalog.version,
        logged.logging_p[rows],
    )


def organic_rows_from_labels(labels: Sequence[OrganicLabels], catalog: Catalog) -> TrainingRows:
    """Organic rows from conversions-derived labels: one per decision × offer not shown,
    features with the offer's full-price terms (as decide() asks the organic model)."""
    full_terms = {o.id: catalog.terms(o, o.full_price) for o in catalog.offers}
    parts: dict[str, list[Any]] = {k: [] for k in ("X", "y", "at", "id", "offer")}
    for d in labels:
        if not d.bought:
            continue
        c = d.context
        parts["X"].append(
            build_matrix(
                ORGANIC_FEATURES,
                c.customer,
                c.ticket,
                c.contact,
                [full_terms[o] for o, _ in d.bought],
            )
        )
        for offer_id, bought in d.bought:
            parts["y"].append(int(bought))
            parts["at"].append(d.at)
            parts["id"].append(d.decision_id)
            parts["offer"].append(offer_id)
    return _rows(ORGANIC_FEATURES, parts, catalog.version, None)


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

    Both were fitted on the rows before the card's `data_window.validation_from` and measured
    on the rows from then on, unless `data_window.fitted_on` says they were refitted on all
    rows after that measurement.
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
    weighting: str = "none",
    clip: float = DEFAULT_WEIGHT_CLIP,
    refit: bool = False,
    data: Mapping[str, Any] | None = None,
) -> TrainedModels:
    """Fit both models on the older 80% of decision time and measure them on the newest 20%.

    The split is by time, not at random, because a model is always used on decisions after
    the ones it learnt from; one cut-off time serves both models. No class weights: decide()
    multiplies the probabilities by margins, so they must stay calibrated.

    `weighting="propensity"` weights each ranker row by 1 / (the logging policy's probability
    of showing it), capped at `clip` and scaled to mean 1, so that offers the logging policy
    rarely showed count as much as they would under uniform exploration (see
    docs/retraining.md for its measured effect). `refit` fits the stored models again on all
    rows once validated, so the newest rows — under a time split, all of a new log's — are
    learnt from too. `data` (window, sources, filters) goes on the card as given.
    """
    if weighting not in ("none", "propensity"):
        raise ValueError(f"weighting must be 'none' or 'propensity', got {weighting!r}")
    if weighting == "propensity" and ranker_rows.propensity is None:
        raise ValueError("weighting='propensity' needs ranker rows with propensities")
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
    params = model_params(
        iterations=iterations, depth=depth, learning_rate=learning_rate, seed=seed
    )
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
        weights = None
        if name == "ranker" and weighting == "propensity":
            weights = propensity_weights(train.propensity, clip=clip)
        started = time.perf_counter()
        model = fit_one(
            train.X,
            train.y,
            rows.featureset,
            params,
            weights=weights,
            progress=_Reporter(name, iterations, progress) if progress else None,
        )
        seconds[name] = round(time.perf_counter() - started, 3)
        p = model.predict_proba(Pool(valid.X, cat_features=rows.featureset.cat_indices))[:, 1]
        models[name] = model
        metrics[name] = _metrics(valid.y, p, train.y.mean())
        if name == "ranker":
            metrics[name]["by_offer"] = take_rates(valid.offer_id, valid.y, p)
        counts[name] = {
            "training": len(train),
            "validation": len(valid),
            "training_positive_rate": round(float(train.y.mean()), 6),
            "validation_positive_rate": round(float(valid.y.mean()), 6),
        }
        if weights is not None:
            counts[name]["weighting"] = {
                "kind": "propensity",
                "clip": clip,
                "effective_rows": round(effective_size(weights), 1),
            }
        if refit:
            # The newest rows are the ones most like tomorrow's traffic: the model that is
            # stored learns from them too, with the parameters just validated.
            started = time.perf_counter()
            models[name] = fit_one(
                rows.X,
                rows.y,
                rows.featureset,
                params,
                weights=None if weights is None else propensity_weights(rows.propensity, clip=clip),
                progress=_Reporter(f"{name} (all rows)", iterations, progress)
                if progress
                else None,
            )
            seconds[f"{name}_refit"] = round(time.perf_counter() - started, 3)
    card = {
        "catalog_version": ranker_rows.catalog_version,
        "data_window": {
            "start": _iso(times[0]),
            "end": _iso(times[-1]),
            "validation_from": _iso(cut),
            "split": f"by decision time: the newest {VALIDATION_SHARE:.0%} is held out",
            "fitted_on": "all rows: refitted after validation with the same parameters; the "
            "metrics are those of the fit on the older rows"
            if refit
            else "the rows before validation_from; the metrics describe this model",
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
        "weighting": weighting,
        "data": dict(data or {}),
        "code_version": code_version(),
    }
    return TrainedModels(models["ranker"], models["organic"], card)


def model_params(
    *,
    iterations: int = DEFAULT_ITERATIONS,
    depth: int = DEFAULT_DEPTH,
    learning_rate: float = DEFAULT_LEARNING_RATE,
    seed: int = 0,
) -> dict[str, Any]:
    """CatBoost parameters of every model offerdesk fits (the card records them)."""
    return {
        "iterations": iterations,
        "depth": depth,
        "learning_rate": learning_rate,
        "random_seed": seed,
        "one_hot_max_size": ONE_HOT_MAX_SIZE,
        "loss_function": "Logloss",
    }


def fit_one(
    X: np.ndarray,
    y: np.ndarray,
    featureset: FeatureSet,
    params: Mapping[str, Any],
    *,
    weights: np.ndarray | None = None,
    progress: Any = None,
) -> CatBoostClassifier:
    """One binary classifier on `featureset` rows: the ranker, the organic model, and the
    reward model of off-policy evaluation are all fitted here."""
    model = CatBoostClassifier(**params, verbose=False, allow_writing_files=False)
    model.fit(
        Pool(
            X,
            y,
            cat_features=featureset.cat_indices,
            feature_names=list(featureset.names),
            weight=weights,
        ),
        callbacks=[progress] if progress else None,
    )
    return model


def propensity_weights(propensity: np.ndarray | None, *, clip: float) -> np.ndarray:
    """1 / propensity, capped at `clip`, scaled to mean 1."""
    if propensity is None:
        raise ValueError("propensity weights need propensities")
    if clip < 1:
        raise ValueError(f"clip must be at least 1, got {clip}")
    w = np.minimum(1.0 / np.asarray(propensity, dtype=float), clip)
    return np.asarray(w / w.mean(), dtype=float)


def effective_size(weights: np.ndarray) -> float:
    """Kish's effective sample size: (Σw)² / Σw²."""
    return float(weights.sum() ** 2 / (weights**2).sum())


def code_version() -> str:
    """The offerdesk package version, and the git commit when run from a checkout."""
    import subprocess
    from importlib.metadata import PackageNotFoundError, version
    from pathlib import Path

    try:
        text = version("offerdesk")
    except PackageNotFoundError:
        text = "unknown"
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        return f"{text}+g{commit}" + (".dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return text


def _iso(t: np.datetime64) -> str:
    moment: datetime = t.astype("datetime64[us]").item()
    return moment.replace(tzinfo=UTC).isoformat()


def _metrics(y: np.ndarray, p: np.ndarray, prior: float) -> dict[str, Any]:
    """Held-out AUC and log loss, against the log loss of always predicting the training rate
    (a model that does not beat that has learnt nothing), and calibration in the large."""
    curve = reliability(y, p)
    return {
        "auc": round(auc(y, p), 6),
        "log_loss": round(log_loss(y, p), 6),
        "log_loss_base_rate": round(log_loss(y, np.full(len(y), prior)), 6),
        "mean_predicted": round(float(p.mean()), 6),
        "observed_rate": round(float(y.mean()), 6),
        "ece": round(expected_calibration_error(curve, len(y)), 6),
        "reliability": curve,
    }


#: rows per bin of the reliability curve: equal-count bins, so each point has a stable rate
RELIABILITY_BINS = 10


def reliability(y: np.ndarray, p: np.ndarray, bins: int = RELIABILITY_BINS) -> list[dict[str, Any]]:
    """The reliability curve: rows split into `bins` equal-count bins by predicted probability;
    per bin the mean prediction, the observed rate and the row count."""
    order = np.argsort(p, kind="mergesort")
    out = []
    for part in np.array_split(order, min(bins, len(order))):
        if len(part):
            out.append(
                {
                    "predicted": round(float(np.mean(p[part])), 6),
                    "observed": round(float(np.mean(y[part])), 6),
                    "rows": len(part),
                }
            )
    return out


def expected_calibration_error(curve: list[dict[str, Any]], n: int) -> float:
    """Σ over bins of (rows / n) · |observed − predicted|."""
    return float(sum(b["rows"] / n * abs(b["observed"] - b["predicted"]) for b in curve))


def take_rates(offer_id: np.ndarray, y: np.ndarray, p: np.ndarray) -> dict[str, dict[str, Any]]:
    """Per offer: rows, observed take rate and mean predicted p(accept)."""
    out = {}
    for offer in sorted(set(offer_id.tolist())):
        m = offer_id == offer
        out[str(offer)] = {
            "rows": int(m.sum()),
            "observed": round(float(y[m].mean()), 6),
            "predicted": round(float(p[m].mean()), 6),
        }
    return out


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
