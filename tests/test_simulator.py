"""The simulator: seeded, complete profiles, one identity per person, honest truth and logs."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from itertools import islice
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from service import rules
from service.catalog import Catalog, Offer, Variant
from service.features import CUSTOMER_FIELDS, OPTIONAL_FIELDS, TICKET_FIELDS, customer_view
from service.simulator import (
    CATEGORIES,
    CHANNELS,
    FILES,
    PRODUCT_AREAS,
    SHOW_PROBABILITY,
    Truth,
    World,
    load_history,
    load_world,
    price_sensitivity,
    simulate,
    ticket_stream,
)

SMALL = {"customers": 800, "history_tickets": 4000}


@pytest.fixture(scope="session")
def world_dir(catalog: Catalog, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("world")
    simulate(catalog, out, seed=7, **SMALL)
    return out


@pytest.fixture(scope="session")
def world(world_dir: Path) -> World:
    return load_world(world_dir)


@pytest.fixture(scope="session")
def history(world_dir: Path) -> list[dict[str, Any]]:
    rows = load_history(world_dir).to_pylist()
    for r in rows:
        for k in ("customer", "ticket", "contact"):
            r[k] = json.loads(r[k])
    return rows


def _offer(catalog: Catalog, offer_id: str) -> Offer:
    return next(o for o in catalog.offers if o.id == offer_id)


def _variant(offer: Offer, variant_id: str) -> Variant:
    return next(v for v in offer.variants if v.id == variant_id)


def _rule_eligible(
    catalog: Catalog, customer: Any, ticket: Any, contact: Any, now: datetime
) -> dict[str, set[str]]:
    """Offer id → passing variant ids, straight from service.rules (binds everything, always)."""
    ctx = rules.new_context(rules.decision_variables(customer, ticket, contact, now))
    if not all(rules.evaluate(r, ctx).ok for r in catalog.guardrails):
        return {}
    out = {}
    for o in catalog.offers:
        if o.product in customer["owned_products"] and not o.repeatable:
            continue  # decide() never offers what the customer has
        rules.bind(ctx, "offer", rules.offer_variables(o.id, o.kind, o.product, o.lever))
        if not any(rules.evaluate(t.rule, ctx).ok for t in o.triggers):
            continue
        if not all(rules.evaluate(r, ctx).ok for r in o.eligibility):
            continue
        passing = set()
        for v in o.variants:
            rules.bind(
                ctx,
                "variant",
                rules.variant_variables(
                    v.id,
                    v.price_minor / 100,
                    v.list_price_minor / 100,
                    v.discount_pct,
                    v.margin_minor / 100,
                ),
            )
            if all(rules.evaluate(r, ctx).ok for r in v.eligibility):
                passing.add(v.id)
        if passing:
            out[o.id] = passing
    return out


# -- determinism ------------------------------------------------------------------------------


def test_same_seed_writes_the_same_bytes(catalog: Catalog, world_dir: Path, tmp_path: Path) -> None:
    simulate(catalog, tmp_path, seed=7, **SMALL)
    for name in FILES:
        assert (tmp_path / name).read_bytes() == (world_dir / name).read_bytes(), name


def test_another_seed_gives_another_world(
    catalog: Catalog, world_dir: Path, tmp_path: Path
) -> None:
    simulate(catalog, tmp_path, seed=8, **SMALL)
    for name in ("customers.parquet", "identities.parquet", "history.parquet"):
        assert not pq.read_table(tmp_path / name).equals(pq.read_table(world_dir / name)), name


# -- profiles and identities ------------------------------------------------------------------


def test_profiles_have_every_customer_field_with_its_type(world: World, catalog: Catalog) -> None:
    assert len(world.profiles) == SMALL["customers"]
    assert sorted(world.profiles)[:2] == ["acct-000001", "acct-000002"]
    optional = OPTIONAL_FIELDS["customer"]
    products = {o.product for o in catalog.offers}
    seen_absent: Counter[str] = Counter()
    for profile in world.profiles.values():
        for name, kind in CUSTOMER_FIELDS.items():
            if name not in profile:
                seen_absent[name] += 1
                continue
            assert type(profile[name]) is kind, (name, profile[name])
        assert set(profile["owned_products"]) <= products
        assert 1 <= profile["seats_used"] <= profile["seats"]
        assert 0 <= profile["storage_used_gb"] <= profile["storage_quota_gb"]
        assert 0 <= profile["api_calls_30d"] <= profile["api_quota_30d"]
        if profile["plan"] == "enterprise":
            assert "sso" in profile["owned_products"]
        assert (profile["support_tier"] == "premium") == (
            "premium_support" in profile["owned_products"]
        )
    # Only fields the rules must guard with has() are ever unknown, and the last purchase is.
    assert set(seen_absent) <= optional
    assert seen_absent["days_since_last_purchase"] > 0


def test_profiles_look_like_a_saas_customer_base(world: World) -> None:
    profiles = list(world.profiles.values())
    share = lambda pred: sum(1 for p in profiles if pred(p)) / len(profiles)  # noqa: E731
    assert 0.74 <= share(lambda p: p["marketing_consent"]) <= 0.86
    assert 0.003 <= share(lambda p: p["open_billing_dispute"]) <= 0.045
    assert {p["industry"] for p in profiles} == {
        "software",
        "retail",
        "finance",
        "health",
        "education",
        "media",
    }
    # Plan, seats and spend move together.
    by_plan = defaultdict(list)
    for p in profiles:
        by_plan[p["plan"]].append(p)
    median = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    seats = [median([p["seats"] for p in by_plan[k]]) for k in PLANS_IN_ORDER]
    spend = [median([p["monthly_spend"] for p in by_plan[k]]) for k in PLANS_IN_ORDER]
    assert seats == sorted(seats) and spend == sorted(spend)


PLANS_IN_ORDER = ("starter", "team", "business", "enterprise")


def test_identity_map_resolves_two_helpdesks_of_one_person_to_one_customer(
    world: World, world_dir: Path
) -> None:
    table = pq.read_table(world_dir / "identities.parquet").to_pylist()
    pairs = Counter((r["source"], r["external_id"]) for r in table)
    assert max(pairs.values()) == 1, "an external id maps to two customers"
    by_customer: dict[str, dict[str, str]] = defaultdict(dict)
    for r in table:
        by_customer[r["customer_id"]][r["source"]] = r["external_id"]
    assert set(by_customer) == set(world.profiles)
    assert all({"zendesk", "billing"} <= set(ids) for ids in by_customer.values())
    assert all(ids["billing"] == cid for cid, ids in by_customer.items())
    both = [cid for cid, ids in by_customer.items() if "intercom" in ids]
    assert 0.3 <= len(both) / len(by_customer) <= 0.5
    cid = both[0]
    ids = world.external_ids(cid)
    assert world.resolve("zendesk", ids["zendesk"]) == cid
    assert world.resolve("intercom", ids["intercom"]) == cid
    assert world.resolve("intercom", ids["zendesk"]) is None  # ids are per helpdesk


# -- truth ------------------------------------------------------------------------------------

TICKET = {
    "category": "how_to",
    "product_area": "general",
    "channel": "chat",
    "reopen_count": 0,
    "tags": [],
    "fields": {},
}
FRESH = {"offers_30d": 0, "declines_90d": 0}


def _profile(world: World, **changes: Any) -> dict[str, Any]:
    base = dict(next(p for p in world.profiles.values() if p["plan"] == "team"))
    base.update(changes)
    return customer_view(base)


def test_truth_probabilities_are_probabilities(world: World, catalog: Catalog) -> None:
    for profile in list(world.profiles.values())[:100]:
        c = customer_view(profile)
        for o in catalog.offers:
            assert 0 < world.truth.p_buy_anyway(c, o) < 1
            for v in o.variants:
                assert 0 < world.truth.p_accept(c, TICKET, FRESH, o, v) < 1


def test_fuller_seats_make_the_seat_offer_more_welcome(world: World, catalog: Catalog) -> None:
    seats = _offer(catalog, "seats-10")
    full = seats.full_price
    p = [
        world.truth.p_accept(_profile(world, seats=40, seats_used=used), TICKET, FRESH, seats, full)
        for used in (10, 20, 30, 36, 40)
    ]
    assert p == sorted(p) and p[-1] > 2 * p[0]


def test_a_discount_moves_a_price_sensitive_customer_and_not_an_insensitive_one(
    world: World, catalog: Catalog
) -> None:
    storage = _offer(catalog, "storage-1tb")
    full, save = storage.full_price, _variant(storage, "save-20")
    sensitive = _profile(world, industry="education", company_size="1-10", payment_failures_90d=0)
    indifferent = _profile(world, industry="finance", company_size="1001+", payment_failures_90d=0)
    assert price_sensitivity(sensitive) > 1.0 > 0.05 > price_sensitivity(indifferent)

    def lift(c: dict[str, Any]) -> float:
        t = world.truth
        return t.p_accept(c, TICKET, FRESH, storage, save) - t.p_accept(
            c, TICKET, FRESH, storage, full
        )

    assert lift(sensitive) > 0.05
    # Only the lower price itself (a smaller share of spend) helps the indifferent customer.
    assert 0 <= lift(indifferent) < min(0.02, lift(sensitive) / 5)


def test_a_customer_at_their_storage_quota_would_buy_storage_anyway(
    world: World, catalog: Catalog
) -> None:
    storage = _offer(catalog, "storage-1tb")
    near = _profile(world, storage_quota_gb=1000.0, storage_used_gb=970.0, churn_risk=0.1)
    roomy = _profile(world, storage_quota_gb=1000.0, storage_used_gb=400.0, churn_risk=0.1)
    assert world.truth.p_buy_anyway(near, storage) > 0.3
    assert world.truth.p_buy_anyway(roomy, storage) < 0.05


def test_recent_offers_and_declines_tire_the_customer(world: World, catalog: Catalog) -> None:
    sso = _offer(catalog, "sso")
    c = _profile(world)
    p = world.truth.p_accept
    fresh = p(c, TICKET, FRESH, sso, sso.full_price)
    tired = p(
        c,
        TICKET,
        {"offers_30d": 2, "declines_90d": 2, "days_since_last_offer": 1.0},
        sso,
        sso.full_price,
    )
    assert tired < fresh / 2


def test_a_one_off_product_already_owned_is_neither_bought_nor_accepted(
    world: World, catalog: Catalog
) -> None:
    audit = _offer(catalog, "audit-logs")
    owner = _profile(world, owned_products=["audit_logs"], industry="finance")
    other = _profile(world, owned_products=[], industry="finance")
    assert world.truth.p_buy_anyway(owner, audit) < 0.005
    t = world.truth
    owner_p = t.p_accept(owner, TICKET, FRESH, audit, audit.full_price)
    other_p = t.p_accept(other, TICKET, FRESH, audit, audit.full_price)
    assert owner_p < other_p / 10


def test_truth_checks_its_arguments() -> None:
    with pytest.raises(ValueError, match="minor_units"):
        Truth(minor_units=0)
    with pytest.raises(ValueError, match="discount"):
        Truth(discount=float("nan"))


def test_truth_is_read_back_from_the_world(world: World) -> None:
    assert world.truth == Truth()
    assert world.now == datetime(2026, 6, 15, 12, tzinfo=UTC)


# -- history ----------------------------------------------------------------------------------


def test_history_snapshots_are_what_decide_would_see(
    history: list[dict[str, Any]], world: World
) -> None:
    times = [r["decided_at"] for r in history]
    assert times == sorted(times)
    assert world.now - timedelta(days=90) <= times[0] and times[-1] < world.now
    for r in history:
        assert r["customer"] == world.view(r["customer_id"])
        assert set(r["ticket"]) <= set(TICKET_FIELDS)
        assert {"category", "product_area", "channel", "reopen_count", "tags", "fields"} <= set(
            r["ticket"]
        )
        assert None not in r["ticket"].values() and None not in r["contact"].values()


def test_contact_snapshots_count_the_offers_made_before(history: list[dict[str, Any]]) -> None:
    made: dict[str, list[tuple[datetime, bool]]] = defaultdict(list)
    for r in history:
        t = r["decided_at"]
        past = made[r["customer_id"]]
        expected = {
            "offers_30d": sum(1 for s, _ in past if t - s <= timedelta(days=30)),
            "declines_90d": sum(1 for s, ok in past if not ok and t - s <= timedelta(days=90)),
        }
        if past:
            expected["days_since_last_offer"] = round((t - past[-1][0]) / timedelta(days=1), 6)
        assert r["contact"] == expected
        if r["offer_id"] is not None:
            past.append((t, r["accepted"]))


def test_only_eligible_offers_were_shown_and_propensities_are_the_logging_policys(
    history: list[dict[str, Any]], catalog: Catalog
) -> None:
    checked_complete = 0
    for r in history:
        allowed = _rule_eligible(catalog, r["customer"], r["ticket"], r["contact"], r["decided_at"])
        logged: dict[str, set[str]] = defaultdict(set)
        for a in r["eligible"]:
            logged[a["offer_id"]].add(a["variant_id"])
        # Every logged action passes the rules; the contact policy can only take offers away.
        for offer_id, variants in logged.items():
            assert variants == allowed.get(offer_id), (r["decision_id"], offer_id)
        contact = r["contact"]
        untouched = contact["offers_30d"] == 0 and contact.get("days_since_last_offer", 99) >= 60
        if r["customer"]["marketing_consent"] and untouched:
            assert logged == allowed, r["decision_id"]
            checked_complete += 1
        if not r["customer"]["marketing_consent"]:
            assert not logged
        if r["offer_id"] is None:
            assert r["accepted"] is None and r["variant_id"] is None
            assert r["propensity"] == pytest.approx(1 - SHOW_PROBABILITY if logged else 1.0)
        else:
            assert r["variant_id"] in logged[r["offer_id"]]
            assert isinstance(r["accepted"], bool)
            expected = SHOW_PROBABILITY / len(logged) / len(logged[r["offer_id"]])
            assert r["propensity"] == pytest.approx(expected)
    assert checked_complete > 500


def test_the_old_process_kept_the_contact_policy(
    history: list[dict[str, Any]], catalog: Catalog
) -> None:
    policy = catalog.policy.contact
    shown: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in history:
        if r["offer_id"] is None:
            continue
        past = shown[r["customer_id"]]
        t = r["decided_at"]
        window = timedelta(days=policy.window_days)
        assert sum(1 for p in past if t - p["decided_at"] < window) < policy.max_offers
        for p in past:
            if not p["accepted"]:
                assert t - p["decided_at"] >= timedelta(days=policy.decline_cooldown_days)
            if p["offer_id"] == r["offer_id"]:
                assert t - p["decided_at"] >= timedelta(days=policy.offer_cooldown_days)
        past.append(r)


def test_history_shows_offers_at_the_documented_rate_and_labels_every_other_offer(
    history: list[dict[str, Any]], catalog: Catalog
) -> None:
    with_actions = [r for r in history if r["eligible"]]
    shown = [r for r in with_actions if r["offer_id"] is not None]
    assert abs(len(shown) / len(with_actions) - SHOW_PROBABILITY) < 0.03
    accepted = sum(r["accepted"] for r in shown) / len(shown)
    assert 0.1 < accepted < 0.4
    everything = {o.id for o in catalog.offers}
    bought = []
    for r in history:
        labelled = {e["offer_id"] for e in r["organic"]}
        assert labelled == everything - {r["offer_id"]}
        bought += [e["bought"] for e in r["organic"]]
    assert 0.01 < sum(bought) / len(bought) < 0.1


def test_customers_with_full_seats_ask_about_seats_more_often(
    history: list[dict[str, Any]],
) -> None:
    def seat_share(pred: Any) -> float:
        rows = [r for r in history if pred(r["customer"]["seat_utilization"])]
        return sum(r["ticket"]["product_area"] == "seats" for r in rows) / len(rows)

    assert seat_share(lambda u: u >= 0.9) > 1.5 * seat_share(lambda u: u < 0.6)


def test_simulate_checks_its_arguments(catalog: Catalog, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="customers"):
        simulate(catalog, tmp_path, customers=0)
    with pytest.raises(ValueError, match="now"):
        simulate(catalog, tmp_path, customers=10, now=datetime(2026, 1, 1))


# -- live tickets -----------------------------------------------------------------------------


def test_ticket_stream_is_deterministic_and_resolvable(world: World, catalog: Catalog) -> None:
    first = list(islice(ticket_stream(world, catalog, seed=3), 400))
    again = list(islice(ticket_stream(world, catalog, seed=3), 400))
    other = list(islice(ticket_stream(world, catalog, seed=4), 400))
    assert first == again
    assert first != other
    helpdesks = Counter(e["helpdesk"] for e in first)
    assert helpdesks.most_common(1)[0][0] == "zendesk"
    assert {"intercom", "salesforce"} <= set(helpdesks)
    tags, last = set(catalog.spec.ticket_tags), world.now
    for e in first:
        assert world.resolve(e["helpdesk"], e["external_customer_id"]) in world.profiles
        assert e["ticket_id"].startswith(("ZD-", "IC-", "CASE-"))
        assert e["resolved_at"] > last and e["resolved_at"].tzinfo is not None
        last = e["resolved_at"]
        t = e["ticket"]
        assert t["category"] in CATEGORIES and t["product_area"] in PRODUCT_AREAS
        assert t["channel"] in CHANNELS
        assert set(t["tags"]) <= tags
        assert t.get("csat", 3) in range(1, 6) and -1 <= t.get("sentiment", 0) <= 1
    assert len({e["ticket_id"] for e in first}) == len(first)
