"""The audit pipeline: one structlog chain per guard, ending in a hash-chaining sink.

The chain is built with ``structlog.wrap_logger`` and explicit processors, wrapper and context
class, so it neither reads nor changes structlog's global configuration (``structlog.configure``
is the application's to call, not ours).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import Any

import structlog
from structlog.typing import EventDict, WrappedLogger

from featureguard.audit.chain import CHAIN_FIELDS, canonical_json
from featureguard.audit.sink import Sink
from featureguard.errors import AuditError

__all__ = ["TEXT_FIELDS", "AuditLog"]

TEXT_FIELDS = frozenset({"token", "text", "prompt", "reply"})
"""Keys dropped, at any depth, when ``include_text`` is False; ids such as ``token_id`` stay."""

_RESERVED = frozenset({"event", "timestamp", *CHAIN_FIELDS})


def add_timestamp(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """Stamp the record with the UTC time, ISO-8601 with microseconds and ``Z``."""
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return {**event_dict, "timestamp": now}


def merge_static(static: Mapping[str, Any]) -> Callable[..., EventDict]:
    """Return a processor that adds ``static`` fields; a field given with the event wins."""
    frozen = dict(static)

    def processor(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
        return {**frozen, **event_dict}

    return processor


def drop_text(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """Remove every :data:`TEXT_FIELDS` key, also inside nested mappings and lists."""
    return _map(event_dict, lambda key: key not in TEXT_FIELDS)


def stringify_non_finite(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """Write NaN and infinities as "NaN", "Infinity", "-Infinity": strict JSON, nothing lost."""
    return _map(event_dict, lambda _key: True)


def hand_to_sink(
    _logger: WrappedLogger, _method: str, event_dict: EventDict
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Pass the finished dict as the one argument of the sink's ``write``, which chains it."""
    return (event_dict,), {}


def _map(value: Any, keep: Callable[[str], bool]) -> Any:
    # One walk serves both processors: it copies containers (processors stay pure), filters keys
    # and replaces non-finite floats, which json.dumps(allow_nan=False) would reject.
    if isinstance(value, Mapping):
        return {key: _map(item, keep) for key, item in value.items() if keep(key)}
    if isinstance(value, (list, tuple)):
        return [_map(item, keep) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return value


class AuditLog:
    """Writes audit events (``policy_triggered``, ``request_completed``...) to a sink.

    Each call runs: static fields, timestamp, text redaction (when ``include_text`` is False),
    non-finite floats to strings, then the sink, which adds ``prev_hash`` and ``hash`` under its
    lock. Thread-safe: the processors are pure and the sink serialises writes, so line order is
    chain order (timestamps of concurrent events may interleave out of order).
    """

    def __init__(
        self, sink: Sink, *, include_text: bool = True, static: Mapping[str, Any] | None = None
    ) -> None:
        static = dict(static or {})
        clash = sorted(_RESERVED.intersection(static))
        if clash:
            raise AuditError(f"static audit fields must not set {', '.join(clash)}")
        canonical_json(static)  # fail now, not on every event, if static is not JSON
        processors: list[Callable[..., Any]] = [merge_static(static), add_timestamp]
        if not include_text:
            processors.append(drop_text)
        processors += [stringify_non_finite, hand_to_sink]
        self.sink = sink
        logger = structlog.wrap_logger(
            sink,
            processors=processors,
            wrapper_class=structlog.BoundLogger,
            context_class=dict,
            cache_logger_on_first_use=True,
        ).bind()
        # structlog's generic BoundLogger proxies any method name to the sink: resolve ``write``
        # once here so each event is one call.
        self._write: Callable[..., dict[str, Any]] = logger.write
        self._listeners: list[Callable[[dict[str, Any]], None]] = []

    def subscribe(self, listener: Callable[[dict[str, Any]], None]) -> None:
        """Call ``listener(record)`` with every record once it is written (OpenTelemetry, metrics).

        A failing listener is reported as a warning: the record is already safe in the log and
        the reply must not fail because an exporter did.
        """
        self._listeners.append(listener)

    def unsubscribe(self, listener: Callable[[dict[str, Any]], None]) -> None:
        """Stop calling `listener` (no error when it was not subscribed)."""
        if listener in self._listeners:
            self._listeners.remove(listener)

    def emit(self, event: str, **fields: Any) -> dict[str, Any]:
        """Write one ``event`` record with ``fields`` and return it as written (with hashes)."""
        if not isinstance(event, str) or not event:
            raise AuditError(f"audit event name must be a non-empty string, got {event!r}")
        clash = sorted(_RESERVED.intersection(fields))
        if clash:
            raise AuditError(f"audit event {event!r} must not set {', '.join(clash)}")
        record = self._write(event, **fields)
        for listener in self._listeners:
            try:
                listener(record)
            except Exception as exc:
                warnings.warn(f"audit listener {listener!r} failed: {exc}", stacklevel=2)
        return record

    def policy_triggered(self, **fields: Any) -> dict[str, Any]:
        """Write a ``policy_triggered`` record."""
        return self.emit("policy_triggered", **fields)

    def request_completed(self, **fields: Any) -> dict[str, Any]:
        """Write a ``request_completed`` record."""
        return self.emit("request_completed", **fields)
