"""scripts/bench.py: every part runs against a real `offerdesk serve` and its figures add up.

A tiny plan (a small world, a small model, about a second per phase). Nothing here judges a
latency: the machine is shared, and the benchmark reports, it does not assert.
"""

from __future__ import annotations

import json
from dataclasses import replace
from types import ModuleType
from typing import Any

import pytest
from script_loader import load_script


def _load() -> ModuleType:
    return load_script("bench")


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return _load()


@pytest.fixture(scope="module")
def result(bench: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tiny = replace(
        bench.QUICK,
        customers=600,
        history_tickets=1500,
        iterations=30,
        depth=3,
        rate=50.0,
        warmup_seconds=0.5,
        open_seconds=1.5,
        outcome_rate=50.0,
        max_outcomes=20,
        concurrency=4,
        saturation_seconds=1.0,
        empty_calls=40,
        fsyncs=10,
        scored_decisions=10,
        sizes=((20, 3), (30, 3)),
        shap_rows=10,
    )
    return bench.run(tiny, tmp_path_factory.mktemp("bench"))  # type: ignore[no-any-return]


def _sane(summary: dict[str, Any], n: int | None = None) -> None:
    assert summary["n"] > 0 if n is None else summary["n"] == n
    assert 0 < summary["p50"] <= summary["p99"] <= summary["p999"] <= summary["max"]


@pytest.mark.slow
def test_every_decide_sent_on_schedule_is_answered_without_error(result: dict[str, Any]) -> None:
    d = result["decide"]
    assert d["sent"] == 75 and d["ok"] == 75 and d["errors"] == {}
    _sane(d["latency_ms"], 75)
    assert sum(d["kinds"].values()) == 75
    assert d["offer_latency_ms"]["n"] == d["kinds"].get("OFFER", 0)
    assert d["wal_kib_per_call"] > 0  # every decision is in the log's WAL
    assert 1 <= d["max_in_flight"] < result["server"]["max_concurrent_rpcs"]


@pytest.mark.slow
def test_outcomes_are_recorded_for_offers_the_decide_phases_made(result: dict[str, Any]) -> None:
    o = result["record_outcome"]
    assert 0 < o["sent"] <= 20
    assert o["ok"] == o["sent"] and o["errors"] == {}
    _sane(o["latency_ms"], o["sent"])


@pytest.mark.slow
def test_saturation_counts_calls_cpu_and_memory(result: dict[str, Any]) -> None:
    s = result["saturation"]
    assert s["ok"] == s["sent"] > 0 and s["errors"] == {}
    assert s["throughput_per_s"] == pytest.approx(s["ok"] / s["wall_s"], rel=0.01)
    _sane(s["latency_ms"], s["ok"])
    usage = s["usage"]
    assert 0 < usage["server_cpu_share"] <= 1.05
    assert 0 < usage["loadgen_cpu_share"] <= 1.05
    assert usage["server_rss_max_mib"] > 0
    assert usage["wal_checkpoints"] == len(usage["wal_checkpoints_at_s"])
    slow = s["slow_calls"]
    assert 0 <= slow["n"] <= s["ok"]
    if slow["n"]:
        assert 0 <= slow["sent_from_s"] <= slow["sent_to_s"] <= s["wall_s"]
    assert s["limited_by"]


@pytest.mark.slow
def test_floors_are_measured_and_the_decide_floor_is_their_sum(result: dict[str, Any]) -> None:
    f = result["floors"]
    _sane(f["empty_call_ms"], 40)
    _sane(f["fsync_4k_ms"], 10)
    _sane(f["audit_append_6k_ms"], 10)
    _sane(f["catboost_batches_ms"], 10)
    _sane(f["shap_one_row_ms"], 10)
    parts = ("empty_call_ms", "catboost_batches_ms", "shap_one_row_ms", "fsync_4k_ms")
    assert f["decide_floor_p50_ms"] == pytest.approx(sum(f[p]["p50"] for p in parts), abs=1e-3)


@pytest.mark.slow
def test_server_memory_is_read_and_it_stops_cleanly(result: dict[str, Any]) -> None:
    srv = result["server"]
    assert srv["rss_idle_mib"] > 0 and srv["rss_after_mib"] > 0
    assert srv["exit_code"] == 0


@pytest.mark.slow
def test_each_model_size_has_an_auc_and_additive_shap(result: dict[str, Any]) -> None:
    sizes = result["sizes"]
    assert [s["size"] for s in sizes] == ["20x3", "30x3"]
    assert [s["served"] for s in sizes] == [False, True]
    for s in sizes:
        assert 0 < s["validation_auc"] < 1
        _sane(s["shap_ms"], 30)  # 10 rows, 3 passes
        _sane(s["shap_fastest_of_3_ms"], 10)
        assert s["additivity_rows"] == 10 and s["additivity_max_gap"] < 1e-9


@pytest.mark.slow
def test_the_report_judges_every_target_and_the_figures_are_json(
    bench: ModuleType, result: dict[str, Any]
) -> None:
    assert len(result["targets"]) == 8
    assert all(isinstance(t["met"], bool) for t in result["targets"])
    text = bench.report(result)
    for t in result["targets"]:
        assert t["figure"] in text
    assert "Decide floor" in text and "30x3 (served)" in text
    json.dumps(result)
