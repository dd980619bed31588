"""The CEL semantics the catalog relies on, pinned for the binding version in pyproject.toml."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from service.rules import compile_rule, evaluate, new_context

CTX = {
    "customer": {
        "tenure_months": 14,
        "seat_utilization": 0.9,
        "plan": "team",
        "owned_products": ["sso"],
        "since": datetime(2025, 1, 1, tzinfo=UTC),
    },
    "ticket": {"category": "billing", "tags": ["vip"]},  # no csat: unknown values are absent
    "now": datetime(2026, 6, 15, tzinfo=UTC),
}


def run(expr: str) -> tuple[bool | None, str | None]:
    v = evaluate(compile_rule("r", expr, "d"), new_context(CTX))
    return v.passed, v.error


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("customer.tenure_months >= 12", True),  # int vs int
        ("customer.tenure_months > 13.5", True),  # int vs double comparison is allowed
        ("customer.tenure_months == 14.0", True),
        ("customer.seat_utilization >= 0.85", True),
        ("has(ticket.csat)", False),  # absent, not null
        ("!has(ticket.csat) || ticket.csat >= 3", True),  # the guard idiom the catalog uses
        ("ticket.csat >= 3 || true", True),  # || absorbs an error (other side true)
        ("false && ticket.csat >= 3", False),  # && absorbs an error (other side false)
        ("'sso' in customer.owned_products", True),
        ("customer.plan in ['team', 'business']", True),
        ("now - customer.since > duration('720h')", True),
        ("size(ticket.tags) == 1", True),
    ],
)
def test_semantics(expr: str, expected: bool) -> None:
    assert run(expr) == (expected, None)


@pytest.mark.parametrize(
    "expr",
    [
        "ticket.csat >= 3",  # missing field
        "customer.nope == 1",  # missing field
        "customer.plan > 3",  # no such overload
        "customer.tenure_months + 0.5 > 3",  # arithmetic does not mix int and double
        "customer.tenure_months / 0 > 1",  # division by zero
        "customer.plan",  # not a bool
        "undefined_variable",
    ],
)
def test_errors_fail_closed(expr: str) -> None:
    passed, error = run(expr)
    assert passed is None and error


def test_syntax_errors_are_caught_at_compile_time_with_the_compilers_message() -> None:
    with pytest.raises(ValueError, match="Syntax error"):
        compile_rule("r", "customer.tenure_months >=", "d")
