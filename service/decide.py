"""decide(): the whole decision for one resolved ticket, as a pure function.

Pure over (inputs, models, catalog): the inputs carry the customer's profile snapshot, the ticket,
the contact history, the day of an erasure still pausing offers, the decision time, the seed and
the holdout bucket — everything any rule or model reads — and are logged verbatim, so re-running
decide() on a logged record gives the same offer, scores and reasons. Never reads a clock, a
file, a database or the network.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from audit.records import decode_time, encode_time
from explain.contributions import Contributions
from explain.reasons import EXPLORATION_NOTE, Reason, ReasonSpec, reasons
from explain.why_not import Exclusion, WhyNot, cap, why_not
from service import policy, rules
from service.arbitration import NO_OFFER, Arbitration, Scored, action_key, arbitrate
from service.arbitration import incremental_value as _value
from service.catalog import Catalog, Offer, Variant, format_money
from service.features import (
    ORGANIC_FEATURES,
    RANKER_FEATURES,
    build_matrix,
    feature_values,
)
from service.policy import ContactEvent
from service.ranker import Models

REASON_SPECS = tuple(
    ReasonSpec(f.name, f.agent_visible, f.template) for f in RANKER_FEATURES.features
)

#: what the agent reads when there is no offer; holdout and exploration are deliberately neutral
AGENT_MESSAGES = {
    "HOLDOUT": "No offer this time.",
    "EXPLORATION": "No offer this time.",
    "BELOW_VALUE_FLOOR": "No offer this time: nothing would add enough for this customer now.",
    "NOTHING_ELIGIBLE": "No offer this time: nothing in the catalog fits this customer and ticket.",
    "UNKNOWN_CUSTOMER": "No offer: this customer is not in our records yet.",
    "OPTED_OUT": "No offer: the customer has not agreed to receive offers.",
    "CONTACT_LIMIT": "No offer: the customer has had enough offers recently.",
}
#: CONTACT_LIMIT during the pause after an erasure: true, and says nothing about the erasure
PAUSED_MESSAGE = "No offer: offers to this customer are paused for now."
#: Candidates logged in full (``actions``); past this, the rest by reference (``actions_omitted``,
#: see logged_actions), so a record stays bounded however many candidates a catalog yields.
#: 64 keeps every candidate of a 20-offer × 3-variant catalog, as records always have.
ACTIONS_KEPT = 64


@dataclass(frozen=True)
class DecisionInputs:
    """Everything decide() reads besides the model and catalog; logged with every decision."""

    now: datetime
    seed: int
    holdout_bucket: float
    customer: Mapping[str, Any] | None  # customer_view() of the profile; None: unknown customer
    ticket: Mapping[str, Any]
    history: tuple[ContactEvent, ...]
    #: UTC day of this customer id's last erasure while it may still pause offers
    #: (policy.relevant_erasure), else None
    erased_on: date | None = None

    def to_record(self) -> dict[str, Any]:
        record = {
            "now": encode_time(self.now),
            "seed": self.seed,
            "holdout_bucket": self.holdout_bucket,
            "customer": None if self.customer is None else dict(self.customer),
            "ticket": dict(self.ticket),
            "history": [e.to_record() for e in self.history],
        }
        # Only when set: most records stay as they were, and an older record reads back as-is.
        if self.erased_on is not None:
            record["erased_on"] = self.erased_on.isoformat()
        return record

    @classmethod
    def from_record(cls, r: Mapping[str, Any]) -> DecisionInputs:
        erased_on = r.get("erased_on")
        return cls(
            decode_time(r["now"]),
            r["seed"],
            r["holdout_bucket"],
            r["customer"],
            r["ticket"],
            tuple(ContactEvent.from_record(e) for e in r["history"]),
            None if erased_on is None else date.fromisoformat(erased_on),
        )


@dataclass(frozen=True)
class Card:
    offer: Offer
    variant: Variant
    firing_rule: rules.Rule
    p_accept: float
    value: float  # minor units
    explored: bool
    reasons: tuple[Reason, ...]
    contributions: Contributions


@dataclass(frozen=True)
class Decision:
    """What decide() concluded, with everything needed to explain and audit it."""

    group: str  # "treated" | "holdout"
    kind: str  # "offer" | "no_offer"
    no_offer_reason: str | None  # NoOfferReason name
    agent_message: str
    card: Card | None
    arbitration: Arbitration | None
    scored: tuple[Scored, ...]
    why_not: tuple[WhyNot, ...]
    rule_errors: tuple[tuple[str, str], ...]
    contact: Mapping[str, Any]

    def to_record(self, catalog: Catalog) -> dict[str, Any]:
        """The decision's part of the audit record (the server adds ids and versions)."""
        arb = self.arbitration
        probs = dict(arb.probabilities) if arb else {NO_OFFER: 1.0}
        # Bounded however large the catalog: the entries worth reading, the rest counted.
        why, omitted = cap(self.why_not)
        kept, by_reference = _bounded_actions(self.scored, arb, catalog)
        record = {
            "group": self.group,
            "kind": self.kind,
            "no_offer_reason": self.no_offer_reason,
            "agent_message": self.agent_message,
            "greedy": arb.greedy if arb else NO_OFFER,
            "policy_action": arb.chosen if arb else NO_OFFER,
            "explored": bool(arb and arb.explored),
            "propensity": arb.propensity if arb else 1.0,
            "actions": [_action(s, s.key, probs) for s in kept] + [_action(None, NO_OFFER, probs)],
            "contact": dict(self.contact),
            "card": None if self.card is None else _card_record(self.card, catalog),
            "why_not": [
                {
                    "offer_id": w.offer_id,
                    "code": w.code,
                    "rule_id": w.rule_id,
                    "detail": w.detail,
                    "value": w.value,
                }
                for w in why
            ],
            "rule_errors": [{"rule_id": r, "error": e} for r, e in self.rule_errors],
        }
        if omitted:  # only then: records of smaller catalogs stay as they were
            record["why_not_omitted"] = dict(omitted)
        if by_reference is not None:
            record["actions_omitted"] = by_reference
        return record


def _action(s: Scored | None, key: str, probs: Mapping[str, float]) -> dict[str, Any]:
    return {
        "action": key,
        "p_accept": None if s is None else s.p_accept,
        "p_anyway": None if s is None else s.p_anyway,
        "value": None if s is None else s.value,
        "probability": probs[key],
    }


def _bounded_actions(
    scored: Sequence[Scored], arb: Arbitration | None, catalog: Catalog
) -> tuple[Sequence[Scored], dict[str, Any] | None]:
    """The candidates logged in full, and the rest by reference (None when there is no rest).

    Kept: the greedy and the chosen action, then the highest values, up to ACTIONS_KEPT with
    NO_OFFER, in catalog order. The rest are named by two bitmaps over the catalog's offer ×
    variant order (the record's catalog version fixes it): which were candidates, and which of
    them were worth the floor. Under the policy (service.arbitration) each of the latter had
    probability ``share`` and the others 0; their scores come back by replay.
    """
    if len(scored) < ACTIONS_KEPT:
        return scored, None
    assert arb is not None  # candidates are only scored on the way to arbitration
    first = {arb.greedy, arb.chosen}
    ranked = sorted(
        range(len(scored)), key=lambda i: (scored[i].key not in first, -scored[i].value)
    )
    keep = set(ranked[: ACTIONS_KEPT - 1])
    probs = dict(arb.probabilities)
    rest = [s for i, s in enumerate(scored) if i not in keep]
    worth = [s for s in rest if probs[s.key] > 0.0]
    index = {key: i for i, key in enumerate(_catalog_actions(catalog))}
    return [s for i, s in enumerate(scored) if i in keep], {
        "count": len(rest),
        "candidates": _bitmap(index, rest),
        "above_floor": _bitmap(index, worth),
        "share": probs[worth[0].key] if worth else 0.0,
    }


def _catalog_actions(catalog: Catalog) -> list[str]:
    return [action_key(o.id, v.id) for o in catalog.offers for v in o.variants]


def _bitmap(index: Mapping[str, int], chosen: Sequence[Scored]) -> str:
    bits = bytearray((len(index) + 7) // 8)
    for s in chosen:
        i = index[s.key]
        bits[i // 8] |= 0x80 >> (i % 8)
    return base64.b64encode(bytes(bits)).decode("ascii")


def logged_actions(body: Mapping[str, Any], catalog: Catalog) -> list[dict[str, Any]]:
    """Every candidate of a logged decision with its probability, those logged by reference
    included (their scores are None: replay recomputes them). ``catalog`` must be the record's
    catalog version; raises ValueError otherwise."""
    actions = list(body["actions"])
    omitted = body.get("actions_omitted")
    if omitted is None:
        return actions
    if body["catalog_version"] != catalog.version:
        raise ValueError(
            f"decision {body['decision_id']} names candidates by catalog "
            f"{body['catalog_version']}, not {catalog.version}"
        )
    logged = {a["action"]: a for a in actions}
    candidates = base64.b64decode(omitted["candidates"])
    worth = base64.b64decode(omitted["above_floor"])
    out = []
    for i, key in enumerate(_catalog_actions(catalog)):  # the order decide() scores them in
        if key in logged:
            out.append(logged[key])
        elif candidates[i // 8] & (0x80 >> (i % 8)):
            above = worth[i // 8] & (0x80 >> (i % 8))
            out.append(_action(None, key, {key: omitted["share"] if above else 0.0}))
    return [*out, logged[NO_OFFER]]


def _card_record(card: Card, catalog: Catalog) -> dict[str, Any]:
    c = card.contributions
    return {
        "offer_id": card.offer.id,
        "offer_name": card.offer.name,
        "offer_kind": card.offer.kind,
        "product": card.offer.product,
        "variant_id": card.variant.id,
        "variant_name": card.variant.name,
        "price_minor": card.variant.price_minor,
        "list_price_minor": card.variant.list_price_minor,
        "discount_bps": card.variant.discount_bps,
        "currency": catalog.currency,
        "talking_points": list(card.offer.talking_points),
        "firing_rule": {
            "id": card.firing_rule.id,
            "expression": card.firing_rule.expression,
            "description": card.firing_rule.description,
        },
        "p_accept": card.p_accept,
        "expected_value_minor": card.value,
        "explored": card.explored,
        "reasons": [
            {"feature": r.feature, "text": r.text, "value": r.value, "contribution": r.contribution}
            for r in card.reasons
        ],
        "shap": {
            "expected": c.expected,
            "raw": c.raw,
            "values": dict(zip(RANKER_FEATURES.names, c.values, strict=True)),
        },
    }


def _no_offer(
    group: str,
    reason: str,
    message: str | None,
    contact: Mapping[str, Any],
    why: tuple[WhyNot, ...] = (),
    errors: tuple[tuple[str, str], ...] = (),
    scored: tuple[Scored, ...] = (),
    arb: Arbitration | None = None,
) -> Decision:
    return Decision(
        group,
        "no_offer",
        reason,
        message or AGENT_MESSAGES[reason],
        None,
        arb,
        scored,
        why,
        errors,
        contact,
    )


def decide(inputs: DecisionInputs, models: Models, catalog: Catalog) -> Decision:
    """Pick one offer or none for this ticket. See docs/decisions.md for the order of checks."""
    spec = catalog.policy
    now = inputs.now
    history = inputs.history
    contact = policy.contact_summary(history, now)
    group = "holdout" if inputs.holdout_bucket < spec.holdout_share else "treated"
    offer_ids = [o.id for o in catalog.offers]

    def everyone(code: str, rule_id: str, detail: str) -> tuple[WhyNot, ...]:
        return tuple(WhyNot(o, code, rule_id, detail) for o in offer_ids)

    # 1. Who is this, and may we contact them at all?
    customer = inputs.customer
    if customer is None:
        return _no_offer(
            group,
            "UNKNOWN_CUSTOMER",
            None,
            contact,
            everyone("RULE_FAILED", "customer.known", "Customer not found."),
        )
    block = policy.consent_block(spec.contact, customer.get("marketing_consent"))
    block = block or policy.blackout_block(spec.contact, now)
    if block:
        why = everyone("CONTACT_POLICY", block.rule_id, block.detail)
        msg = None if block.code == "OPTED_OUT" else f"No offer: {block.detail}"
        return _no_offer(group, block.code, msg, contact, why)

    # 2. Guardrails (CEL), in catalog order; an erroring guardrail blocks (fails closed).
    context = rules.new_context(rules.decision_variables(customer, inputs.ticket, contact, now))
    errors: list[tuple[str, str]] = []
    for rule in catalog.guardrails:
        verdict = rules.evaluate(rule, context)
        if not verdict.ok:
            code = "RULE_ERROR" if verdict.error else "RULE_FAILED"
            if verdict.error:
                errors.append((rule.id, verdict.error))
            return _no_offer(
                group,
                "GUARDRAIL",
                f"No offer: {rule.description}",
                contact,
                everyone(code, rule.id, rule.description),
                tuple(errors),
            )

    # 3. Caps on the customer as a whole; after an erasure, a pause first (their history,
    #    and so the caps it would hit, went with the erased pseudonym).
    block = policy.erasure_block(spec.contact, inputs.erased_on, now)
    if block:
        return _no_offer(
            group,
            block.code,
            PAUSED_MESSAGE,
            contact,
            everyone("CONTACT_POLICY", block.rule_id, block.detail),
        )
    block = policy.limit_block(spec.contact, history, now)
    if block:
        return _no_offer(
            group,
            block.code,
            None,
            contact,
            everyone("CONTACT_POLICY", block.rule_id, block.detail),
        )

    # 4. Per offer: owned, relevant (trigger), eligible, not in cooldown; then its variants.
    owned = set(customer.get("owned_products", ()))
    exclusions: dict[str, Exclusion] = {}
    firing: dict[str, rules.Rule] = {}
    candidates: list[tuple[Offer, Variant]] = []

    def check(rule: rules.Rule) -> Exclusion | None:
        verdict = rules.evaluate(rule, context)
        if verdict.error:
            errors.append((rule.id, verdict.error))
            return Exclusion(
                "RULE_ERROR", rule.id, f"{rule.description} (rule could not be evaluated)"
            )
        return None if verdict.ok else Exclusion("RULE_FAILED", rule.id, rule.description)

    for offer in catalog.offers:
        if offer.product in owned and not offer.repeatable:
            exclusions[offer.id] = Exclusion(
                "ALREADY_OWNED", "customer.owned_products", f"Already has {offer.product}."
            )
            continue
        rules.bind(
            context,
            "offer",
            catalog.offer_variables(offer),
        )
        fired = _firing_trigger(offer, context, errors)
        if fired is None:
            exclusions[offer.id] = Exclusion(
                "NOT_TRIGGERED", "", "Nothing about this customer or ticket calls for it."
            )
            continue
        excluded = next((e for e in map(check, offer.eligibility) if e), None)
        cooldown = policy.offer_block(spec.contact, history, offer.id, now)
        if excluded is None and cooldown:
            excluded = Exclusion(cooldown.code, cooldown.rule_id, cooldown.detail)
        if excluded:
            exclusions[offer.id] = excluded
            continue
        first_variant_exclusion = None
        eligible_variants = 0
        for variant in offer.variants:
            rules.bind(context, "variant", catalog.variant_variables(variant))
            excluded = next((e for e in map(check, variant.eligibility) if e), None)
            if excluded:
                first_variant_exclusion = first_variant_exclusion or excluded
                continue
            candidates.append((offer, variant))
            eligible_variants += 1
        if eligible_variants:
            firing[offer.id] = fired
        else:
            assert first_variant_exclusion is not None
            exclusions[offer.id] = first_variant_exclusion
    rule_errors = tuple(errors)

    if not candidates:
        why = why_not(offer_ids, exclusions, {}, None, 0.0, _money(catalog))
        return _no_offer(group, "NOTHING_ELIGIBLE", None, contact, why, rule_errors)

    # 5. Score every candidate in one batch per model; value is incremental margin.
    terms = [catalog.terms(o, v) for o, v in candidates]
    rows = build_matrix(RANKER_FEATURES, customer, inputs.ticket, contact, terms)
    p_accept = models.p_accept(rows)
    offers_scored = list(dict.fromkeys(o for o, _ in candidates))
    organic_rows = build_matrix(
        ORGANIC_FEATURES,
        customer,
        inputs.ticket,
        contact,
        [catalog.terms(o, o.full_price) for o in offers_scored],
    )
    p_anyway = dict(
        zip((o.id for o in offers_scored), models.p_anyway(organic_rows).tolist(), strict=True)
    )
    scored = tuple(
        Scored(
            o.id,
            v.id,
            float(p),
            p_anyway[o.id],
            _value(float(p), v.margin_minor, p_anyway[o.id], o.full_price.margin_minor, o.lever),
        )
        for (o, v), p in zip(candidates, p_accept.tolist(), strict=True)
    )

    # 6. Arbitration: one action (or none), exploration among eligible actions only.
    floor = catalog.value_floor_minor
    arb = arbitrate(scored, floor=floor, epsilon=spec.exploration_rate, seed=inputs.seed)
    best: dict[str, float] = {}
    for s in scored:
        best[s.offer_id] = max(best.get(s.offer_id, s.value), s.value)
    picked = None if arb.chosen == NO_OFFER else arb.chosen.split("/", 1)[0]
    picked_value = next((x.value for x in scored if x.key == arb.chosen), None)
    why = why_not(
        offer_ids,
        exclusions,
        best,
        picked,
        floor,
        _money(catalog),
        picked_value=picked_value,
        explored=arb.explored,
    )

    if arb.chosen == NO_OFFER:
        reason = "EXPLORATION" if arb.explored else "BELOW_VALUE_FLOOR"
        if group == "holdout":
            reason = "HOLDOUT"
        return _no_offer(group, reason, None, contact, why, rule_errors, scored, arb)
    if group == "holdout":
        # The would-be offer is logged (arbitration, scores); the customer gets nothing.
        return _no_offer(group, "HOLDOUT", None, contact, why, rule_errors, scored, arb)

    # 7. Explain the chosen candidate: exact SHAP of its raw score, reasons from templates.
    index = next(i for i, s in enumerate(scored) if s.key == arb.chosen)
    offer, variant = candidates[index]
    contrib = models.explain(rows[index])
    raw_values = feature_values(RANKER_FEATURES, customer, inputs.ticket, contact, terms[index])
    said = () if arb.explored else reasons(contrib, REASON_SPECS, raw_values)
    card = Card(
        offer,
        variant,
        firing[offer.id],
        scored[index].p_accept,
        scored[index].value,
        arb.explored,
        said,
        contrib,
    )
    message = EXPLORATION_NOTE if arb.explored else ""
    return Decision(group, "offer", None, message, card, arb, scored, why, rule_errors, contact)


def _firing_trigger(offer: Offer, context: Any, errors: list[tuple[str, str]]) -> rules.Rule | None:
    """The highest-priority trigger that matched (catalog order breaks ties)."""
    fired: tuple[int, rules.Rule] | None = None
    for trigger in offer.triggers:
        verdict = rules.evaluate(trigger.rule, context)
        if verdict.error:
            errors.append((trigger.rule.id, verdict.error))
        if verdict.ok and (fired is None or trigger.priority > fired[0]):
            fired = (trigger.priority, trigger.rule)
    return None if fired is None else fired[1]


def _money(catalog: Catalog) -> Any:
    return lambda minor: format_money(minor, catalog.currency)


__all__ = ["Decision", "DecisionInputs", "action_key", "decide"]
