"""Check an audit file against the chain rule, and read its records; both stream the file.

They depend only on the file format (``featureguard.audit.chain``), not on how it was written.

What a keyless chain can and cannot show: editing, deleting, inserting or reordering lines breaks
it, and verify names the first line where it breaks. Records cut off the end (or forged and
appended there) leave a shorter or longer chain that still verifies; to catch that, keep the last
hash (``VerifyReport.last_hash``, ``JsonlSink.last_hash``) somewhere the log's writer cannot edit.

Cut lines: a writer that stops mid-line leaves a last line without its newline that does not parse.
verify reports it as a truncated tail (``truncated_tail=True``), not as tampering. When a later
``JsonlSink`` resumed the file, that cut line sits between whole lines and the record after it
chains to the record before it; verify then checks the whole chain across the gap and, if nothing
else is wrong, reports ``ok=False`` with ``first_bad_line`` at the cut line and a reason that says
the chain resumed after it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from featureguard.audit.chain import GENESIS_HASH, parse_line, record_hash
from featureguard.errors import AuditError, ChainBrokenError

__all__ = ["VerifyReport", "iter_records", "verify", "verify_or_raise"]


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifyReport:
    """The outcome of checking one audit file."""

    ok: bool
    """True when every line is a record and the chain holds from 64 zeros to the last line."""
    records: int
    """Records that verify (before the first bad line, or in all when the chain resumed)."""
    first_bad_line: int | None
    """1-based line where the file first fails; None when ``ok``."""
    reason: str | None
    """What is wrong at ``first_bad_line``, in words; None when ``ok``."""
    truncated_tail: bool
    """True when the file ends in a cut line (a writer stopped mid-line), not in tampering."""
    last_hash: str
    """Hash of the last record that verifies (64 zeros if none): compare it with a stored copy."""


def verify(path: str | os.PathLike[str]) -> VerifyReport:
    """Check every line of the audit file at ``path``; AuditError if it cannot be read."""
    path = Path(path)
    try:
        with path.open("rb") as file:
            return _check(file)
    except OSError as exc:
        raise AuditError(f"cannot read audit log {path}: {exc.strerror or exc}") from exc


def verify_or_raise(path: str | os.PathLike[str]) -> VerifyReport:
    """Like :func:`verify`, but raise ChainBrokenError (with ``line``) unless the file is ok."""
    report = verify(path)
    if not report.ok:
        raise ChainBrokenError(f"audit log {path}: {report.reason}", line=report.first_bad_line)
    return report


def iter_records(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """Yield each record of the audit file in order, without checking hashes.

    A line that is not a record raises AuditError naming it; nothing is skipped. Errors, a missing
    file included, are raised when iteration starts.
    """
    path = Path(path)
    try:
        with path.open("rb") as file:
            for number, raw in enumerate(file, 1):
                record = parse_line(raw)
                if record is None:
                    cut = "" if raw.endswith(b"\n") else " (cut off mid-line)"
                    raise AuditError(f"{path}:{number}: not an audit record{cut}")
                yield record
    except AuditError:
        raise
    except OSError as exc:
        raise AuditError(f"cannot read audit log {path}: {exc.strerror or exc}") from exc


def _check(lines: Iterable[bytes]) -> VerifyReport:
    prev_hash, prev_line, records = GENESIS_HASH, 0, 0
    cut: int | None = None  # a whole line that does not parse: a resumed crash, or tampering
    resumed: int | None = None  # the first cut line the chain continued across
    for number, raw in enumerate(lines, 1):
        record = parse_line(raw)
        if record is None:
            if not raw.endswith(b"\n"):
                return _cut_tail(cut or number, number, records, prev_hash)
            if cut is not None:
                break
            cut = number
            continue
        problem = _link_problem(record, prev_hash, prev_line, number)
        if problem is not None:
            if cut is not None:  # the chain does not resume across the unparsed line: blame it
                break
            return _failed(number, problem, records, prev_hash)
        resumed, cut = resumed or cut, None
        prev_hash, prev_line, records = record["hash"], number, records + 1
    if cut is not None:
        reason = f"line {cut} is not an audit record (a JSON object with both hashes)"
        return _failed(cut, reason, records, prev_hash)
    if resumed is not None:
        reason = (
            f"line {resumed} is cut off (a writer stopped mid-line) and a later writer resumed "
            f"the chain after it; the chain verifies across it ({_count(records)})"
        )
        return _failed(resumed, reason, records, prev_hash)
    return VerifyReport(
        ok=True,
        records=records,
        first_bad_line=None,
        reason=None,
        truncated_tail=False,
        last_hash=prev_hash,
    )


def _link_problem(
    record: dict[str, Any], prev_hash: str, prev_line: int, number: int
) -> str | None:
    if record["prev_hash"] != prev_hash:
        after = f"line {prev_line}" if prev_line else "the chain start (64 zeros)"
        return (
            f"line {number}: prev_hash is not the hash of {after} "
            "(a line was deleted, inserted or moved)"
        )
    body = {key: value for key, value in record.items() if key != "hash"}
    try:
        matches = record_hash(body) == record["hash"]
    except AuditError:  # parsed, but holds text no writer could have hashed (lone surrogates)
        matches = False
    return None if matches else f"line {number}: hash does not match its content (edited)"


def _cut_tail(first: int, last: int, records: int, last_hash: str) -> VerifyReport:
    where = f"line {first} is" if first == last else f"lines {first}-{last} are"
    reason = f"{where} cut off (the writer stopped mid-line); {_count(records)} before it verify"
    return _failed(first, reason, records, last_hash, truncated=True)


def _failed(
    line: int, reason: str, records: int, last_hash: str, *, truncated: bool = False
) -> VerifyReport:
    return VerifyReport(
        ok=False,
        records=records,
        first_bad_line=line,
        reason=reason,
        truncated_tail=truncated,
        last_hash=last_hash,
    )


def _count(records: int) -> str:
    return "1 record" if records == 1 else f"{records} records"
