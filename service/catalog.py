"""Catalog: the offers, variants, rules and contact policy a business sells with.

Loaded from YAML, validated by pydantic, compiled (CEL) and versioned by the hash of the file's
bytes, which are kept in the registry so any logged decision can be replayed with the exact
catalog it used. A catalog that does not load never reaches a running server.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from service.errors import CatalogError
from service.features import OfferTerms
from service.rules import Rule, compile_rule, offer_variables, variant_variables

_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
#: ISO 4217 minor-unit exponents that differ from 2
_EXPONENT = {
    "JPY": 0,
    "KRW": 0,
    "ISK": 0,
    "CLP": 0,
    "VND": 0,
    "BHD": 3,
    "KWD": 3,
    "OMR": 3,
    "JOD": 3,
    "TND": 3,
}


def _check_id(v: str) -> str:
    if not _ID.match(v):
        raise ValueError("ids are 1-64 chars of a-z, 0-9, '_' or '-', starting with a letter/digit")
    return v


Id = Annotated[str, AfterValidator(_check_id)]
Amount = Annotated[Decimal, Field(ge=0, max_digits=14, decimal_places=4)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RuleSpec(_Strict):
    id: Id
    description: str = Field(min_length=1)
    expression: str = Field(min_length=1)


class TriggerSpec(RuleSpec):
    #: higher fires first when several triggers of one offer match
    priority: int = 0


class VariantSpec(_Strict):
    id: Id
    name: str = Field(min_length=1)
    price: Amount
    #: our gross margin if the customer accepts at this price (currency major units)
    margin: Amount
    eligibility: list[RuleSpec] = []


class OfferSpec(_Strict):
    id: Id
    name: str = Field(min_length=1)
    kind: Literal["add_on", "upgrade", "cross_sell"]
    #: the product this offer sells; matches customer.owned_products and conversions
    product: Id
    #: business weight on value (Pega's "lever"): 1.0 neutral, >1 push, <1 hold back
    lever: float = Field(default=1.0, gt=0, le=10)
    #: a pack that can be bought again (storage, API quota); otherwise owning the product
    #: excludes the offer
    repeatable: bool = False
    talking_points: list[str] = Field(min_length=1, max_length=5)
    triggers: list[TriggerSpec] = Field(min_length=1)
    eligibility: list[RuleSpec] = []
    variants: list[VariantSpec] = Field(min_length=1, max_length=10)

    @model_validator(mode="after")
    def _one_full_price(self) -> OfferSpec:
        ids = [v.id for v in self.variants]
        if len(set(ids)) != len(ids):
            raise ValueError(f"variant ids repeat: {sorted({i for i in ids if ids.count(i) > 1})}")
        top = max(v.price for v in self.variants)
        if sum(1 for v in self.variants if v.price == top) != 1:
            raise ValueError("exactly one variant must carry the full (highest) price")
        return self

    @property
    def full_price_variant(self) -> VariantSpec:
        return max(self.variants, key=lambda v: v.price)


class BlackoutSpec(_Strict):
    id: Id
    description: str = Field(min_length=1)
    start: AwareDatetime
    end: AwareDatetime

    @model_validator(mode="after")
    def _ordered(self) -> BlackoutSpec:
        if self.end <= self.start:
            raise ValueError("end must be after start")
        return self


class AfterErasureSpec(_Strict):
    #: days after the (UTC) day of an erasure during which the same customer id gets no offer
    #: (its history went with the old pseudonym); 0: treated as a new customer at once;
    #: unset: the longest of window_days, decline_cooldown_days and offer_cooldown_days, so
    #: an erasure can never reset a cap or cooldown
    suppress_days: int | None = Field(default=None, ge=0, le=366)


class ContactPolicySpec(_Strict):
    #: offers need the customer's marketing consent (recommended: true)
    require_consent: bool = True
    #: at most max_offers offers per customer within window_days
    max_offers: int = Field(default=2, ge=0, le=100)
    window_days: int = Field(default=30, ge=1, le=366)
    #: no offer at all for this many days after the customer declined one
    decline_cooldown_days: int = Field(default=14, ge=0, le=366)
    #: the same offer is not made again within this many days
    offer_cooldown_days: int = Field(default=60, ge=0, le=366)
    blackouts: list[BlackoutSpec] = []
    #: what a customer id gets after `offerdesk audit erase` (see docs/compliance.md)
    after_erasure: AfterErasureSpec = AfterErasureSpec()

    @property
    def erasure_suppress_days(self) -> int:
        """The pause after an erasure in days: as configured, else the longest window."""
        configured = self.after_erasure.suppress_days
        if configured is not None:
            return configured
        return max(self.window_days, self.decline_cooldown_days, self.offer_cooldown_days)


class PolicySpec(_Strict):
    #: minimum expected incremental margin (currency major units) for an offer to be made
    value_floor: Amount = Decimal("0")
    #: share of customers held out (stable per customer); raising it only moves treated ones
    holdout_share: float = Field(default=0.05, ge=0, le=0.5)
    #: share of decisions that explore uniformly among eligible actions
    exploration_rate: float = Field(default=0.05, ge=0, le=0.5)
    contact: ContactPolicySpec = ContactPolicySpec()


class CatalogSpec(_Strict):
    catalog_id: Id
    currency: str
    description: str = ""
    #: helpdesk tags rules and models may read; any other tag is dropped on arrival
    ticket_tags: list[str] = []
    #: helpdesk custom fields rules may read (as strings); others are dropped on arrival
    ticket_fields: list[Id] = []
    policy: PolicySpec = PolicySpec()
    guardrails: list[RuleSpec] = []
    offers: list[OfferSpec] = Field(min_length=1, max_length=2000)

    @field_validator("currency")
    @classmethod
    def _iso4217(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Z]{3}", v):
            raise ValueError("must be an ISO 4217 code such as USD")
        return v

    @model_validator(mode="after")
    def _unique_ids(self) -> CatalogSpec:
        offer_ids = [o.id for o in self.offers]
        dup = sorted({i for i in offer_ids if offer_ids.count(i) > 1})
        if dup:
            raise ValueError(f"offer ids repeat: {dup}")
        rule_ids = [r.id for r in self.guardrails]
        for o in self.offers:
            rule_ids += [r.id for r in (*o.triggers, *o.eligibility)]
            rule_ids += [r.id for v in o.variants for r in v.eligibility]
        dup = sorted({i for i in rule_ids if rule_ids.count(i) > 1})
        if dup:
            raise ValueError(f"rule ids must be unique across the catalog; repeated: {dup}")
        return self


# -- compiled form, used by the decision core --------------------------------------------------


@dataclass(frozen=True)
class Variant:
    id: str
    name: str
    price_minor: int
    list_price_minor: int
    discount_bps: int
    margin_minor: int
    eligibility: tuple[Rule, ...]

    @property
    def discount_pct(self) -> float:
        return self.discount_bps / 100.0


@dataclass(frozen=True)
class Trigger:
    rule: Rule
    priority: int


@dataclass(frozen=True)
class Offer:
    id: str
    name: str
    kind: str
    product: str
    lever: float
    repeatable: bool
    talking_points: tuple[str, ...]
    triggers: tuple[Trigger, ...]
    eligibility: tuple[Rule, ...]
    variants: tuple[Variant, ...]

    @property
    def full_price(self) -> Variant:
        return max(self.variants, key=lambda v: v.price_minor)


@dataclass(frozen=True)
class Catalog:
    """A compiled, versioned catalog: what decide() reads."""

    version: str
    spec: CatalogSpec
    source: bytes
    guardrails: tuple[Rule, ...]
    offers: tuple[Offer, ...]

    @property
    def currency(self) -> str:
        return self.spec.currency

    @property
    def policy(self) -> PolicySpec:
        return self.spec.policy

    @property
    def value_floor_minor(self) -> float:
        return float(to_minor(self.spec.policy.value_floor, self.currency))

    @property
    def exponent(self) -> int:
        return currency_exponent(self.currency)

    def terms(self, offer: Offer, variant: Variant) -> OfferTerms:
        """What the models know about a candidate: the one way serving and training build it."""
        return OfferTerms(
            offer.id,
            offer.kind,
            offer.product,
            variant.discount_pct,
            variant.price_minor / 10.0**self.exponent,
        )

    def offer_variables(self, offer: Offer) -> dict[str, Any]:
        """The `offer` variable rules see for this offer."""
        return offer_variables(offer.id, offer.kind, offer.product, offer.lever)

    def variant_variables(self, variant: Variant) -> dict[str, Any]:
        """The `variant` variable rules see: amounts in major units, as doubles."""
        scale = 10.0**self.exponent
        return variant_variables(
            variant.id,
            variant.price_minor / scale,
            variant.list_price_minor / scale,
            variant.discount_pct,
            variant.margin_minor / scale,
        )

    def offer(self, offer_id: str) -> Offer | None:
        return next((o for o in self.offers if o.id == offer_id), None)

    def rules(self) -> dict[str, Rule]:
        """Every rule by id (guardrails, triggers, offer and variant eligibility)."""
        out = {r.id: r for r in self.guardrails}
        for o in self.offers:
            out.update({t.rule.id: t.rule for t in o.triggers})
            out.update({r.id: r for r in o.eligibility})
            out.update({r.id: r for v in o.variants for r in v.eligibility})
        return out


def format_money(minor: float, currency: str) -> str:
    """An amount for people: `USD 1,234.50`."""
    exp = currency_exponent(currency)
    return f"{currency} {minor / 10.0**exp:,.{exp}f}"


def currency_exponent(currency: str) -> int:
    return _EXPONENT.get(currency, 2)


def to_minor(amount: Decimal, currency: str) -> int:
    scaled = amount.scaleb(currency_exponent(currency))
    if scaled != scaled.to_integral_value():
        raise ValueError(f"{amount} has more decimals than {currency} allows")
    return int(scaled)


def catalog_version(source: bytes) -> str:
    """Content address of a catalog: the hash of its file's bytes."""
    return "cat-" + hashlib.sha256(source).hexdigest()[:16]


def parse_catalog(source: bytes, name: str = "<catalog>") -> Catalog:
    """Validate and compile; raises CatalogError listing every problem (file, offer, rule)."""
    try:
        raw = yaml.safe_load(source)
    except yaml.YAMLError as e:
        raise CatalogError([f"{name}: not valid YAML: {e}"]) from None
    if not isinstance(raw, dict):
        raise CatalogError([f"{name}: a catalog is a YAML mapping"])
    try:
        spec = CatalogSpec.model_validate(raw)
    except ValidationError as e:
        raise CatalogError(
            [f"{name}: {_where(raw, err['loc'])}: {err['msg']}" for err in e.errors()]
        ) from None
    problems: list[str] = []

    def comp(r: RuleSpec, where: str) -> Rule:
        try:
            return compile_rule(r.id, r.expression, r.description)
        except ValueError as e:
            problems.append(f"{name}: {where}rule {r.id}: CEL: {e}")
            return Rule(r.id, r.expression, r.description, None)

    guardrails = tuple(comp(r, "guardrails, ") for r in spec.guardrails)
    offers = []
    for o in spec.offers:
        where = f"offer {o.id}, "
        full = o.full_price_variant.price
        variants = []
        for v in o.variants:
            try:
                price, list_price, margin = (
                    to_minor(x, spec.currency) for x in (v.price, full, v.margin)
                )
            except ValueError as e:
                problems.append(f"{name}: {where}variant {v.id}: {e}")
                continue
            discount_bps = (
                0 if list_price == 0 else round((list_price - price) * 10000 / list_price)
            )
            variants.append(
                Variant(
                    v.id,
                    v.name,
                    price,
                    list_price,
                    discount_bps,
                    margin,
                    tuple(comp(r, f"{where}variant {v.id}, ") for r in v.eligibility),
                )
            )
        offers.append(
            Offer(
                o.id,
                o.name,
                o.kind,
                o.product,
                o.lever,
                o.repeatable,
                tuple(o.talking_points),
                tuple(Trigger(comp(t, where), t.priority) for t in o.triggers),
                tuple(comp(r, where) for r in o.eligibility),
                tuple(variants),
            )
        )
    # Rules run at three levels; a rule must not read a variable its level does not set yet
    # (the context is reused, so it would silently see another candidate's value).
    levels = [(r, "guardrails, ", {"offer", "variant"}) for r in guardrails]
    for compiled in offers:
        where = f"offer {compiled.id}, "
        levels += [(t.rule, where, {"variant"}) for t in compiled.triggers]
        levels += [(r, where, {"variant"}) for r in compiled.eligibility]
    for rule, where, unset in levels:
        read = set(rule.program.variables()) if rule.program is not None else set()
        if read & unset:
            problems.append(
                f"{name}: {where}rule {rule.id}: reads {', '.join(sorted(read & unset))}, which "
                "is not known at this level (guardrails see customer, ticket, contact and now; "
                "offer triggers and eligibility add offer; only variant eligibility sees variant)"
            )
    try:
        to_minor(spec.policy.value_floor, spec.currency)
    except ValueError as e:
        problems.append(f"{name}: policy.value_floor: {e}")
    if problems:
        raise CatalogError(problems)
    return Catalog(catalog_version(source), spec, source, guardrails, tuple(offers))


def load_catalog(path: Path) -> Catalog:
    try:
        source = path.read_bytes()
    except OSError as e:
        raise CatalogError([f"{path}: cannot read: {e.strerror}"]) from None
    return parse_catalog(source, str(path))


def _where(raw: Any, loc: tuple[int | str, ...]) -> str:
    """A pydantic error location in words with ids: `offer seats-10, variant intro, price`."""
    parts: list[str] = []
    node = raw
    for key in loc:
        try:
            node = node[key]
        except (KeyError, IndexError, TypeError):
            node = None
        if isinstance(key, int) and isinstance(node, dict) and "id" in node:
            parts[-1] = f"{parts[-1].rstrip('s')} {node['id']}"
        elif isinstance(key, int):
            parts[-1] = f"{parts[-1]}[{key}]"
        else:
            parts.append(str(key))
    return ", ".join(parts) or "catalog"


def sample_time() -> datetime:
    return datetime.fromisoformat("2026-06-15T12:00:00+00:00")


def check_catalog(catalog: Catalog) -> list[str]:
    """Run every rule on typed sample contexts; the binding has no type checker, so this is it.

    Samples: a complete customer/ticket, and a sparse one where every optional value and every
    custom field is absent (rules must guard those with has()).
    Returns problems as `offer X, rule Y: sample: error`.
    """
    from service import rules
    from service.features import OPTIONAL_FIELDS

    full_customer: dict[str, Any] = {
        "plan": "team",
        "seats": 20,
        "seats_used": 18,
        "storage_quota_gb": 100.0,
        "storage_used_gb": 85.5,
        "api_calls_30d": 9000,
        "api_quota_30d": 10000,
        "tenure_months": 14,
        "monthly_spend": 450.0,
        "billing_cycle": "monthly",
        "support_tier": "standard",
        "owned_products": ["storage"],
        "open_billing_dispute": False,
        "payment_failures_90d": 0,
        "active_users_trend": 0.12,
        "tickets_90d": 3,
        "churn_risk": 0.2,
        "region": "emea",
        "industry": "software",
        "company_size": "11-50",
        "marketing_consent": True,
        "days_since_last_purchase": 40,
        "seat_utilization": 0.9,
        "storage_utilization": 0.855,
        "api_utilization": 0.9,
    }
    full_ticket: dict[str, Any] = {
        "category": "how_to",
        "product_area": "storage",
        "channel": "chat",
        "csat": 5,
        "sentiment": 0.4,
        "reopen_count": 0,
        "tags": list(catalog.spec.ticket_tags[:1]),
        "fields": {f: "x" for f in catalog.spec.ticket_fields},
    }
    full_contact: dict[str, Any] = {
        "offers_30d": 1,
        "declines_90d": 0,
        "days_since_last_offer": 12.5,
    }
    samples = {
        "complete sample": (full_customer, full_ticket, full_contact),
        "sparse sample (optional values absent)": tuple(
            {
                k: ({} if k == "fields" else v)
                for k, v in d.items()
                if k not in OPTIONAL_FIELDS[scope]
            }
            for scope, d in (
                ("customer", full_customer),
                ("ticket", full_ticket),
                ("contact", full_contact),
            )
        ),
    }
    problems: list[str] = []
    now = sample_time()
    for label, (customer, ticket, contact) in samples.items():
        ctx = rules.new_context(rules.decision_variables(customer, ticket, contact, now))
        for rule in catalog.guardrails:
            v = rules.evaluate(rule, ctx)
            if v.error:
                problems.append(f"guardrails, rule {rule.id}: {label}: {v.error}")
        for o in catalog.offers:
            rules.bind(ctx, "offer", catalog.offer_variables(o))
            for v_ in o.variants:
                rules.bind(ctx, "variant", catalog.variant_variables(v_))
                for r in (*(t.rule for t in o.triggers), *o.eligibility, *v_.eligibility):
                    v = rules.evaluate(r, ctx)
                    msg = f"offer {o.id}, rule {r.id}: {label}: {v.error}"
                    if v.error and msg not in problems:
                        problems.append(msg)
    return problems
