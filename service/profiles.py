"""Profile source: customer profiles and the identity map, read with DuckDB, served from memory.

Any file DuckDB reads by path can stand in for the warehouse (Parquet by default; a format
that can hold owned_products as a list). The copy in memory is refreshed on an interval, so a
purchase or an opt-out made today counts today; Decide never queries DuckDB on its hot path.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from service.features import CUSTOMER_FIELDS


@dataclass(frozen=True)
class Snapshot:
    profiles: Mapping[str, Mapping[str, Any]]  # customer_id → declared profile values
    identities: Mapping[tuple[str, str], str]  # (source, external_id) → customer_id


class ProfileSource:
    """Loads and refreshes the in-memory copy; lookups are dictionary reads.

    A load that takes longer than `timeout` seconds fails with ValueError instead of hanging:
    a source that is slow or down (a stalled network mount, a file that never arrives) stops
    the start with a clear message, and a refresh keeps the previous copy. The stuck read is
    left to finish on its own thread (DuckDB cannot interrupt a blocked open or read); no second
    load starts while it is still running.
    """

    def __init__(self, profiles: Path, identities: Path, *, timeout: float = 60.0) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        self._profiles_path = profiles
        self._identities_path = identities
        self._timeout = timeout
        self._lock = threading.Lock()
        self._pending: threading.Thread | None = None
        self._snapshot = self._load_bounded()

    def resolve(self, source: str, external_id: str) -> str | None:
        """The one customer behind an id a helpdesk (or billing) knows, or None."""
        snap = self._snapshot
        customer = snap.identities.get((source, external_id))
        if customer is None and source == "billing" and external_id in snap.profiles:
            customer = external_id
        return customer

    def profile(self, customer_id: str) -> Mapping[str, Any] | None:
        return self._snapshot.profiles.get(customer_id)

    def __len__(self) -> int:
        return len(self._snapshot.profiles)

    def refresh(self) -> dict[str, bool | None]:
        """Reload; returns customers whose marketing consent changed (customer_id → new value)."""
        with self._lock:
            old = self._snapshot
            new = self._load_bounded()
            self._snapshot = new
        changed: dict[str, bool | None] = {}
        for cid, prof in new.profiles.items():
            before = old.profiles.get(cid)
            if before is not None and before.get("marketing_consent") != prof.get(
                "marketing_consent"
            ):
                changed[cid] = prof.get("marketing_consent")
        return changed

    def _load_bounded(self) -> Snapshot:
        if self._pending is not None and self._pending.is_alive():
            raise ValueError(
                f"profile source {self._profiles_path}: the previous load has not finished "
                "(the source is slow or down)"
            )
        result: list[Snapshot | BaseException] = []

        def load() -> None:
            try:
                result.append(self._load())
            except BaseException as e:
                result.append(e)

        worker = threading.Thread(target=load, daemon=True, name="offerdesk-profile-load")
        worker.start()
        worker.join(self._timeout)
        if worker.is_alive():
            self._pending = worker
            raise ValueError(
                f"profile source {self._profiles_path}: no answer within {self._timeout:g} s "
                "(profile_timeout_seconds); the source is slow or down"
            )
        outcome = result[0]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def _load(self) -> Snapshot:
        con = duckdb.connect(":memory:")
        try:
            cols = ", ".join(f'"{c}"' for c in CUSTOMER_FIELDS)
            try:
                rel = con.sql(f"SELECT customer_id, {cols} FROM {_relation(self._profiles_path)}")
            except duckdb.Error as e:
                raise ValueError(f"profile source {self._profiles_path}: {e}") from None
            names = rel.columns
            profiles = {
                row[0]: _typed(dict(zip(names[1:], row[1:], strict=True))) for row in rel.fetchall()
            }
            try:
                ids = con.sql(
                    "SELECT source, external_id, customer_id FROM "
                    f"{_relation(self._identities_path)}"
                ).fetchall()
            except duckdb.Error as e:
                raise ValueError(f"identity map {self._identities_path}: {e}") from None
        finally:
            con.close()
        return Snapshot(profiles, {(s, e): c for s, e, c in ids})


def _relation(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def _typed(row: dict[str, Any]) -> dict[str, Any]:
    """Coerce to the declared Python types so logged snapshots replay exactly (int stays int)."""
    out: dict[str, Any] = {}
    for name, typ in CUSTOMER_FIELDS.items():
        v = row.get(name)
        if v is None:
            continue
        if typ is list:
            out[name] = sorted(str(x) for x in v)
        elif typ is bool:
            out[name] = bool(v)
        elif typ is int:
            out[name] = int(v)
        elif typ is float:
            out[name] = float(v)
        else:
            out[name] = str(v)
    return out
