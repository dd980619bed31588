"""Retention: apply the settings' retention periods to the audit log (audit.retention).

Needs only the audit store and the catalog's contact policy, so the running desk (its
periodic job and the admin API's Cut) and the offline `offerdesk audit cut` share this one
definition. The cut itself is the store's (one transaction, a chained `retention` record);
what this adds is the business check: decisions and outcomes must outlive everything the
contact policy and the features read back, or a cut would change what decide() sees.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from audit import retention
from audit.records import encode_time
from audit.store import AuditStore, CutRequest
from service import policy
from service.catalog import ContactPolicySpec
from service.erasure import check_operator
from service.errors import FailedPrecondition, InvalidArgument

#: rows per cut step. Measured on a 1M-record log cutting a 684k-row backlog, with a writer
#: appending meanwhile: in one transaction, writers stalled 10.4 s; in steps of 50k, 31 s in
#: all and stalls up to 3.6 s; of 10k, 94 s and up to 5.1 s (DuckDB's checkpoints of the
#: emptied rows dominate). A daily cut is one step.
STEP_ROWS = 50_000
#: the kinds decide() reads back through the contact book (offers shown, their outcomes)
_READ_BACK = ("decision", "outcome")


@dataclass(frozen=True)
class CutSummary:
    """What a cut did (or, for a dry run, would do)."""

    dry_run: bool
    at: datetime
    cutoffs: Mapping[str, datetime]
    count_by_kind: Mapping[str, int]
    audit_sequence: int | None  # the `retention` record; None for a dry run
    cut_seqs: frozenset[int] = frozenset()

    @property
    def count(self) -> int:
        return sum(self.count_by_kind.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "at": encode_time(self.at),
            "cutoffs": {kind: encode_time(at) for kind, at in sorted(self.cutoffs.items())},
            "count": self.count,
            "count_by_kind": dict(sorted(self.count_by_kind.items())),
            "audit_sequence": self.audit_sequence,
        }


def check_policy(retention_days: Mapping[str, int], contact: ContactPolicySpec | None) -> None:
    """Refuse periods shorter than what the contact policy and the features read back."""
    if contact is None:
        if any(kind in retention_days for kind in _READ_BACK):
            raise FailedPrecondition(
                "no active catalog, so the contact policy's windows are unknown: train or "
                "activate a catalog before cutting decisions or outcomes"
            )
        return
    needed = policy.lookback_days(contact)
    for kind in _READ_BACK:
        days = retention_days.get(kind)
        if days is not None and days <= needed:
            raise InvalidArgument(
                f"audit.retention_days.{kind}",
                f"{days} days is too short: the contact policy and the features read "
                f"{needed} days back, so keep {kind} records for more than that",
            )


def cut(
    store: AuditStore,
    retention_days: Mapping[str, int],
    requested_by: str,
    now: datetime,
    contact: ContactPolicySpec | None,
    *,
    dry_run: bool = False,
    step_rows: int = STEP_ROWS,
) -> CutSummary:
    """Cut (or, ``dry_run``, count) what the retention periods say is due at ``now``.

    ``audit_sequence`` of the answer is the last cut record's (a backlog is cut in steps)."""
    check_operator(requested_by)
    if not retention_days:
        raise FailedPrecondition(
            "audit.retention_days is empty: every record is kept, so nothing is ever cut"
        )
    check_policy(retention_days, contact)
    cutoffs = retention.cutoffs(retention_days, now)
    if dry_run:
        return CutSummary(True, now, cutoffs, store.due(cutoffs), None)
    # In steps of at most ~step_rows records, oldest first, each its own transaction and
    # cut record, so that a backlog (the first cut of an old log) holds the writer less.
    counts: dict[str, int] = dict.fromkeys(cutoffs, 0)
    seqs: set[int] = set()
    while True:
        step = store.cut_step(cutoffs, step_rows)
        last = step is None
        these = cutoffs if step is None else {k: min(at, step) for k, at in cutoffs.items()}
        stored, rows = store.cut(
            CutRequest(these, dict(retention_days), requested_by, now, checkpoint=last)
        )
        for kind, n in stored.body["count_by_kind"].items():
            counts[kind] += n
        seqs.update(row.seq for row in rows)
        if last:
            return CutSummary(False, now, cutoffs, counts, stored.seq, frozenset(seqs))


__all__ = ["CutSummary", "check_policy", "cut"]
