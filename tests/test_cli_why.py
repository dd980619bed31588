"""`offerdesk audit why` and `offerdesk audit query` on a real served log: readable report,
JSON, views in three formats, and one clear line with the right exit code for every refusal."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path

import pytest
from audit_log_fixture import ServedLog, decide_request, served_log
from typer.testing import CliRunner

from audit.vault import Vault
from audit.views import VIEWS
from service.cli import app
from service.server import Running
from service.settings import Settings
from service.simulator import World


@pytest.fixture(scope="module")
def served(trained_dir: Path, world: World, tmp_path_factory: pytest.TempPathFactory) -> ServedLog:
    return served_log(trained_dir, world, tmp_path_factory)


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["audit", *args], env={"COLUMNS": "160"})
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stdout, result.stderr


def data_dir(served: ServedLog) -> str:
    return str(served.settings.data_dir)


def test_why_prints_one_panel_per_decision_with_what_was_shown_and_the_outcome(
    served: ServedLog,
) -> None:
    assert served.converted is not None
    cid, did = served.converted
    card = served.offers[did].card
    code, out, err = run("why", "--customer", cid, "--data-dir", data_dir(served))
    assert code == 0, err
    decided = [d for d, c in served.customer_of.items() if c == cid]
    assert f"{len(decided)} decision" in out and out.count("╭─") == len(decided)
    assert did in out and f"{card.offer_name} — {card.variant.name}" in out
    assert f"Rule       {card.firing_rule.id}" in out
    assert "accepted — recorded by agent-7" in out and f"Bought     {card.product}" in out
    assert "model mdl-" in out and "catalog cat-" in out and "propensity" in out
    assert cid in out and "Traceback" not in err


def test_why_json_is_the_library_document(served: ServedLog) -> None:
    cid = served.capped[0]
    code, out, err = run("why", "--customer", cid, "--json", "--data-dir", data_dir(served))
    assert code == 0, err
    doc = json.loads(out)
    assert [d["decision_id"] for d in doc["decisions"]] == [
        d for d, c in served.customer_of.items() if c == cid
    ]
    assert doc["decision_count"] == len(doc["decisions"]) and doc["subjects"][0].startswith("p_")
    shown = [d for d in doc["decisions"] if d["kind"] == "offer"]
    assert shown and all(d["firing_rule"]["id"] and d["outcome"] for d in shown)
    # --until takes a whole day: the day before the first decision leaves nothing, the day of
    # the last one everything.
    first = date.fromisoformat(doc["decisions"][0]["decided_at"][:10])
    last = doc["decisions"][-1]["decided_at"][:10]
    for until, count in ((str(first - timedelta(days=1)), 0), (last, doc["decision_count"])):
        code, out, _ = run(
            "why", "--customer", cid, "--json", "--until", until, "--data-dir", data_dir(served)
        )
        assert code == 0 and json.loads(out)["decision_count"] == count
    code, out, _ = run(
        "why", "--customer", cid, "--json", "--since", "2999-01-01", "--data-dir", data_dir(served)
    )
    assert code == 0 and json.loads(out)["decisions"] == []


def test_why_reads_a_parquet_export_with_the_same_answer(served: ServedLog) -> None:
    cid = served.capped[1]
    args = ("why", "--customer", cid, "--json", "--data-dir", data_dir(served))
    _, from_file, _ = run(*args)
    code, from_export, err = run(*args, "--export", str(served.parquet))
    assert code == 0, err
    assert json.loads(from_export) == json.loads(from_file)


def test_an_unknown_or_erased_customer_exits_1_and_says_so(
    served: ServedLog, tmp_path: Path
) -> None:
    code, out, err = run("why", "--customer", "acct-nobody", "--data-dir", data_dir(served))
    assert code == 1 and out == ""
    assert "'acct-nobody' has no pseudonym" in err and "erased" in err
    copy = tmp_path / "var"
    shutil.copytree(served.settings.data_dir, copy)
    cid = served.capped[0]
    with Vault.open(copy / "vault.sqlite") as vault:
        assert vault.erase(cid) is not None
    code, _, err = run("why", "--customer", cid, "--data-dir", str(copy))
    assert code == 1 and f"'{cid}' has no pseudonym" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--since", "yesterday"), "--since: 'yesterday' is not a date"),
        (("--until", "2026-13-40"), "--until: '2026-13-40' is not a date"),
        (("--db", "X", "--export", "Y"), "--db and --export: give one"),
        (("--export", "missing.parquet"), "--export: missing.parquet: no such file"),
        (("--offer", " "), "--offer: give an offer id"),
    ],
)
def test_bad_why_options_exit_2_naming_the_option(
    served: ServedLog, args: tuple[str, ...], message: str
) -> None:
    code, _, err = run("why", "--customer", served.capped[0], "--data-dir", data_dir(served), *args)
    assert code == 2 and message in err, err


def test_query_lists_the_views_and_runs_each_format(served: ServedLog) -> None:
    code, out, _ = run("query", "--list")
    assert code == 0 and all(view.name in out for view in VIEWS)
    d = data_dir(served)
    code, out, err = run("query", "offers_to_opted_out", "--format", "json", "--data-dir", d)
    assert code == 0, err
    assert json.loads(out) == {
        "view": "offers_to_opted_out",
        "columns": [
            "seq",
            "recorded_at",
            "decision_id",
            "subject",
            "offer_id",
            "variant_id",
            "consent_seq",
            "last_consent",
            "consent_in_inputs",
        ],
        "row_count": 0,
        "rows": [],
    }
    code, out, _ = run("query", "decisions", "--format", "csv", "--limit", "5", "--data-dir", d)
    table = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and len(table) == 5 and table[0]["decision_id"].startswith("d_")
    code, out, _ = run("query", "decisions_by_model", "--data-dir", d)
    assert code == 0 and "decisions_by_model: 1 row" in out and "mdl-" in out
    # The registry holds the catalog, so caps are known and breaches are really checked.
    code, out, err = run("query", "contact_cap_breaches", "--format", "json", "--data-dir", d)
    assert code == 0 and json.loads(out)["rows"] == [] and err == ""


def test_query_on_an_export_without_the_registry_warns_that_caps_are_unknown(
    served: ServedLog, tmp_path: Path
) -> None:
    code, out, err = run(
        "query",
        "contact_cap_breaches",
        "--format",
        "json",
        "--export",
        str(served.parquet),
        "--data-dir",
        str(tmp_path),
    )
    assert code == 0 and "contact caps unknown for catalog cat-" in err
    assert {r["problem"] for r in json.loads(out)["rows"]} == {
        "cap unknown for this catalog version"
    }


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "NAME: give a view name, or --list"),
        (("nope",), "view: no view named 'nope'; known views: decisions"),
        (("decisions", "--format", "xml"), "--format: 'xml' is not table, csv or json"),
    ],
)
def test_bad_query_arguments_exit_2_naming_them(
    served: ServedLog, args: tuple[str, ...], message: str
) -> None:
    code, _, err = run("query", *args, "--data-dir", data_dir(served))
    assert code == 2 and message in " ".join(err.split()), err


def test_a_log_held_by_the_running_service_exits_3_and_points_to_the_export(
    stub, server: Running, world: World, settings: Settings
) -> None:
    cid = next(c for c in sorted(world.profiles) if world.profiles[c].get("marketing_consent"))
    stub.Decide(decide_request(world, cid, "held-1", 0))
    for args in (
        ["why", "--customer", cid],
        ["query", "decisions"],
    ):
        cli = [sys.executable, "-m", "service.cli", "audit", *args]
        held = subprocess.run(
            [*cli, "--data-dir", str(settings.data_dir)], capture_output=True, text=True
        )
        assert held.returncode == 3, held.stderr
        said = " ".join(held.stderr.split())
        assert "held by another process" in said and "--export" in said
        assert "Traceback" not in held.stderr
