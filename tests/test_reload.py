"""Switching model/catalog while serving, and profile refreshes that change consent."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import grpc
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from offerdesk.v1 import offerdesk_pb2 as pb
from offerdesk.v1 import offerdesk_pb2_grpc as pb_grpc
from test_server import request, treated_customers

from service.errors import CatalogError
from service.registry import Registry
from service.server import start
from service.settings import load_settings


def wait_for(predicate, seconds: float = 10.0) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


def test_catalog_switch_while_serving_and_a_bad_version_is_refused(data_dir: Path, world) -> None:
    settings = load_settings(None, data_dir=data_dir, listen="127.0.0.1:0", reload_poll_seconds=0.1)
    registry = Registry(settings.registry_dir)
    old = registry.active()
    raw = yaml.safe_load(registry.load_catalog(old.catalog).source)
    raw["policy"]["value_floor"] = "40.00"
    new_version = registry.save_catalog(yaml.safe_dump(raw).encode())
    running = start(settings)
    customers = treated_customers(world, settings)
    failures: list[Exception] = []
    versions: set[str] = set()
    stop = threading.Event()

    def traffic(stub: pb_grpc.OfferDeskStub) -> None:
        i = 0
        while not stop.is_set():
            try:
                versions.add(
                    stub.Decide(request(world, customers[i % 50], f"live-{i}")).catalog_version
                )
            except Exception as e:
                failures.append(e)
            i += 1

    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as ch:
            stub = pb_grpc.OfferDeskStub(ch)
            worker = threading.Thread(target=traffic, args=(stub,))
            worker.start()
            time.sleep(0.3)
            registry.activate(catalog=new_version)
            wait_for(lambda: running.desk.deployment.catalog.version == new_version)
            time.sleep(0.3)
            # A broken catalog made active behind the registry's back is refused at reload.
            broken = registry.catalogs_dir / "cat-broken.yaml"
            broken.write_text("catalog_id: x\ncurrency: usd\noffers: []\n")
            with pytest.raises(CatalogError):
                registry.activate(catalog="cat-broken")
            registry.active_path.write_text(
                json.dumps({"model": old.model, "catalog": "cat-broken"})
            )
            time.sleep(0.5)
            stop.set()
            worker.join()
            after = stub.Decide(request(world, customers[0], "after-broken"))
    finally:
        stop.set()
        running.stop()
    assert not failures, failures[:3]
    assert versions == {old.catalog, new_version}  # in-flight traffic saw both, never failed
    assert after.catalog_version == new_version  # the bad one never replaced the good one


def test_consent_change_in_the_profile_source_is_chained_and_respected(settings, world) -> None:
    running = start(settings)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as ch:
            stub = pb_grpc.OfferDeskStub(ch)
            cid = treated_customers(world, settings)[5]
            stub.Decide(request(world, cid, "c-1"))
            path = settings.profile_dir / "customers.parquet"
            table = pq.read_table(path)
            consent = [
                False if c == cid else v
                for c, v in zip(
                    table.column("customer_id").to_pylist(),
                    table.column("marketing_consent").to_pylist(),
                    strict=True,
                )
            ]
            index = table.schema.get_field_index("marketing_consent")
            table = table.set_column(
                index, table.schema.field(index), pa.array(consent, type=pa.bool_())
            )
            pq.write_table(table, path)
            assert running.desk.refresh_profiles() == 1
            after = stub.Decide(request(world, cid, "c-2"))
            pseudonym = running.desk.vault.lookup(cid)
        consents = [
            r.body["marketing_consent"]
            for r in running.desk.store.scan(["consent"])
            if r.subject == pseudonym
        ]
    finally:
        running.stop()
    assert consents == [True, False]
    assert after.kind == pb.NO_OFFER and after.no_offer_reason == pb.OPTED_OUT
