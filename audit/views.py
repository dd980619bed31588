"""The questions compliance asks, as named SQL views over ``audit_records``: one definition each.

The views are TEMP objects of one DuckDB connection whose ``audit_records`` is the real table
(the file opened read-only, or the service's reader cursor) or a view over a Parquet export;
docs/compliance.md shows this exact SQL. Nothing here may write to the log: the only DDL is
CREATE TEMP VIEW / TEMP TABLE on the caller's connection.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import duckdb

from audit.errors import AuditCorrupt, AuditError, AuditLocked
from audit.records import encode_time
from audit.store import COLUMNS, TABLE

# Reused, not duplicated: verify.py owns how a DuckDB file and a Parquet file are told apart.
from audit.verify import _is_duckdb, _is_parquet, _sql_string

#: the file a sealed export segment keeps its records in (audit.export)
SEGMENT_RECORDS = "records.parquet"
_ATTACHED = "audit_source"
_LOCK_HOLDER = re.compile(r"Conflicting lock is held in .*?\(PID \d+\)")


@dataclass(frozen=True, slots=True)
class View:
    """One named question: what it answers, what a healthy log returns, and its SQL."""

    name: str
    question: str
    expect: str
    sql: str


@dataclass(frozen=True, slots=True)
class ContactCaps:
    """A catalog version's contact cap: at most ``max_offers`` offers per ``window_days``.

    The cap is in the catalog, not in the decision record (which names the catalog
    version), so whoever installs the views says what each version's cap was.
    """

    catalog_version: str
    window_days: int
    max_offers: int

    def __post_init__(self) -> None:
        if not isinstance(self.catalog_version, str) or not self.catalog_version:
            raise ValueError("catalog_version must be a non-empty str")
        if type(self.window_days) is not int or not 1 <= self.window_days <= 366:
            raise ValueError(f"window_days must be an int in 1..366, got {self.window_days!r}")
        if type(self.max_offers) is not int or not 0 <= self.max_offers <= 100:
            raise ValueError(f"max_offers must be an int in 0..100, got {self.max_offers!r}")


@dataclass(frozen=True, slots=True)
class Table:
    """Rows of one view, with its column names and DuckDB type names."""

    name: str
    columns: tuple[str, ...]
    types: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...]

    def records(self) -> list[dict[str, Any]]:
        """The rows as JSON-ready objects (times as audit times, JSON columns parsed)."""
        return [
            {
                column: _json_value(value, kind)
                for column, kind, value in zip(self.columns, self.types, row, strict=True)
            }
            for row in self.rows
        ]

    def document(self) -> dict[str, Any]:
        """What ``offerdesk audit query --format json`` prints and the audit API returns."""
        return {
            "view": self.name,
            "columns": list(self.columns),
            "row_count": len(self.rows),
            "rows": self.records(),
        }


# The caps each catalog version had (see ContactCaps); filled by install_views.
CONTACT_CAPS_SQL = """\
CREATE OR REPLACE TEMP TABLE contact_caps (
  catalog_version VARCHAR NOT NULL,
  window_days INTEGER NOT NULL,
  max_offers INTEGER NOT NULL
);"""

_DECISIONS = View(
    "decisions",
    "Every decision, one row each: what was shown (or why nothing), to whom, by which model.",
    "One row per decision record. recorded_at is the decision time (inputs.now).",
    """\
CREATE OR REPLACE TEMP VIEW decisions AS
SELECT seq,
       recorded_at,
       body.decision_id AS decision_id,
       subject,
       body.kind AS kind,
       body.no_offer_reason AS no_offer_reason,
       body."group" AS decision_group,
       body.explored AS explored,
       body.propensity AS propensity,
       body.greedy AS greedy,
       body.policy_action AS policy_action,
       body.card.offer_id AS offer_id,
       body.card.variant_id AS variant_id,
       body.card.product AS product,
       body.card.price_minor AS price_minor,
       body.card.list_price_minor AS list_price_minor,
       body.card.discount_bps AS discount_bps,
       body.card.currency AS currency,
       body.card.p_accept AS p_accept,
       body.card.expected_value_minor AS expected_value_minor,
       body.card.firing_rule.id AS firing_rule_id,
       body.model_version AS model_version,
       body.catalog_version AS catalog_version,
       body.trace_id AS trace_id,
       body.helpdesk AS helpdesk,
       body.agent_id AS agent_id,
       body.inputs.customer.marketing_consent AS consent_in_inputs
FROM (
  SELECT seq, recorded_at, subject,
         -- one JSON parse per record (a path extract per column would parse it 27 times)
         json_transform(record, '{"body": {
           "decision_id": "VARCHAR", "kind": "VARCHAR", "no_offer_reason": "VARCHAR",
           "group": "VARCHAR", "explored": "BOOLEAN", "propensity": "DOUBLE",
           "greedy": "VARCHAR", "policy_action": "VARCHAR",
           "model_version": "VARCHAR", "catalog_version": "VARCHAR",
           "trace_id": "VARCHAR", "helpdesk": "VARCHAR", "agent_id": "VARCHAR",
           "inputs": {"customer": {"marketing_consent": "BOOLEAN"}},
           "card": {"offer_id": "VARCHAR", "variant_id": "VARCHAR", "product": "VARCHAR",
                    "price_minor": "BIGINT", "list_price_minor": "BIGINT",
                    "discount_bps": "INTEGER", "currency": "VARCHAR",
                    "p_accept": "DOUBLE", "expected_value_minor": "DOUBLE",
                    "firing_rule": {"id": "VARCHAR"}}}}').body AS body
  FROM audit_records
  WHERE kind = 'decision' AND record <> ''  -- '': past its retention (cut)
);""",
)

_OUTCOMES = View(
    "outcomes",
    "Every outcome an agent recorded: accepted, declined (with the reason) or not presented.",
    "One row per outcome record; at most one per decision.",
    """\
CREATE OR REPLACE TEMP VIEW outcomes AS
SELECT seq,
       recorded_at,
       body.decision_id AS decision_id,
       body.decision_seq AS decision_seq,
       subject,
       body.outcome AS outcome,
       body.decline_reason AS decline_reason,
       body.has_note AS has_note,
       body.agent_id AS agent_id,
       body.occurred_at AS occurred_at
FROM (
  SELECT seq, recorded_at, subject,
         json_transform(record, '{"body": {
           "decision_id": "VARCHAR", "decision_seq": "BIGINT", "outcome": "VARCHAR",
           "decline_reason": "VARCHAR", "has_note": "BOOLEAN", "agent_id": "VARCHAR",
           "occurred_at": "TIMESTAMP"}}').body AS body
  FROM audit_records
  WHERE kind = 'outcome' AND record <> ''  -- '': past its retention (cut)
);""",
)

_CONVERSIONS = View(
    "conversions",
    "Every purchase reported by billing, by pseudonym (the log keeps no decision link).",
    "One row per conversion record.",
    """\
CREATE OR REPLACE TEMP VIEW conversions AS
SELECT seq,
       recorded_at,
       subject,
       body.transaction_hash AS transaction_hash,
       body.source AS source,
       body.product AS product,
       body.amount_minor AS amount_minor,
       body.currency AS currency,
       body.occurred_at AS occurred_at,
       body.holdout_bucket AS holdout_bucket
FROM (
  SELECT seq, recorded_at, subject,
         json_transform(record, '{"body": {
           "transaction_hash": "VARCHAR", "source": "VARCHAR", "product": "VARCHAR",
           "amount_minor": "BIGINT", "currency": "VARCHAR", "occurred_at": "TIMESTAMP",
           "holdout_bucket": "DOUBLE"}}').body AS body
  FROM audit_records
  WHERE kind = 'conversion' AND record <> ''  -- '': past its retention (cut)
);""",
)

_CONSENTS = View(
    "consents",
    "Every change of a customer's marketing consent the service saw, in log order.",
    "One row per consent record; the first one for a customer is the consent first seen.",
    """\
CREATE OR REPLACE TEMP VIEW consents AS
SELECT seq,
       recorded_at,
       subject,
       body.marketing_consent AS marketing_consent,
       body.source AS source,
       body.observed_at AS observed_at
FROM (
  SELECT seq, recorded_at, subject,
         json_transform(record, '{"body": {
           "marketing_consent": "BOOLEAN", "source": "VARCHAR",
           "observed_at": "TIMESTAMP"}}').body AS body
  FROM audit_records
  WHERE kind = 'consent' AND record <> ''  -- '': past its retention (cut)
);""",
)

_OFFERS_TO_OPTED_OUT = View(
    "offers_to_opted_out",
    "Offers shown to a customer whose last chained consent record before the decision is "
    "not true (false, null, or no consent record at all).",
    "Empty under require_consent (the example catalog); rows with last_consent = false "
    "must never exist under any catalog.",
    """\
CREATE OR REPLACE TEMP VIEW offers_to_opted_out AS
SELECT d.seq,
       d.recorded_at,
       d.decision_id,
       d.subject,
       d.offer_id,
       d.variant_id,
       c.seq AS consent_seq,
       c.marketing_consent AS last_consent,
       d.consent_in_inputs
FROM decisions AS d
-- the customer's last consent record before the decision (none: consent never known)
ASOF LEFT JOIN consents AS c ON c.subject = d.subject AND d.seq > c.seq
WHERE d.kind = 'offer'
  AND c.marketing_consent IS DISTINCT FROM true;""",
)

_CONTACTS_PER_WINDOW = View(
    "contacts_per_window",
    "For each offer shown: how many offers that customer had been shown in the catalog's "
    "window when it was made, recomputed from the log, against the catalog's cap.",
    "One row per offer shown; offers_in_window (this one included) <= max_offers.",
    """\
CREATE OR REPLACE TEMP VIEW contacts_per_window AS
WITH shown AS (
  SELECT seq, recorded_at, decision_id, subject, offer_id, catalog_version
  FROM decisions
  WHERE kind = 'offer'
), contacts AS (
  -- An offer the agent reported as not presented stops counting from that outcome on
  -- (service.policy.ContactEvent.counts_as_contact).
  SELECT s.seq, s.recorded_at, s.subject, o.seq AS not_presented_seq
  FROM shown AS s
  LEFT JOIN outcomes AS o ON o.decision_id = s.decision_id AND o.outcome = 'not_presented'
)
SELECT s.seq,
       s.recorded_at,
       s.decision_id,
       s.subject,
       s.offer_id,
       s.catalog_version,
       caps.window_days,
       caps.max_offers,
       count(p.seq) AS earlier_offers,
       count(p.seq) + 1 AS offers_in_window
FROM shown AS s
LEFT JOIN contact_caps AS caps ON caps.catalog_version = s.catalog_version
-- What the policy counted: offers committed before this decision, made no later than it
-- and less than window_days before it, not yet reported as not presented.
LEFT JOIN contacts AS p
  ON p.subject = s.subject
 AND p.seq < s.seq
 AND p.recorded_at <= s.recorded_at
 AND p.recorded_at > s.recorded_at - to_days(caps.window_days)
 AND (p.not_presented_seq IS NULL OR p.not_presented_seq > s.seq)
GROUP BY ALL;""",
)

_CONTACT_CAP_BREACHES = View(
    "contact_cap_breaches",
    "Offers that took a customer over the contact cap, and offers whose catalog version's "
    "cap is unknown here (they cannot be checked).",
    "Empty. A 'cap unknown' row means the caps of that catalog version were not given.",
    """\
CREATE OR REPLACE TEMP VIEW contact_cap_breaches AS
SELECT *,
       CASE WHEN max_offers IS NULL THEN 'cap unknown for this catalog version'
            ELSE 'over the cap' END AS problem
FROM contacts_per_window
WHERE max_offers IS NULL
   OR offers_in_window > max_offers;""",
)

_DECISIONS_BY_MODEL = View(
    "decisions_by_model",
    "Which model and catalog made how many decisions, offers and no-offers, and when.",
    "One row per (model_version, catalog_version) pair that decided anything.",
    """\
CREATE OR REPLACE TEMP VIEW decisions_by_model AS
SELECT model_version,
       catalog_version,
       count(*) AS decisions,
       count(*) FILTER (WHERE kind = 'offer') AS offers,
       count(*) FILTER (WHERE kind = 'no_offer') AS no_offers,
       count(*) FILTER (WHERE decision_group = 'holdout') AS holdouts,
       count(*) FILTER (WHERE explored) AS explored,
       min(recorded_at) AS first_at,
       max(recorded_at) AS last_at
FROM decisions
GROUP BY model_version, catalog_version
ORDER BY first_at;""",
)

_NO_OFFERS_BY_REASON = View(
    "no_offers_by_reason",
    "Why nothing was shown: no-offer decisions by reason and group.",
    "One row per (no_offer_reason, decision_group).",
    """\
CREATE OR REPLACE TEMP VIEW no_offers_by_reason AS
SELECT no_offer_reason,
       decision_group,
       count(*) AS decisions,
       min(recorded_at) AS first_at,
       max(recorded_at) AS last_at
FROM decisions
WHERE kind = 'no_offer'
GROUP BY no_offer_reason, decision_group
ORDER BY decisions DESC, no_offer_reason, decision_group;""",
)

_DECLINES_BY_REASON = View(
    "declines_by_reason",
    "Why customers said no: declined outcomes by decline reason and offer.",
    "One row per (decline_reason, offer_id) with at least one decline.",
    """\
CREATE OR REPLACE TEMP VIEW declines_by_reason AS
SELECT o.decline_reason,
       d.offer_id,
       count(*) AS declines,
       count(*) FILTER (WHERE o.has_note) AS with_note,
       min(o.recorded_at) AS first_at,
       max(o.recorded_at) AS last_at
FROM outcomes AS o
LEFT JOIN decisions AS d ON d.decision_id = o.decision_id
WHERE o.outcome = 'declined'
GROUP BY o.decline_reason, d.offer_id
ORDER BY declines DESC, o.decline_reason, d.offer_id;""",
)

_DISCOUNTS_GIVEN = View(
    "discounts_given",
    "Discounts offered and accepted, by month, offer, variant and discount, with totals.",
    "One row per (month, offer, variant, currency, discount) of discounted offers shown.",
    """\
CREATE OR REPLACE TEMP VIEW discounts_given AS
SELECT CAST(date_trunc('month', d.recorded_at) AS DATE) AS month,
       d.offer_id,
       d.variant_id,
       d.currency,
       d.discount_bps,
       d.list_price_minor - d.price_minor AS discount_minor,
       count(*) AS offered,
       count(*) FILTER (WHERE o.outcome = 'accepted') AS accepted,
       sum(d.list_price_minor - d.price_minor) AS discount_offered_minor,
       coalesce(sum(d.list_price_minor - d.price_minor)
                  FILTER (WHERE o.outcome = 'accepted'), 0) AS discount_accepted_minor
FROM decisions AS d
LEFT JOIN outcomes AS o ON o.decision_id = d.decision_id
WHERE d.kind = 'offer'
  AND d.list_price_minor > d.price_minor
GROUP BY ALL
ORDER BY month, d.offer_id, d.variant_id, d.discount_bps;""",
)

_AUDIT_ACCESS = View(
    "audit_access",
    "Every read of the log through the audit API: which caller (a token id), which method, "
    "with which arguments, how many rows it returned.",
    "One row per audit_access record (written before each audit API answer).",
    """\
CREATE OR REPLACE TEMP VIEW audit_access AS
SELECT seq,
       recorded_at,
       json_extract_string(record, '$.body.caller') AS caller,
       json_extract_string(record, '$.body.method') AS method,
       json_extract(record, '$.body.arguments') AS arguments,
       json_extract(record, '$.body.rows')::BIGINT AS rows
FROM audit_records
WHERE kind = 'audit_access' AND record <> '';""",
)

_RETENTION_CUTS = View(
    "retention_cuts",
    "Every retention cut: when, who asked, the periods and cutoffs, and how many records of "
    "each kind lost their content (docs/compliance.md#retention).",
    "One row per retention record; none while audit.retention_days is empty. `audit verify` "
    "checks each cut against the rows it emptied.",
    """\
CREATE OR REPLACE TEMP VIEW retention_cuts AS
SELECT seq,
       recorded_at,
       body.cut_at AS cut_at,
       body.requested_by AS requested_by,
       body.retention_days AS retention_days,
       body.cutoffs AS cutoffs,
       body."count" AS records_cut,
       body.count_by_kind AS count_by_kind,
       body.first_seq AS first_seq,
       body.last_seq AS last_seq
FROM (
  SELECT seq, recorded_at,
         json_transform(record, '{"body": {
           "cut_at": "TIMESTAMP", "requested_by": "VARCHAR", "retention_days": "JSON",
           "cutoffs": "JSON", "count": "BIGINT", "count_by_kind": "JSON",
           "first_seq": "BIGINT", "last_seq": "BIGINT"}}').body AS body
  FROM audit_records
  WHERE kind = 'retention'
);""",
)

#: every named view, in creation order (a view only reads those before it)
VIEWS: tuple[View, ...] = (
    _DECISIONS,
    _OUTCOMES,
    _CONVERSIONS,
    _CONSENTS,
    _OFFERS_TO_OPTED_OUT,
    _CONTACTS_PER_WINDOW,
    _CONTACT_CAP_BREACHES,
    _DECISIONS_BY_MODEL,
    _NO_OFFERS_BY_REASON,
    _DECLINES_BY_REASON,
    _DISCOUNTS_GIVEN,
    _AUDIT_ACCESS,
    _RETENTION_CUTS,
)
_BY_NAME = {view.name: view for view in VIEWS}
#: views whose answer depends on the contact caps given to install_views
NEEDS_CAPS = frozenset({"contacts_per_window", "contact_cap_breaches"})


def view(name: str) -> View:
    """The view called ``name``; ValueError naming the known ones otherwise."""
    found = _BY_NAME.get(name)
    if found is None:
        raise ValueError(f"view: no view named {name!r}; known views: {', '.join(_BY_NAME)}")
    return found


def attach_source(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    """Make ``audit_records`` on ``con`` read the log at ``path``, read-only.

    ``path`` is a DuckDB audit file (attached READ_ONLY), a Parquet export, or a sealed
    export segment's directory (its records.parquet). Raises AuditLocked when the service
    holds the DuckDB file, AuditError when ``path`` is not an audit log.
    """
    path = Path(path)
    if path.is_dir():
        if not (path / SEGMENT_RECORDS).is_file():
            raise AuditError(f"{path} is a directory without {SEGMENT_RECORDS} (not an export)")
        path = path / SEGMENT_RECORDS
    if not path.is_file():
        raise AuditError(f"{path}: no such file")
    if _is_duckdb(path):
        _attach_duckdb(con, path)
        source = f"{_ATTACHED}.{TABLE}"
    elif _is_parquet(path):
        source = f"read_parquet({_sql_string(str(path))})"
    else:
        raise AuditError(f"{path} is neither a DuckDB audit file nor a Parquet export")
    try:
        con.execute(f"CREATE OR REPLACE TEMP VIEW {TABLE} AS SELECT * FROM {source}")
    except duckdb.Error as exc:
        raise AuditError(f"{path}: cannot read as an audit log: {exc}") from exc
    _check_table(con, path)


def _attach_duckdb(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    try:
        con.execute(f"DETACH DATABASE IF EXISTS {_ATTACHED}")
        con.execute(f"ATTACH {_sql_string(str(path))} AS {_ATTACHED} (READ_ONLY)")
    except duckdb.IOException as exc:
        if "Could not set lock" not in str(exc):
            raise AuditError(f"cannot open audit log {path}: {exc}") from exc
        holder = _LOCK_HOLDER.search(str(exc))
        raise AuditLocked(
            f"audit log {path} is held by another process, normally the running offerdesk "
            f"service ({holder.group(0) if holder else exc}). DuckDB lets only one process "
            "open the file, even read-only, so it cannot be queried from here while the "
            "service runs."
        ) from exc
    except duckdb.Error as exc:
        if "already attached" in str(exc) or "file handle conflict" in str(exc):
            raise AuditLocked(
                f"audit log {path} is open in this process (an AuditStore); install the "
                "views on that store's reader instead"
            ) from exc
        raise AuditCorrupt(f"cannot open audit log {path}: {exc}") from exc


def _check_table(con: duckdb.DuckDBPyConnection, where: object) -> None:
    try:
        con.execute(f"SELECT {', '.join(COLUMNS)} FROM {TABLE} LIMIT 0")
    except duckdb.Error as exc:
        raise AuditError(
            f"{where}: cannot read as an audit log (no {TABLE} table with the columns "
            f"{', '.join(COLUMNS)}): {exc}"
        ) from exc


def install_views(con: duckdb.DuckDBPyConnection, caps: Iterable[ContactCaps] = ()) -> None:
    """Create every named view, and the contact_caps table holding ``caps``, as TEMP objects.

    ``con`` must already read an ``audit_records`` table or view (see attach_source). Safe
    to call again: it replaces the views and the caps.
    """
    given = list(caps)
    for cap in given:
        if not isinstance(cap, ContactCaps):
            raise TypeError(f"caps: expected ContactCaps, got {type(cap).__name__}")
    versions = [cap.catalog_version for cap in given]
    if len(set(versions)) != len(versions):
        raise ValueError("caps: one ContactCaps per catalog_version")
    _check_table(con, "connection")
    try:
        con.execute(CONTACT_CAPS_SQL)
        if given:
            con.executemany(
                "INSERT INTO contact_caps VALUES (?, ?, ?)",
                [[cap.catalog_version, cap.window_days, cap.max_offers] for cap in given],
            )
        for item in VIEWS:
            con.execute(item.sql)
    except duckdb.Error as exc:
        raise AuditError(f"cannot install the audit views: {exc}") from exc


def open_source(path: Path, caps: Iterable[ContactCaps] = ()) -> duckdb.DuckDBPyConnection:
    """An in-memory connection reading the log at ``path`` with every view installed."""
    con = duckdb.connect()
    try:
        attach_source(con, path)
        install_views(con, caps)
    except BaseException:
        con.close()
        raise
    return con


def catalog_versions(con: duckdb.DuckDBPyConnection) -> list[str]:
    """The catalog versions the log was served with, from its deployment records (cheap)."""
    try:
        rows = con.execute(
            f"SELECT DISTINCT json_extract_string(record, '$.body.catalog_version') AS v "
            f"FROM {TABLE} WHERE kind = 'deployment' AND v IS NOT NULL ORDER BY v"
        ).fetchall()
    except duckdb.Error as exc:
        raise AuditError(f"cannot read deployment records: {exc}") from exc
    return [str(v) for (v,) in rows]


def query_view(con: duckdb.DuckDBPyConnection, name: str, *, limit: int | None = None) -> Table:
    """Run the named view (installed on ``con``) and return its rows, at most ``limit``."""
    target = view(name)
    if limit is not None and (type(limit) is not int or limit < 1):
        raise ValueError(f"limit: must be a positive int, got {limit!r}")
    sql = f"SELECT * FROM {target.name}" + ("" if limit is None else f" LIMIT {limit}")
    try:
        cursor = con.execute(sql)
        rows = cursor.fetchall()
    except duckdb.Error as exc:
        raise AuditError(f"view {name} failed: {exc}") from exc
    description = cursor.description or []
    return Table(
        target.name,
        tuple(d[0] for d in description),
        tuple(str(d[1]) for d in description),
        tuple(tuple(row) for row in rows),
    )


def _json_value(value: Any, kind: str) -> Any:
    if value is None:
        return None
    if isinstance(value, datetime):
        # TIMESTAMP columns hold naive UTC, as recorded_at does.
        return encode_time(value if value.tzinfo else value.replace(tzinfo=UTC))
    if isinstance(value, date):
        return value.isoformat()
    if kind == "JSON" and isinstance(value, str):
        return json.loads(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, Mapping):
        return {str(k): _json_value(v, "") for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [_json_value(v, "") for v in value]
    return value
