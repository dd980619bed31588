"""Simulator: a seeded Acme Cloud customer base, ticket stream and bootstrap history.

It knows the truth — each customer's chance to accept an offer and to buy anyway — so tests can
check learning against it, as Open Bandit Pipeline's synthetic dataset does. The decision path
must never import it: a model learns about this world only through the files it writes.
"""

from __future__ import annotations

import json
import math
import time
from bisect import bisect
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime, timedelta
from itertools import accumulate
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from service import policy as contact_policy
from service import rules
from service.catalog import Catalog, Offer, Variant, currency_exponent
from service.features import CUSTOMER_FIELDS, customer_view
from service.policy import ContactEvent

#: decision time of the default world; history covers the 90 days before it
DEFAULT_NOW = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)
#: how far back the bootstrap history reaches
HISTORY_DAYS = 90
#: the old process showed an offer on this share of tickets that had any eligible action
SHOW_PROBABILITY = 0.8
#: files `simulate` writes into its output directory
FILES = ("world.json", "customers.parquet", "identities.parquet", "history.parquet")
#: bump when a file's layout changes, so `load_world` refuses what it cannot read
FORMAT_VERSION = 1

PLANS = ("starter", "team", "business", "enterprise")
REGIONS = ("na", "emea", "apac", "latam")
INDUSTRIES = ("software", "retail", "finance", "health", "education", "media")
COMPANY_SIZES = ("1-10", "11-50", "51-200", "201-1000", "1001+")
CATEGORIES = (
    "billing",
    "how_to",
    "bug",
    "access",
    "performance",
    "feature_request",
    "outage",
    "account",
)
PRODUCT_AREAS = (
    "seats",
    "storage",
    "sso",
    "api",
    "reporting",
    "billing",
    "integrations",
    "security",
    "general",
)
CHANNELS = ("email", "chat", "phone", "web", "messaging", "social")
#: which helpdesk a customer's id comes from, as the identity map names it
SOURCES = ("zendesk", "intercom", "salesforce", "billing")

_DAY = 86_400.0


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


# -- truth ------------------------------------------------------------------------------------


def price_sensitivity(customer: Mapping[str, Any]) -> float:
    """How much a discount moves this customer, 0 (not at all) to ~1.2 (a lot).

    Small education and retail accounts watch every dollar; large finance accounts do not. It
    reads only profile values, so a model that sees the profile can learn it.
    """
    by_industry = {
        "education": 0.95,
        "retail": 0.8,
        "media": 0.55,
        "software": 0.4,
        "health": 0.2,
        "finance": 0.05,
    }
    by_size = {"1-10": 1.3, "11-50": 1.1, "51-200": 0.85, "201-1000": 0.5, "1001+": 0.25}
    s = by_industry.get(customer.get("industry", ""), 0.5)
    s *= by_size.get(customer.get("company_size", ""), 1.0)
    s += 0.15 * min(float(customer.get("payment_failures_90d", 0)), 2.0)
    return float(min(max(s, 0.0), 1.2))


@dataclass(frozen=True)
class _Product:
    """The true response to one product: intercepts, need terms and what tickets make it timely.

    `need` and `organic_need` add to the logit of accepting and of buying unprompted.
    """

    accept_base: float
    organic_base: float
    need: Callable[[Mapping[str, Any]], float]
    organic_need: Callable[[Mapping[str, Any]], float]
    areas: frozenset[str] = frozenset()
    categories: frozenset[str] = frozenset()
    #: a customer who owns it will not buy it again (packs such as storage can be stacked)
    one_off: bool = False


def _g(c: Mapping[str, Any], key: str, default: float = 0.0) -> float:
    return float(c.get(key, default))


def _regulated(c: Mapping[str, Any]) -> float:
    return 1.0 if c.get("industry") in ("finance", "health") else 0.0


def _over(x: float, threshold: float) -> float:
    return max(0.0, x - threshold)


_NONE: Callable[[Mapping[str, Any]], float] = lambda c: 0.0  # noqa: E731

_PRODUCTS: dict[str, _Product] = {
    # Full seats make ten more seats an easy yes; a growing team even more so.
    "seats": _Product(
        -2.0,
        -3.6,
        lambda c: 5.0 * (_g(c, "seat_utilization", 0.7) - 0.8) + 1.5 * _g(c, "active_users_trend"),
        lambda c: 14.0 * _over(_g(c, "seat_utilization"), 0.85) + 2.0 * _g(c, "active_users_trend"),
        frozenset({"seats"}),
        frozenset({"access"}),
    ),
    # Near quota they need the pack — and near 100% many buy it without being asked.
    "storage": _Product(
        -2.0,
        -3.6,
        lambda c: 6.0 * (_g(c, "storage_utilization", 0.5) - 0.75),
        lambda c: 16.0 * _over(_g(c, "storage_utilization"), 0.75),
        frozenset({"storage"}),
    ),
    "api_pack": _Product(
        -2.0,
        -3.8,
        lambda c: 6.0 * (_g(c, "api_utilization") - 0.75),
        lambda c: 14.0 * _over(_g(c, "api_utilization"), 0.8),
        frozenset({"api", "integrations"}),
    ),
    # Heavy support users value a named engineer; bigger teams more.
    "premium_support": _Product(
        -2.4,
        -4.2,
        lambda c: 0.18 * (min(_g(c, "tickets_90d"), 15) - 4) + 0.4 * (_g(c, "seats") >= 50),
        lambda c: 0.1 * min(_g(c, "tickets_90d"), 15),
        frozenset(),
        frozenset({"performance", "bug"}),
        one_off=True,
    ),
    "sso": _Product(
        -2.2,
        -4.2,
        lambda c: 0.8 * (_g(c, "seats") >= 25) + 0.6 * _regulated(c),
        lambda c: 0.5 * (_g(c, "seats") >= 50),
        frozenset({"sso", "security"}),
        frozenset({"access"}),
        one_off=True,
    ),
    # Loyal, low-risk, price-minded monthly payers lock in a year.
    "annual_billing": _Product(
        -2.2,
        -3.8,
        lambda c: (
            0.03 * min(_g(c, "tenure_months"), 48)
            - 2.0 * _g(c, "churn_risk", 0.2)
            + 0.8 * price_sensitivity(c)
        ),
        lambda c: 0.02 * min(_g(c, "tenure_months"), 48),
        frozenset({"billing"}),
        frozenset({"billing"}),
    ),
    "plan_business": _Product(
        -2.6,
        -4.5,
        lambda c: 3.0 * (_g(c, "seat_utilization", 0.7) - 0.75) + 0.5 * (_g(c, "seats") >= 30),
        lambda c: 3.0 * _over(_g(c, "seat_utilization"), 0.9),
        frozenset({"security", "reporting"}),
        frozenset({"feature_request"}),
    ),
    "plan_enterprise": _Product(
        -3.0,
        -4.8,
        lambda c: 0.8 * math.log(max(_g(c, "seats", 1), 1) / 100) + 0.5 * _regulated(c),
        lambda c: 0.5 * math.log(max(_g(c, "seats", 1), 1) / 100),
        frozenset({"security", "sso"}),
        frozenset({"feature_request"}),
    ),
    "audit_logs": _Product(
        -2.4,
        -4.2,
        lambda c: 1.4 * _regulated(c),
        lambda c: 1.0 * _regulated(c),
        frozenset({"security"}),
        one_off=True,
    ),
    "analytics": _Product(
        -2.2,
        -4.0,
        lambda c: 2.5 * _g(c, "active_users_trend") + 0.4 * (_g(c, "seats") >= 50),
        lambda c: 2.0 * _g(c, "active_users_trend"),
        frozenset({"reporting"}),
        one_off=True,
    ),
    # New customers asking how-to questions want guided onboarding; old hands do not.
    "training": _Product(
        -2.0,
        -4.0,
        lambda c: 1.6 * (_g(c, "tenure_months") < 6) - 0.6 * (_g(c, "tenure_months") >= 24),
        lambda c: 1.0 * (_g(c, "tenure_months") < 3),
        frozenset({"general"}),
        frozenset({"how_to"}),
        one_off=True,
    ),
    "sandbox": _Product(
        -2.4,
        -4.2,
        lambda c: 3.0 * (_g(c, "api_utilization") - 0.5) + 0.5 * (c.get("industry") == "software"),
        lambda c: 1.5 * _over(_g(c, "api_utilization"), 0.5),
        frozenset({"integrations", "api"}),
        one_off=True,
    ),
}
#: a product the simulator has no model for: timely when the ticket is about it, nothing more
_GENERIC = _Product(-2.4, -4.5, _NONE, _NONE)


@dataclass(frozen=True)
class Truth:
    """The simulated world's ground truth, as documented logistic models per product.

    logit p_accept = product intercept + product need(customer)
        + area_match   if the ticket's product area or category is one the product answers
        + owned        if the customer already owns a one-off product
        + tenure × tanh(tenure_months / 24)                    settled customers trust an offer
        + sentiment × ticket sentiment + csat × (csat − 3.5)   (each only when known)
        − fatigue_offers × offers_30d − fatigue_declines × declines_90d
        − recent_offer × exp(−days_since_last_offer / 7)       (when ever offered)
        − price × ln(1 + annual price / annual spend)
        + discount × price_sensitivity(customer) × discount_pct / 10
        − churn × churn_risk                                   (when known)

    logit p_buy_anyway = organic intercept + organic need(customer) − churn × churn_risk
        (≈0 for a one-off product the customer already owns)

    The customer is `customer_view(profile)`, the ticket and contact dicts are exactly the ones
    decide() sees, so a model given the same inputs could in principle learn all of it.
    """

    #: minor units per major unit of the catalog's currency (100 for USD)
    minor_units: int = 100
    area_match: float = 0.9
    owned: float = -4.0
    tenure: float = 0.4
    sentiment: float = 0.7
    csat: float = 0.25
    fatigue_offers: float = 0.35
    fatigue_declines: float = 0.5
    recent_offer: float = 0.8
    price: float = 0.9
    discount: float = 1.0
    churn: float = 1.2

    def __post_init__(self) -> None:
        if not isinstance(self.minor_units, int) or self.minor_units < 1:
            raise ValueError(f"minor_units must be a positive int, got {self.minor_units!r}")
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"{f.name} must be a finite number, got {value!r}")

    def p_accept(
        self,
        customer: Mapping[str, Any],
        ticket: Mapping[str, Any],
        contact: Mapping[str, Any],
        offer: Offer,
        variant: Variant,
    ) -> float:
        """True chance that this customer accepts `offer` at `variant` when an agent makes it."""
        m = _PRODUCTS.get(offer.product, _GENERIC)
        z = m.accept_base + m.need(customer)
        if ticket.get("product_area") in m.areas or ticket.get("category") in m.categories:
            z += self.area_match
        if m.one_off and offer.product in customer.get("owned_products", ()):
            z += self.owned
        z += self.tenure * math.tanh(_g(customer, "tenure_months") / 24)
        if "sentiment" in ticket:
            z += self.sentiment * float(ticket["sentiment"])
        if "csat" in ticket:
            z += self.csat * (float(ticket["csat"]) - 3.5)
        z -= self.fatigue_offers * _g(contact, "offers_30d")
        z -= self.fatigue_declines * _g(contact, "declines_90d")
        if "days_since_last_offer" in contact:
            z -= self.recent_offer * math.exp(-float(contact["days_since_last_offer"]) / 7)
        annual_spend = 12 * max(_g(customer, "monthly_spend"), 1.0)
        z -= self.price * math.log1p(variant.price_minor / self.minor_units / annual_spend)
        z += self.discount * price_sensitivity(customer) * variant.discount_pct / 10
        z -= self.churn * _g(customer, "churn_risk")
        return _sigmoid(z)

    def p_buy_anyway(self, customer: Mapping[str, Any], offer: Offer) -> float:
        """True chance that the customer buys `offer`'s product within 30 days unprompted."""
        m = _PRODUCTS.get(offer.product, _GENERIC)
        if m.one_off and offer.product in customer.get("owned_products", ()):
            return 0.001
        z = m.organic_base + m.organic_need(customer) - self.churn * _g(customer, "churn_risk")
        return _sigmoid(z)


# -- customers --------------------------------------------------------------------------------

_SEAT_MEDIAN = (4.0, 15.0, 60.0, 300.0)
_SEAT_SIGMA = (0.5, 0.6, 0.6, 0.7)
_SEAT_LIMITS = ((1, 10), (3, 80), (15, 600), (100, 5000))
_SEAT_PRICE = (8.0, 15.0, 30.0, 45.0)  # monthly, per seat
_STORAGE_BASE_GB = (100.0, 500.0, 2000.0, 10000.0)
_API_QUOTA = (10_000, 100_000, 1_000_000, 5_000_000)
_ADDON_MONTHLY = {
    "storage": 50.0,
    "api_pack": 120.0,
    "sso": 150.0,
    "audit_logs": 100.0,
    "analytics": 180.0,
    "sandbox": 150.0,
    "premium_support": 200.0,
}


def _company_size(employees: float) -> str:
    for bound, name in zip((10, 50, 200, 1000), COMPANY_SIZES, strict=False):
        if employees <= bound:
            return name
    return COMPANY_SIZES[-1]


def _customers(rng: np.random.Generator, n: int) -> list[dict[str, Any]]:
    """Profiles with every CUSTOMER_FIELDS column; unknown values are None."""
    plan = rng.choice(4, size=n, p=(0.30, 0.35, 0.25, 0.10))
    med, sig = np.array(_SEAT_MEDIAN)[plan], np.array(_SEAT_SIGMA)[plan]
    lo, hi = (np.array([lim[i] for lim in _SEAT_LIMITS])[plan] for i in (0, 1))
    seats = np.clip(np.round(np.exp(np.log(med) + sig * rng.standard_normal(n))), lo, hi)
    # A quarter of accounts have filled their seats; the rest use about 60% of them.
    full = rng.random(n) < 0.25
    seat_util = np.where(full, rng.beta(14, 1.2, n), rng.beta(4, 3, n))
    seats_used = np.clip(np.round(seat_util * seats), 1, seats)
    tenure = np.clip(np.round(rng.gamma(1.3, 18, n) + 6 * plan), 0, 150)
    industry = rng.choice(len(INDUSTRIES), size=n, p=(0.30, 0.15, 0.15, 0.12, 0.13, 0.15))
    region = rng.choice(len(REGIONS), size=n, p=(0.45, 0.30, 0.18, 0.07))
    annual = rng.random(n) < np.array([0.15, 0.30, 0.55, 0.85])[plan] + 0.002 * tenure
    premium = (rng.random(n) < np.array([0.0, 0.08, 0.25, 0.6])[plan]) & (seats >= 10)
    regulated = np.isin(industry, [INDUSTRIES.index("finance"), INDUSTRIES.index("health")])
    software = industry == INDUSTRIES.index("software")
    paid = plan > 0
    owns = {
        "storage": rng.random(n) < 0.12 + 0.08 * plan,
        "api_pack": rng.random(n) < np.where(software, 0.2, 0.06),
        "sso": (plan == 3) | (rng.random(n) < np.array([0.0, 0.10, 0.35, 1.0])[plan]),
        "audit_logs": paid & (rng.random(n) < np.where(regulated, 0.3, 0.05)),
        "analytics": paid & (rng.random(n) < 0.15),
        "training": rng.random(n) < np.where(tenure < 12, 0.2, 0.1),
        "sandbox": paid & (rng.random(n) < np.where(software, 0.2, 0.08)),
        "premium_support": premium,
    }
    packs = np.where(owns["storage"], rng.integers(1, 4, n), 0)
    quota_gb = np.array(_STORAGE_BASE_GB)[plan] + 1000.0 * packs
    storage_full = rng.random(n) < 0.2
    storage_util = np.where(storage_full, rng.beta(15, 1.5, n), rng.beta(2, 3, n))
    api_quota = np.array(_API_QUOTA)[plan] * np.where(owns["api_pack"], 5, 1)
    api_kind = rng.random(n)
    api_util = np.where(
        api_kind < 0.3,
        rng.uniform(0, 0.02, n),
        np.where(api_kind < 0.45, rng.beta(10, 1.5, n), rng.beta(1.5, 4, n)),
    )
    trend = np.clip(0.02 + 0.4 * (seat_util - 0.7) + 0.12 * rng.standard_normal(n), -0.6, 1.0)
    ticket_rate = np.exp(0.3 + 0.25 * np.log(seats) + 0.4 * premium + 0.3 * (tenure < 6))
    tickets_90d = np.minimum(rng.poisson(ticket_rate), 40)
    failures = rng.poisson(np.where((plan == 0) | ~annual, 0.15, 0.05))
    dispute = rng.random(n) < 0.02
    churn_z = (
        -2.0 + 0.8 * failures - 2.0 * trend - 0.02 * tenure + 1.0 * dispute
    ) + 0.5 * rng.standard_normal(n)
    churn = 1 / (1 + np.exp(-churn_z))
    employees = seats * rng.uniform(1.0, 4.0, n)
    consent = rng.random(n) < 0.8
    never_bought = rng.random(n) < 0.15
    last_purchase = np.minimum(rng.exponential(120, n), tenure * 30)
    trend_unknown = rng.random(n) < 0.05
    churn_unknown = rng.random(n) < 0.03

    out = []
    for i in range(n):
        owned = sorted(p for p, has in owns.items() if has[i])
        spend = seats[i] * _SEAT_PRICE[plan[i]] * (0.85 if annual[i] else 1.0)
        spend += sum(_ADDON_MONTHLY.get(p, 0.0) for p in owned if p != "storage")
        spend += _ADDON_MONTHLY["storage"] * packs[i]
        out.append(
            {
                "plan": PLANS[plan[i]],
                "seats": int(seats[i]),
                "seats_used": int(seats_used[i]),
                "storage_quota_gb": float(quota_gb[i]),
                "storage_used_gb": round(float(storage_util[i] * quota_gb[i]), 1),
                "api_calls_30d": int(api_util[i] * api_quota[i]),
                "api_quota_30d": int(api_quota[i]),
                "tenure_months": int(tenure[i]),
                "monthly_spend": round(float(spend), 2),
                "billing_cycle": "annual" if annual[i] else "monthly",
                "support_tier": "premium" if premium[i] else "standard",
                "owned_products": owned,
                "open_billing_dispute": bool(dispute[i]),
                "payment_failures_90d": int(failures[i]),
                "active_users_trend": None if trend_unknown[i] else round(float(trend[i]), 3),
                "tickets_90d": int(tickets_90d[i]),
                "churn_risk": None if churn_unknown[i] else round(float(churn[i]), 3),
                "region": REGIONS[region[i]],
                "industry": INDUSTRIES[industry[i]],
                "company_size": _company_size(float(employees[i])),
                "marketing_consent": bool(consent[i]),
                "days_since_last_purchase": None if never_bought[i] else int(last_purchase[i]),
            }
        )
    return out


def _identities(
    rng: np.random.Generator, customer_ids: Sequence[str]
) -> list[tuple[str, str, str]]:
    """(source, external_id, customer_id): everyone has a Zendesk id and a billing id; some also
    an Intercom and a Salesforce one — the same person seen through several helpdesks."""
    n = len(customer_ids)
    zendesk = rng.choice(9_000_000, size=n, replace=False) + 1_000_000
    has_intercom = rng.random(n) < 0.4
    has_salesforce = rng.random(n) < 0.2
    alphabet = np.array(list("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"))
    rows: list[tuple[str, str, str]] = []
    for i, cid in enumerate(customer_ids):
        rows.append(("zendesk", f"zd-{zendesk[i]}", cid))
        if has_intercom[i]:
            rows.append(("intercom", f"ic-{i:06x}{rng.bytes(6).hex()}", cid))
        if has_salesforce[i]:
            rows.append(
                ("salesforce", "003" + "".join(rng.choice(alphabet, 12)) + f"{i:03d}"[-3:], cid)
            )
        rows.append(("billing", cid, cid))
    return rows


# -- tickets ----------------------------------------------------------------------------------

# Categories a ticket about each product area tends to have (relative weights).
_CATEGORY_BY_AREA: dict[str, dict[str, float]] = {
    "seats": {"access": 3, "how_to": 2, "account": 2, "billing": 1},
    "storage": {"performance": 1, "how_to": 2, "bug": 1, "account": 1},
    "sso": {"access": 4, "how_to": 1, "bug": 1},
    "api": {"bug": 2, "performance": 2, "how_to": 2, "feature_request": 1},
    "reporting": {"how_to": 3, "feature_request": 2, "bug": 1},
    "billing": {"billing": 6, "account": 1},
    "integrations": {"bug": 2, "how_to": 2, "feature_request": 1},
    "security": {"access": 2, "how_to": 1, "feature_request": 1, "account": 1},
    "general": {"how_to": 3, "account": 2, "feature_request": 1, "bug": 1},
}
_CHANNEL_WEIGHTS = (0.35, 0.30, 0.15, 0.12, 0.05, 0.03)
_CSAT_WEIGHTS = (0.05, 0.07, 0.15, 0.33, 0.40)


def _pick(rng: np.random.Generator, names: Sequence[str], weights: Sequence[float]) -> str:
    cum = list(accumulate(weights))
    return names[min(bisect(cum, rng.random() * cum[-1]), len(names) - 1)]


def _draw_ticket(
    rng: np.random.Generator, c: Mapping[str, Any], tags: Sequence[str], custom: Sequence[str]
) -> dict[str, Any]:
    """One resolved ticket as decide() sees it, shaped by the account: a customer whose seats
    are full asks about seats, one near its storage quota about storage, and so on."""
    plan = c["plan"]
    w = {
        "seats": 1.0 + 4.0 * _over(_g(c, "seat_utilization"), 0.7) / 0.3,
        "storage": 0.8 + 4.0 * _over(_g(c, "storage_utilization"), 0.7) / 0.3,
        "sso": 0.0 if plan == "starter" else 0.5,
        "api": 0.1 if _g(c, "api_utilization") < 0.05 else 0.6 + 3 * _g(c, "api_utilization"),
        "reporting": 0.8 * (1 + max(_g(c, "active_users_trend"), 0)),
        "billing": 0.8
        + 1.5 * min(_g(c, "payment_failures_90d"), 3)
        + 3.0 * bool(c.get("open_billing_dispute"))
        + 0.4 * (c.get("billing_cycle") == "monthly"),
        "integrations": 0.7,
        "security": 0.3 + 0.6 * _regulated(c),
        "general": 1.5,
    }
    area = _pick(rng, PRODUCT_AREAS, [w[a] for a in PRODUCT_AREAS])
    cats = dict(_CATEGORY_BY_AREA[area])
    if _g(c, "tenure_months") < 6 and "how_to" in cats:
        cats["how_to"] *= 2.5
    category = "outage" if rng.random() < 0.03 else _pick(rng, list(cats), list(cats.values()))
    channel_w = list(_CHANNEL_WEIGHTS)
    if c.get("support_tier") == "premium":
        channel_w[2] *= 2.5  # a named engineer gets phoned
    ticket: dict[str, Any] = {
        "category": category,
        "product_area": area,
        "channel": _pick(rng, CHANNELS, channel_w),
    }
    reopen = _pick(rng, ("0", "1", "2", "3"), (0.82, 0.13, 0.04, 0.01))
    ticket["reopen_count"] = int(reopen)
    mood = -0.6 * ticket["reopen_count"] - 1.2 * (category == "outage") - 0.4 * (category == "bug")
    if rng.random() >= 0.4:
        shift = [math.exp(mood * (4 - k) / 3) for k in range(5)]  # bad moods shift mass to 1–2
        ticket["csat"] = int(
            _pick(rng, "12345", [p / s for p, s in zip(_CSAT_WEIGHTS, shift, strict=True)])
        )
    if rng.random() >= 0.3:
        centre = 0.25 + 0.15 * (ticket.get("csat", 3.5) - 3.5) + 0.25 * mood
        ticket["sentiment"] = round(min(max(centre + 0.3 * rng.standard_normal(), -1.0), 1.0), 2)
    chance = {
        "vip": 0.08 if plan in ("business", "enterprise") else 0.01,
        "escalated": 0.03,
        "renewal_due": 0.04,
        "legal_hold": 0.004,
    }
    ticket["tags"] = [t for t in tags if rng.random() < chance.get(t, 0.01)]
    ticket["fields"] = {}
    if "contract_type" in custom and rng.random() < 0.5:
        ticket["fields"]["contract_type"] = c.get("billing_cycle", "monthly")
    return ticket


# -- the old process (logging policy) ---------------------------------------------------------


@dataclass
class _Rulebook:
    """The catalog's rules, walked the way decide() walks them (service.rules, fail closed).

    `offer`/`variant` are bound only for offers whose rules read them: binding costs ~7 µs and
    nothing else can observe a variable that no rule references.
    """

    def __init__(self, catalog: Catalog) -> None:
        self.guardrails = catalog.guardrails
        self.offers = []
        for o in catalog.offers:
            offer_rules = [t.rule for t in o.triggers] + list(o.eligibility)
            offer_rules += [r for v in o.variants for r in v.eligibility]
            offer_vars = (
                catalog.offer_variables(o)
                if any("offer" in _references(r) for r in offer_rules)
                else None
            )
            variants = [
                (
                    v,
                    catalog.variant_variables(v)
                    if any("variant" in _references(r) for r in v.eligibility)
                    else None,
                )
                for v in o.variants
            ]
            self.offers.append((o, offer_vars, variants))

    def actions(self, ctx: Any, owned: Sequence[str]) -> list[tuple[Offer, list[Variant]]]:
        """Offers (catalog order) whose guardrails, triggers and eligibility pass on `ctx`, each
        with its variants whose eligibility passes; an offer left with no variant is dropped, and
        so is one whose product the customer owns, unless it is repeatable (as in decide())."""
        if not all(rules.evaluate(r, ctx).ok for r in self.guardrails):
            return []
        out = []
        for offer, offer_vars, variants in self.offers:
            if offer.product in owned and not offer.repeatable:
                continue
            if offer_vars is not None:
                rules.bind(ctx, "offer", offer_vars)
            if not any(rules.evaluate(t.rule, ctx).ok for t in offer.triggers):
                continue
            if not all(rules.evaluate(r, ctx).ok for r in offer.eligibility):
                continue
            passed = []
            for v, variant_vars in variants:
                if variant_vars is not None:
                    rules.bind(ctx, "variant", variant_vars)
                if all(rules.evaluate(r, ctx).ok for r in v.eligibility):
                    passed.append(v)
            if passed:
                out.append((offer, passed))
        return out


def eligible_actions(
    catalog: Catalog,
    customer: Mapping[str, Any],
    ticket: Mapping[str, Any],
    contact: Mapping[str, Any],
    now: datetime,
) -> list[tuple[Offer, list[Variant]]]:
    """What the old process could offer on one ticket before its contact policy: offers not
    owned whose guardrails, triggers and eligibility pass (catalog order), with their passing
    variants."""
    ctx = rules.new_context(rules.decision_variables(customer, ticket, contact, now))
    return _Rulebook(catalog).actions(ctx, customer.get("owned_products", ()))


def _references(rule: rules.Rule) -> set[str]:
    # A rule that did not compile never reaches here (the catalog would not have loaded); be
    # conservative anyway and say it reads everything.
    if rule.program is None:
        return {"offer", "variant"}
    return set(rule.program.variables())


# -- outputs ----------------------------------------------------------------------------------

_ARROW_TYPES: dict[type, pa.DataType] = {
    str: pa.string(),
    int: pa.int64(),
    float: pa.float64(),
    bool: pa.bool_(),
    list: pa.list_(pa.string()),
}

CUSTOMERS_SCHEMA = pa.schema(
    [pa.field("customer_id", pa.string(), nullable=False)]
    + [pa.field(name, _ARROW_TYPES[t]) for name, t in CUSTOMER_FIELDS.items()]
)
IDENTITIES_SCHEMA = pa.schema(
    [
        pa.field("source", pa.string(), nullable=False),
        pa.field("external_id", pa.string(), nullable=False),
        pa.field("customer_id", pa.string(), nullable=False),
    ]
)
_ACTION = pa.struct([("offer_id", pa.string()), ("variant_id", pa.string())])
_ORGANIC = pa.struct([("offer_id", pa.string()), ("product", pa.string()), ("bought", pa.bool_())])
#: one row per resolved ticket; see `simulate` for what each column means
HISTORY_SCHEMA = pa.schema(
    [
        pa.field("decision_id", pa.string(), nullable=False),
        pa.field("decided_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("customer_id", pa.string(), nullable=False),
        pa.field("ticket_id", pa.string(), nullable=False),
        pa.field("catalog_version", pa.string(), nullable=False),
        pa.field("customer", pa.string(), nullable=False),
        pa.field("ticket", pa.string(), nullable=False),
        pa.field("contact", pa.string(), nullable=False),
        pa.field("eligible", pa.list_(_ACTION), nullable=False),
        pa.field("offer_id", pa.string()),
        pa.field("variant_id", pa.string()),
        pa.field("propensity", pa.float64(), nullable=False),
        pa.field("accepted", pa.bool_()),
        pa.field("organic", pa.list_(_ORGANIC), nullable=False),
    ]
)


def snapshot(value: Mapping[str, Any]) -> str:
    """Canonical JSON of a customer/ticket/contact dict: absent stays absent, ints stay ints."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class SimulationSummary:
    """What `simulate` wrote and how the old process behaved on it."""

    out_dir: Path
    seed: int
    now: datetime
    catalog_version: str
    customers: int
    identities: int
    history_rows: int
    offers_shown: int
    acceptance_rate: float
    organic_rate: float
    seconds: float


def simulate(
    catalog: Catalog,
    out_dir: Path,
    *,
    customers: int = 5000,
    history_tickets: int = 30_000,
    seed: int = 7,
    now: datetime = DEFAULT_NOW,
    truth: Truth | None = None,
) -> SimulationSummary:
    """Write a world into `out_dir`: world.json, customers, identities and history Parquet.

    history.parquet has one row per resolved ticket in the HISTORY_DAYS before `now`, in time
    order: `decided_at`, `customer_id`, `ticket_id`, and the three inputs decide() would have
    seen as canonical JSON — `customer` (customer_view of the profile), `ticket` and `contact`
    (the contact summary from the offers made so far in the window). The old process (logging
    policy) collected `eligible`: every (offer, variant) whose guardrails, triggers and
    eligibility passed under service.rules, whose product the customer did not own (as in
    decide()), and whose offer the catalog's contact policy allowed
    (consent, cap, cooldowns, blackouts). With probability SHOW_PROBABILITY it then showed one:
    an offer uniformly among the eligible offers, then a variant uniformly among that offer's
    eligible variants, so `propensity` = SHOW_PROBABILITY / n_offers / n_variants(offer);
    `accepted` is drawn from Truth.p_accept. Otherwise `offer_id` is null and `propensity` is
    the chance of showing nothing (1 − SHOW_PROBABILITY, or 1 when nothing was eligible).
    `organic` holds, for every catalog offer except the one shown, whether the customer bought
    its product within 30 days unprompted (drawn from Truth.p_buy_anyway). These are potential
    outcomes, drawn independently per ticket, and not applied to the profile.

    Profiles are the warehouse snapshot at `now`, held fixed over the window; only the contact
    history moves, and it starts empty, so fatigue builds up: the true mean acceptance of shown
    offers falls from ~0.32 in the first fortnight to ~0.17 in the last (a live service that
    starts with an empty contact book sees the first fortnight's customers). Each part draws
    from its own seeded stream, so the same arguments give the same rows.
    """
    if customers < 1:
        raise ValueError(f"customers must be at least 1, got {customers}")
    if history_tickets < 0:
        raise ValueError(f"history_tickets must be at least 0, got {history_tickets}")
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    started = time.perf_counter()
    truth = truth or Truth(minor_units=10 ** currency_exponent(catalog.currency))
    rng_customers, rng_ids, rng_history = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3)
    )
    profiles = _customers(rng_customers, customers)
    ids = [f"acct-{i + 1:06d}" for i in range(customers)]
    identities = _identities(rng_ids, ids)

    out_dir.mkdir(parents=True, exist_ok=True)
    cols: dict[str, list[Any]] = {"customer_id": ids}
    for name in CUSTOMER_FIELDS:
        cols[name] = [p[name] for p in profiles]
    pq.write_table(
        pa.Table.from_pydict(cols, schema=CUSTOMERS_SCHEMA), out_dir / "customers.parquet"
    )
    src, ext, cid = zip(*identities, strict=True)
    pq.write_table(
        pa.Table.from_pydict(
            {"source": list(src), "external_id": list(ext), "customer_id": list(cid)},
            schema=IDENTITIES_SCHEMA,
        ),
        out_dir / "identities.parquet",
    )

    views = [customer_view(p) for p in profiles]
    rows = _history(rng_history, catalog, truth, ids, views, history_tickets, now)
    pq.write_table(pa.Table.from_pylist(rows, schema=HISTORY_SCHEMA), out_dir / "history.parquet")
    world = {
        "format": FORMAT_VERSION,
        "seed": seed,
        "now": now.isoformat(),
        "customers": customers,
        "history_tickets": history_tickets,
        "catalog_version": catalog.version,
        "truth": asdict(truth),
    }
    (out_dir / "world.json").write_text(json.dumps(world, indent=2, sort_keys=True) + "\n")

    shown = [r for r in rows if r["offer_id"] is not None]
    organic = [o["bought"] for r in rows for o in r["organic"]]
    return SimulationSummary(
        out_dir=out_dir,
        seed=seed,
        now=now,
        catalog_version=catalog.version,
        customers=customers,
        identities=len(identities),
        history_rows=len(rows),
        offers_shown=len(shown),
        acceptance_rate=sum(r["accepted"] for r in shown) / len(shown) if shown else 0.0,
        organic_rate=sum(organic) / len(organic) if organic else 0.0,
        seconds=time.perf_counter() - started,
    )


def _history(
    rng: np.random.Generator,
    catalog: Catalog,
    truth: Truth,
    ids: Sequence[str],
    views: Sequence[dict[str, Any]],
    n: int,
    now: datetime,
) -> list[dict[str, Any]]:
    policy = catalog.policy.contact
    tags, custom = catalog.spec.ticket_tags, catalog.spec.ticket_fields
    # Customers who open more tickets resolve more of them in the window.
    weights = np.array([v["tickets_90d"] + 0.3 for v in views])
    who = rng.choice(len(views), size=n, p=weights / weights.sum())
    end = now.timestamp()
    times = np.sort(np.floor(end - rng.uniform(0, HISTORY_DAYS * _DAY, n)))
    book = _Rulebook(catalog)
    # Offers made to each customer so far; the contact policy and the contact features come
    # from service.policy, the same functions decide() uses.
    logs: dict[int, list[ContactEvent]] = {}
    customer_json: dict[int, str] = {}
    # One rule context per customer: the profile is fixed, so only ticket, contact and time
    # are rebound per decision (converting the profile costs more than the rules themselves).
    contexts: dict[int, Any] = {}
    organic_p: dict[int, list[float]] = {}
    rows = []
    for k in range(n):
        i, t = int(who[k]), float(times[k])
        at = datetime.fromtimestamp(t, UTC)
        view = views[i]
        ticket = _draw_ticket(rng, view, tags, custom)
        log = logs.setdefault(i, [])
        contact = contact_policy.contact_summary(log, at)
        actions: list[tuple[Offer, list[Variant]]] = []
        blocked = (
            contact_policy.consent_block(policy, view.get("marketing_consent"))
            or contact_policy.blackout_block(policy, at)
            or contact_policy.limit_block(policy, log, at)
        )
        if not blocked:
            if i in contexts:
                ctx = contexts[i]
                rules.bind(ctx, "ticket", ticket)
                rules.bind(ctx, "contact", contact)
                rules.bind(ctx, "now", rules.cel_now(at))
            else:
                ctx = contexts[i] = rules.new_context(
                    rules.decision_variables(view, ticket, contact, at)
                )
            actions = [
                (o, vs)
                for o, vs in book.actions(ctx, view["owned_products"])
                if contact_policy.offer_block(policy, log, o.id, at) is None
            ]
        offer: Offer | None = None
        variant: Variant | None = None
        accepted: bool | None = None
        if actions and rng.random() < SHOW_PROBABILITY:
            offer, variants = actions[int(rng.integers(len(actions)))]
            variant = variants[int(rng.integers(len(variants)))]
            propensity = SHOW_PROBABILITY / len(actions) / len(variants)
            accepted = bool(rng.random() < truth.p_accept(view, ticket, contact, offer, variant))
            outcome = "accepted" if accepted else "declined"
            log.append(ContactEvent(f"h{k}", offer.id, at, outcome, at))
        else:
            propensity = 1.0 - SHOW_PROBABILITY if actions else 1.0
        if i not in organic_p:
            organic_p[i] = [truth.p_buy_anyway(view, o) for o in catalog.offers]
            customer_json[i] = snapshot(view)
        draws = rng.random(len(catalog.offers))
        rows.append(
            {
                "decision_id": f"hist-{k + 1:07d}",
                "decided_at": at,
                "customer_id": ids[i],
                "ticket_id": f"ZD-{100_000 + k}",
                "catalog_version": catalog.version,
                "customer": customer_json[i],
                "ticket": snapshot(ticket),
                "contact": snapshot(contact),
                "eligible": [
                    {"offer_id": o.id, "variant_id": v.id} for o, vs in actions for v in vs
                ],
                "offer_id": offer.id if offer else None,
                "variant_id": variant.id if variant else None,
                "propensity": propensity,
                "accepted": accepted,
                "organic": [
                    {"offer_id": o.id, "product": o.product, "bought": bool(d < p)}
                    for o, p, d in zip(catalog.offers, organic_p[i], draws, strict=True)
                    if offer is None or o.id != offer.id
                ],
            }
        )
    return rows


# -- loading a world back ---------------------------------------------------------------------


@dataclass(frozen=True)
class World:
    """A simulated world read back from disk: profiles, identity map and truth."""

    seed: int
    now: datetime
    catalog_version: str
    truth: Truth
    #: customer id → profile (CUSTOMER_FIELDS; unknown values absent)
    profiles: Mapping[str, Mapping[str, Any]]
    #: (source, external id) → customer id
    identities: Mapping[tuple[str, str], str]

    def resolve(self, source: str, external_id: str) -> str | None:
        return self.identities.get((source, external_id))

    def view(self, customer_id: str) -> dict[str, Any]:
        """The customer as decide() sees them."""
        return customer_view(self.profiles[customer_id])

    def external_ids(self, customer_id: str) -> dict[str, str]:
        """Every helpdesk id of one customer, by source."""
        return {s: e for (s, e), c in self.identities.items() if c == customer_id}


def load_world(out_dir: Path) -> World:
    meta = json.loads((out_dir / "world.json").read_text())
    if meta.get("format") != FORMAT_VERSION:
        raise ValueError(
            f"{out_dir}/world.json: format {meta.get('format')}, expected {FORMAT_VERSION}"
        )
    profiles = {}
    for row in pq.read_table(out_dir / "customers.parquet").to_pylist():
        cid = row.pop("customer_id")
        profiles[cid] = {k: v for k, v in row.items() if v is not None}
    identities = {
        (r["source"], r["external_id"]): r["customer_id"]
        for r in pq.read_table(out_dir / "identities.parquet").to_pylist()
    }
    return World(
        seed=meta["seed"],
        now=datetime.fromisoformat(meta["now"]),
        catalog_version=meta["catalog_version"],
        truth=Truth(**meta["truth"]),
        profiles=profiles,
        identities=identities,
    )


def load_history(out_dir: Path) -> pa.Table:
    return pq.read_table(out_dir / "history.parquet")


# -- live tickets -----------------------------------------------------------------------------


def ticket_stream(
    world: World,
    catalog: Catalog,
    *,
    seed: int = 11,
    start: datetime | None = None,
    mean_gap_seconds: float = 30.0,
) -> Iterator[dict[str, Any]]:
    """Fresh resolved tickets, forever, deterministic per seed (take what you need with islice).

    Each is {"helpdesk", "external_customer_id", "ticket_id", "resolved_at", "ticket"}: mostly
    Zendesk; a customer with an Intercom or Salesforce id sometimes writes through that
    helpdesk, under that id. `ticket` has TICKET_FIELDS in decide()'s form.
    """
    if mean_gap_seconds <= 0:
        raise ValueError(f"mean_gap_seconds must be positive, got {mean_gap_seconds}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5EED]))
    ids = sorted(world.profiles)
    by_customer: dict[str, dict[str, str]] = {c: {} for c in ids}
    for (source, ext), cid in world.identities.items():
        by_customer[cid][source] = ext
    weights = np.array([world.profiles[c].get("tickets_90d", 0) + 0.3 for c in ids])
    weights /= weights.sum()
    t = start or world.now
    prefix = {"zendesk": "ZD-", "intercom": "IC-", "salesforce": "CASE-"}
    counter = 5_000_000  # above any history ticket number
    while True:
        cid = ids[int(rng.choice(len(ids), p=weights))]
        known = by_customer[cid]
        helpdesk = "zendesk"
        if "salesforce" in known and rng.random() < 0.25:
            helpdesk = "salesforce"
        elif "intercom" in known and rng.random() < 0.35:
            helpdesk = "intercom"
        t = t + timedelta(seconds=float(rng.exponential(mean_gap_seconds)))
        counter += 1
        yield {
            "helpdesk": helpdesk,
            "external_customer_id": known[helpdesk],
            "ticket_id": f"{prefix[helpdesk]}{counter}",
            "resolved_at": t,
            "ticket": _draw_ticket(
                rng, world.view(cid), catalog.spec.ticket_tags, catalog.spec.ticket_fields
            ),
        }


# -- truth on logged decisions ------------------------------------------------------------------


def true_probabilities(truth: Truth, logged: Any) -> tuple[np.ndarray, np.ndarray]:
    """(p_accept, p_buy_anyway) of every candidate row of a service.logged.Logged."""
    catalog: Catalog = logged.catalog
    offers = {o.id: o for o in catalog.offers}
    accept = np.empty(len(logged.row_decision))
    anyway = np.empty(len(logged.row_decision))
    for i, (d, offer_id, variant_id) in enumerate(
        zip(logged.row_decision, logged.offer_id, logged.variant_id, strict=True)
    ):
        c = logged.contexts[d]
        offer = offers[offer_id]
        variant = next(v for v in offer.variants if v.id == variant_id)
        accept[i] = truth.p_accept(c.customer, c.ticket, c.contact, offer, variant)
        anyway[i] = truth.p_buy_anyway(c.customer, offer)
    return accept, anyway


def true_value(policy: Any, logged: Any, accept_p: np.ndarray) -> float:
    """The true accepted margin per decision of a policy (service.logged.PolicyScores) on
    these decisions' contexts: Σ_a π(a|x) · p_accept(x, a) · margin(a), averaged."""
    return float((policy.p * accept_p * logged.margin).sum() / len(logged))
