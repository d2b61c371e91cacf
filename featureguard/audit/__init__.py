"""Tamper-evident audit log: a structlog pipeline that writes hash-chained JSON Lines.

Imports only the standard library, structlog and ``featureguard.errors``, so reading and
verifying logs never needs torch.
"""

from featureguard.audit.chain import GENESIS_HASH, canonical_json, record_hash
from featureguard.audit.log import TEXT_FIELDS, AuditLog
from featureguard.audit.sink import JsonlSink, MemorySink, Sink
from featureguard.audit.verify import VerifyReport, iter_records, verify, verify_or_raise

__all__ = [
    "GENESIS_HASH",
    "TEXT_FIELDS",
    "AuditLog",
    "JsonlSink",
    "MemorySink",
    "Sink",
    "VerifyReport",
    "canonical_json",
    "iter_records",
    "record_hash",
    "verify",
    "verify_or_raise",
]
