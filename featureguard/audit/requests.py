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

from featureguard.audit.chain import parse_line
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

    A file that shrank (replaced or truncated) is read again from its start.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path, self._offset, self._line, self._rest = Path(path), 0, 0, b""

    def poll(self) -> Iterator[Record]:
        """The records of the lines completed since the last poll, read 1 MiB at a time."""
        try:
            with self.path.open("rb") as file:
                if file.seek(0, os.SEEK_END) < self._offset:  # replaced or truncated
                    self._offset, self._line, self._rest = 0, 0, b""
                file.seek(self._offset)
                while data := file.read(_CHUNK):
                    self._offset += len(data)
                    *lines, self._rest = (self._rest + data).split(b"\n")
                    yield from self._parse(lines)
        except AuditError:
            raise
        except OSError as exc:
            raise AuditError(f"cannot read audit log {self.path}: {exc.strerror or exc}") from exc

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
