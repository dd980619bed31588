"""Every public error of the audit package, in one small hierarchy.

Callers (the service's edge) map these to gRPC statuses in one place; nothing here
knows about gRPC. Never raise a raw DuckDB or sqlite3 error out of the package.
"""


class AuditError(Exception):
    """Base class of every error the audit package raises on purpose."""


class AuditLocked(AuditError):
    """The audit file is held by another process (normally the running service)."""


class AuditWriteError(AuditError):
    """Records were not committed: nothing of the failed batch was acknowledged."""


class AuditCorrupt(AuditError):
    """The stored log is not what the writer wrote: unreadable, or its head is inconsistent."""


class CheckpointError(AuditError):
    """A signed checkpoint, key or checkpoint file is malformed, unverifiable or inconsistent."""


class PublishError(AuditError):
    """A checkpoint was not copied to a publication point (it stays in the checkpoint file)."""
