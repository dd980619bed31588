"""The adapter test kit: what every helpdesk adapter must do, checked against a real gateway
(uvicorn on loopback) in front of a real service (gRPC on loopback, real audit log).

A new adapter's author writes one `Helpdesk`: how that helpdesk signs a delivery, a recorded
sample event shaped as the helpdesk documents it, and how to make the event of the same ticket
solved again. `tests/test_adapters.py` runs every check below for every `Helpdesk` listed.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import uvicorn

from console_adapters.gateway import GatewaySettings, create_app

Headers = dict[str, str]


@dataclass(frozen=True)
class Helpdesk:
    """One helpdesk as the kit drives it."""

    name: str  # the adapter's name: /webhooks/<name>
    #: the settings that enable the adapter (merged into GatewaySettings)
    settings: dict[str, Any]
    #: how the helpdesk signs ``body`` sent at ``at``; ``delivery`` names one delivery of an
    #: event (the same for retries where the helpdesk keeps it, e.g. Standard Webhooks' id)
    sign: Callable[[bytes, datetime, str], Headers]
    #: a recorded "ticket solved" event for ``customer`` (external id) and ``ticket`` id
    solved: Callable[[str, str], bytes]
    #: the same ticket solved again after it was reopened (a new decision is expected)
    solved_again: Callable[[str, str], bytes]
    #: the same event with one required field broken, and the field the 400 must name
    malformed: Callable[[str, str], tuple[bytes, str]]
    #: an event the adapter must acknowledge and ignore (None: the helpdesk sends none)
    ignored: Callable[[str, str], bytes] | None = None
    #: the same as ``sign`` but with a wrong secret or token: must get 401
    forge: Callable[[bytes, datetime, str], Headers] | None = None
    #: whether a retry of a delivery keeps its delivery id (Standard Webhooks) or is a fresh
    #: delivery of the same event (Zendesk re-signs with a new timestamp)
    retry_keeps_delivery: bool = False
    #: whether the signature covers the body (Freshdesk sends a token only) ...
    signs_body: bool = True
    #: ... and a timestamp that goes stale
    signs_time: bool = True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def running_gateway(settings: GatewaySettings) -> Iterator[str]:
    """The gateway under uvicorn on a free loopback port; yields its base URL."""
    port = free_port()
    settings = settings.model_copy(update={"listen": f"127.0.0.1:{port}"})
    with serving(create_app(settings), port) as base:
        yield base


@contextmanager
def serving(app: Any, port: int | None = None) -> Iterator[str]:
    """An ASGI app under uvicorn on loopback (a free port unless given); yields its base URL."""
    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the gateway did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def post(base: str, helpdesk: Helpdesk, body: bytes, headers: Headers) -> httpx.Response:
    return httpx.post(
        f"{base}/webhooks/{helpdesk.name}",
        content=body,
        headers={"content-type": "application/json", **headers},
        timeout=10,
    )


def now() -> datetime:
    return datetime.now(UTC)


def ago(seconds: float) -> datetime:
    return now() - timedelta(seconds=seconds)


def error_of(response: httpx.Response) -> dict[str, str]:
    return dict(json.loads(response.content)["error"])


__all__ = [
    "Helpdesk",
    "ago",
    "error_of",
    "free_port",
    "now",
    "post",
    "running_gateway",
    "serving",
]
