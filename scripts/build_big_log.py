"""Build a large, valid, hash-chained audit log fast, for benchmarks (``audit why``, the views).

The records look like the service's (same kinds, body keys and sizes: ~5 KB decisions with
candidates, SHAP values and why-not lists, built from the example catalog), but the values are
synthetic. It writes the table directly in Arrow batches rather than through AuditStore, so it
must never be pointed at a real log: it refuses an existing file.

    .venv/bin/python scripts/build_big_log.py /tmp/big.duckdb --decisions 1000000
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from audit.records import GENESIS_HASH, PreparedRecord, encode_time
from audit.store import SCHEMA, TABLE
from service.catalog import Catalog, load_catalog
from service.features import RANKER_FEATURES

EXAMPLE_CATALOG = Path(__file__).resolve().parent.parent / "service" / "examples" / "catalog.yaml"
_BATCH_ROWS = 20_000
_MODEL = "mdl-benchmark000000"
_SHAP_FEATURES = tuple(RANKER_FEATURES.names)
_NO_OFFER_REASONS = ("HOLDOUT", "BELOW_VALUE_FLOOR", "CONTACT_LIMIT", "GUARDRAIL", "EXPLORATION")
_DECLINES = ("too_expensive", "not_interested", "bad_timing", "already_has")


def _dumps(obj: Any) -> str:
    # The canonical encoding (audit.records) for plain data: what the store writes.
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _pseudonym(rng: random.Random) -> str:
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"
    return "p_" + "".join(rng.choice(alphabet) for _ in range(26))


class _Builder:
    def __init__(self, catalog: Catalog, customers: int, seed: int) -> None:
        self.rng = random.Random(seed)
        self.catalog = catalog
        self.actions = [(o, v) for o in catalog.offers for v in o.variants]
        self.subjects = [_pseudonym(self.rng) for _ in range(customers)]
        # ~6% never consented; their decisions are OPTED_OUT no-offers, as the service makes.
        self.consents = [self.rng.random() > 0.06 for _ in range(customers)]
        self.seen: set[int] = set()

    def decision(self, who: int, now: datetime) -> tuple[dict[str, Any], bool]:
        rng = self.rng
        at = encode_time(now)
        consent = self.consents[who]
        actions = rng.sample(self.actions, k=min(len(self.actions), rng.randint(3, 9)))
        scored = [
            {
                "action": f"{o.id}/{v.id}",
                "p_accept": rng.random(),
                "p_anyway": rng.random() / 20,
                "value": rng.random() * 300_000,
                "probability": 0.0,
            }
            for o, v in actions
        ]
        holdout = rng.random() < 0.10
        roll = rng.random()
        kind = "offer" if consent and not holdout and roll < 0.55 else "no_offer"
        reason = None
        if not consent:
            reason = "OPTED_OUT"
        elif holdout:
            reason = "HOLDOUT"
        elif kind == "no_offer":
            reason = rng.choice(_NO_OFFER_REASONS[1:])
        explored = kind == "offer" and rng.random() < 0.05
        chosen = rng.randrange(len(scored))
        for i, a in enumerate(scored):
            a["probability"] = 0.95 if i == chosen else 0.05 / len(scored)
        offer, variant = actions[chosen]
        card = None
        if kind == "offer":
            card = {
                "currency": self.catalog.currency,
                "discount_bps": variant.discount_bps,
                "expected_value_minor": scored[chosen]["value"],
                "explored": explored,
                "firing_rule": {
                    "description": "Five or more tickets in the last 90 days.",
                    "expression": "customer.tickets_90d >= 5",
                    "id": offer.triggers[0].rule.id if offer.triggers else "trigger",
                },
                "list_price_minor": variant.list_price_minor,
                "offer_id": offer.id,
                "offer_kind": offer.kind,
                "offer_name": offer.name,
                "p_accept": scored[chosen]["p_accept"],
                "price_minor": variant.price_minor,
                "product": offer.product,
                "reasons": [
                    {
                        "contribution": rng.random(),
                        "feature": f,
                        "text": f"{f.replace('_', ' ')} is high",
                        "value": rng.random(),
                    }
                    for f in rng.sample(_SHAP_FEATURES, 3)
                ],
                "shap": {
                    "expected": -1.2,
                    "raw": rng.random(),
                    "values": {f: rng.random() - 0.5 for f in _SHAP_FEATURES},
                },
                "talking_points": list(offer.talking_points),
                "variant_id": variant.id,
                "variant_name": variant.name,
            }
        body = {
            "actions": [
                *scored,
                {
                    "action": "no_offer",
                    "p_accept": None,
                    "p_anyway": None,
                    "probability": 0.01,
                    "value": None,
                },
            ],
            "agent_id": f"agent-{rng.randint(1, 40)}",
            "agent_message": "Suggested because of the ticket." if card else "No offer this time.",
            "card": card,
            "catalog_version": self.catalog.version,
            "contact": {"declines_90d": 0, "offers_30d": rng.randint(0, 1)},
            "decision_id": "d_" + rng.randbytes(16).hex(),
            "explored": explored,
            "greedy": scored[0]["action"],
            "group": "holdout" if holdout else "treated",
            "helpdesk": "zendesk",
            "inputs": {
                "customer": {
                    "active_users_trend": round(rng.random() - 0.5, 3),
                    "api_calls_30d": rng.randint(0, 10**6),
                    "api_quota_30d": 1_000_000,
                    "billing_cycle": rng.choice(("annual", "monthly")),
                    "churn_risk": round(rng.random(), 3),
                    "company_size": "201-1000",
                    "industry": rng.choice(("education", "retail", "finance", "health")),
                    "marketing_consent": consent,
                    "monthly_spend": round(rng.random() * 10_000, 2),
                    "open_billing_dispute": False,
                    "owned_products": ["storage"],
                    "payment_failures_90d": 0,
                    "plan": rng.choice(("team", "business", "enterprise")),
                    "region": "na",
                    "seat_utilization": round(rng.random(), 6),
                    "seats": rng.randint(5, 500),
                    "seats_used": rng.randint(1, 500),
                    "storage_quota_gb": 5000.0,
                    "storage_used_gb": round(rng.random() * 5000, 1),
                    "support_tier": "standard",
                    "tenure_months": rng.randint(1, 120),
                    "tickets_90d": rng.randint(0, 12),
                },
                "history": [],
                "holdout_bucket": rng.random(),
                "now": at,
                "seed": rng.getrandbits(62),
                "ticket": {
                    "category": rng.choice(("how_to", "billing", "access", "bug")),
                    "channel": rng.choice(("email", "chat", "phone")),
                    "csat": rng.randint(1, 5),
                    "fields": {"contract_type": "annual"},
                    "product_area": "reporting",
                    "reopen_count": 0,
                    "sentiment": round(rng.random() * 2 - 1, 2),
                    "tags": [],
                },
            },
            "kind": kind,
            "locale": "en-US",
            "model_version": _MODEL,
            "no_offer_reason": reason,
            "payload_hash": rng.randbytes(32).hex(),
            "policy_action": scored[chosen]["action"] if kind == "offer" or holdout else "no_offer",
            "propensity": 0.95,
            "request_key_hash": rng.randbytes(32).hex(),
            "resolved_at": encode_time(now - timedelta(minutes=1)),
            "rule_errors": [],
            "ticket_hash": rng.randbytes(32).hex(),
            "trace_id": rng.randbytes(16).hex(),
            "why_not": [
                {
                    "code": "NOT_TRIGGERED",
                    "detail": "Nothing about this customer or ticket calls for it.",
                    "offer_id": o.id,
                    "rule_id": "",
                    "value": None,
                }
                for o in self.catalog.offers
                if card is None or o.id != card["offer_id"]
            ],
        }
        return body, card is not None

    def records(self, decisions: int, start: datetime, step: timedelta) -> Any:
        """Yield (kind, at, subject, ref, body) in log order."""
        rng = self.rng
        now = start
        yield (
            "deployment",
            now,
            None,
            None,
            {"catalog_version": self.catalog.version, "model_version": _MODEL, "reason": "start"},
        )
        for _ in range(decisions):
            now += step
            who = rng.randrange(len(self.subjects))
            subject = self.subjects[who]
            if who not in self.seen:
                self.seen.add(who)
                consent = {
                    "marketing_consent": self.consents[who],
                    "observed_at": encode_time(now),
                    "source": "profile_source",
                }
                yield "consent", now, subject, None, consent
            body, offered = self.decision(who, now)
            did = body["decision_id"]
            yield "decision", now, subject, did, body
            if offered and rng.random() < 0.6:
                card = body["card"]
                if rng.random() < 0.08:
                    txn = rng.randbytes(32).hex()
                    yield (
                        "conversion",
                        now,
                        subject,
                        txn,
                        {
                            "amount_minor": card["price_minor"],
                            "currency": card["currency"],
                            "holdout_bucket": body["inputs"]["holdout_bucket"],
                            "occurred_at": encode_time(now),
                            "payload_hash": rng.randbytes(32).hex(),
                            "product": card["product"],
                            "source": "billing",
                            "transaction_hash": txn,
                        },
                    )
                outcome = rng.choice(("accepted", "declined", "declined", "not_presented"))
                yield (
                    "outcome",
                    now,
                    subject,
                    did,
                    {
                        "agent_id": body["agent_id"],
                        "decision_id": did,
                        "decision_seq": -1,  # patched by the writer loop below
                        "decline_reason": rng.choice(_DECLINES) if outcome == "declined" else None,
                        "has_note": False,
                        "occurred_at": encode_time(now),
                        "outcome": outcome,
                    },
                )


def build(
    out: Path,
    *,
    decisions: int,
    customers: int,
    seed: int = 1,
    days: int = 365,
    catalog_path: Path = EXAMPLE_CATALOG,
) -> int:
    """Write a new log with ``decisions`` decision records (plus the others); return its size."""
    if decisions < 1 or customers < 1:
        raise ValueError("--decisions and --customers must be at least 1")
    if out.exists():
        raise FileExistsError(f"{out} exists; this builder only writes new files")
    out.parent.mkdir(parents=True, exist_ok=True)
    builder = _Builder(load_catalog(catalog_path), customers, seed)
    end = datetime.now(UTC).replace(microsecond=0)
    start = end - timedelta(days=days)
    step = (end - start) / (decisions + 1)
    con = duckdb.connect(str(out))
    con.execute(SCHEMA)
    seq, prev = 0, GENESIS_HASH
    decision_seq: dict[str, int] = {}
    columns: dict[str, list[Any]] = {name: [] for name in _ARROW.names}
    for kind, at, subject, ref, body in builder.records(decisions, start, step):
        if kind == "decision":
            decision_seq[ref] = seq
        elif kind == "outcome":
            body["decision_seq"] = decision_seq.pop(ref)
        record = PreparedRecord(kind, at, encode_time(at), subject, ref, _dumps(body)).envelope(seq)
        digest = hashlib.sha256(prev + hashlib.sha256(record).digest()).digest()
        for name, value in zip(
            _ARROW.names,
            (seq, kind, at.replace(tzinfo=None), subject, ref, record.decode(), prev, digest),
            strict=True,
        ):
            columns[name].append(value)
        seq, prev = seq + 1, digest
        if len(columns["seq"]) >= _BATCH_ROWS:
            _flush(con, columns)
    _flush(con, columns)
    con.execute("CHECKPOINT")
    con.close()
    return seq


_ARROW = pa.schema(
    [
        ("seq", pa.int64()),
        ("kind", pa.string()),
        ("recorded_at", pa.timestamp("us")),
        ("subject", pa.string()),
        ("ref", pa.string()),
        ("record", pa.string()),
        ("prev_hash", pa.binary()),
        ("hash", pa.binary()),
    ]
)


def _flush(con: duckdb.DuckDBPyConnection, columns: dict[str, list[Any]]) -> None:
    if not columns["seq"]:
        return
    batch = pa.table(columns, schema=_ARROW)  # noqa: F841 - read by DuckDB's replacement scan
    con.execute(f"INSERT INTO {TABLE} SELECT * FROM batch")
    for values in columns.values():
        values.clear()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="new DuckDB file to write")
    parser.add_argument("--decisions", type=int, required=True, help="decision records")
    parser.add_argument(
        "--customers", type=int, help="distinct customers (default: decisions / 10)"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--parquet", type=Path, help="also export the log to this Parquet file")
    args = parser.parse_args(argv)
    customers = args.customers or max(1, args.decisions // 10)
    started = time.perf_counter()
    try:
        n = build(args.out, decisions=args.decisions, customers=customers, seed=args.seed)
    except (ValueError, FileExistsError) as exc:
        print(f"build_big_log: {exc}", file=sys.stderr)
        return 2
    print(f"{args.out}: {n:,} records in {time.perf_counter() - started:.1f}s")
    if args.parquet:
        from audit.verify import export_parquet

        export_parquet(args.out, args.parquet)
        print(f"{args.parquet}: exported")
    return 0


if __name__ == "__main__":
    sys.exit(main())
