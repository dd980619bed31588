"""Start-up rebuilds memory from the fields DuckDB extracts; it must equal folding whole records."""

from __future__ import annotations

import shutil
from pathlib import Path

from service.contacts import ContactBook
from service.desk import Committed
from service.server import start
from service.settings import Settings, load_settings


def _state(desk) -> tuple:
    c = desk.contacts
    return (
        dict(desk._by_key),
        dict(desk._by_ticket),
        dict(desk._decisions),
        dict(desk._outcomes),
        dict(desk._conversions),
        {k: dict(v) for k, v in c._events.items() if v},
        dict(c._consent),
        {k: set(v) for k, v in c._purchased.items() if v},
    )


def test_rebuild_from_fields_equals_folding_whole_records(
    traffic_log: Settings, tmp_path: Path
) -> None:
    d = tmp_path / "var"
    shutil.copytree(traffic_log.data_dir, d)
    running = start(load_settings(None, data_dir=d, listen="127.0.0.1:0"))
    try:
        desk = running.desk
        rebuilt = _state(desk)
        assert len(rebuilt[2]) >= 2400 and rebuilt[3] and rebuilt[4] and rebuilt[5]
        # Fold every whole record again into empty memory, the way live writes do.
        for name in ("_by_key", "_by_ticket", "_decisions", "_outcomes", "_conversions"):
            setattr(desk, name, {})
        desk.contacts = ContactBook()
        for r in desk.store.scan():
            if not r.cut:
                desk._fold(Committed.read(r))
        assert _state(desk) == rebuilt
    finally:
        running.stop()
