"""Contributions: additivity on a real model, and equality with brute-force Shapley values."""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path

import catboost
import numpy as np
import pytest

from explain.contributions import Contributions, contributions

N_NUM = 6
CAT_LEVELS = (3, 7, 25)
CAT_FEATURES = tuple(range(N_NUM, N_NUM + len(CAT_LEVELS)))


def _mixed_rows(rng: np.random.Generator, n: int) -> np.ndarray:
    """Rows shaped like the ranker's: numbers, then string categories, in one object array."""
    rows = np.empty((n, N_NUM + len(CAT_LEVELS)), dtype=object)
    rows[:, :N_NUM] = rng.normal(size=(n, N_NUM))
    for k, levels in enumerate(CAT_LEVELS):
        rows[:, N_NUM + k] = [f"v{i}" for i in rng.integers(0, levels, size=n)]
    return rows


@pytest.fixture(scope="session")
def mixed_model() -> catboost.CatBoostClassifier:
    rng = np.random.default_rng(7)
    rows = _mixed_rows(rng, 1500)
    num = rows[:, :N_NUM].astype(float)
    logit = num[:, 0] - num[:, 1] * num[:, 2] + 0.8 * (rows[:, N_NUM + 1] == "v3") - 0.3
    labels = (rng.random(len(rows)) < 1 / (1 + np.exp(-logit))).astype(int)
    model = catboost.CatBoostClassifier(
        iterations=40,
        depth=5,
        random_seed=0,
        verbose=False,
        allow_writing_files=False,
        cat_features=list(CAT_FEATURES),
    )
    model.fit(rows, labels)
    return model


def test_contributions_add_up_to_the_models_raw_score_with_categorical_features(
    mixed_model: catboost.CatBoostClassifier,
) -> None:
    rows = _mixed_rows(np.random.default_rng(8), 150)
    # The raw score from one batch call, independent of the per-row pool inside contributions().
    batch_raw = mixed_model.predict(
        catboost.Pool(rows, cat_features=list(CAT_FEATURES)), prediction_type="RawFormulaVal"
    )
    for row, raw in zip(rows, batch_raw, strict=True):
        c = contributions(mixed_model, row, CAT_FEATURES)
        assert len(c.values) == rows.shape[1]
        assert c.raw == pytest.approx(float(raw), rel=0, abs=1e-12)
        assert abs(sum(c.values) + c.expected - c.raw) <= 1e-9 * max(1.0, abs(c.raw))
    # Categorical features do get a share: the test would be hollow if they never mattered.
    shares = [contributions(mixed_model, row, CAT_FEATURES).values[N_NUM + 1] for row in rows[:20]]
    assert any(abs(v) > 1e-6 for v in shares)


def test_contributions_are_plain_floats_for_the_audit_record(
    mixed_model: catboost.CatBoostClassifier,
) -> None:
    row = _mixed_rows(np.random.default_rng(9), 1)[0]
    c = contributions(mixed_model, row, CAT_FEATURES)
    assert all(type(v) is float for v in c.values)
    assert type(c.expected) is float and type(c.raw) is float
    json.dumps([c.values, c.expected, c.raw])  # the canonical encoder's input types


def test_a_row_of_shape_one_by_n_gives_the_same_contributions(
    mixed_model: catboost.CatBoostClassifier,
) -> None:
    row = _mixed_rows(np.random.default_rng(10), 1)
    assert contributions(mixed_model, row, CAT_FEATURES) == contributions(
        mixed_model, row[0], CAT_FEATURES
    )


def test_a_row_of_the_wrong_width_is_refused(mixed_model: catboost.CatBoostClassifier) -> None:
    row = _mixed_rows(np.random.default_rng(11), 1)[0]
    with pytest.raises(ValueError, match="row"):
        contributions(mixed_model, row[:-1], CAT_FEATURES)
    with pytest.raises(ValueError, match="row"):
        contributions(mixed_model, np.stack([row, row]), CAT_FEATURES)


def test_values_that_do_not_add_up_are_refused(
    mixed_model: catboost.CatBoostClassifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    row = _mixed_rows(np.random.default_rng(12), 1)[0]
    honest = mixed_model.get_feature_importance

    def off_by_a_little(*args: object, **kwargs: object) -> np.ndarray:
        shap = honest(*args, **kwargs)  # type: ignore[arg-type]
        shap[0, 0] += 1e-6
        return shap

    monkeypatch.setattr(mixed_model, "get_feature_importance", off_by_a_little)
    with pytest.raises(ValueError, match="add up"):
        contributions(mixed_model, row, CAT_FEATURES)


def test_a_contributions_record_must_add_up_and_hold_plain_floats() -> None:
    Contributions(values=(0.25, -0.5), expected=1.0, raw=0.75)
    with pytest.raises(ValueError, match="add up"):
        Contributions(values=(0.25, -0.5), expected=1.0, raw=0.7)
    with pytest.raises(TypeError, match=r"values\[1\]"):
        Contributions(values=(0.25, np.float64(-0.5)), expected=1.0, raw=0.75)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="finite"):
        Contributions(values=(math.nan,), expected=1.0, raw=1.0)


# --- Independent oracle ----------------------------------------------------------------------
# shap.TreeExplainer calls CatBoost's own C++ code for CatBoost models, so agreeing with it
# proves nothing. This oracle rebuilds the trees from the model's JSON export and computes
# Shapley values by brute force over every feature subset, with the value function that
# (path-dependent) TreeSHAP defines: a split on a feature in S follows the row; any other split
# averages its two children weighted by their training weight (cover).
#
# CatBoost conventions, each verified below against RawFormulaVal or ShapValues:
# - leaf index bit b is 1 when x[float_feature_index] > border of splits[b] (strictly greater);
# - raw score = bias + scale × Σ leaf_values[leaf], with "scale_and_bias": [scale, [bias]];
# - TreeSHAP walks an oblivious tree with the LAST split at the root (bit D-1 first), so a
#   node's leaves are a contiguous index range. The order matters: path-dependent values
#   weigh an unknown feature by the cover of the node it is met at. Walking splits[0] first,
#   or conditioning flatly on all leaves that agree with the row on S (the true conditional
#   expectation), both differ from CatBoost's Regular SHAP by 1e-2 or more on this model;
# - a subtree with no training weight that the row's S-features lead into is worth 0 (its
#   leaves hold 0; pricing it at 1 instead fails the equality test). Real models have such
#   subtrees; this fixture reaches them.

ORACLE_FEATURES = 5


@dataclass(frozen=True)
class _Tree:
    features: tuple[int, ...]  # per split, bit b of the leaf index
    borders: tuple[float, ...]
    leaf_values: tuple[float, ...]
    leaf_weights: tuple[float, ...]

    def leaf(self, x: np.ndarray) -> int:
        return sum(
            1 << b
            for b, (f, border) in enumerate(zip(self.features, self.borders, strict=True))
            if _f32(x[f]) > _f32(border)
        )

    def value(self, x: np.ndarray, known: frozenset[int]) -> float:
        """Path-dependent expectation of this tree's output given x on the `known` features."""

        def walk(bit: int, first: int) -> float:
            if bit < 0:
                return self.leaf_values[first]
            half = 1 << bit
            if self.features[bit] in known:
                goes_right = _f32(x[self.features[bit]]) > _f32(self.borders[bit])
                return walk(bit - 1, first + half * goes_right)
            w0 = sum(self.leaf_weights[first : first + half])
            w1 = sum(self.leaf_weights[first + half : first + 2 * half])
            if w0 + w1 == 0:
                return 0.0
            return (w0 * walk(bit - 1, first) + w1 * walk(bit - 1, first + half)) / (w0 + w1)

        return walk(len(self.features) - 1, 0)

    def leads_into_empty_subtree(self, x: np.ndarray) -> bool:
        """Whether following x on some features reaches a subtree no training row reached."""
        first, followed = 0, set()
        for bit in reversed(range(len(self.features))):
            half = 1 << bit
            empty = sum(self.leaf_weights[first : first + 2 * half]) == 0
            if empty and self.features[bit] not in followed:
                return True  # value() must price it with S = followed
            followed.add(self.features[bit])
            first += half * (_f32(x[self.features[bit]]) > _f32(self.borders[bit]))
        return False


@dataclass(frozen=True)
class _Forest:
    trees: tuple[_Tree, ...]
    scale: float
    bias: float

    @classmethod
    def from_json(cls, path: Path) -> _Forest:
        doc = json.loads(path.read_text())
        scale, bias = doc["scale_and_bias"]
        trees = tuple(
            _Tree(
                features=tuple(s["float_feature_index"] for s in t["splits"]),
                borders=tuple(s["border"] for s in t["splits"]),
                leaf_values=tuple(t["leaf_values"]),
                leaf_weights=tuple(t["leaf_weights"]),
            )
            for t in doc["oblivious_trees"]
        )
        assert all(
            s["split_type"] == "FloatFeature" for t in doc["oblivious_trees"] for s in t["splits"]
        )
        (bias,) = bias  # one value per model dimension: a binary model has one
        return cls(trees=trees, scale=float(scale), bias=float(bias))

    def raw(self, x: np.ndarray) -> float:
        return self.bias + self.scale * sum(t.leaf_values[t.leaf(x)] for t in self.trees)

    def value(self, x: np.ndarray, known: frozenset[int]) -> float:
        return self.bias + self.scale * sum(t.value(x, known) for t in self.trees)

    def shapley(self, x: np.ndarray, m: int) -> tuple[list[float], float]:
        """Brute-force Shapley values over all 2^m subsets, and the base value v(∅)."""
        v = {
            frozenset(s): self.value(x, frozenset(s))
            for r in range(m + 1)
            for s in itertools.combinations(range(m), r)
        }
        phi = []
        for i in range(m):
            total = 0.0
            for s, v_s in v.items():
                if i not in s:
                    weight = math.factorial(len(s)) * math.factorial(m - len(s) - 1)
                    total += weight / math.factorial(m) * (v[s | {i}] - v_s)
            phi.append(total)
        return phi, v[frozenset()]


def _f32(v: float) -> np.float32:
    # CatBoost compares features as float32 against float32 borders.
    return np.float32(v)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[catboost.CatBoostClassifier, _Forest]:
    # Few training rows, so some subtrees get no training weight (see the conventions above).
    rng = np.random.default_rng(4)
    x = rng.normal(size=(40, ORACLE_FEATURES))
    labels = (x[:, 0] + x[:, 1] * x[:, 2] - x[:, 3] + rng.normal(size=len(x)) > 0.5).astype(int)
    model = catboost.CatBoostClassifier(
        iterations=8,
        depth=3,
        random_seed=0,
        verbose=False,
        allow_writing_files=False,
        thread_count=1,
        boost_from_average=True,  # a non-zero bias, so the oracle must read it
    )
    model.fit(x, labels)
    path = tmp_path_factory.mktemp("tiny") / "model.json"
    model.save_model(str(path), format="json")
    return model, _Forest.from_json(path)


def _oracle_rows() -> np.ndarray:
    # Wider than the training data, to reach leaves and subtrees no training row reached.
    rows = np.random.default_rng(4).normal(scale=1.8, size=(200, ORACLE_FEATURES))
    return rows.astype(object)


def test_oracle_reconstruction_reproduces_the_models_raw_score(
    tiny: tuple[catboost.CatBoostClassifier, _Forest],
) -> None:
    model, forest = tiny
    rows = _oracle_rows()
    raw = model.predict(catboost.Pool(rows.astype(float)), prediction_type="RawFormulaVal")
    assert forest.bias != 0.0
    assert [forest.raw(x) for x in rows] == pytest.approx(list(raw), rel=0, abs=1e-12)
    # The fixture does reach subtrees without training weight, so the oracle's pricing of them
    # is pinned by the equality test below.
    assert any(t.leads_into_empty_subtree(x) for x in rows for t in forest.trees)


def test_oracle_agrees_with_the_model_on_a_value_equal_to_a_border(
    tiny: tuple[catboost.CatBoostClassifier, _Forest],
) -> None:
    # Random rows never sit on a border; these do, which pins "greater than" (not ">=").
    model, forest = tiny
    rows = []
    for tree in forest.trees:
        for f, border in zip(tree.features, tree.borders, strict=True):
            row = np.zeros(ORACLE_FEATURES)
            row[f] = float(np.float32(border))
            rows.append(row)
    raw = model.predict(catboost.Pool(np.array(rows)), prediction_type="RawFormulaVal")
    assert [forest.raw(x) for x in rows] == pytest.approx(list(raw), rel=0, abs=1e-12)


def test_contributions_equal_brute_force_shapley_values(
    tiny: tuple[catboost.CatBoostClassifier, _Forest],
) -> None:
    model, forest = tiny
    for x in _oracle_rows():
        c = contributions(model, x, ())
        phi, base = forest.shapley(x, ORACLE_FEATURES)
        assert c.expected == pytest.approx(base, rel=0, abs=1e-9)
        assert list(c.values) == pytest.approx(phi, rel=0, abs=1e-9)


def test_oracle_tells_an_approximate_engine_from_the_exact_one(
    tiny: tuple[catboost.CatBoostClassifier, _Forest],
) -> None:
    model, forest = tiny
    rows = _oracle_rows()
    approximate = model.get_feature_importance(
        type="ShapValues", data=catboost.Pool(rows.astype(float)), shap_calc_type="Approximate"
    )
    worst = max(
        max(
            abs(a - p)
            for a, p in zip(
                approx[:ORACLE_FEATURES], forest.shapley(x, ORACLE_FEATURES)[0], strict=True
            )
        )
        for x, approx in zip(rows, approximate, strict=True)
    )
    assert worst > 1e-6


def test_the_leaf_table_gives_catboosts_exact_values(
    mixed_model: catboost.CatBoostClassifier,
) -> None:
    """The table (explain.contributions.ShapTable) against CatBoost's own Regular SHAP, on a
    depth-5 model with one-hot categorical features, as the service trains them: the same
    values, every feature, every row. A model with CTR splits is not tabulated."""
    from explain.contributions import ShapTable

    assert ShapTable.of(mixed_model) is None  # its 25-level feature became CTR splits
    rng = np.random.default_rng(7)
    rows = _mixed_rows(rng, 1500)
    labels = (rows[:, 0].astype(float) + 0.8 * (rows[:, N_NUM + 2] == "v3") > 0).astype(int)
    model = catboost.CatBoostClassifier(
        iterations=40,
        depth=5,
        one_hot_max_size=32,
        random_seed=0,
        verbose=False,
        allow_writing_files=False,
        cat_features=list(CAT_FEATURES),
    )
    model.fit(rows, labels)
    table = ShapTable.of(model)
    assert table is not None
    for row in _mixed_rows(np.random.default_rng(11), 300):
        fast = contributions(model, row, CAT_FEATURES, table)
        exact = contributions(model, row, CAT_FEATURES)
        assert fast.expected == pytest.approx(exact.expected, rel=0, abs=1e-12)
        assert list(fast.values) == pytest.approx(list(exact.values), rel=0, abs=1e-12)
        assert fast.raw == exact.raw


def test_the_leaf_table_agrees_with_the_brute_force_oracle(
    tiny: tuple[catboost.CatBoostClassifier, _Forest],
) -> None:
    from explain.contributions import ShapTable

    model, forest = tiny
    table = ShapTable.of(model)
    assert table is not None
    for x in _oracle_rows():
        c = contributions(model, x, (), table)
        phi, base = forest.shapley(x, ORACLE_FEATURES)
        assert c.expected == pytest.approx(base, rel=0, abs=1e-9)
        assert list(c.values) == pytest.approx(phi, rel=0, abs=1e-9)


def test_models_too_deep_to_tabulate_fall_back_to_catboost() -> None:
    from explain.contributions import MAX_TABLE_DEPTH, ShapTable

    rng = np.random.default_rng(3)
    rows = rng.normal(size=(300, 4))
    model = catboost.CatBoostClassifier(
        iterations=5, depth=MAX_TABLE_DEPTH + 1, verbose=False, allow_writing_files=False
    )
    model.fit(rows, (rows[:, 0] > 0).astype(int))
    assert ShapTable.of(model) is None
    c = contributions(model, rows[0].astype(object), ())
    assert abs(math.fsum(c.values) + c.expected - c.raw) <= 1e-9 * max(1.0, abs(c.raw))
