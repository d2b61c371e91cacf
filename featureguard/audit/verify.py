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

Rotated logs (``JsonlSink(max_bytes=..., max_seconds=...)``): given the active file's path, both
functions also read its numbered segments (``audit.000001.jsonl``... see
``featureguard.audit.chain.segment_path``), oldest first, then the active file, as one chain that
starts from 64 zeros in the first segment and runs on across every file boundary. A report about
such a log names the file in its reason (``audit.000002.jsonl line 7: ...``) and in
``VerifyReport.file``; ``first_bad_line`` is the line within that file. A log without segments
reads and reports exactly as a single file.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from featureguard.audit.chain import GENESIS_HASH, log_files, parse_line, record_hash
from featureguard.errors import AuditError, ChainBrokenError

__all__ = ["VerifyReport", "iter_records", "verify", "verify_or_raise"]


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifyReport:
    """The outcome of checking one audit log (one file, or its rotated segments and the file)."""

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
    file: str | None = None
    """The file that holds ``first_bad_line`` (the path given, or one of its rotated segments);
    None when ``ok``."""
    files: int = 1
    """How many files the chain was read from: 1, or the rotated segments plus the active file."""


def verify(path: str | os.PathLike[str]) -> VerifyReport:
    """Check every line of the audit log at ``path`` (and of its rotated segments, if any);
    AuditError if it cannot be read."""
    path = Path(path)
    try:
        files = log_files(path)
    except OSError as exc:
        raise AuditError(f"cannot list audit log {path}: {exc.strerror or exc}") from exc
    return _check(_lines(files), files)


def verify_or_raise(path: str | os.PathLike[str]) -> VerifyReport:
    """Like :func:`verify`, but raise ChainBrokenError (with ``line``) unless the file is ok."""
    report = verify(path)
    if not report.ok:
        raise ChainBrokenError(f"audit log {path}: {report.reason}", line=report.first_bad_line)
    return report


def iter_records(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """Yield each record of the audit log in order, without checking hashes: the rotated
    segments first, oldest first, when there are any, then the file at ``path``.

    A line that is not a record raises AuditError naming it; nothing is skipped. Errors, a missing
    file included, are raised when iteration starts.
    """
    path = Path(path)
    try:
        files = log_files(path)
    except OSError as exc:
        raise AuditError(f"cannot list audit log {path}: {exc.strerror or exc}") from exc
    for file, number, raw, _last in _lines(files):
        record = parse_line(raw)
        if record is None:
            cut = "" if raw.endswith(b"\n") else " (cut off mid-line)"
            raise AuditError(f"{file}:{number}: not an audit record{cut}")
        yield record


def _lines(files: list[Path]) -> Iterator[tuple[Path, int, bytes, bool]]:
    """(file, line number in it, raw line, whether it is the last file) for every line of
    ``files`` in order; AuditError (from the first ``next``) if one cannot be read."""
    for index, path in enumerate(files):
        try:
            with path.open("rb") as file:
                for number, raw in enumerate(file, 1):
                    yield path, number, raw, index == len(files) - 1
        except OSError as exc:
            raise AuditError(f"cannot read audit log {path}: {exc.strerror or exc}") from exc


class _Where:
    """Names lines in reasons: ``line 3`` for a single file, ``audit.000002.jsonl line 3`` when
    the log spans several files."""

    def __init__(self, files: list[Path]) -> None:
        self.several = len(files) > 1

    def __call__(self, file: Path | None, line: int) -> str:
        return f"{file.name} line {line}" if self.several and file is not None else f"line {line}"


def _check(lines: Iterable[tuple[Path, int, bytes, bool]], files: list[Path]) -> VerifyReport:
    where = _Where(files)
    prev_hash, prev, records = GENESIS_HASH, (None, 0), 0  # prev: (file, line) of last record
    cut: tuple[Path, int] | None = None  # a whole line that does not parse: a crash, or tampering
    resumed: tuple[Path, int] | None = None  # the first cut line the chain continued across
    for file, number, raw, last_file in lines:
        record = parse_line(raw)
        if record is None:
            # A line without its newline is a cut tail only at the end of the last file; a
            # segment always ends where its writer rotated, so there it is a cut line resumed.
            if last_file and not raw.endswith(b"\n"):
                first = cut or (file, number)
                return _cut_tail(first, (file, number), records, prev_hash, where, len(files))
            if cut is not None:
                break
            cut = (file, number)
            continue
        problem = _link_problem(record, prev_hash, prev[1], number, where=where(file, number),
                                after=where(*prev) if prev[1] else None,
                                new_file=number == 1 and prev[0] not in (None, file))  # fmt: skip
        if problem is not None:
            if cut is not None:  # the chain does not resume across the unparsed line: blame it
                break
            return _failed((file, number), problem, records, prev_hash, len(files))
        resumed, cut = resumed or cut, None
        prev_hash, prev, records = record["hash"], (file, number), records + 1
    if cut is not None:
        reason = f"{where(*cut)} is not an audit record (a JSON object with both hashes)"
        return _failed(cut, reason, records, prev_hash, len(files))
    if resumed is not None:
        reason = (
            f"{where(*resumed)} is cut off (a writer stopped mid-line) and a later writer resumed "
            f"the chain after it; the chain verifies across it ({_count(records)})"
        )
        return _failed(resumed, reason, records, prev_hash, len(files))
    return VerifyReport(
        ok=True,
        records=records,
        first_bad_line=None,
        reason=None,
        truncated_tail=False,
        last_hash=prev_hash,
        files=len(files),
    )


def _link_problem(
    record: dict[str, Any],
    prev_hash: str,
    prev_line: int,
    number: int,
    *,
    where: str | None = None,
    after: str | None = None,
    new_file: bool = False,
) -> str | None:
    """What is wrong with ``record`` at line ``number`` after the record at ``prev_line`` (0 at
    the chain start), or None; ``where`` and ``after`` name the two lines in other words."""
    where = where or f"line {number}"
    if record["prev_hash"] != prev_hash:
        if not prev_line:
            after = "the chain start (64 zeros)"
        after = after or f"line {prev_line}"
        what = "a line or a whole file" if new_file else "a line"
        return (
            f"{where}: prev_hash is not the hash of {after} ({what} was deleted, inserted or moved)"
        )
    body = {key: value for key, value in record.items() if key != "hash"}
    try:
        matches = record_hash(body) == record["hash"]
    except AuditError:  # parsed, but holds text no writer could have hashed (lone surrogates)
        matches = False
    return None if matches else f"{where}: hash does not match its content (edited)"


def _cut_tail(
    first: tuple[Path, int],
    last: tuple[Path, int],
    records: int,
    last_hash: str,
    where: _Where,
    files: int,
) -> VerifyReport:
    if first == last:
        at = f"{where(*first)} is"
    elif first[0] == last[0]:
        name = f"{first[0].name} " if where.several else ""
        at = f"{name}lines {first[1]}-{last[1]} are"
    else:
        at = f"{where(*first)} to {where(*last)} are"
    reason = f"{at} cut off (the writer stopped mid-line); {_count(records)} before it verify"
    return _failed(first, reason, records, last_hash, files, truncated=True)


def _failed(
    at: tuple[Path, int],
    reason: str,
    records: int,
    last_hash: str,
    files: int,
    *,
    truncated: bool = False,
) -> VerifyReport:
    return VerifyReport(
        ok=False,
        records=records,
        first_bad_line=at[1],
        reason=reason,
        truncated_tail=truncated,
        last_hash=last_hash,
        file=str(at[0]),
        files=files,
    )


def _count(records: int) -> str:
    return "1 record" if records == 1 else f"{records} records"
