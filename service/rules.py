"""Rules: CEL expressions compiled once, evaluated fail-closed.

The binding (common-expression-language, over the Rust `cel` crate) checks syntax at compile
time but has no type checker, so type errors and missing fields only show when a rule runs.
A rule that errors is treated as false — its candidate is excluded — and the error is reported
with the rule id. Rules have no side effects: no functions are registered on the context.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import cel


@dataclass(frozen=True)
class Rule:
    """A named CEL expression that must evaluate to a bool."""

    id: str
    expression: str
    description: str
    program: Any = field(repr=False, compare=False)


@dataclass(frozen=True)
class Verdict:
    """A rule's result: passed is None when the rule errored (and then counts as failed)."""

    rule: Rule
    passed: bool | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.passed is True


def compile_rule(rule_id: str, expression: str, description: str) -> Rule:
    """Compile; raises ValueError carrying the CEL compiler's message on a syntax error."""
    try:
        program = cel.compile(expression)
    except Exception as e:  # the binding raises ValueError; be robust to others
        raise ValueError(str(e).strip()) from None
    return Rule(rule_id, expression, description, program)


def new_context(variables: Mapping[str, Any]) -> Any:
    """A reusable CEL context; build once per decision, then `bind` per candidate."""
    return cel.Context(dict(variables))


def bind(context: Any, name: str, value: Any) -> None:
    """Set one variable on a context (cheap: ~3 µs), e.g. the candidate offer."""
    context.add_variable(name, value)


def evaluate(rule: Rule, context: Any) -> Verdict:
    """Run one rule; any error or a non-bool result fails closed."""
    try:
        result = rule.program.execute(context)
    except Exception as e:  # KeyError, TypeError, ZeroDivisionError, RuntimeError, ...
        return Verdict(rule, None, f"{type(e).__name__}: {e}")
    if not isinstance(result, bool):
        return Verdict(rule, None, f"rule returned {type(result).__name__}, not bool")
    return Verdict(rule, result)


def cel_now(now: datetime) -> datetime:
    """Decision time as CEL sees it (a tz-aware timestamp)."""
    if now.tzinfo is None:
        raise ValueError("decision time must be timezone-aware")
    return now


def decision_variables(
    customer: Mapping[str, Any],
    ticket: Mapping[str, Any],
    contact: Mapping[str, Any],
    now: datetime,
) -> dict[str, Any]:
    """The variables every rule sees for one decision (documented in docs/catalog.md).

    Unknown values are absent (not null), so `has(ticket.csat)` is the way to ask.
    """
    return {
        "customer": dict(customer),
        "ticket": dict(ticket),
        "contact": dict(contact),
        "now": cel_now(now),
    }


def offer_variables(offer_id: str, kind: str, product: str, lever: float) -> dict[str, Any]:
    return {"id": offer_id, "kind": kind, "product": product, "lever": lever}


def variant_variables(
    variant_id: str, price: float, list_price: float, discount_pct: float, margin: float
) -> dict[str, Any]:
    """Amounts in the catalog currency's major units, as doubles."""
    return {
        "id": variant_id,
        "price": price,
        "list_price": list_price,
        "discount_pct": discount_pct,
        "margin": margin,
    }
