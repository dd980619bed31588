"""The one mapping from domain errors to gRPC status codes, for every servicer.

Handlers raise domain errors (service.errors, audit.errors) and wrap their body in
`grpc_errors`; nothing else chooses a status code. Internal errors are logged, never echoed.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import grpc

from audit.errors import AuditError
from service.errors import (
    AlreadyExists,
    CatalogError,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    ModelError,
    NotFound,
    OfferDeskError,
    Unauthenticated,
    Unavailable,
)

log = logging.getLogger("offerdesk")

_STATUS: tuple[tuple[type[Exception], grpc.StatusCode], ...] = (
    (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (Unavailable, grpc.StatusCode.UNAVAILABLE),
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
    (AuditError, grpc.StatusCode.UNAVAILABLE),
    (CatalogError, grpc.StatusCode.FAILED_PRECONDITION),
    (ModelError, grpc.StatusCode.FAILED_PRECONDITION),
)


def status_for(error: Exception) -> grpc.StatusCode:
    """The status code a domain error is answered with (INTERNAL for anything else)."""
    for kind, code in _STATUS:
        if isinstance(error, kind):
            return code
    return grpc.StatusCode.INTERNAL


@contextlib.contextmanager
def grpc_errors(context: grpc.ServicerContext) -> Iterator[None]:
    """Abort the call with the mapped status; internal errors say only their type."""
    try:
        yield
    except OfferDeskError as e:
        context.abort(status_for(e), str(e))
    except AuditError as e:
        context.abort(status_for(e), f"audit log unavailable: {e}")
    except Exception as e:
        log.exception("internal error")
        context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(e).__name__}")


def expired(context: grpc.ServicerContext) -> bool:
    """Whether the caller's deadline has passed. grpcio keeps running a handler after the
    client gave up, so handlers check this before deciding and before writing."""
    remaining = context.time_remaining()
    return remaining is not None and remaining <= 0
