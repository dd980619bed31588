"""Replay: re-run logged decisions with their logged model and catalog, and name every difference.

The one definition of "replay a logged decision and compare" (`offerdesk audit replay` and the
tests use it): decide() is pure, so a logged decision re-run on its logged inputs must give the
same body, field for field, bit for bit. Reads the log read-only and streams it; never writes to
the log or the registry, and never compares what the server adds around decide()'s output.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import duckdb

from audit.errors import AuditError
from audit.records import StoredRecord, canonical_json
from audit.store import COLUMNS, TABLE, connect
from service.catalog import Catalog
from service.decide import DecisionInputs, decide
from service.errors import CatalogError, ModelError
from service.ranker import Models
from service.registry import Registry

#: how many mismatches, missing versions and failures a report keeps in detail (counts are exact)
MAX_DETAILS = 1000
_FETCH_ROWS = 1024
_INDEX = re.compile(r"\[\d+\]")
_DUCKDB_MAGIC = (8, b"DUCK")  # offset, bytes of DuckDB's main header
_PARQUET_MAGIC = b"PAR1"


class _Absent:
    """A field present on one side of a comparison only."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<absent>"


#: the value of a field that one side does not have
ABSENT: Final = _Absent()


@dataclass(frozen=True, slots=True)
class Mismatch:
    """One field of one decision that replays differently from how it was logged."""

    decision_id: str
    seq: int
    path: str  # e.g. "card.reasons[0].contribution", "actions[2].p_accept", "catalog_version"
    logged: Any  # plain JSON value, or ABSENT
    replayed: Any  # plain JSON value, or ABSENT

    @property
    def field(self) -> str:
        """The path with list indices dropped ("actions[].p_accept"): what counts group by."""
        return _INDEX.sub("[]", self.path)

    def to_record(self) -> dict[str, Any]:
        """Plain JSON; a side that does not have the field is left out."""
        out: dict[str, Any] = {"decision_id": self.decision_id, "seq": self.seq, "path": self.path}
        if self.logged is not ABSENT:
            out["logged"] = self.logged
        if self.replayed is not ABSENT:
            out["replayed"] = self.replayed
        return out


@dataclass(frozen=True, slots=True)
class MissingVersion:
    """A decision that cannot be replayed: the registry cannot give its model or catalog."""

    decision_id: str
    seq: int
    what: str  # "model" | "catalog"
    version: str
    problem: str

    def to_record(self) -> dict[str, Any]:
        return {
            "decision_id": self.decision_id,
            "seq": self.seq,
            "what": self.what,
            "version": self.version,
            "problem": self.problem,
        }


@dataclass(frozen=True, slots=True)
class ReplayFailure:
    """A decision that cannot be replayed: its record is malformed, or decide() raised."""

    decision_id: str
    seq: int
    problem: str

    def to_record(self) -> dict[str, Any]:
        return {"decision_id": self.decision_id, "seq": self.seq, "problem": self.problem}


@dataclass(frozen=True)
class ReplayReport:
    """What a replay found. ``total == identical + mismatched + not_replayed``.

    ``field_counts`` counts decisions per differing field (indices dropped: "why_not[].detail");
    ``missing_versions`` counts decisions per version the registry could not give. The detail
    tuples keep the first ``max_details`` entries each, in log order; the counts are exact.
    """

    total: int
    identical: int
    mismatched: int
    not_replayed: int
    field_counts: Mapping[str, int]
    missing_versions: Mapping[str, int]
    mismatches: tuple[Mismatch, ...]
    missing: tuple[MissingVersion, ...]
    failures: tuple[ReplayFailure, ...]
    seconds: float

    @property
    def ok(self) -> bool:
        """Every decision replayed, and every one identically."""
        return self.identical == self.total

    def to_record(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "identical": self.identical,
            "mismatched": self.mismatched,
            "not_replayed": self.not_replayed,
            "seconds": self.seconds,
            "field_counts": dict(self.field_counts),
            "missing_versions": dict(self.missing_versions),
            "mismatches": [m.to_record() for m in self.mismatches],
            "missing": [m.to_record() for m in self.missing],
            "failures": [f.to_record() for f in self.failures],
        }


def replay_records(
    records: Iterable[StoredRecord],
    registry: Registry,
    *,
    max_details: int = MAX_DETAILS,
    progress: Callable[[int], None] | None = None,
) -> ReplayReport:
    """Replay every decision record with the model and catalog versions it names, and compare.

    Records of other kinds are skipped. Each version is loaded from the registry once; one the
    registry cannot give is reported for every decision that names it, and the run goes on.
    ``progress`` is called with the number of decisions done after each one.

    Compared: everything decide() returns (``Decision.to_record``: group, kind, no-offer reason,
    agent message, greedy and chosen action, exploration, propensity, every candidate's scores
    and probability, the contact summary, the card with its firing rule, reasons and SHAP, the
    why-nots and rule errors), exactly, types included. Also: that the logged inputs read back
    unchanged (``inputs.*``; a logged input that replay would drop is a mismatch) and that the
    catalog file still hashes to its version (``catalog_version``). Not compared: what the
    server adds around decide() (ids, hashes, helpdesk, agent, locale, trace id, times).
    """
    if max_details < 0:
        raise ValueError("max_details must be 0 or more")
    started = time.perf_counter()
    versions = _Versions(registry)
    total = identical = mismatched = not_replayed = 0
    field_counts: Counter[str] = Counter()
    missing_versions: Counter[str] = Counter()
    mismatches: list[Mismatch] = []
    missing: list[MissingVersion] = []
    failures: list[ReplayFailure] = []
    for record in records:
        if record.kind != "decision":
            continue
        total += 1
        outcome = _replay_one(record, versions)
        if isinstance(outcome, ReplayFailure):
            not_replayed += 1
            if len(failures) < max_details:
                failures.append(outcome)
        elif outcome and isinstance(outcome[0], MissingVersion):
            not_replayed += 1
            for m in outcome:
                assert isinstance(m, MissingVersion)
                missing_versions[m.version] += 1
                if len(missing) < max_details:
                    missing.append(m)
        elif outcome:
            mismatched += 1
            found = [m for m in outcome if isinstance(m, Mismatch)]
            field_counts.update({m.field for m in found})
            mismatches.extend(found[: max(0, max_details - len(mismatches))])
        else:
            identical += 1
        if progress is not None:
            progress(total)
    return ReplayReport(
        total,
        identical,
        mismatched,
        not_replayed,
        _by_count(field_counts),
        _by_count(missing_versions),
        tuple(mismatches),
        tuple(missing),
        tuple(failures),
        time.perf_counter() - started,
    )


def _replay_one(
    record: StoredRecord, versions: _Versions
) -> ReplayFailure | list[Mismatch] | list[MissingVersion]:
    seq = record.seq
    decision_id = record.ref or f"seq {seq}"
    try:
        body = record.body
        decision_id = str(body.get("decision_id", decision_id))
        model_version = body["model_version"]
        catalog_version = body["catalog_version"]
        logged_inputs = body["inputs"]
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        return ReplayFailure(decision_id, seq, f"not a decision record: {_describe(e)}")

    models = versions.models(model_version)
    catalog = versions.catalog(catalog_version)
    missing = [
        MissingVersion(decision_id, seq, what, version, loaded)
        for what, version, loaded in (
            ("model", model_version, models),
            ("catalog", catalog_version, catalog),
        )
        if isinstance(loaded, str)
    ]
    if missing:
        return missing
    assert isinstance(models, Models) and isinstance(catalog, Catalog)

    try:
        inputs = DecisionInputs.from_record(logged_inputs)
        reread = _plain(inputs.to_record())
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        return ReplayFailure(decision_id, seq, f"inputs cannot be read: {_describe(e)}")
    try:
        decision = decide(inputs, models, catalog)
    except Exception as e:  # a replay tool reports a crashing decision and goes on
        return ReplayFailure(decision_id, seq, f"decide() raised {_describe(e)}")
    try:
        replayed = _plain(decision.to_record(catalog))
    except (ValueError, TypeError) as e:  # the server could not have logged this either
        return ReplayFailure(decision_id, seq, f"replayed decision cannot be logged: {e}")

    found: list[tuple[str, Any, Any]] = []
    if catalog.version != catalog_version:
        found.append(("catalog_version", catalog_version, catalog.version))
    # Keys only the re-read inputs have are defaults for inputs added after this record was
    # logged; a key only the log has would be an input replay cannot see.
    _diff(logged_inputs, reread, "inputs", found, new_keys_ok=True)
    for key, value in replayed.items():
        _diff(body.get(key, ABSENT), value, key, found, new_keys_ok=False)
    return [Mismatch(decision_id, seq, path, a, b) for path, a, b in found]


def _diff(
    logged: Any, replayed: Any, path: str, out: list[tuple[str, Any, Any]], *, new_keys_ok: bool
) -> None:
    """Append (path, logged, replayed) for every leaf that differs, exactly and by type."""
    if type(logged) is dict and type(replayed) is dict:
        for key in sorted(logged.keys() | replayed.keys()):
            if new_keys_ok and key not in logged:
                continue
            _diff(
                logged.get(key, ABSENT),
                replayed.get(key, ABSENT),
                f"{path}.{key}",
                out,
                new_keys_ok=new_keys_ok,
            )
    elif type(logged) is list and type(replayed) is list:
        for i in range(max(len(logged), len(replayed))):
            _diff(
                logged[i] if i < len(logged) else ABSENT,
                replayed[i] if i < len(replayed) else ABSENT,
                f"{path}[{i}]",
                out,
                new_keys_ok=new_keys_ok,
            )
    elif not _same(logged, replayed, _shap(path)):
        out.append((path, logged, replayed))


#: SHAP values match to this (relative to max(1, |value|)), every other float bit for bit:
#: the same exact values may come from CatBoost's ShapValues or from the leaf table
#: (explain.contributions.ShapTable), which agree to ~3e-16 but not always in the last bit
SHAP_TOLERANCE = 1e-12


def _shap(path: str) -> bool:
    return path.startswith("card.shap.") or (
        path.startswith("card.reasons[") and path.endswith(".contribution")
    )


def _same(a: Any, b: Any, shap: bool = False) -> bool:
    # By type as well as value: 1 and 1.0 and True are equal in Python but not in the log.
    if type(a) is not type(b):
        return False
    if type(a) is float:
        if shap:
            return abs(a - b) <= SHAP_TOLERANCE * max(1.0, abs(a))
        return bool(a.hex() == b.hex())  # bit for bit (0.0 and -0.0 differ)
    return bool(a == b)


def _plain(body: Mapping[str, Any]) -> dict[str, Any]:
    """The body as the log would hold it: canonical JSON, parsed back (tuples become lists)."""
    parsed = json.loads(canonical_json(body))
    assert isinstance(parsed, dict)
    return parsed


def _by_count(counts: Counter[str]) -> dict[str, int]:
    """Most first, then by name: the same order on every run (set order is per-process)."""
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def _describe(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


class _Versions:
    """Models and catalogs by version, each loaded (or found missing) once per replay."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry
        self._models: dict[str, Models | str] = {}
        self._catalogs: dict[str, Catalog | str] = {}

    def models(self, version: str) -> Models | str:
        if version not in self._models:
            try:
                self._models[version] = self._registry.load_models(version)
            except ModelError as e:  # missing, or its files do not load
                self._models[version] = str(e)
        return self._models[version]

    def catalog(self, version: str) -> Catalog | str:
        if version not in self._catalogs:
            try:
                self._catalogs[version] = self._registry.load_catalog(version)
            except ModelError as e:  # not in the registry
                self._catalogs[version] = str(e)
            except CatalogError as e:  # its file was changed into one that does not parse
                self._catalogs[version] = f"catalog {version} no longer parses: {e}"
        return self._catalogs[version]


# -- reading the log -------------------------------------------------------------------------


def parse_time(text: str) -> datetime:
    """A date (midnight UTC) or an ISO time (UTC unless it names an offset); ValueError if not."""
    value = text.strip()
    try:
        if len(value) == 10:
            return datetime.combine(date.fromisoformat(value), datetime.min.time(), UTC)
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"{text!r} is not a date (2026-11-20) or an ISO time (2026-11-20T15:00:00Z)"
        ) from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


class DecisionLog:
    """The decision records of one audit log file, read-only, streamed in file order.

    Only decisions with ``since <= recorded_at < until`` (UTC; either bound optional) are read,
    at most ``limit`` of them. Open with ``DecisionLog.open``; close it (or use ``with``).
    """

    def __init__(
        self, path: Path, con: duckdb.DuckDBPyConnection, sql: str, params: list[Any]
    ) -> None:
        self.path = path
        self._con = con
        self._sql = sql
        self._params = params

    @classmethod
    def open(
        cls,
        path: Path,
        *,
        parquet: bool = False,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int | None = None,
    ) -> DecisionLog:
        """Open a DuckDB audit file, or with ``parquet`` a Parquet export of one.

        Raises AuditLocked while the service holds the DuckDB file (DuckDB lets one process
        open it), and AuditError when the file is missing or is not an audit log.
        """
        path = Path(path)
        if not path.is_file():
            raise AuditError(f"{path}: no such file")
        offset, magic = (0, _PARQUET_MAGIC) if parquet else _DUCKDB_MAGIC
        with path.open("rb") as f:
            if f.read(offset + len(magic))[offset:] != magic:
                raise AuditError(f"{path} is not a {'Parquet' if parquet else 'DuckDB'} file")
        if limit is not None and limit < 1:
            raise ValueError("limit must be at least 1")
        # A decision past its retention (cut, audit.retention) has nothing left to replay.
        where, params = ["kind = 'decision'", "record <> ''"], []
        for op, bound in ((">=", since), ("<", until)):
            if bound is not None:
                if bound.tzinfo is None:
                    raise ValueError("since and until must be timezone-aware")
                where.append(f"recorded_at {op} ?")
                params.append(bound.astimezone(UTC).replace(tzinfo=None))
        source = f"read_parquet({_sql_string(str(path))})" if parquet else TABLE
        sql = f"SELECT {', '.join(COLUMNS)} FROM {source} WHERE {' AND '.join(where)}"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        con = duckdb.connect() if parquet else connect(path, read_only=True)
        log = cls(path, con, sql, params)
        try:
            log.count()  # fails now, not mid-stream, if this is not an audit log
        except BaseException:
            con.close()
            raise
        return log

    def count(self) -> int:
        """How many decisions iterating will give (one cheap scan of the filter columns)."""
        row = self._execute(f"SELECT count(*) FROM ({self._sql})").fetchone()
        assert row is not None
        return int(row[0])

    def __iter__(self) -> Iterator[StoredRecord]:
        cursor = self._execute(self._sql)
        try:
            while rows := cursor.fetchmany(_FETCH_ROWS):
                for row in rows:
                    yield _stored(row)
        except duckdb.Error as e:
            raise AuditError(f"cannot read decisions from {self.path}: {e}") from e

    def _execute(self, sql: str) -> duckdb.DuckDBPyConnection:
        try:
            return self._con.execute(sql, self._params)
        except duckdb.Error as e:
            raise AuditError(f"{self.path} cannot be read as an audit log: {e}") from e

    def close(self) -> None:
        self._con.close()

    def __enter__(self) -> DecisionLog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _stored(row: tuple[Any, ...]) -> StoredRecord:
    seq, kind, recorded_at, subject, ref, record, prev_hash, digest = row
    return StoredRecord(
        seq=int(seq),
        kind=kind,
        recorded_at=recorded_at.replace(tzinfo=UTC)
        if recorded_at.tzinfo is None
        else recorded_at.astimezone(UTC),
        subject=subject,
        ref=ref,
        record=record.encode("utf-8") if isinstance(record, str) else bytes(record),
        prev_hash=bytes(prev_hash),
        hash=bytes(digest),
    )


def _sql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


__all__ = [
    "ABSENT",
    "MAX_DETAILS",
    "DecisionLog",
    "Mismatch",
    "MissingVersion",
    "ReplayFailure",
    "ReplayReport",
    "parse_time",
    "replay_records",
]
