"""Features: every input the ranker and the organic-purchase model read, defined once.

One table (`FEATURES`) gives each feature's name, type, where it comes from, whether an agent
may see it as a reason, and the plain-words template of that reason. One function
(`build_matrix`) turns a decision's inputs into model rows, for serving and for training alike,
so the two cannot drift. It must never read anything that is not in the logged inputs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

Kind = Literal["num", "cat"]
Scope = Literal["customer", "ticket", "contact", "offer"]

#: what a categorical feature holds when its value is unknown
MISSING_CATEGORY = "<missing>"


@dataclass(frozen=True)
class Feature:
    """One model input. `template` formats `value` into a reason an agent can read."""

    name: str
    kind: Kind
    scope: Scope
    agent_visible: bool = False
    template: str | None = None


# Profile columns the profile source must provide (name → Python type). Every value the rules
# or the models read about a customer is one of these, or derived from them below.
CUSTOMER_FIELDS: dict[str, type] = {
    "plan": str,  # starter | team | business | enterprise
    "seats": int,
    "seats_used": int,
    "storage_quota_gb": float,
    "storage_used_gb": float,
    "api_calls_30d": int,
    "api_quota_30d": int,
    "tenure_months": int,
    "monthly_spend": float,  # in the catalog currency's major units
    "billing_cycle": str,  # monthly | annual
    "support_tier": str,  # standard | premium
    "owned_products": list,  # list[str] of catalog product names
    "open_billing_dispute": bool,
    "payment_failures_90d": int,
    "active_users_trend": float,  # relative change of active users over 90 days
    "tickets_90d": int,
    "churn_risk": float,  # from the warehouse; a model input, never shown to an agent
    "region": str,
    "industry": str,
    "company_size": str,
    "marketing_consent": bool,
    "days_since_last_purchase": int,  # may be absent: never bought
}

# Derived customer values: computed from CUSTOMER_FIELDS by `customer_view`, logged with them.
DERIVED_CUSTOMER_FIELDS: dict[str, type] = {
    "seat_utilization": float,
    "storage_utilization": float,
    "api_utilization": float,
}

# Ticket values after validation (the request's declared fields only).
TICKET_FIELDS: dict[str, type] = {
    "category": str,
    "product_area": str,
    "channel": str,
    "csat": int,  # absent when unknown
    "sentiment": float,  # absent when unknown
    "reopen_count": int,
    "tags": list,  # only tags the catalog declares
    "fields": dict,  # only custom fields the catalog declares
}

# Values that may be unknown (absent from the context): rules must guard them with has().
OPTIONAL_FIELDS: dict[str, frozenset[str]] = {
    "customer": frozenset(
        {
            "days_since_last_purchase",
            "churn_risk",
            "active_users_trend",
            # derived: absent when the quota is unknown or zero
            "seat_utilization",
            "storage_utilization",
            "api_utilization",
        }
    ),
    "ticket": frozenset({"csat", "sentiment"}),
    "contact": frozenset({"days_since_last_offer"}),
}

# Contact summary the models read; computed from the contact history by service.policy.
CONTACT_FIELDS: dict[str, type] = {
    "offers_30d": int,
    "declines_90d": int,
    "days_since_last_offer": float,  # absent when never offered
}

FEATURES: tuple[Feature, ...] = (
    # customer
    Feature("plan", "cat", "customer", True, "On the {value} plan"),
    Feature("seats", "num", "customer", True, "Has {value:.0f} seats"),
    Feature("seat_utilization", "num", "customer", True, "Using {value:.0%} of their seats"),
    Feature("storage_utilization", "num", "customer", True, "Using {value:.0%} of their storage"),
    Feature("api_utilization", "num", "customer", True, "Using {value:.0%} of their API quota"),
    Feature("tenure_months", "num", "customer", True, "Customer for {value:.0f} months"),
    Feature("monthly_spend", "num", "customer"),
    Feature("billing_cycle", "cat", "customer", True, "Billed {value}"),
    Feature("support_tier", "cat", "customer", True, "On {value} support"),
    Feature("payment_failures_90d", "num", "customer"),
    Feature(
        "active_users_trend",
        "num",
        "customer",
        True,
        "Active users changed {value:+.0%} in 90 days",
    ),
    Feature("tickets_90d", "num", "customer", True, "Tickets in the last 90 days: {value:.0f}"),
    Feature("churn_risk", "num", "customer"),
    Feature("region", "cat", "customer"),
    Feature("industry", "cat", "customer"),
    Feature("company_size", "cat", "customer"),
    # ticket
    Feature("ticket_category", "cat", "ticket", True, "Ticket was about {value}"),
    Feature("ticket_product_area", "cat", "ticket", True, "Ticket concerned {value}"),
    Feature("ticket_channel", "cat", "ticket"),
    Feature("csat", "num", "ticket", True, "Rated this resolution {value:.0f}/5"),
    Feature("sentiment", "num", "ticket", True, "Conversation ended on a {value:+.1f} sentiment"),
    Feature("reopen_count", "num", "ticket"),
    # contact history
    Feature("offers_30d", "num", "contact"),
    Feature("declines_90d", "num", "contact"),
    Feature("days_since_last_offer", "num", "contact"),
    # offer × variant
    Feature("offer_id", "cat", "offer"),
    Feature("offer_kind", "cat", "offer"),
    Feature("product", "cat", "offer"),
    Feature("discount_pct", "num", "offer", True, "A {value:.0f}% discount is available"),
    # first-year price over monthly spend: a model input, but no reason an agent could say
    Feature("price_to_spend", "num", "offer"),
)

FEATURES_BY_NAME: dict[str, Feature] = {f.name: f for f in FEATURES}


@dataclass(frozen=True)
class FeatureSet:
    """An ordered subset of FEATURES that one model was trained on."""

    names: tuple[str, ...]

    def __post_init__(self) -> None:
        unknown = [n for n in self.names if n not in FEATURES_BY_NAME]
        if unknown:
            raise ValueError(f"unknown features: {unknown}")

    @property
    def features(self) -> tuple[Feature, ...]:
        return tuple(FEATURES_BY_NAME[n] for n in self.names)

    @property
    def cat_indices(self) -> list[int]:
        return [i for i, f in enumerate(self.features) if f.kind == "cat"]


#: the acceptance model: every feature
RANKER_FEATURES = FeatureSet(tuple(f.name for f in FEATURES))
#: the organic-purchase model: who the customer is and what the product is, not the variant
ORGANIC_FEATURES = FeatureSet(
    (*tuple(f.name for f in FEATURES if f.scope != "offer"), "offer_id", "product")
)


@dataclass(frozen=True)
class OfferTerms:
    """What the models know about one candidate: the offer and (for the ranker) the variant."""

    offer_id: str
    offer_kind: str
    product: str
    discount_pct: float
    price: float  # major units


def customer_view(profile: Mapping[str, Any]) -> dict[str, Any]:
    """Declared profile values plus derived ones; unknown values are absent, never None."""
    view = {k: profile[k] for k in CUSTOMER_FIELDS if profile.get(k) is not None}
    view["owned_products"] = sorted(view.get("owned_products") or [])
    for derived, used, total in (
        ("seat_utilization", "seats_used", "seats"),
        ("storage_utilization", "storage_used_gb", "storage_quota_gb"),
        ("api_utilization", "api_calls_30d", "api_quota_30d"),
    ):
        if used in view and view.get(total):
            view[derived] = round(float(view[used]) / float(view[total]), 6)
    return view


def _value(
    name: str,
    customer: Mapping[str, Any],
    ticket: Mapping[str, Any],
    contact: Mapping[str, Any],
    terms: OfferTerms | None,
) -> Any:
    feature = FEATURES_BY_NAME[name]
    if feature.scope == "customer":
        return customer.get(name)
    if feature.scope == "ticket":
        return ticket.get(name.removeprefix("ticket_"))
    if feature.scope == "contact":
        return contact.get(name)
    assert terms is not None
    if name == "price_to_spend":
        spend = customer.get("monthly_spend")
        return terms.price / spend if spend else None
    if name == "discount_pct":
        return terms.discount_pct
    return getattr(terms, name)


def feature_values(
    featureset: FeatureSet,
    customer: Mapping[str, Any],
    ticket: Mapping[str, Any],
    contact: Mapping[str, Any],
    terms: OfferTerms | None,
) -> list[Any]:
    """One row of raw feature values (None where unknown), in the feature set's order."""
    return [_value(n, customer, ticket, contact, terms) for n in featureset.names]


def build_matrix(
    featureset: FeatureSet,
    customer: Mapping[str, Any],
    ticket: Mapping[str, Any],
    contact: Mapping[str, Any],
    candidates: Sequence[OfferTerms],
) -> np.ndarray:
    """Model input rows (object array: floats and strings) for every candidate in one go.

    The customer/ticket/contact part is built once and shared; only the offer columns differ.
    Missing numbers become NaN and missing categories MISSING_CATEGORY, exactly as in training.
    """
    feats = featureset.features
    base = [
        None if f.scope == "offer" else _encode(f, _value(f.name, customer, ticket, contact, None))
        for f in feats
    ]
    rows = np.empty((len(candidates), len(feats)), dtype=object)
    offer_cols = [i for i, f in enumerate(feats) if f.scope == "offer"]
    for r, terms in enumerate(candidates):
        rows[r, :] = base
        for i in offer_cols:
            rows[r, i] = _encode(feats[i], _value(feats[i].name, customer, ticket, contact, terms))
    return rows


def _encode(feature: Feature, value: Any) -> Any:
    if feature.kind == "cat":
        return MISSING_CATEGORY if value is None else str(value)
    if value is None:
        return math.nan
    return float(value)
