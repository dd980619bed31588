"""Domain errors: every error the service can answer with, in one place.

Core code raises these; the gRPC shell maps them to status codes in one function
(`service.status.status_for`), so handlers never choose status codes themselves.
"""

from __future__ import annotations


class OfferDeskError(Exception):
    """Base of every error the service reports to a caller."""


class InvalidArgument(OfferDeskError):
    """A request field is missing, malformed or out of range; `field` names it."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


class NotFound(OfferDeskError):
    """The decision (or other record) asked for does not exist."""


class AlreadyExists(OfferDeskError):
    """A different outcome was already recorded for this decision."""


class Unavailable(OfferDeskError):
    """The service cannot serve now (audit log unwritable, shutting down); retry later."""


class CatalogError(OfferDeskError):
    """A catalog file is invalid; the message names file, offer and rule."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class ModelError(OfferDeskError):
    """A model file is missing, unreadable or does not match the feature definition."""


class Unauthenticated(OfferDeskError):
    """The caller did not present a valid token (the audit API)."""


class FailedPrecondition(OfferDeskError):
    """The request is valid but the state does not allow it yet (e.g. nothing sealed)."""


class DeadlineExceeded(OfferDeskError):
    """The caller's deadline passed before the work was done: nothing was decided or written."""
