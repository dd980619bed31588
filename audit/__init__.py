"""audit package."""

from audit.errors import AuditCorrupt, AuditError, AuditLocked, AuditWriteError
from audit.records import (
    GENESIS_HASH,
    KINDS,
    NewRecord,
    StoredRecord,
    canonical_json,
    chain_hash,
    decode_time,
    encode_time,
    keyed_hash,
)
from audit.store import AuditStore, TreeHead, WriterStats
from audit.vault import Vault
from audit.verify import VerifyReport, export_parquet, verify_file, verify_records

__all__ = [
    "GENESIS_HASH",
    "KINDS",
    "AuditCorrupt",
    "AuditError",
    "AuditLocked",
    "AuditStore",
    "AuditWriteError",
    "NewRecord",
    "StoredRecord",
    "Vault",
    "VerifyReport",
    "TreeHead",
    "WriterStats",
    "canonical_json",
    "chain_hash",
    "decode_time",
    "encode_time",
    "export_parquet",
    "keyed_hash",
    "verify_file",
    "verify_records",
]
