"""Catalog: the example passes; every error names file, offer and rule; the CLI says so."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from explain.reasons import UNKNOWN_CATEGORY
from service.catalog import check_catalog, load_catalog, parse_catalog
from service.errors import CatalogError
from service.features import MISSING_CATEGORY

EXAMPLE = Path(__file__).resolve().parent.parent / "service" / "examples" / "catalog.yaml"


def edited(change) -> bytes:
    raw = yaml.safe_load(EXAMPLE.read_bytes())
    change(raw)
    return yaml.safe_dump(raw).encode()


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args], capture_output=True, text=True
    )


def test_example_catalog_loads_and_checks_clean() -> None:
    catalog = load_catalog(EXAMPLE)
    assert len(catalog.offers) == 12 and check_catalog(catalog) == []
    assert all(1 <= len(o.variants) <= 3 for o in catalog.offers)
    assert catalog.version == load_catalog(EXAMPLE).version


def test_version_is_the_content_hash() -> None:
    a = parse_catalog(EXAMPLE.read_bytes())
    b = parse_catalog(EXAMPLE.read_bytes() + b"\n# comment\n")
    assert a.version != b.version and a.version.startswith("cat-")


def test_syntax_error_names_file_offer_and_rule() -> None:
    def change(raw):
        raw["offers"][1]["eligibility"] = [
            {"id": "broken", "description": "x", "expression": "customer.tenure_months >="}
        ]

    with pytest.raises(CatalogError) as e:
        parse_catalog(edited(change), "acme.yaml")
    assert "acme.yaml: offer storage-1tb, rule broken: CEL:" in str(e.value)


def test_schema_errors_name_offer_and_variant_by_id() -> None:
    def change(raw):
        raw["offers"][0]["variants"][1]["price"] = "-3"
        raw["offers"][2]["kind"] = "bundle"

    with pytest.raises(CatalogError) as e:
        parse_catalog(edited(change), "acme.yaml")
    text = str(e.value)
    assert "offer seats-10, variant save-10, price" in text
    assert "offer premium-support, kind" in text


def test_duplicate_rule_ids_and_missing_full_price_are_refused() -> None:
    def dup(raw):
        raw["offers"][1]["triggers"][0]["id"] = "seats-near-limit"

    with pytest.raises(CatalogError, match="seats-near-limit"):
        parse_catalog(edited(dup))

    def two_full(raw):
        raw["offers"][0]["variants"][1]["price"] = raw["offers"][0]["variants"][0]["price"]

    with pytest.raises(CatalogError, match="exactly one variant"):
        parse_catalog(edited(two_full))


def test_check_runs_rules_on_typed_samples_and_catches_type_errors() -> None:
    def change(raw):
        raw["offers"][3]["triggers"][0]["expression"] = "ticket.csat >= 4"  # unguarded optional
        raw["offers"][4]["eligibility"][0]["expression"] = "customer.plan > 3"  # type error

    catalog = parse_catalog(edited(change), "acme.yaml")
    problems = check_catalog(catalog)
    assert any(p.startswith("offer sso, rule sso-access-ticket: sparse sample") for p in problems)
    assert any(
        p.startswith("offer annual-plan, rule annual-only-monthly: complete sample")
        for p in problems
    )


def test_catalog_check_cli(tmp_path: Path) -> None:
    ok = cli("catalog", "check", str(EXAMPLE))
    assert ok.returncode == 0 and "12 offers" in ok.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(edited(lambda raw: raw["guardrails"][0].update(expression="!customer.")))
    out = cli("catalog", "check", str(bad))
    assert out.returncode == 1
    assert "bad.yaml" in out.stderr and "no-sale-during-billing-dispute" in out.stderr


def test_explain_and_features_agree_on_the_missing_category_marker() -> None:
    assert UNKNOWN_CATEGORY == MISSING_CATEGORY


def test_rules_cannot_read_variables_their_level_does_not_set() -> None:
    def change(raw):
        raw["offers"][0]["triggers"][0]["expression"] = "variant.discount_pct > 0.0"
        raw["guardrails"][0]["expression"] = "offer.lever > 0.0"

    with pytest.raises(CatalogError) as e:
        parse_catalog(edited(change), "acme.yaml")
    text = str(e.value)
    assert "offer seats-10, rule seats-near-limit: reads variant" in text
    assert "guardrails, rule no-sale-during-billing-dispute: reads offer" in text


@pytest.mark.parametrize(("offers", "rules"), [(20, 50), (10, 10), (10, 500), (1000, 1200)])
def test_synthetic_catalogs_have_exactly_the_size_asked_for(offers: int, rules: int) -> None:
    from service.catalog_synth import synthetic_catalog

    catalog = parse_catalog(synthetic_catalog(offers, rules), "synthetic")
    assert len(catalog.offers) == offers and len(catalog.rules()) == rules
    assert {len(o.variants) for o in catalog.offers} == {3}
    assert len({o.id for o in catalog.offers}) == offers
    for o in catalog.offers:
        full, *discounts = o.variants
        assert full.discount_bps == 0 and all(v.price_minor < full.price_minor for v in discounts)
    with pytest.raises(ValueError, match="one trigger per offer"):
        synthetic_catalog(10, 9)
