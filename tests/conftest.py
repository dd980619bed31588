"""Shared expensive real things, built once per session: a simulated world and a trained model.

Server tests each get their own data directory (own audit file, vault and secrets) with the
session's registry and profiles copied in, so tests never share a log.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from offerdesk.v1 import offerdesk_pb2_grpc as pb_grpc

from service.catalog import Catalog, load_catalog
from service.ranker import Models
from service.registry import Registry
from service.server import Running, start
from service.settings import Settings, load_settings
from service.simulator import World, load_history, load_world, simulate
from service.training import fit, training_rows_from_history

CATALOG_PATH = Path(__file__).resolve().parent.parent / "service" / "examples" / "catalog.yaml"


@pytest.fixture(scope="session")
def catalog() -> Catalog:
    return load_catalog(CATALOG_PATH)


@pytest.fixture(scope="session")
def trained_dir(catalog: Catalog, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data directory with profiles and an active (small, real) model and catalog."""
    root = tmp_path_factory.mktemp("trained")
    simulate(catalog, root / "profiles", customers=1500, history_tickets=9000, seed=5)
    trained = fit(
        *training_rows_from_history(load_history(root / "profiles"), catalog), iterations=80, seed=0
    )
    registry = Registry(root / "registry")
    version = registry.save_models(trained.ranker, trained.organic, trained.card)
    registry.save_catalog(catalog.source)
    registry.activate(model=version, catalog=catalog.version)
    return root


@pytest.fixture(scope="session")
def models(trained_dir: Path) -> Models:
    registry = Registry(trained_dir / "registry")
    return registry.load_models(registry.active().model)


@pytest.fixture(scope="session")
def world(trained_dir: Path) -> World:
    return load_world(trained_dir / "profiles")


@pytest.fixture
def data_dir(trained_dir: Path, tmp_path: Path) -> Path:
    d = tmp_path / "var"
    shutil.copytree(trained_dir / "registry", d / "registry")
    shutil.copytree(trained_dir / "profiles", d / "profiles")
    return d


@pytest.fixture
def settings(data_dir: Path) -> Settings:
    return load_settings(None, data_dir=data_dir, listen="127.0.0.1:0")


@pytest.fixture
def server(settings: Settings) -> Iterator[Running]:
    running = start(settings)
    yield running
    running.stop()


@pytest.fixture
def stub(server: Running) -> Iterator[pb_grpc.OfferDeskStub]:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield pb_grpc.OfferDeskStub(channel)


@pytest.fixture(scope="session")
def traffic_log(trained_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Six and a half weeks of simulated production in a real audit log: 2,400 resolved
    tickets played through a real server's Desk on a simulated clock (service.traffic), with
    outcomes,
    prompted and organic conversions, treated and holdout customers. The server is stopped,
    so the file can be opened read-only. Tests must not write to it (copy it first)."""
    from datetime import UTC, datetime

    from service.traffic import play

    d = tmp_path_factory.mktemp("traffic") / "var"
    shutil.copytree(trained_dir / "registry", d / "registry")
    shutil.copytree(trained_dir / "profiles", d / "profiles")
    settings = load_settings(None, data_dir=d, listen="127.0.0.1:0")
    running = start(settings)
    try:
        play(
            running.desk,
            load_world(d / "profiles"),
            tickets=2400,
            start=datetime(2026, 10, 1, tzinfo=UTC),
            days=45,
            seed=5,
        )
    finally:
        running.stop()
    return settings
