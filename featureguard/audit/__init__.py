"""Tamper-evident audit log: a structlog pipeline that writes hash-chained JSON Lines, and its
readers (`read`, `to_records`; `summary`, `render`, `report` and `trace` are submodules).

Imports only the standard library, structlog and ``featureguard.errors`` (traces and the report
add numpy and safetensors), so reading and verifying logs never needs torch.
"""

from featureguard.audit.chain import GENESIS_HASH, canonical_json, record_hash
from featureguard.audit.log import TEXT_FIELDS, AuditLog
from featureguard.audit.read import (
    GuardErrorRecord,
    PolicyTriggered,
    Record,
    RequestCompleted,
    Unknown,
    read,
    to_records,
)
from featureguard.audit.sink import JsonlSink, MemorySink, Sink
from featureguard.audit.verify import VerifyReport, iter_records, verify, verify_or_raise

__all__ = [
    "GENESIS_HASH",
    "TEXT_FIELDS",
    "AuditLog",
    "GuardErrorRecord",
    "JsonlSink",
    "MemorySink",
    "PolicyTriggered",
    "Record",
    "RequestCompleted",
    "Sink",
    "Unknown",
    "VerifyReport",
    "canonical_json",
    "iter_records",
    "read",
    "record_hash",
    "to_records",
    "verify",
    "verify_or_raise",
]
