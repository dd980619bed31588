"""A profile source that is slow or down fails in bounded time; it never hangs the service."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from service.profiles import ProfileSource
from service.server import start
from service.settings import load_settings


def _release(fifo: Path) -> None:
    """Let a reader blocked on the FIFO go: open it for writing and close it (EOF)."""
    fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    os.close(fd)


def test_a_source_that_never_answers_stops_the_start_in_bounded_time(data_dir: Path) -> None:
    stalled = data_dir / "stalled.parquet"
    os.mkfifo(stalled)  # opening it blocks until someone writes: a stalled mount
    settings = load_settings(
        None,
        data_dir=data_dir,
        listen="127.0.0.1:0",
        profiles_path=stalled,
        profile_timeout_seconds=1,
    )
    began = time.monotonic()
    try:
        with pytest.raises(ValueError, match=r"no answer within 1 s \(profile_timeout_seconds\)"):
            start(settings)
        assert time.monotonic() - began < 10
    finally:
        _release(stalled)


def test_a_refresh_that_stalls_keeps_the_previous_copy(data_dir: Path) -> None:
    customers = data_dir / "profiles" / "customers.parquet"
    source = ProfileSource(customers, data_dir / "profiles" / "identities.parquet", timeout=1)
    known = next(iter(source._snapshot.profiles))
    shutil.move(customers, data_dir / "customers.parquet.bak")
    os.mkfifo(customers)
    try:
        began = time.monotonic()
        with pytest.raises(ValueError, match="no answer within 1 s"):
            source.refresh()
        assert time.monotonic() - began < 10
        assert source.profile(known) is not None  # still serving the previous copy
        # The stuck load is not joined by another one.
        with pytest.raises(ValueError, match="previous load has not finished"):
            source.refresh()
    finally:
        _release(customers)
    # Once the source answers again, refreshes work.
    customers.unlink()
    shutil.move(data_dir / "customers.parquet.bak", customers)
    deadline = time.monotonic() + 10
    while True:
        try:
            source.refresh()
            break
        except ValueError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    assert source.profile(known) is not None
