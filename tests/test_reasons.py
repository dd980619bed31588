"""Reasons: only visible, positive, known, well-formatted contributions become plain words."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from explain.contributions import Contributions
from explain.reasons import EXPLORATION_NOTE, UNKNOWN_CATEGORY, Reason, ReasonSpec, reasons


def _contrib(*values: float) -> Contributions:
    return Contributions(values=tuple(values), expected=-1.0, raw=math.fsum(values) - 1.0)


SEATS = ReasonSpec("seat_utilization", True, "Using {value:.0%} of their seats")
PLAN = ReasonSpec("plan", True, "On the {value} plan")
CATEGORY = ReasonSpec("ticket_category", True, "Ticket was about {value}")
TENURE = ReasonSpec("tenure_months", True, "Customer for {value:.0f} months")
CHURN = ReasonSpec("churn_risk", False, "Churn risk is {value:.0%}")  # never for agents
SPEND = ReasonSpec("monthly_spend", True, None)  # visible in the UI, but no words for it


def test_reasons_are_visible_positive_strongest_first_and_rendered() -> None:
    specs = [SEATS, PLAN, CATEGORY, TENURE, CHURN, SPEND]
    values = [0.92, "business", "feature_request", 14, 0.4, 900.0]
    got = reasons(_contrib(0.3, -0.2, 0.5, 0.1, 2.0, 1.0), specs, values)
    assert got == (
        Reason("Ticket was about feature request", "ticket_category", "feature request", 0.5),
        Reason("Using 92% of their seats", "seat_utilization", "0.92", 0.3),
        Reason("Customer for 14 months", "tenure_months", "14", 0.1),
    )


def test_hidden_features_never_become_reasons_however_strong() -> None:
    got = reasons(_contrib(5.0, 0.1), [CHURN, TENURE], [0.9, 30])
    assert [r.feature for r in got] == ["tenure_months"]


def test_negative_and_zero_contributions_are_not_reasons() -> None:
    got = reasons(_contrib(-0.5, 0.0, -0.0), [SEATS, PLAN, TENURE], [0.9, "team", 3])
    assert got == ()


def test_at_most_limit_reasons() -> None:
    specs = [SEATS, PLAN, CATEGORY, TENURE]
    values = [0.5, "team", "billing", 12]
    contrib = _contrib(0.4, 0.3, 0.2, 0.1)
    assert [r.feature for r in reasons(contrib, specs, values, limit=2)] == [
        "seat_utilization",
        "plan",
    ]
    assert len(reasons(contrib, specs, values)) == 3
    assert reasons(contrib, specs, values, limit=0) == ()
    with pytest.raises(ValueError, match="limit"):
        reasons(contrib, specs, values, limit=-1)


def test_ties_are_broken_by_feature_order() -> None:
    specs = [TENURE, PLAN, SEATS]
    got = reasons(_contrib(0.2, 0.2, 0.2), specs, [5, "team", 0.5], limit=2)
    assert [r.feature for r in got] == ["tenure_months", "plan"]


@pytest.mark.parametrize("unknown", [None, math.nan, np.float64("nan"), UNKNOWN_CATEGORY, ""])
def test_unknown_values_are_skipped_and_the_next_reason_takes_their_place(unknown: object) -> None:
    spec = ReasonSpec("x", True, "Value {value}")
    got = reasons(_contrib(0.9, 0.1), [spec, TENURE], [unknown, 7])
    assert [r.feature for r in got] == ["tenure_months"]


def test_category_codes_are_humanised() -> None:
    (got,) = reasons(_contrib(0.3), [CATEGORY], ["data_export__limits"])
    assert got.text == "Ticket was about data export limits"
    assert got.value == "data export limits"


def test_a_template_that_does_not_fit_the_value_is_skipped_not_raised() -> None:
    # A category given to a percentage, and a number given to a string-only spec.
    specs = [SEATS, ReasonSpec("region", True, "In {value:>5s}"), TENURE]
    got = reasons(_contrib(0.9, 0.8, 0.1), specs, ["enterprise", 3.5, 12])
    assert [r.feature for r in got] == ["tenure_months"]


def test_numpy_values_render_like_python_ones() -> None:
    got = reasons(_contrib(0.2, 0.1), [SEATS, TENURE], [np.float64(0.25), np.int64(7)])
    assert [r.text for r in got] == ["Using 25% of their seats", "Customer for 7 months"]
    assert [r.value for r in got] == ["0.25", "7"]


def test_nothing_qualifies_gives_no_reasons() -> None:
    assert reasons(_contrib(), [], []) == ()
    assert reasons(_contrib(0.5, 0.5), [CHURN, SPEND], [0.4, 100.0]) == ()


def test_specs_and_values_must_match_the_contributions() -> None:
    with pytest.raises(ValueError, match="specs"):
        reasons(_contrib(0.1, 0.2), [SEATS], [0.5, 0.5])
    with pytest.raises(ValueError, match="raw_values"):
        reasons(_contrib(0.1), [SEATS], [0.5, 0.5])


@pytest.mark.parametrize(
    "template",
    ["No field at all", "Seats {seats}", "{value} of {total}", "{value.real}", "{value[0]}", "{"],
)
def test_a_malformed_template_is_refused_when_the_spec_is_built(template: str) -> None:
    with pytest.raises(ValueError, match="template"):
        ReasonSpec("seats", True, template)


def test_a_reason_must_have_a_positive_contribution() -> None:
    with pytest.raises(ValueError, match="contribution"):
        Reason("On the team plan", "plan", "team", 0.0)
    with pytest.raises(ValueError, match="contribution"):
        Reason("On the team plan", "plan", "team", math.nan)


def test_exploration_note_is_one_plain_sentence() -> None:
    assert EXPLORATION_NOTE.endswith(".") and EXPLORATION_NOTE.count(".") == 1
    assert "SHAP" not in EXPLORATION_NOTE and "model" in EXPLORATION_NOTE


# --- Properties over random contributions -----------------------------------------------------

_TEMPLATES = [None, "Value {value}", "Share {value:.0%}", "Count {value:.0f}", "Code {value:>3s}"]
_VALUES = st.one_of(
    st.none(),
    st.just(math.nan),
    st.just(UNKNOWN_CATEGORY),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.integers(-1000, 1000),
    st.text(alphabet="ab_ ", max_size=6),
)


@st.composite
def _cases(draw: st.DrawFn) -> tuple[Contributions, list[ReasonSpec], list[object], int]:
    n = draw(st.integers(0, 10))
    values = draw(
        st.lists(
            st.one_of(st.floats(-3, 3, allow_nan=False), st.sampled_from([0.0, -0.0, 1e-300])),
            min_size=n,
            max_size=n,
        )
    )
    specs = [
        ReasonSpec(f"f{i}", draw(st.booleans()), draw(st.sampled_from(_TEMPLATES)))
        for i in range(n)
    ]
    raw = draw(st.lists(_VALUES, min_size=n, max_size=n))
    return _contrib(*values), specs, raw, draw(st.integers(0, 4))


@given(_cases())
def test_reasons_never_exceed_limit_nor_show_hidden_or_non_positive_features(
    case: tuple[Contributions, list[ReasonSpec], list[object], int],
) -> None:
    contrib, specs, raw, limit = case
    got = reasons(contrib, specs, raw, limit=limit)
    assert len(got) <= limit
    index = {s.feature: i for i, s in enumerate(specs)}
    for r in got:
        i = index[r.feature]
        assert specs[i].agent_visible and specs[i].template is not None
        assert r.contribution > 0 and r.contribution == contrib.values[i]
        assert raw[i] is not None and raw[i] != UNKNOWN_CATEGORY
    keys = [(-r.contribution, index[r.feature]) for r in got]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)


@given(_cases())
def test_only_plain_value_templates_means_every_qualifying_feature_is_used(
    case: tuple[Contributions, list[ReasonSpec], list[object], int],
) -> None:
    # With "{value}" templates nothing fails to format, so the count is fully determined.
    contrib, specs, raw, limit = case
    specs = [ReasonSpec(s.feature, s.agent_visible, "Value {value}") for s in specs]
    qualifying = [
        i
        for i, v in enumerate(contrib.values)
        if v > 0
        and specs[i].agent_visible
        and raw[i] is not None
        and raw[i] != UNKNOWN_CATEGORY
        and not (isinstance(raw[i], float) and math.isnan(raw[i]))
        and not (isinstance(raw[i], str) and not raw[i].replace("_", " ").strip())
    ]
    assert len(reasons(contrib, specs, raw, limit=limit)) == min(limit, len(qualifying))
