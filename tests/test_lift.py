"""The lift report: estimator, attribution, margins and power on hand-made numbers; the command
on four weeks of simulated production, checked against an independent DuckDB recomputation."""

from __future__ import annotations

import itertools
import json
import math
import re
import shutil
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pytest
from typer.testing import CliRunner

from audit.views import open_source
from service.catalog import Catalog
from service.cli import app
from service.lift import (
    ATTRIBUTION_WINDOW,
    Conversion,
    Estimate,
    LiftError,
    LogData,
    Ticket,
    attribute,
    build_report,
    cluster_totals,
    decisions_needed,
    difference,
    margin_of,
    ratio,
    unit_costs,
)
from service.settings import Settings

T0 = datetime(2026, 10, 1, 9, 0)
Z95 = 1.959963984540054


def ticket(subject: str, at: datetime, group: str = "treated", **card: Any) -> Ticket:
    return Ticket(
        decision_id=f"d{subject}{at:%j%H%M%S}",
        subject=subject,
        at=at,
        group=group,
        catalog_version="cat-1",
        **card,
    )


def bought(subject: str, at: datetime, product: str = "sso", amount: int = 1000) -> Conversion:
    return Conversion(subject, product, amount, "USD", at)


# -- the estimator ------------------------------------------------------------------------------


def sandwich(y: np.ndarray, clusters: list[str]) -> tuple[float, float]:
    """Mean of ticket-level y and its cluster-robust (CR1-style, G/(G−1)) standard error,
    computed as the sandwich of an intercept-only regression: no ratio formula involved."""
    x = np.ones((len(y), 1))
    bread = np.linalg.inv(x.T @ x)
    beta = bread @ x.T @ y
    resid = y - x @ beta
    meat = np.zeros((1, 1))
    names = sorted(set(clusters))
    for name in names:
        rows = [i for i, c in enumerate(clusters) if c == name]
        score = x[rows].T @ resid[rows]
        meat += np.outer(score, score)
    g = len(names)
    var = g / (g - 1) * bread @ meat @ bread
    return float(beta[0]), float(math.sqrt(var[0, 0]))


def test_ratio_and_its_interval_match_the_cluster_robust_sandwich() -> None:
    rng = np.random.default_rng(3)
    clusters = [f"c{int(k)}" for k in rng.integers(0, 40, size=300)]
    y = rng.gamma(0.3, 5000, size=300) * (rng.random(300) < 0.2)
    mean, se = sandwich(y, clusters)
    sums, counts = cluster_totals(clusters, list(y))
    got = ratio(sums, counts, per=1000)
    assert got.value == pytest.approx(1000 * mean, rel=1e-12)
    assert got.se == pytest.approx(1000 * se, rel=1e-9)
    assert got.low == pytest.approx(1000 * (mean - Z95 * se))
    assert got.high == pytest.approx(1000 * (mean + Z95 * se))


def test_ratio_by_hand() -> None:
    # y = 1, 0, 3 over n = 2, 1, 3: R = 4/6; residuals −1/3, −2/3, 1.
    got = ratio([1, 0, 3], [2, 1, 3])
    assert got.value == pytest.approx(4 / 6)
    assert got.se == pytest.approx(math.sqrt(3 / 2 * (1 / 9 + 4 / 9 + 1) / 36))


def test_clustering_widens_the_interval_when_a_customers_tickets_move_together() -> None:
    # 20 customers with 5 tickets each; a customer's tickets all convert or none do.
    subjects = [f"c{c}" for c in range(20) for _ in range(5)]
    y = [1.0 if int(s[1:]) % 4 == 0 else 0.0 for s in subjects]
    by_customer = ratio(*cluster_totals(subjects, y))
    by_ticket = ratio(*cluster_totals([str(i) for i in range(len(y))], y))
    assert by_customer.value == by_ticket.value == pytest.approx(0.25)
    assert by_customer.se is not None and by_ticket.se is not None
    assert by_customer.se > 2 * by_ticket.se
    # Tickets that do not move together: conversions spread over customers, one each.
    spread = [1.0 if i % 4 == 0 else 0.0 for i in range(len(subjects))]
    independent = ratio(*cluster_totals(subjects, spread)).se
    assert independent is not None and independent < by_customer.se / 2


def test_one_customer_gives_no_interval_and_differences_add_variances() -> None:
    assert ratio([3.0], [2.0]).se is None and ratio([3.0], [2.0]).low is None
    d = difference(Estimate(5.0, 3.0), Estimate(1.0, 4.0))
    assert d.value == 4.0 and d.se == pytest.approx(5.0)
    assert difference(Estimate(5.0, None), Estimate(1.0, 4.0)).se is None
    with pytest.raises(ValueError, match="differ in length"):
        ratio([1.0], [1.0, 2.0])


# -- attribution --------------------------------------------------------------------------------


def test_a_conversion_goes_to_the_customers_latest_decision_within_30_days() -> None:
    tickets = [
        ticket("a", T0),
        ticket("a", T0 + timedelta(days=10)),
        ticket("b", T0 + timedelta(days=12)),  # someone else's, later: never a's touch
        ticket("a", T0 + timedelta(days=20)),  # after the purchase: not its touch
    ]
    owners = attribute(
        tickets,
        [
            bought("a", T0 + timedelta(days=15)),
            bought("a", T0 + timedelta(days=10)),  # at the decision's instant: counts
            bought("a", T0 - timedelta(seconds=1)),  # before any decision
            bought("a", T0 + timedelta(days=20) + ATTRIBUTION_WINDOW),  # exactly 30 days
            bought("a", T0 + timedelta(days=20) + ATTRIBUTION_WINDOW + timedelta(seconds=1)),
            bought("c", T0 + timedelta(days=1)),  # no decision at all
            Conversion(None, "sso", 1, "USD", T0 + timedelta(days=1)),
        ],
    )
    assert owners == [1, 1, None, 3, None, None, None]


def test_of_two_decisions_at_one_instant_the_later_in_the_log_takes_the_conversion() -> None:
    tickets = [ticket("a", T0), ticket("a", T0)]
    assert attribute(tickets, [bought("a", T0 + timedelta(hours=1))]) == [1]


# -- margins ------------------------------------------------------------------------------------


def test_margin_is_amount_less_the_full_price_variants_cost(catalog: Catalog) -> None:
    costs = unit_costs(catalog)
    assert set(costs) == {o.product for o in catalog.offers}
    for offer in catalog.offers:
        full = max(offer.variants, key=lambda v: v.price_minor)
        # a full-price sale earns exactly the catalog's margin
        assert margin_of(full.price_minor, offer.product, costs) == full.margin_minor
        assert margin_of(0, offer.product, costs) == full.margin_minor - full.price_minor
    assert margin_of(1000, "no-such-product", costs) is None


def two_groups(conversions: list[Conversion], *, last: datetime | None = None) -> LogData:
    tickets = (
        ticket(
            "t1",
            T0,
            offer_id="sso",
            product="sso",
            price_minor=800,
            list_price_minor=1000,
            outcome="accepted",
        ),
        ticket("t1", T0 + timedelta(days=2)),
        ticket(
            "t2",
            T0 + timedelta(days=1),
            offer_id="sso",
            product="sso",
            price_minor=1000,
            list_price_minor=1000,
            outcome="declined",
        ),
        ticket("t3", T0 + timedelta(days=1)),
        ticket("h1", T0, "holdout"),
        ticket("h2", T0 + timedelta(days=3), "holdout"),
    )
    return LogData(tickets, tuple(conversions), last or T0 + timedelta(days=60))


def test_every_decision_counts_with_or_without_an_offer_and_margins_use_the_catalog() -> None:
    data = two_groups(
        [
            bought("t1", T0 + timedelta(hours=1), amount=800),
            bought("h1", T0 + timedelta(days=5), amount=1000),
            bought("h2", T0 + timedelta(days=4), product="mystery", amount=500),
            bought("zz", T0 + timedelta(days=4)),
            Conversion("h1", "sso", 900, "EUR", T0 + timedelta(days=6)),
        ]
    )
    report = build_report(data, {"cat-1": {"sso": 300}}, "USD")
    t, h = report.groups["treated"], report.groups["holdout"]
    assert (t.tickets, t.customers, t.offers, t.conversions) == (4, 3, 2, 1)
    assert (h.tickets, h.customers, h.conversions) == (2, 2, 2)
    assert t.margin_minor == 500 and h.margin_minor == 700 + 0  # mystery's margin unknown: 0
    assert report.metrics["margin"].treated.value == pytest.approx(1000 * 500 / 4)
    assert report.metrics["revenue"].holdout.value == pytest.approx(1000 * 1500 / 2)
    assert report.coverage == 0.5 and report.offers_shown == 2 and report.offers_accepted == 1
    assert report.take_rate_answered == 0.5 and report.discount_spend_minor == 200
    assert report.conversions_unattributed == 1 and report.conversions_unknown_margin == 1
    assert report.conversions_other_currency == 1 and report.conversions_counted == 3
    assert any("unknown margin" in c and "mystery" in c for c in report.caveats)
    assert report.open_windows == 0
    assert json.loads(json.dumps(report.document()))["groups"]["holdout"]["conversions"] == 2


def test_open_windows_are_counted_or_left_out_and_the_window_bounds_decisions() -> None:
    conversions = [bought("t1", T0 + timedelta(days=2, hours=1))]
    data = two_groups(conversions, last=T0 + timedelta(days=31, hours=12))
    report = build_report(data, {}, "USD")
    # the decisions of days 2 and 3 still have their 30 days running at day 31.5
    assert report.open_windows == 2 and report.groups["treated"].tickets == 4
    assert "2 decisions' 30-day window is still open" in report.caveats[0]
    closed = build_report(data, {}, "USD", complete_only=True)
    assert closed.groups["treated"].tickets == 3 and closed.groups["holdout"].tickets == 1
    assert closed.open_windows == 2 and "left out (--complete-only)" in closed.caveats[0]
    # the conversion's last touch (day 2) is left out, so it is not handed to day 0
    assert closed.conversions_counted == 0 and closed.conversions_outside == 1
    early = build_report(data, {}, "USD", until=T0 + timedelta(days=1))
    assert early.groups["treated"].tickets == 1 and early.conversions_outside == 1
    with pytest.raises(LiftError, match="no holdout decisions"):
        build_report(data, {}, "USD", since=T0 + timedelta(days=1), until=T0 + timedelta(days=2))
    with pytest.raises(LiftError, match="no decisions"):
        build_report(data, {}, "USD", since=T0 + timedelta(days=50))


# -- power --------------------------------------------------------------------------------------


def needed(effect: float, v_treated: float, v_holdout: float, share: float) -> float:
    n = decisions_needed(effect, v_treated, v_holdout, share)
    assert n is not None
    return n


def test_decisions_needed_by_hand_and_monotone() -> None:
    z = 1.959963984540054 + 0.8416212335729143
    assert needed(1.0, 1.0, 1.0, 0.5) == pytest.approx(z**2 * 4)
    by_effect = [needed(e, 2.0, 3.0, 0.1) for e in (0.5, 1.0, 2.0, 4.0)]
    assert all(a > b for a, b in itertools.pairwise(by_effect))
    assert by_effect[0] == pytest.approx(4 * by_effect[1])
    noisier = [needed(1.0, v, 3.0, 0.1) for v in (1.0, 2.0, 8.0)]
    assert all(a < b for a, b in itertools.pairwise(noisier))
    # a balanced split needs fewer decisions than a lopsided one when the groups are alike
    assert needed(1.0, 1.0, 1.0, 0.5) < needed(1.0, 1.0, 1.0, 0.1)
    assert decisions_needed(0.0, 1.0, 1.0, 0.5) is None
    with pytest.raises(ValueError, match="holdout_share"):
        decisions_needed(1.0, 1.0, 1.0, 1.0)


# -- the command on four weeks of simulated production ------------------------------------------


def lift_cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["report", "lift", *args], env={"COLUMNS": "160"})
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def lift_json(traffic_log: Settings) -> dict[str, Any]:
    code, out, err = lift_cli("--data-dir", str(traffic_log.data_dir), "--format", "json")
    assert code == 0, err
    doc: dict[str, Any] = json.loads(out)
    return doc


ASOF = """
SELECT d.decision_group, count(*) AS n, sum(c.amount_minor) AS revenue,
       sum(c.amount_minor - coalesce(cost.minor, c.amount_minor)) AS margin
FROM conversions AS c
ASOF JOIN decisions AS d ON c.subject = d.subject AND c.occurred_at >= d.recorded_at
LEFT JOIN costs AS cost ON cost.product = c.product
WHERE c.occurred_at - d.recorded_at <= INTERVAL 30 DAY
GROUP BY d.decision_group
"""


def test_lift_agrees_with_a_duckdb_recomputation_of_the_log(
    traffic_log: Settings, lift_json: dict[str, Any], catalog: Catalog
) -> None:
    costs = [
        (o.product, o.full_price.price_minor - o.full_price.margin_minor) for o in catalog.offers
    ]
    con = open_source(traffic_log.audit_path)
    try:
        con.execute("CREATE TEMP TABLE costs (product VARCHAR, minor BIGINT)")
        con.executemany("INSERT INTO costs VALUES (?, ?)", costs)
        attributed = {g: (n, r, m) for g, n, r, m in con.execute(ASOF).fetchall()}
        tickets = dict(
            con.execute("SELECT decision_group, count(*) FROM decisions GROUP BY ALL").fetchall()
        )
        customers = dict(
            con.execute(
                "SELECT decision_group, count(DISTINCT subject) FROM decisions GROUP BY ALL"
            ).fetchall()
        )
        shown, accepted = con.execute(
            "SELECT count(*), count(*) FILTER (WHERE o.outcome = 'accepted') FROM decisions d "
            "LEFT JOIN outcomes o USING (decision_id) WHERE d.kind = 'offer'"
        ).fetchone()  # type: ignore[misc]
        (treated_offers,) = con.execute(
            "SELECT count(*) FROM decisions WHERE kind = 'offer' AND decision_group = 'treated'"
        ).fetchone()  # type: ignore[misc]
        (total_conversions,) = con.execute("SELECT count(*) FROM conversions").fetchone()  # type: ignore[misc]
        open_windows, weeks_seen = con.execute(
            "SELECT count(*) FILTER (WHERE recorded_at + INTERVAL 30 DAY > ("
            "  SELECT max(recorded_at) FROM audit_records"
            "  WHERE kind IN ('decision', 'outcome', 'conversion'))),"
            " count(DISTINCT strftime(recorded_at, '%G-W%V')) FROM decisions"
        ).fetchone()  # type: ignore[misc]
    finally:
        con.close()
    doc = lift_json
    groups = doc["groups"]
    assert isinstance(groups, dict)
    assert set(attributed) == {"treated", "holdout"}, "the simulated log has both groups converting"
    for g in ("treated", "holdout"):
        n, revenue, margin = attributed[g]
        assert groups[g]["tickets"] == tickets[g] and groups[g]["customers"] == customers[g]
        assert groups[g]["conversions"] == n
        assert groups[g]["revenue_minor"] == revenue and groups[g]["margin_minor"] == margin
        per_1000 = doc["metrics"]["margin"][g]["value"]
        assert per_1000 == pytest.approx(1000 * margin / tickets[g])
    assert doc["offers_shown"] == shown and doc["offers_accepted"] == accepted
    assert doc["coverage"] == pytest.approx(treated_offers / tickets["treated"])
    conv = doc["conversions"]
    assert isinstance(conv, dict)
    assert conv["counted"] + conv["unattributed"] == total_conversions
    diff = doc["metrics"]["margin"]["difference"]
    treated, holdout = (doc["metrics"]["margin"][g] for g in ("treated", "holdout"))
    assert diff["value"] == pytest.approx(treated["value"] - holdout["value"])
    assert diff["se"] == pytest.approx(math.hypot(treated["se"], holdout["se"]))
    assert diff["ci95_low"] < diff["value"] < diff["ci95_high"]
    # the log ends with the last ticket: the last 30 days' windows are still open
    assert 0 < doc["open_windows"] == open_windows < sum(tickets.values())
    assert any(f"{open_windows:,} decisions' 30-day window" in c for c in doc["caveats"])
    weeks = doc["by_week"]
    assert isinstance(weeks, list) and [w["week"] for w in weeks] == sorted(
        w["week"] for w in weeks
    )
    assert len(weeks) == weeks_seen
    assert sum(w["treated_tickets"] + w["holdout_tickets"] for w in weeks) == sum(tickets.values())
    power = doc["power"]
    assert isinstance(power, list) and power and all(p["decisions_needed"] > 0 for p in power)


def test_text_summary_and_a_self_contained_html_file(traffic_log: Settings, tmp_path: Path) -> None:
    page = tmp_path / "lift.html"
    code, out, err = lift_cli("--data-dir", str(traffic_log.data_dir), "--html", str(page))
    assert code == 0, err
    assert "margin / 1,000" in out and "coverage" in out and "power" in out
    assert f"wrote {page}" in out.replace("\n", "")
    text = page.read_text()
    assert text.count("<svg") == 3 and "<table" in text
    external = re.findall(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", text, re.I)
    assert external == [] and "<script" not in text and "<link" not in text
    assert "@import" not in text and "url(http" not in text


def test_the_window_options_pick_decisions_by_time(traffic_log: Settings) -> None:
    code, out, err = lift_cli(
        "--data-dir",
        str(traffic_log.data_dir),
        "--format",
        "json",
        "--since",
        "2026-10-08",
        "--until",
        "2026-10-15T00:00:00Z",
    )
    assert code == 0, err
    doc = json.loads(out)
    con = duckdb.connect()
    try:
        con.execute(f"ATTACH '{traffic_log.audit_path}' AS log (READ_ONLY)")
        (n,) = con.execute(
            "SELECT count(*) FROM log.audit_records WHERE kind = 'decision' "
            "AND recorded_at >= '2026-10-08' AND recorded_at < '2026-10-15'"
        ).fetchone()  # type: ignore[misc]
    finally:
        con.close()
    assert sum(g["tickets"] for g in doc["groups"].values()) == n > 0
    assert doc["conversions"]["attributed_outside_window"] > 0


def test_errors_say_what_is_wrong_without_a_traceback(
    traffic_log: Settings, lift_json: dict[str, Any], tmp_path: Path
) -> None:
    where = ("--data-dir", str(traffic_log.data_dir))
    code, _, err = lift_cli("--data-dir", str(tmp_path))
    assert code == 2 and "no such file" in err
    code, _, err = lift_cli("--data-dir", str(traffic_log.data_dir), "--since", "2031-01-01")
    assert code == 1 and "no decisions" in err
    last = datetime.fromisoformat(lift_json["window"]["last_record_at"])
    recent = (last - timedelta(days=5)).date().isoformat()
    code, _, err = lift_cli(*where, "--complete-only", "--since", recent)
    assert code == 1 and "30-day window has closed" in err
    code, out, err = lift_cli(*where, "--complete-only", "--format", "json")
    assert code == 0, err
    closed = json.loads(out)
    tickets = sum(g["tickets"] for g in closed["groups"].values())
    everything = sum(g["tickets"] for g in lift_json["groups"].values())
    assert tickets == everything - lift_json["open_windows"] > 0
    code, _, err = lift_cli("--data-dir", str(traffic_log.data_dir), "--since", "soon")
    assert code == 2 and "--since" in err
    copy = tmp_path / "audit.duckdb"
    shutil.copy(traffic_log.audit_path, copy)
    holder = duckdb.connect(str(copy))  # as the running service holds its log
    try:
        code, _, err = lift_cli("--data-dir", str(traffic_log.data_dir), "--audit", str(copy))
    finally:
        holder.close()
    assert code == 2 and "audit export" in err
    assert "Traceback" not in err
