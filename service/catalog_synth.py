"""Synthetic catalogs of a chosen size, for benchmarks and scale curves.

Built from the example catalog: offer k is a copy of example offer k mod 12 (same product, kind,
talking points and rules, ids suffixed), with exactly `variants` variants (full price, then 10%,
20%, … off, margins lowered by the discount). The rule count is made exact: each offer keeps its
first trigger and its offer-level eligibility, then rules are added (guardrails that read the
customer, ticket and contact the way real ones do, and always pass for a real customer) or
eligibility rules removed until the catalog holds `rules` rules. Guardrails that always pass
keep decisions comparable across sizes: only the cost of evaluating them changes.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml

EXAMPLE = Path(__file__).parent / "examples" / "catalog.yaml"

#: expressions of the padding guardrails, in turn: each reads a different part of the context
_PADDING = (
    "customer.seats >= 0",
    "customer.tenure_months >= 0",
    "ticket.reopen_count >= 0",
    "contact.offers_30d >= 0",
    "!has(ticket.csat) || ticket.csat >= 1",
    "customer.plan != 'no-such-plan'",
    "size(ticket.tags) >= 0",
    "customer.monthly_spend >= 0.0",
)


def synthetic_catalog(offers: int, rules: int, *, variants: int = 3) -> bytes:
    """Catalog YAML with exactly `offers` offers of `variants` variants and `rules` rules."""
    if not 1 <= offers <= 2000:
        raise ValueError(f"offers must be within 1..2000, got {offers}")
    if not 1 <= variants <= 10:
        raise ValueError(f"variants must be within 1..10, got {variants}")
    if rules < offers:
        raise ValueError(f"rules must be at least one trigger per offer ({offers}), got {rules}")
    base: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    made = []
    for k in range(offers):
        src = base["offers"][k % len(base["offers"])]
        copy = k // len(base["offers"])
        suffix = "" if copy == 0 else f"-{copy}"
        trigger = dict(src["triggers"][0], id=src["triggers"][0]["id"] + suffix)
        full = next(v for v in src["variants"] if v["id"] == "full")
        price, margin = Decimal(full["price"]), Decimal(full["margin"])
        made.append(
            {
                **{key: src[key] for key in ("name", "kind", "product", "talking_points")},
                "id": src["id"] + suffix,
                "repeatable": bool(src.get("repeatable", False)),
                "triggers": [trigger],
                "eligibility": [dict(r, id=r["id"] + suffix) for r in src.get("eligibility", [])],
                "variants": [_variant(price, margin, 10 * i) for i in range(variants)],
            }
        )
    guardrails = list(base["guardrails"])
    count = len(guardrails) + sum(1 + len(o["eligibility"]) for o in made)
    # Too many: drop offer eligibility rules (latest offers first), then guardrails.
    for o in reversed(made):
        while count > rules and o["eligibility"]:
            o["eligibility"].pop()
            count -= 1
    while count > rules and guardrails:
        guardrails.pop()
        count -= 1
    for i in range(rules - count):
        guardrails.append(
            {
                "id": f"synthetic-guardrail-{i + 1}",
                "description": "Always passes for a real customer (scale benchmark).",
                "expression": _PADDING[i % len(_PADDING)],
            }
        )
    base["catalog_id"] = f"synthetic-{offers}x{variants}-{rules}"
    base["guardrails"] = guardrails
    base["offers"] = made
    return yaml.safe_dump(base, sort_keys=False, allow_unicode=True).encode()


def _variant(price: Decimal, margin: Decimal, off_pct: int) -> dict[str, Any]:
    if off_pct == 0:
        return {
            "id": "full",
            "name": "List price",
            "price": f"{price:.2f}",
            "margin": f"{margin:.2f}",
        }
    cut = (price * off_pct / 100).quantize(Decimal("0.01"))
    return {
        "id": f"save-{off_pct}",
        "name": f"{off_pct}% off the first year",
        "price": f"{price - cut:.2f}",
        "margin": f"{max(margin - cut, Decimal('0.01')):.2f}",
    }
