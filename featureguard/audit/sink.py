"""Where chained audit records go: an append-only JSON Lines file, or memory (for tests).

Both sinks chain under their own lock, so the order of the lines is the order of the chain.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from contextlib import suppress
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from featureguard.audit.chain import GENESIS_HASH, canonical_json, parse_line, seal
from featureguard.errors import AuditError

__all__ = ["JsonlSink", "MemorySink", "Sink"]

_BLOCK = 1 << 16


class Sink(Protocol):
    """Anything that chains a record, stores it, and returns it with ``prev_hash`` and ``hash``.

    A sink must be truthy (no ``__len__`` that can be 0): ``structlog.wrap_logger`` replaces a
    falsy logger with the global logger factory.
    """

    def write(self, record: Mapping[str, Any]) -> dict[str, Any]: ...


class JsonlSink:
    """Append-only JSON Lines audit file. One process writes a file; any number of threads may.

    Opening an existing file resumes its chain from its last record. A file that ends mid-line
    (a writer stopped during a write) is never appended to blindly: the cut bytes stay as they are,
    the next write starts with a newline so the cut line stays a line of its own, and the chain
    continues from the last whole record before it. ``verify`` then names the cut line and checks
    the chain across it (see ``featureguard.audit.verify``).
    """

    def __init__(self, path: str | os.PathLike[str], *, fsync: bool = False) -> None:
        self.path = Path(path)
        self._fsync = fsync
        self._lock = threading.Lock()
        self._failure: str | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Unbuffered: a record is exactly one os.write, and no bytes wait in a userspace
            # buffer that a later flush could emit after a failed write. No `with`: the sink
            # owns the handle until close() (hence the SIM115 waiver).
            self._file: BinaryIO | None = open(self.path, "a+b", buffering=0)  # noqa: SIM115
        except OSError as exc:
            raise AuditError(f"cannot open audit log {self.path}: {exc.strerror or exc}") from exc
        try:
            self._last_hash, cut = _resume(self._file, self.path)
        except AuditError:
            self._file.close()
            raise
        except OSError as exc:
            self._file.close()
            raise AuditError(f"cannot read audit log {self.path}: {exc.strerror or exc}") from exc
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
            data = self._pending + (canonical_json(sealed) + "\n").encode("utf-8")
            try:
                written = self._file.write(data)
                if written != len(data):
                    raise OSError(f"short write ({written} of {len(data)} bytes)")
                if self._fsync:
                    os.fsync(self._file.fileno())
            except OSError as exc:
                # The file may now end mid-line: stop here, and let a new sink resume by the
                # documented rule rather than guess what reached the disk.
                self._failure = f"audit log {self.path} stopped after a failed write: {exc}"
                with suppress(AuditError):
                    self._close()
                raise AuditError(self._failure) from exc
            self._pending = b""
            self._last_hash = sealed["hash"]
        return sealed

    def close(self) -> None:
        """Close the file; later writes raise AuditError. Closing twice is harmless."""
        with self._lock:
            self._close()

    def _close(self) -> None:
        if self._file is not None:
            file, self._file = self._file, None
            try:
                file.close()
            except OSError as exc:
                raise AuditError(f"cannot close audit log {self.path}: {exc}") from exc

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


def _resume(file: BinaryIO, path: Path) -> tuple[str, bool]:
    """Return the hash to chain from and whether the file ends mid-line."""
    size = file.seek(0, os.SEEK_END)
    if size == 0:
        return GENESIS_HASH, False
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
            return GENESIS_HASH, True
    record = parse_line(whole[-1])
    if record is None:
        raise AuditError(
            f"cannot resume audit log {path}: its last whole line is not a chain record; "
            "run featureguard.audit.verify on it and move it aside"
        )
    return record["hash"], bool(tail)
