"""offerdesk's policy against its peers on the same simulated traffic (`make bench-policy`).

A fresh world (a seed no test uses), offerdesk's model trained on its bootstrap history with
`fit`'s defaults, then one ticket sequence played to each policy under the same guardrails:
every policy may only pick among the candidates of a decide() call made with its own contact
history. Figures are expected values under the simulator's truth; acceptances are drawn only to
move contact histories and to give the bandit its feedback. Writes var/bench/policy.json; never
touches a registry or an audit log.

    .venv/bin/python scripts/bench_policy.py --tickets 40000 --seed 2027
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from itertools import islice
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from service.arbitration import Scored, action_key
from service.catalog import Catalog, Offer, Variant, load_catalog
from service.decide import Decision, DecisionInputs, decide
from service.policy import ContactEvent, relevant_history
from service.ranker import Models
from service.simulator import Truth, World, load_history, load_world, simulate, ticket_stream
from service.training import fit, training_rows_from_history

ROOT = Path(__file__).resolve().parent.parent
CATALOG_PATH = ROOT / "service" / "examples" / "catalog.yaml"
DEFAULT_OUT = ROOT / "var" / "bench" / "policy.json"
#: tests use worlds 5 and 7 and ticket streams 5 and 11: none of the policies saw this one
DEFAULT_SEED = 2027
DEFAULT_TICKETS = 40_000
#: the bootstrap history's pace (30,000 tickets in 90 days), so caps bind as they did there
MEAN_GAP_SECONDS = 90 * 86_400 / 30_000
#: VW's own default exploration for --cb_explore_adf, and the catalog's rate too
VW_EPSILON = 0.05
#: the bandit's cost is −(accepted margin in major units) / this, about the largest margin
VW_COST_SCALE = 1_000.0
#: what decide() says when it stopped before scoring: nothing may be shown then
BLOCKED = ("UNKNOWN_CUSTOMER", "OPTED_OUT", "BLACKOUT", "GUARDRAIL", "CONTACT_LIMIT")
Z95 = 1.959963984540054


# -- the traffic --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ticket:
    """One resolved ticket, the same for every policy."""

    index: int
    customer_id: str
    at: datetime
    customer: Mapping[str, Any]  # customer_view of the profile, held fixed over the run
    ticket: Mapping[str, Any]
    seed: int  # decide()'s exploration seed
    u_accept: float  # common random number: accepted when u_accept < the true p(accept)


def tickets(world: World, catalog: Catalog, *, n: int, seed: int) -> list[Ticket]:
    """`n` tickets from the world's stream at the bootstrap history's pace, from its `now`."""
    stream = ticket_stream(
        world, catalog, seed=seed, start=world.now, mean_gap_seconds=MEAN_GAP_SECONDS
    )
    u = np.random.default_rng(np.random.SeedSequence([seed, 0xACCE97])).random(n)
    views: dict[str, Mapping[str, Any]] = {}
    out = []
    for i, ev in enumerate(islice(stream, n)):
        cid = world.resolve(ev["helpdesk"], ev["external_customer_id"])
        assert cid is not None
        if cid not in views:
            views[cid] = world.view(cid)
        digest = hashlib.blake2b(f"{seed}/{i}".encode(), digest_size=8).hexdigest()
        out.append(
            Ticket(
                i,
                cid,
                ev["resolved_at"],
                views[cid],
                ev["ticket"],
                int(digest[:15], 16),
                float(u[i]),
            )
        )
    return out


def contact_books(history: pa.Table) -> dict[str, tuple[ContactEvent, ...]]:
    """The offers the old process made in the bootstrap history, by customer: every policy
    starts from this past, so caps and fatigue are in their steady state from the first ticket."""
    books: dict[str, list[ContactEvent]] = {}
    columns = ["decision_id", "decided_at", "customer_id", "offer_id", "accepted"]
    for r in history.select(columns).to_pylist():
        if r["offer_id"] is None:
            continue
        outcome = "accepted" if r["accepted"] else "declined"
        books.setdefault(r["customer_id"], []).append(
            ContactEvent(r["decision_id"], r["offer_id"], r["decided_at"], outcome, r["decided_at"])
        )
    return {c: tuple(e) for c, e in books.items()}


# -- the policies -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Choice:
    shown: Scored | None
    explored: bool = False


class Policy(Protocol):
    """Picks one of decide()'s scored candidates, or nothing; learns from what came of it."""

    name: str
    #: False only for the holdout, which never shows anything and so needs no decision
    asks: bool

    def choose(self, decision: Decision, ticket: Ticket) -> Choice: ...

    def learn(self, accepted: bool, margin: float) -> None: ...


class Offerdesk:
    """decide()'s own choice: incremental value, the value floor, ε-exploration."""

    name = "offerdesk"
    asks = True

    def choose(self, decision: Decision, ticket: Ticket) -> Choice:
        card = decision.card
        if card is None:
            return Choice(None, bool(decision.arbitration and decision.arbitration.explored))
        key = action_key(card.offer.id, card.variant.id)
        return Choice(next(s for s in decision.scored if s.key == key), card.explored)

    def learn(self, accepted: bool, margin: float) -> None:
        pass


class PropensityOnly:
    """The highest model p(accept) among the eligible candidates: no floor, no organic term."""

    name = "propensity-only"
    asks = True

    def choose(self, decision: Decision, ticket: Ticket) -> Choice:
        if not decision.scored:
            return Choice(None)
        return Choice(max(decision.scored, key=lambda s: s.p_accept))

    def learn(self, accepted: bool, margin: float) -> None:
        pass


class RulesOnly:
    """A static playbook without a model: the first eligible offer in catalog order (its
    triggers and eligibility passed), at full price when that variant is eligible, else at its
    highest eligible price."""

    name = "rules-only"
    asks = True

    def __init__(self, catalog: Catalog) -> None:
        self._price = {(o.id, v.id): v.price_minor for o in catalog.offers for v in o.variants}

    def choose(self, decision: Decision, ticket: Ticket) -> Choice:
        if not decision.scored:
            return Choice(None)
        first = decision.scored[0].offer_id  # decide() scores in catalog order
        variants = [s for s in decision.scored if s.offer_id == first]
        return Choice(max(variants, key=lambda s: self._price[s.offer_id, s.variant_id]))

    def learn(self, accepted: bool, margin: float) -> None:
        pass


class Holdout:
    """Shows nothing: the baseline every incremental figure is measured against."""

    name = "holdout"
    asks = False

    def choose(self, decision: Decision, ticket: Ticket) -> Choice:
        return Choice(None)

    def learn(self, accepted: bool, margin: float) -> None:
        pass


def _word(value: Any) -> str:
    """A VW feature value: no spaces, bars or colons."""
    return str(value).replace(" ", "_").replace("|", "_").replace(":", "_")


def _bucket(x: float) -> int:
    return math.floor(math.log2(max(x, 1.0)))


def shared_features(
    customer: Mapping[str, Any], ticket: Mapping[str, Any], contact: Mapping[str, Any]
) -> str:
    """The bandit's context: a handful of the inputs offerdesk's model sees."""
    words = [
        f"plan={_word(customer.get('plan', '?'))}",
        f"seats_b={_bucket(float(customer.get('seats', 1)))}",
        f"size={_word(customer.get('company_size', '?'))}",
        f"industry={_word(customer.get('industry', '?'))}",
        f"billing={_word(customer.get('billing_cycle', '?'))}",
        f"tenure_b={_bucket(float(customer.get('tenure_months', 0)) + 1)}",
        f"category={_word(ticket.get('category', '?'))}",
        f"area={_word(ticket.get('product_area', '?'))}",
    ]
    numbers = {
        "seat_u": customer.get("seat_utilization"),
        "storage_u": customer.get("storage_utilization"),
        "api_u": customer.get("api_utilization"),
        "users_trend": customer.get("active_users_trend"),
        "sentiment": ticket.get("sentiment"),
        "csat": None if ticket.get("csat") is None else (ticket["csat"] - 3) / 2,
        "offers_30d": contact.get("offers_30d", 0),
        "declines_90d": contact.get("declines_90d", 0),
    }
    words += [f"{k}:{float(v):.4g}" for k, v in numbers.items() if v is not None]
    return "shared |S " + " ".join(words)


def action_features(offer: Offer | None, variant: Variant | None, unit: float) -> str:
    """One action: an offer at one variant (price in major units, `unit` minor units each),
    or no offer."""
    if offer is None or variant is None:
        return "|A offer=none"
    return (
        f"|A offer={offer.id} product={offer.product} kind={offer.kind} "
        f"discount:{variant.discount_pct / 100:.4g} price_b={_bucket(variant.price_minor / unit)}"
    )


def history_examples(history: pa.Table, catalog: Catalog) -> Iterable[list[str]]:
    """The bootstrap history as logged bandit feedback (with the old process's propensities),
    for a warm start on the same data offerdesk's model was trained on."""
    unit = 10.0**catalog.exponent
    offers = {o.id: o for o in catalog.offers}
    variants = {(o.id, v.id): v for o in catalog.offers for v in o.variants}
    columns = ["customer", "ticket", "contact", "eligible", "offer_id", "variant_id"]
    for r in history.select([*columns, "propensity", "accepted"]).to_pylist():
        if not r["eligible"]:
            continue
        shared = shared_features(*(json.loads(r[k]) for k in ("customer", "ticket", "contact")))
        keys = [(e["offer_id"], e["variant_id"]) for e in r["eligible"]]
        lines = [shared] + [action_features(offers[o], variants[o, v], unit) for o, v in keys]
        lines.append(action_features(None, None, unit))
        chosen = len(keys)  # nothing shown
        cost = 0.0
        if r["offer_id"] is not None:
            chosen = keys.index((r["offer_id"], r["variant_id"]))
            if r["accepted"]:
                margin = variants[r["offer_id"], r["variant_id"]].margin_minor / unit
                cost = -margin / VW_COST_SCALE
        lines[chosen + 1] = f"0:{cost:.6g}:{r['propensity']:.6g} {lines[chosen + 1]}"
        yield lines


class Bandit:
    """Vowpal Wabbit `--cb_explore_adf`: the eligible candidates plus "no offer" as actions,
    learning online from accept/decline; cost −(accepted margin) / VW_COST_SCALE, 0 otherwise."""

    name = "vw-bandit"
    asks = True

    def __init__(self, catalog: Catalog, *, seed: int, warm: Iterable[list[str]] = ()) -> None:
        from vowpalwabbit import Workspace  # an optional extra: see main()

        self.args = f"--cb_explore_adf --epsilon {VW_EPSILON} -q SA --quiet --random_seed {seed}"
        self._vw = Workspace(self.args)
        self._offers = {o.id: o for o in catalog.offers}
        self._variants = {(o.id, v.id): v for o in catalog.offers for v in o.variants}
        self._unit = 10.0**catalog.exponent
        self._rng = np.random.default_rng(np.random.SeedSequence([seed, 0xB0B]))
        self._pending: tuple[list[str], int, float] | None = None
        self.warm_examples = 0
        for lines in warm:
            self._vw.learn(lines)
            self.warm_examples += 1

    def choose(self, decision: Decision, ticket: Ticket) -> Choice:
        self._pending = None
        if not decision.scored:
            return Choice(None)
        actions: list[Scored | None] = [*decision.scored, None]
        lines = [shared_features(ticket.customer, ticket.ticket, decision.contact)]
        for s in decision.scored:
            offer, variant = self._offers[s.offer_id], self._variants[s.offer_id, s.variant_id]
            lines.append(action_features(offer, variant, self._unit))
        lines.append(action_features(None, None, self._unit))
        pmf = np.asarray(self._vw.predict(lines), dtype=float)
        pmf /= pmf.sum()
        i = int(self._rng.choice(len(pmf), p=pmf))
        self._pending = (lines, i, float(pmf[i]))
        return Choice(actions[i], explored=i != int(pmf.argmax()))

    def learn(self, accepted: bool, margin: float) -> None:
        if self._pending is None:
            return
        lines, i, p = self._pending
        cost = -margin / VW_COST_SCALE if accepted else 0.0
        lines = list(lines)
        lines[i + 1] = f"0:{cost:.6g}:{p:.6g} {lines[i + 1]}"
        self._vw.learn(lines)
        self._pending = None


# -- playing ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One ticket as one policy played it; amounts in the catalog's major units."""

    customer_id: str
    #: decide()'s verdict: "offer" or its no-offer reason; None when not asked (holdout)
    decided: str | None
    eligible: tuple[str, ...]  # action keys decide() scored
    shown: Scored | None
    explored: bool = False
    p_accept: float = 0.0  # true, at the policy's own contact history
    p_anyway: float = 0.0  # true, for the shown offer's product
    margin: float = 0.0  # of the shown variant
    full_margin: float = 0.0  # of the shown offer at full price
    discount: float = 0.0  # list price − price of the shown variant
    accepted: bool = False  # drawn
    #: a discounted offer's true incremental margin had its full-price variant been shown
    #: instead (None: not discounted, or full price was not eligible)
    full_price_incremental: float | None = None

    @property
    def incremental(self) -> float:
        """Expected margin over showing nothing: p_a·m + (1 − p_a)·p_any·m_full − p_any·m_full."""
        if self.shown is None:
            return 0.0
        return self.p_accept * (self.margin - self.p_anyway * self.full_margin)


@dataclass(frozen=True)
class Run:
    policy: str
    steps: tuple[Step, ...]
    seconds: float


def play(
    policy: Policy,
    traffic: Sequence[Ticket],
    models: Models,
    catalog: Catalog,
    truth: Truth,
    books: Mapping[str, Sequence[ContactEvent]],
) -> Run:
    """Play the tickets in order. The policy keeps its own contact history per customer, and
    a product bought through its offers is owned from then on (as the service learns from
    conversions); the rest of the profile stays as it was."""
    contact_spec = catalog.policy.contact
    unit = 10.0**catalog.exponent
    offers = {o.id: o for o in catalog.offers}
    variants = {(o.id, v.id): v for o in catalog.offers for v in o.variants}
    own = {c: list(e) for c, e in books.items()}
    bought: dict[str, set[str]] = {}
    steps = []
    started = time.perf_counter()
    for t in traffic:
        if not policy.asks:
            steps.append(Step(t.customer_id, None, (), None))
            continue
        customer = t.customer
        if t.customer_id in bought:
            owned = set(customer.get("owned_products", ())) | bought[t.customer_id]
            customer = {**customer, "owned_products": sorted(owned)}
        book = own.setdefault(t.customer_id, [])
        inputs = DecisionInputs(
            t.at, t.seed, 1.0, customer, t.ticket, relevant_history(book, contact_spec, t.at)
        )
        decision = decide(inputs, models, catalog)
        choice = policy.choose(decision, t)
        decided = decision.no_offer_reason or decision.kind
        eligible = tuple(s.key for s in decision.scored)
        s = choice.shown
        if s is None:
            steps.append(Step(t.customer_id, decided, eligible, None, choice.explored))
            policy.learn(False, 0.0)
            continue
        offer, variant = offers[s.offer_id], variants[s.offer_id, s.variant_id]
        p_accept = truth.p_accept(customer, t.ticket, decision.contact, offer, variant)
        accepted = t.u_accept < p_accept
        outcome = "accepted" if accepted else "declined"
        book.append(ContactEvent(f"{policy.name}-{t.index}", offer.id, t.at, outcome, t.at))
        if accepted:
            bought.setdefault(t.customer_id, set()).add(offer.product)
        policy.learn(accepted, variant.margin_minor / unit)
        p_anyway = truth.p_buy_anyway(customer, offer)
        full_margin = offer.full_price.margin_minor / unit
        full_price_incremental = None
        if variant != offer.full_price and action_key(offer.id, offer.full_price.id) in eligible:
            p_full = truth.p_accept(customer, t.ticket, decision.contact, offer, offer.full_price)
            full_price_incremental = p_full * (1 - p_anyway) * full_margin
        steps.append(
            Step(
                t.customer_id,
                decided,
                eligible,
                s,
                choice.explored,
                p_accept,
                p_anyway,
                variant.margin_minor / unit,
                full_margin,
                (variant.list_price_minor - variant.price_minor) / unit,
                accepted,
                full_price_incremental,
            )
        )
    return Run(policy.name, tuple(steps), time.perf_counter() - started)


# -- measuring ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Estimate:
    """A mean per 1,000 tickets with its 95% interval, clustered by customer."""

    value: float
    low: float
    high: float


def per_thousand(values: np.ndarray, customers: Sequence[str]) -> Estimate:
    """Σ values / tickets × 1,000, with a customer-clustered (sandwich) standard error: a
    customer's tickets share one contact history, so they are not independent."""
    n = len(values)
    _, group = np.unique(np.asarray(customers), return_inverse=True)
    sums = np.bincount(group, weights=values)
    counts = np.bincount(group)
    mean = float(values.sum()) / n
    g = len(sums)
    var = g / max(g - 1, 1) * float(((sums - mean * counts) ** 2).sum()) / n**2
    half = Z95 * math.sqrt(var)
    return Estimate(1000 * mean, 1000 * (mean - half), 1000 * (mean + half))


def offers_per_customer(steps: Sequence[Step]) -> float:
    """Offers shown per customer who had any ticket."""
    customers = {s.customer_id for s in steps}
    return sum(s.shown is not None for s in steps) / len(customers) if customers else 0.0


@dataclass(frozen=True)
class Summary:
    policy: str
    tickets: int
    customers: int
    offers: int
    offers_per_1k: float
    offers_per_customer: float
    take_rate: float  # expected: mean true p(accept) of the offers shown
    accepted: int  # drawn
    incremental_per_1k: Estimate
    #: paired with offerdesk on the same tickets (this policy − offerdesk); None for offerdesk
    vs_offerdesk_per_1k: Estimate | None
    discounted_offers: int
    #: expected share of discounted offers shown that went to would-buy-anyway customers
    anyway_share_of_discounts: float | None
    #: Σ p_accept·p_anyway·(list − price) per 1,000 tickets: discount given to would-buy-anyway
    anyway_discount_per_1k: float
    #: of the discounted offers whose full-price variant was eligible too: the share where
    #: full price would have made more incremental margin (truth), and what discounting
    #: gained over full price per 1,000 tickets (negative: it cost margin)
    discounts_full_price_better: float | None
    discounting_gain_per_1k: float
    explored: int
    seconds: float
    #: decide()'s verdicts on this policy's tickets ("offer" or the no-offer reason): how
    #: often consent, guardrails and caps left nothing to choose from
    verdicts: dict[str, int]


def summarize(run: Run, offerdesk: Run | None = None) -> Summary:
    steps = run.steps
    customers = [s.customer_id for s in steps]
    incremental = np.array([s.incremental for s in steps])
    shown = [s for s in steps if s.shown is not None]
    discounted = [s for s in shown if s.discount > 0]
    # (incremental as shown, at full price instead) for discounts that had a full-price rival
    against = [
        (s.incremental, s.full_price_incremental)
        for s in discounted
        if s.full_price_incremental is not None
    ]
    versus = None
    if offerdesk is not None and offerdesk.policy != run.policy:
        if [s.customer_id for s in offerdesk.steps] != customers:
            raise ValueError("runs must play the same tickets to be compared")
        base = np.array([s.incremental for s in offerdesk.steps])
        versus = per_thousand(incremental - base, customers)
    n = len(steps)
    return Summary(
        policy=run.policy,
        tickets=n,
        customers=len(set(customers)),
        offers=len(shown),
        offers_per_1k=1000 * len(shown) / n,
        offers_per_customer=offers_per_customer(steps),
        take_rate=sum(s.p_accept for s in shown) / len(shown) if shown else 0.0,
        accepted=sum(s.accepted for s in shown),
        incremental_per_1k=per_thousand(incremental, customers),
        vs_offerdesk_per_1k=versus,
        discounted_offers=len(discounted),
        anyway_share_of_discounts=(
            sum(s.p_anyway for s in discounted) / len(discounted) if discounted else None
        ),
        anyway_discount_per_1k=1000
        * sum(s.p_accept * s.p_anyway * s.discount for s in discounted)
        / n,
        discounts_full_price_better=(
            sum(full > made for made, full in against) / len(against) if against else None
        ),
        discounting_gain_per_1k=1000 * sum(made - full for made, full in against) / n,
        explored=sum(s.explored and s.shown is not None for s in steps),
        seconds=run.seconds,
        verdicts=dict(Counter(s.decided for s in steps if s.decided is not None).most_common()),
    )


# -- the command --------------------------------------------------------------------------------


def _money(x: float) -> str:
    return f"{x:,.0f}"


def _interval(e: Estimate | None) -> str:
    if e is None:
        return "—"
    return f"{_money(e.value)}\n[{_money(e.low)}, {_money(e.high)}]"


def _share(x: float | None) -> str:
    return "—" if x is None else f"{x:.1%}"


def table(summaries: Sequence[Summary], currency: str) -> Any:
    """One column per policy; amounts in `currency`, rounded to whole major units."""
    from rich.table import Table

    t = Table(title=f"The same {summaries[0].tickets:,} tickets, per policy ({currency})")
    t.add_column("", no_wrap=True)
    for s in summaries:
        t.add_column(s.policy, justify="right")
    rows: list[tuple[str, Callable[[Summary], str]]] = [
        ("incremental margin / 1k tickets\n95% CI", lambda s: _interval(s.incremental_per_1k)),
        ("minus offerdesk's, same tickets\n95% CI", lambda s: _interval(s.vs_offerdesk_per_1k)),
        ("offers / 1k tickets", lambda s: f"{s.offers_per_1k:.0f}"),
        ("offers per customer", lambda s: f"{s.offers_per_customer:.2f}"),
        ("take rate (expected)", lambda s: _share(s.take_rate if s.offers else None)),
        (
            "discounted offers / 1k tickets",
            lambda s: f"{1000 * s.discounted_offers / s.tickets:.0f}",
        ),
        ("discounts to would-buy-anyway", lambda s: _share(s.anyway_share_of_discounts)),
        ("discount to would-buy-anyway / 1k", lambda s: _money(s.anyway_discount_per_1k)),
        ("discounts where full price earns more", lambda s: _share(s.discounts_full_price_better)),
        ("discounting's gain over full price / 1k", lambda s: _money(s.discounting_gain_per_1k)),
        ("offers shown by exploration", lambda s: f"{s.explored:,}"),
        ("runtime", lambda s: f"{s.seconds:.0f} s"),
    ]
    for label, cell in rows:
        t.add_row(label, *(cell(s) for s in summaries))
    return t


def _vw_available() -> bool:
    try:
        import vowpalwabbit  # noqa: F401
    except ImportError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tickets", type=int, default=DEFAULT_TICKETS)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="world and ticket stream")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if args.tickets < 1:
        parser.error("--tickets must be at least 1")
    console = Console()
    if not console.is_terminal:  # make's output, a file: room for the table's five columns
        console = Console(width=140)
    started = time.perf_counter()
    catalog = load_catalog(CATALOG_PATH)

    with tempfile.TemporaryDirectory(prefix="bench-policy-") as tmp:
        world_dir = Path(tmp) / "profiles"
        summary = simulate(catalog, world_dir, seed=args.seed)
        world = load_world(world_dir)
        history = load_history(world_dir)
    console.print(
        f"world {args.seed}: {summary.customers:,} customers, {summary.history_rows:,} past "
        f"tickets, {summary.offers_shown:,} offers in the bootstrap history"
    )
    trained = fit(*training_rows_from_history(history, catalog))
    models = Models(f"bench-{args.seed}", trained.ranker, trained.organic, trained.card)
    auc = trained.card["metrics"]["ranker"]["auc"], trained.card["metrics"]["organic"]["auc"]
    console.print(
        f"offerdesk's model (fit defaults): ranker auc {auc[0]:.3f}, organic auc {auc[1]:.3f} "
        f"({time.perf_counter() - started:.0f} s so far)"
    )
    traffic = tickets(world, catalog, n=args.tickets, seed=args.seed)
    books = contact_books(history)
    days = (traffic[-1].at - traffic[0].at).total_seconds() / 86_400
    console.print(
        f"{len(traffic):,} tickets from {len({t.customer_id for t in traffic}):,} customers over "
        f"{days:.0f} days (stream seed {args.seed}); every policy starts from the bootstrap "
        "history's contacts"
    )

    policies: list[Policy] = [Offerdesk(), PropensityOnly(), RulesOnly(catalog)]
    vw_note = None
    if _vw_available():
        bandit = Bandit(catalog, seed=args.seed, warm=history_examples(history, catalog))
        vw_note = f"vw {bandit.args}; warm start on {bandit.warm_examples:,} logged decisions"
        policies.append(bandit)
    else:
        console.print(
            "[yellow]vw-bandit skipped: vowpalwabbit is not installed. `make bench-policy` "
            "installs it (pip install -e '.[policy-bench]').[/yellow]"
        )
    policies.append(Holdout())

    runs = []
    for policy in policies:
        run = play(policy, traffic, models, catalog, world.truth, books)
        console.print(f"  {policy.name}: {run.seconds:.0f} s")
        runs.append(run)
    summaries = [summarize(r, runs[0]) for r in runs]
    console.print(table(summaries, catalog.currency))
    if vw_note:
        console.print(vw_note)
    elapsed = time.perf_counter() - started
    console.print(f"wall time {elapsed:.0f} s")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "seed": args.seed,
        "tickets": len(traffic),
        "customers": len({t.customer_id for t in traffic}),
        "days": round(days, 2),
        "catalog_version": catalog.version,
        "model": {"ranker_auc": auc[0], "organic_auc": auc[1]},
        "vw": vw_note or "skipped: vowpalwabbit not installed",
        "currency": catalog.currency,
        "wall_seconds": round(elapsed, 1),
        "policies": [asdict(s) for s in summaries],
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    console.print(
        f"figures: {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
