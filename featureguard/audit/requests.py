"""Records per request, and reading a log as it grows: what show, tail and report need.

`RequestGrouper` holds only the requests still open (triggers waiting for their completion);
`Follower` reads whole appended lines, 1 MiB at a time, and remembers where it stopped.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from featureguard.audit.chain import parse_line, segments
from featureguard.audit.read import (
    GuardErrorRecord,
    PolicyTriggered,
    Record,
    RequestCompleted,
    parse,
)
from featureguard.errors import AuditError

__all__ = ["Follower", "RequestGrouper", "RequestView"]

_CHUNK = 1 << 20


@dataclass(slots=True)
class RequestView:
    """All records of one request: its triggers and errors, and its completion when seen."""

    request_id: str
    """The request id."""
    triggers: list[PolicyTriggered] = field(default_factory=list)
    """Its triggers, in log order."""
    errors: list[GuardErrorRecord] = field(default_factory=list)
    """Its guard errors."""
    completed: RequestCompleted | None = None
    """Its request_completed record; None when the log has none (yet)."""


class RequestGrouper:
    """Collects records per request; `add` returns a request once its completion arrives."""

    def __init__(self, keep: Callable[[Record], bool] | None = None) -> None:
        self._open: dict[str, RequestView] = {}
        self._keep = keep

    def add(self, rec: Record) -> RequestView | None:
        """Take one record; the finished request when ``rec`` completes one, else None."""
        if rec.request_id is None or (self._keep is not None and not self._keep(rec)):
            return None
        view = self._open.setdefault(rec.request_id, RequestView(rec.request_id))
        if isinstance(rec, PolicyTriggered):
            view.triggers.append(rec)
        elif isinstance(rec, GuardErrorRecord):
            view.errors.append(rec)
        elif isinstance(rec, RequestCompleted):
            view.completed = rec
            return self._open.pop(rec.request_id)
        return None

    def unfinished(self) -> list[RequestView]:
        """Requests seen without a completion, oldest first (and forgotten)."""
        views, self._open = list(self._open.values()), {}
        return views


class Follower:
    """Reads the whole lines appended to an audit file since the last call (``tail -f``).

    When the file was rotated since the last call (it is another file now), the rest of the old
    one is read first from the segment it became, so no record written before the rotation is
    missed. A file that shrank in place (truncated) is read again from its start.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path, self._offset, self._line, self._rest = Path(path), 0, 0, b""
        self._file_id: tuple[int, int] | None = None  # (device, inode) of the file being read

    def poll(self) -> Iterator[Record]:
        """The records of the lines completed since the last poll, read 1 MiB at a time."""
        try:
            with self.path.open("rb") as file:
                stat = os.fstat(file.fileno())
                file_id = (stat.st_dev, stat.st_ino)
                if self._file_id is not None and file_id != self._file_id:
                    yield from self._finish_rotated()
                elif stat.st_size < self._offset:  # truncated in place
                    self._offset, self._line, self._rest = 0, 0, b""
                self._file_id = file_id
                yield from self._read(file)
        except AuditError:
            raise
        except OSError as exc:
            raise AuditError(f"cannot read audit log {self.path}: {exc.strerror or exc}") from exc

    def _finish_rotated(self) -> Iterator[Record]:
        """The lines the old file got after the last poll, read from the segment it became,
        then every segment rotated after it, whole."""
        later = [p for _, p in segments(self.path)]
        ids = [(st.st_dev, st.st_ino) for st in map(os.stat, later)]
        if self._file_id in ids:
            later = later[ids.index(self._file_id) :]
        else:  # the old file is gone (moved away): read what is left of the chain
            later, self._offset = [], 0
        for segment in later:
            with segment.open("rb") as file:
                yield from self._read(file)
            self._offset, self._rest = 0, b""

    def _read(self, file: BinaryIO) -> Iterator[Record]:
        file.seek(self._offset)
        while data := file.read(_CHUNK):
            self._offset += len(data)
            *lines, self._rest = (self._rest + data).split(b"\n")
            yield from self._parse(lines)

    def _parse(self, lines: list[bytes]) -> Iterator[Record]:
        for raw in lines:
            self._line += 1
            record = parse_line(raw)
            if record is None:
                raise AuditError(f"{self.path}:{self._line}: not an audit record")
            yield parse(record, self._line)

    def follow(self, *, interval: float = 0.25, stop: Callable[[], bool] = lambda: False
               ) -> Iterator[Record]:  # fmt: skip
        """Yield records as they are appended until ``stop()`` is true."""
        while True:
            yield from self.poll()
            if stop():
                return
            time.sleep(interval)
