"""scripts/bench_policy.py: its policies keep to decide()'s guardrails and its figures add up.

The script's harness is loaded from its path (scripts/ is not a package) and played on a few
hundred tickets of the session's world and model; the Vowpal Wabbit peer is an optional extra
and is not played here.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from script_loader import load_script

from service.arbitration import Scored
from service.catalog import Catalog
from service.ranker import Models
from service.simulator import World, load_history

TICKETS = 400


def _load() -> ModuleType:
    return load_script("bench_policy")


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return _load()


@pytest.fixture(scope="module")
def played(
    bench: ModuleType, trained_dir: Path, world: World, models: Models, catalog: Catalog
) -> dict[str, Any]:
    traffic = bench.tickets(world, catalog, n=TICKETS, seed=13)
    books = bench.contact_books(load_history(trained_dir / "profiles"))
    policies = [
        bench.Offerdesk(),
        bench.PropensityOnly(),
        bench.RulesOnly(catalog),
        bench.Holdout(),
    ]
    runs = {p.name: bench.play(p, traffic, models, catalog, world.truth, books) for p in policies}
    return {"traffic": traffic, "runs": runs}


def test_every_shown_offer_was_among_that_decisions_eligible_candidates(
    played: dict[str, Any],
) -> None:
    shown = 0
    for run in played["runs"].values():
        for step in run.steps:
            if step.shown is not None:
                assert step.shown.key in step.eligible, (run.policy, step)
                shown += 1
    assert shown > 0


def test_nothing_is_shown_when_decide_stopped_before_scoring(
    bench: ModuleType, played: dict[str, Any]
) -> None:
    stopped = 0
    for name, run in played["runs"].items():
        if name == "holdout":
            continue
        for step in run.steps:
            if step.decided in (*bench.BLOCKED, "NOTHING_ELIGIBLE"):
                assert step.shown is None and step.eligible == (), (name, step)
                stopped += 1
    assert stopped > 0  # consent and guardrails stop some of these tickets


def test_no_policy_exceeds_the_contact_cap_with_its_own_history(
    played: dict[str, Any], catalog: Catalog
) -> None:
    spec = catalog.policy.contact
    window = timedelta(days=spec.window_days)
    for run in played["runs"].values():
        times = defaultdict(list)
        for ticket, step in zip(played["traffic"], run.steps, strict=True):
            if step.shown is not None:
                times[step.customer_id].append(ticket.at)
        for at in times.values():
            for i, t in enumerate(at):
                assert sum(1 for u in at[: i + 1] if t - u < window) <= spec.max_offers


def test_offerdesk_shows_nothing_below_the_value_floor(
    played: dict[str, Any], catalog: Catalog
) -> None:
    # decide() keeps exploration to the floor too, so this holds for explored offers as well.
    steps = played["runs"]["offerdesk"].steps
    shown = [s.shown for s in steps if s.shown is not None]
    assert shown
    assert all(s.value >= catalog.value_floor_minor for s in shown)
    assert not any(s.decided == "BELOW_VALUE_FLOOR" and s.shown for s in steps)


def test_propensity_only_shows_whenever_anything_is_eligible(played: dict[str, Any]) -> None:
    for step in played["runs"]["propensity-only"].steps:
        assert (step.shown is not None) == bool(step.eligible)


def test_rules_only_shows_the_first_eligible_offer_at_full_price(
    played: dict[str, Any], catalog: Catalog
) -> None:
    full = {o.id: o.full_price.id for o in catalog.offers}
    for step in played["runs"]["rules-only"].steps:
        if step.shown is None:
            continue
        assert step.shown.offer_id == step.eligible[0].split("/")[0]
        if f"{step.shown.offer_id}/{full[step.shown.offer_id]}" in step.eligible:
            assert step.shown.variant_id == full[step.shown.offer_id]


def test_holdout_shows_nothing_and_adds_nothing(bench: ModuleType, played: dict[str, Any]) -> None:
    runs = played["runs"]
    summary = bench.summarize(runs["holdout"], runs["offerdesk"])
    assert summary.offers == 0 and summary.offers_per_customer == 0.0
    assert summary.incremental_per_1k == bench.Estimate(0.0, 0.0, 0.0)
    treated = bench.summarize(runs["offerdesk"], runs["offerdesk"])
    assert treated.vs_offerdesk_per_1k is None
    assert summary.vs_offerdesk_per_1k.value == pytest.approx(-treated.incremental_per_1k.value)


def test_paired_difference_is_the_difference_of_the_two_policies(
    bench: ModuleType, played: dict[str, Any]
) -> None:
    runs = played["runs"]
    rival = bench.summarize(runs["propensity-only"], runs["offerdesk"])
    ours = bench.summarize(runs["offerdesk"])
    expected = rival.incremental_per_1k.value - ours.incremental_per_1k.value
    assert rival.vs_offerdesk_per_1k.value == pytest.approx(expected)
    low, high = rival.vs_offerdesk_per_1k.low, rival.vs_offerdesk_per_1k.high
    assert low <= rival.vs_offerdesk_per_1k.value <= high


def test_incremental_margin_and_offers_per_customer_on_a_hand_checked_case(
    bench: ModuleType,
) -> None:
    offer = Scored("seats-10", "save-10", 0.3, 0.2, 10_000.0)

    def shown(customer: str, p_accept: float, at_full: float | None = None) -> Any:
        # 10% off: margin 900 instead of 1,020 at full price; list 1,200, price 1,080
        return bench.Step(customer, "offer", (offer.key,), offer, False, p_accept, 0.1, 900.0,
                          1020.0, 120.0, False, at_full)  # fmt: skip

    def nothing(customer: str) -> Any:
        return bench.Step(customer, "BELOW_VALUE_FLOOR", (offer.key,), None)

    steps = (shown("a", 0.2, 200.0), shown("a", 0.2, 100.0), shown("a", 0.5), nothing("b"))
    steps += (shown("c", 0.2),)
    steps += (nothing("c"),)
    # a customer with any ticket counts, whether or not they were shown anything
    assert bench.offers_per_customer(steps) == pytest.approx(4 / 3)
    # p_a·m + (1 − p_a)·p_any·m_full − p_any·m_full = 0.2 · (900 − 0.1 · 1,020)
    assert steps[0].incremental == pytest.approx(0.2 * 900 + 0.8 * 0.1 * 1020 - 0.1 * 1020)
    assert steps[0].incremental == pytest.approx(159.6)
    summary = bench.summarize(bench.Run("x", steps, 0.0))
    assert summary.customers == 3 and summary.offers == 4
    total = 3 * 159.6 + 0.5 * (900 - 102)
    assert summary.incremental_per_1k.value == pytest.approx(1000 * total / 6)
    assert summary.anyway_share_of_discounts == pytest.approx(0.1)
    assert summary.anyway_discount_per_1k == pytest.approx(1000 * (3 * 0.2 + 0.5) * 0.1 * 120 / 6)
    # against full price only where it was eligible: 200 > 159.6, 100 < 159.6
    assert summary.discounts_full_price_better == pytest.approx(0.5)
    assert summary.discounting_gain_per_1k == pytest.approx(1000 * (2 * 159.6 - 300) / 6)
