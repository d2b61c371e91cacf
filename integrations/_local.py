"""What the in-process adapters share: one guarded call at a time per guard, and an outcome as
the JSON-ready data that every adapter reports beside a reply.

`guard.last` belongs to the guard, not to a call: two threads generating through one guard
(LangChain's `batch`, a pipeline served from a thread pool) could each read the other's
outcome. The adapters hold `call_lock(guard)` from their `generate` until they have read
`guard.last`, and check that it carries their own request id.
"""

from __future__ import annotations

import threading
import uuid
import weakref
from collections.abc import Sequence
from typing import Any

from featureguard import Guard, GuardError, SequenceOutcome

_LOCKS: weakref.WeakKeyDictionary[Guard, threading.Lock] = weakref.WeakKeyDictionary()
_LOCKS_LOCK = threading.Lock()


def call_lock(guard: Guard) -> threading.Lock:
    """The lock every adapter holds around one generate call and its read of `guard.last`."""
    with _LOCKS_LOCK:
        lock = _LOCKS.get(guard)
        if lock is None:
            lock = _LOCKS[guard] = threading.Lock()
        return lock


def new_request_id() -> str:
    return uuid.uuid4().hex


def last_outcomes(guard: Guard, request_id: str) -> list[SequenceOutcome]:
    """`guard.last`, after checking it is the outcome of `request_id` and not another call's."""
    if guard.last_request_id != request_id:
        raise GuardError(
            f"guard.last belongs to request {guard.last_request_id!r}, not {request_id!r}: "
            "another caller generated through this guard at the same time"
        )
    return list(guard.last)


def outcome_dict(outcome: SequenceOutcome, request_id: str) -> dict[str, Any]:
    """The `featureguard` entry reported beside a reply: the outcome and its audit request id."""
    return {**outcome.to_dict(), "request_id": request_id}


def cut_at_stop(text: str, stops: Sequence[str] | None) -> tuple[str, bool]:
    """`text` up to the first stop string, and whether one was found."""
    cuts = [i for i in (text.find(s) for s in stops or ()) if i >= 0]
    return (text[: min(cuts)], True) if cuts else (text, False)
