"""Where chained audit records go: an append-only JSON Lines file, or memory (for tests).

Both sinks chain under their own lock, so the order of the lines is the order of the chain.

Durability (``JsonlSink(fsync=...)``). Every record is one unbuffered ``os.write`` of a whole
line, so once ``write`` returns the record survives the writer process being killed. What
``fsync`` adds is surviving the machine losing power:

- ``"request"`` (the default): ``os.fsync`` after each record that ends a request
  (``request_completed``, and ``guard_error``), so a power cut loses at most the records of the
  request in flight;
- ``"record"``: after every record (slowest, loses nothing that ``write`` returned);
- ``"never"``: leave it to the OS.

Closing the sink and rotating a file also fsync it (except with ``"never"``).

Rotation (``max_bytes``, ``max_seconds``). Before a write that would take the active file past
``max_bytes``, or when the active file is ``max_seconds`` old (counted from its first record:
the time this sink wrote it, or the ``timestamp`` field of a file it resumed), the sink closes
the active file, renames it to the next numbered segment and starts a new, empty active file;
the record then goes into the new file. Segments are named by
``featureguard.audit.chain.segment_path``: ``audit.jsonl`` becomes ``audit.000001.jsonl``, then
``audit.000002.jsonl``... oldest first (the number is zero-padded to six digits so that a plain
``ls`` lists them in order; readers compare numbers as integers). A file is never rotated before
it holds a record, so a record bigger than ``max_bytes`` gets a file of its own, and age is only
checked when a record is written (no timer thread).

The chain does not restart at a rotation: the new file's first record chains from the last
record of the segment before it, and ``featureguard.audit.verify`` checks the segments and the
active file as one chain. Rotating is one ``os.rename`` of a closed, fsynced file to a name that
does not exist yet, then creating the new active file and fsyncing the folder. A crash at any
moment leaves one of these states, and a new ``JsonlSink`` resumes each of them on the right hash:

- before the rename: the active file holds everything; it is simply rotated later;
- after the rename, before the new file exists, or while it is still empty: the sink finds no
  record in the active file and resumes from the last record of the newest segment;
- during the first write to the new file: the active file is one cut line and no record; the
  same rule applies, and the cut line stays, alone on its line, for ``verify`` to report.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping
from contextlib import suppress
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO, Literal, Protocol, get_args

from featureguard.audit.chain import (
    GENESIS_HASH,
    canonical_json,
    parse_line,
    seal,
    segment_path,
    segments,
)
from featureguard.errors import AuditError

__all__ = ["FSYNC_MODES", "REQUEST_END_EVENTS", "FsyncMode", "JsonlSink", "MemorySink", "Sink"]

_BLOCK = 1 << 16
_FIRST_LINE_MAX = 1 << 24  # a first record longer than this is not read for its timestamp

FsyncMode = Literal["request", "record", "never"]
FSYNC_MODES: tuple[str, ...] = get_args(FsyncMode)
"""When ``JsonlSink`` fsyncs its file: see the module docstring."""

REQUEST_END_EVENTS = frozenset({"request_completed", "guard_error"})
"""Events after which ``fsync="request"`` fsyncs."""


def _now() -> float:
    """Wall-clock seconds; the one clock rotation by age reads (tests replace it)."""
    return time.time()


class Sink(Protocol):
    """Anything that chains a record, stores it, and returns it with ``prev_hash`` and ``hash``.

    A sink must be truthy (no ``__len__`` that can be 0): ``structlog.wrap_logger`` replaces a
    falsy logger with the global logger factory.
    """

    def write(self, record: Mapping[str, Any]) -> dict[str, Any]: ...


class JsonlSink:
    """Append-only JSON Lines audit file. One process writes a file; any number of threads may.

    Opening an existing file resumes its chain from its last record (from the newest rotated
    segment when the file holds no record). A file that ends mid-line (a writer stopped during a
    write) is never appended to blindly: the cut bytes stay as they are, the next write starts
    with a newline so the cut line stays a line of its own, and the chain continues from the
    last whole record before it. ``verify`` then names the cut line and checks the chain across
    it (see ``featureguard.audit.verify``). ``fsync``, ``max_bytes`` and ``max_seconds``: see
    the module docstring.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        fsync: FsyncMode = "request",
        max_bytes: int | None = None,
        max_seconds: float | None = None,
    ) -> None:
        if not (isinstance(fsync, str) and fsync in FSYNC_MODES):
            raise ValueError(f"fsync must be one of {', '.join(map(repr, FSYNC_MODES))}, "
                             f"got {fsync!r}")  # fmt: skip
        if max_bytes is not None and (isinstance(max_bytes, bool) or max_bytes < 1):
            raise ValueError(f"max_bytes must be an integer >= 1 or None, got {max_bytes!r}")
        if max_seconds is not None and not max_seconds > 0:
            raise ValueError(f"max_seconds must be a number > 0 or None, got {max_seconds!r}")
        self.path = Path(path)
        self.fsync: FsyncMode = fsync
        self.max_bytes = max_bytes
        self.max_seconds = max_seconds
        self._lock = threading.Lock()
        self._failure: str | None = None
        self._dirty = False  # bytes written since the last fsync
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            existed = self.path.exists()
            # Unbuffered: a record is exactly one os.write, and no bytes wait in a userspace
            # buffer that a later flush could emit after a failed write. No `with`: the sink
            # owns the handle until close() (hence the SIM115 waiver).
            self._file: BinaryIO | None = open(self.path, "a+b", buffering=0)  # noqa: SIM115
        except OSError as exc:
            raise AuditError(f"cannot open audit log {self.path}: {exc.strerror or exc}") from exc
        try:
            last, cut = _resume(self._file, self.path)
            self._size = self._file.seek(0, os.SEEK_END)
            self._has_record = last is not None
            self._started = self._first_time() if self._has_record else None
            found = segments(self.path)
            self._next_segment = found[-1][0] + 1 if found else 1
            if last is None:
                last = _resume_segments([p for _, p in found])
            if not existed and fsync != "never":
                _fsync_dir(self.path.parent)
        except AuditError:
            self._file.close()
            raise
        except OSError as exc:
            self._file.close()
            raise AuditError(f"cannot read audit log {self.path}: {exc.strerror or exc}") from exc
        self._last_hash = last
        self._pending = b"\n" if cut else b""

    @property
    def last_hash(self) -> str:
        """Hash of the newest record: keep it elsewhere to detect records cut off the end."""
        return self._last_hash

    def write(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """Chain ``record``, append it as one line, and return it with its hashes."""
        with self._lock:
            if self._file is None:
                raise AuditError(self._failure or f"audit log {self.path} is closed")
            sealed = seal(record, self._last_hash)
            line = (canonical_json(sealed) + "\n").encode("utf-8")
            try:
                if self._rotation_due(len(self._pending) + len(line)):
                    self._rotate()
                data = self._pending + line
                file = self._file
                assert file is not None  # _rotate either reopened it or raised
                written = file.write(data)
                if written != len(data):
                    raise OSError(f"short write ({written} of {len(data)} bytes)")
                self._pending = b""
                self._size += written
                if not self._has_record:
                    self._has_record, self._started = True, _now()
                ends_request = record.get("event") in REQUEST_END_EVENTS
                if self.fsync == "record" or (self.fsync == "request" and ends_request):
                    os.fsync(file.fileno())
                    self._dirty = False
                else:
                    self._dirty = True
            except OSError as exc:
                # The file may now end mid-line: stop here, and let a new sink resume by the
                # documented rule rather than guess what reached the disk.
                self._failure = f"audit log {self.path} stopped after a failed write: {exc}"
                with suppress(AuditError):
                    self._close(sync=False)
                raise AuditError(self._failure) from exc
            self._last_hash = sealed["hash"]
        return sealed

    def close(self) -> None:
        """Fsync (unless ``fsync="never"``) and close the file; later writes raise AuditError.
        Closing twice is harmless."""
        with self._lock:
            self._close(sync=True)

    def _close(self, *, sync: bool) -> None:
        if self._file is not None:
            file, self._file = self._file, None
            try:
                if sync and self._dirty and self.fsync != "never":
                    os.fsync(file.fileno())
                self._dirty = False
            except OSError as exc:
                raise AuditError(f"cannot fsync audit log {self.path}: {exc}") from exc
            finally:
                try:
                    file.close()
                except OSError as exc:
                    raise AuditError(f"cannot close audit log {self.path}: {exc}") from exc

    def _rotation_due(self, incoming: int) -> bool:
        if not self._has_record:
            return False
        if self.max_bytes is not None and self._size + incoming > self.max_bytes:
            return True
        return (
            self.max_seconds is not None
            and self._started is not None
            and _now() - self._started >= self.max_seconds
        )

    def _rotate(self) -> None:
        """Move the active file to the next segment and open a new one (OSError if any step
        fails; the caller then stops the sink)."""
        old = self._file
        assert old is not None
        if self._pending:  # end the cut line, so the segment ends with a whole line
            old.write(self._pending)
            self._pending = b""
            self._dirty = True
        if self.fsync != "never" and self._dirty:
            os.fsync(old.fileno())
        self._file, self._dirty = None, False
        old.close()
        target = segment_path(self.path, self._next_segment)
        if target.exists():  # someone made segments since we looked: never overwrite one
            found = segments(self.path)
            self._next_segment = found[-1][0] + 1 if found else 1
            target = segment_path(self.path, self._next_segment)
        os.rename(self.path, target)
        self._next_segment += 1
        self._file = open(self.path, "a+b", buffering=0)  # noqa: SIM115
        if self.fsync != "never":
            _fsync_dir(self.path.parent)  # the rename and the new file, before any record
        self._size, self._has_record, self._started = 0, False, None

    def _first_time(self) -> float:
        """When the active file's first record was written, from its ``timestamp`` field when
        it has one (the ``AuditLog`` format), else now; only read when rotating by age."""
        if self.max_seconds is None or self._file is None:
            return _now()
        self._file.seek(0)
        first = b""
        while b"\n" not in first and len(first) < _FIRST_LINE_MAX:
            chunk = self._file.read(_BLOCK)
            if not chunk:
                break
            first += chunk
        record = parse_line(first.split(b"\n", 1)[0])
        stamp = record.get("timestamp") if record else None
        try:
            parsed = datetime.strptime(str(stamp), "%Y-%m-%dT%H:%M:%S.%fZ")
        except ValueError:
            return _now()
        return parsed.replace(tzinfo=timezone.utc).timestamp()

    def __enter__(self) -> JsonlSink:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class MemorySink:
    """In-memory sink for tests: same chaining as JsonlSink; ``records`` holds what was written."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._last_hash = GENESIS_HASH

    @property
    def last_hash(self) -> str:
        """Hash of the newest record (64 zeros before the first)."""
        return self._last_hash

    def write(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """Chain ``record``, keep it, and return it with its hashes."""
        with self._lock:
            sealed = seal(record, self._last_hash)
            self.records.append(sealed)
            self._last_hash = sealed["hash"]
        return sealed

    def lines(self) -> list[str]:
        """The records as JsonlSink would write them, without newlines; join with "\\n" + "\\n"."""
        with self._lock:
            return [canonical_json(record) for record in self.records]


def _resume(file: BinaryIO, path: Path) -> tuple[str | None, bool]:
    """Return the hash to chain from (None when the file holds no whole record) and whether the
    file ends mid-line."""
    size = file.seek(0, os.SEEK_END)
    if size == 0:
        return None, False
    # Read backwards until two newlines are in hand: enough for the last whole line and a tail.
    buf, pos = b"", size
    while pos > 0 and buf.count(b"\n") < 2:
        step = min(_BLOCK, pos)
        pos -= step
        file.seek(pos)
        buf = file.read(step) + buf
    *whole, tail = buf.split(b"\n")
    if tail:
        record = parse_line(tail)
        if record is not None:  # a whole record that only lacks its newline
            return record["hash"], True
        if not whole:  # the file is one cut line
            return None, True
    record = parse_line(whole[-1])
    if record is None:
        raise AuditError(
            f"cannot resume audit log {path}: its last whole line is not a chain record; "
            "run featureguard.audit.verify on it and move it aside"
        )
    return record["hash"], bool(tail)


def _resume_segments(files: list[Path]) -> str:
    """The hash to chain from when the active file holds no record: the last record of the
    newest segment that holds one (64 zeros when there is none)."""
    for segment in reversed(files):
        with segment.open("rb") as file:
            last, _ = _resume(file, segment)
        if last is not None:
            return last
    return GENESIS_HASH


def _fsync_dir(folder: Path) -> None:
    """Make renames and new files in ``folder`` durable, where the platform can (Windows cannot
    open a folder; some file systems refuse to fsync one)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        with suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)
