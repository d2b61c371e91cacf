"""The hash-chain rule of the audit format, defined once for writers and verifiers.

A log is JSON Lines, one record per line. Each record carries ``prev_hash`` (the ``hash`` of the
record before it, or :data:`GENESIS_HASH` for the first) and ``hash``::

    hash = sha256_hex(prev_hash + canonical_json(record without "hash"))

where the string is UTF-8 encoded before hashing and :func:`canonical_json` is
``json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)``.
A line on disk is the canonical JSON of the whole record (``hash`` included) plus ``"\\n"``.

The format holds only strict JSON: NaN and infinities are rejected here with :class:`AuditError`
(``AuditLog`` turns them into strings before they reach a sink, so a trigger is never lost).

Rotated logs: a log at ``audit.jsonl`` may be split into numbered segments next to it,
``audit.000001.jsonl``, ``audit.000002.jsonl``, ... (:func:`segment_path`: the number, zero-padded
to at least six digits, goes before the last suffix), numbered in the order they were written,
oldest first, with ``audit.jsonl`` itself (the active file) newest of all. The segments and the
active file form one chain: the first segment's first record chains from :data:`GENESIS_HASH`,
and the first record of each later file chains from the last record of the file before it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from featureguard.errors import AuditError

__all__ = ["CHAIN_FIELDS", "GENESIS_HASH", "canonical_json", "log_files", "parse_line",
           "record_hash", "seal", "segment_path", "segments"]  # fmt: skip

GENESIS_HASH = "0" * 64
"""The ``prev_hash`` of the first record of a chain."""

CHAIN_FIELDS = ("prev_hash", "hash")
"""Fields that only the chain writes; a record handed to a sink must not carry them."""


def canonical_json(obj: Any) -> str:
    """Return the canonical JSON of ``obj``; AuditError if it is not strict, UTF-8-safe JSON."""
    try:
        text = json.dumps(
            obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
        # Lone surrogates survive json.dumps but not UTF-8; catch them before a line is half built.
        text.encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise AuditError(f"audit record is not strict JSON: {exc}") from exc
    return text


def record_hash(body: Mapping[str, Any]) -> str:
    """Return the hash of ``body``: a record that has its ``prev_hash`` and no ``hash`` yet."""
    payload = body["prev_hash"] + canonical_json(body)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def seal(record: Mapping[str, Any], prev_hash: str) -> dict[str, Any]:
    """Return a copy of ``record`` chained after ``prev_hash``, with ``prev_hash`` and ``hash``."""
    clash = [key for key in CHAIN_FIELDS if key in record]
    if clash:
        raise AuditError(f"audit record must not set {', '.join(clash)}: the chain writes them")
    sealed = {**record, "prev_hash": prev_hash}
    sealed["hash"] = record_hash(sealed)
    return sealed


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not strict JSON")


def parse_line(raw: bytes | str) -> dict[str, Any] | None:
    """Return the record on one line, or None if the line is not a JSON object with both hashes.

    Only the shape is checked here; whether the hashes are right is the verifier's question.
    """
    try:
        record = json.loads(raw, parse_constant=_reject_constant)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError are both ValueErrors
        return None
    if not isinstance(record, dict):
        return None
    if not all(isinstance(record.get(key), str) for key in CHAIN_FIELDS):
        return None
    return record


def segment_path(path: str | os.PathLike[str], number: int) -> Path:
    """The ``number``-th rotated segment of the log at ``path``: ``audit.jsonl`` and 3 give
    ``audit.000003.jsonl`` (a name without a suffix gets ``.000003`` appended)."""
    path = Path(path)
    return path.with_name(f"{path.stem}.{number:06d}{path.suffix}")


def segments(path: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    """The rotated segments of the log at ``path`` as (number, path), oldest first.

    Numbers are compared as integers, so the order holds past 999999 too. A missing folder has
    none; an unreadable one raises OSError.
    """
    path = Path(path)
    pattern = re.compile(re.escape(path.stem) + r"\.(\d{6,})" + re.escape(path.suffix))
    try:
        names = os.listdir(path.parent)
    except FileNotFoundError:
        return []
    found = [(int(match[1]), path.with_name(name))
             for name in names if (match := pattern.fullmatch(name))]  # fmt: skip
    return sorted(found)


def log_files(path: str | os.PathLike[str]) -> list[Path]:
    """The files holding the log at ``path``, in chain order: its segments, then ``path`` itself
    (left out when segments exist and it does not: a writer stopped between rotating and
    creating the next file). Just ``[path]`` for a log that was never rotated."""
    path = Path(path)
    files = [segment for _, segment in segments(path)]
    if not files or path.exists():
        files.append(path)
    return files
