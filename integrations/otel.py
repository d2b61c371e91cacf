"""OpenTelemetry spans from a guard's audit records: one `featureguard.request` span per guarded
call, with what fired as attributes and one event per trigger.

The spans are built from the audit log (`guard.audit.subscribe`), not from hooks in the forward
pass: tracing then costs nothing per token, and a span says exactly what the tamper-evident log
says. A call's `policy_triggered` (and `guard_error`) records are buffered by request id until
its `request_completed` record arrives, which ends the span; the span starts `duration_ms`
before that. Off unless configured: nothing is traced until `instrument` is called (or
`instrument_from_env` finds `FEATUREGUARD_OTEL=1`). Needs the `otel` extra; this module imports
OpenTelemetry only when it instruments, so `instrument_from_env` costs nothing when off.

Token text is never put on spans: traces often leave the machine, and `include_text: false`
must hold there too.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from featureguard import __version__

SPAN_NAME = "featureguard.request"
TRIGGER_EVENT = "featureguard.policy_triggered"
ERROR_EVENT = "featureguard.guard_error"
ENV = "FEATUREGUARD_OTEL"
MAX_PENDING_REQUESTS = 1024
"""Requests whose records are buffered at once; past it the oldest is dropped (a request
whose `request_completed` never comes must not grow the buffer forever)."""
MAX_EVENTS_PER_REQUEST = 256
"""Trigger events kept per span; the rest are counted in `featureguard.dropped_events`."""


def instrument(guard: Any, tracer_provider: Any = None, tracer: Any = None) -> Callable[[], None]:
    """Emit one span per request of `guard` (anything with an `audit` log); returns the function
    that stops it.

    `tracer` wins over `tracer_provider`; with neither, the global tracer provider is used.
    Each call adds its own spans: instrument a guard once.
    """
    try:
        from opentelemetry import trace
    except ImportError as exc:
        raise ImportError(
            "featureguard.integrations.otel needs OpenTelemetry: pip install 'featureguard[otel]'"
        ) from exc
    if tracer is None:
        tracer = trace.get_tracer("featureguard", __version__, tracer_provider=tracer_provider)
    spans = _SpanBuilder(tracer)
    guard.audit.subscribe(spans)

    def uninstrument() -> None:
        spans.active = False  # AuditLog has no unsubscribe: the listener stays, inert
        unsubscribe = getattr(guard.audit, "unsubscribe", None)
        if callable(unsubscribe):
            unsubscribe(spans)

    return uninstrument


def instrument_from_env(guard: Any, environ: Mapping[str, str] | None = None) -> Callable[[], None]:
    """`instrument(guard)` with the global tracer provider when `FEATUREGUARD_OTEL` is `1` or
    `true`; otherwise nothing (and a no-op to undo it). The server calls this on start-up."""
    value = (os.environ if environ is None else environ).get(ENV, "")
    if value.strip().lower() not in ("1", "true"):
        return lambda: None
    return instrument(guard)


@dataclass
class _Pending:
    """What one request's records said before its `request_completed` arrived."""

    triggers: list[tuple[int, Mapping[str, Any]]] = field(default_factory=list)
    errors: list[tuple[int, Mapping[str, Any]]] = field(default_factory=list)
    dropped: int = 0


class _SpanBuilder:
    """The audit listener: buffers records per request id, ends one span per request."""

    def __init__(self, tracer: Any) -> None:
        self.tracer = tracer
        self.active = True
        self._pending: OrderedDict[str, _Pending] = OrderedDict()
        self._lock = threading.Lock()  # records of concurrent requests arrive from many threads

    def __call__(self, record: Mapping[str, Any]) -> None:
        if not self.active:
            return
        event, now = record.get("event"), time.time_ns()
        if event == "policy_triggered":
            self._buffer(record).triggers.append((now, record))
        elif event == "guard_error":
            self._buffer(record).errors.append((now, record))
        elif event == "request_completed":
            with self._lock:
                pending = self._pending.pop(record.get("request_id"), None) or _Pending()
            self._span(record, pending, now)

    def _buffer(self, record: Mapping[str, Any]) -> _Pending:
        rid = record.get("request_id")
        with self._lock:
            pending = self._pending.get(rid)
            if pending is None:
                pending = self._pending[rid] = _Pending()
                while len(self._pending) > MAX_PENDING_REQUESTS:
                    self._pending.popitem(last=False)
            if len(pending.triggers) >= MAX_EVENTS_PER_REQUEST:
                pending.dropped += 1
                return _Pending()  # a throwaway: the record is counted, not kept
            return pending

    def _span(self, record: Mapping[str, Any], pending: _Pending, end: int) -> None:
        from opentelemetry.trace import Status, StatusCode

        triggers = [r for _, r in pending.triggers]
        duration = int(float(record.get("duration_ms") or 0) * 1_000_000)
        span = self.tracer.start_span(
            SPAN_NAME, start_time=end - duration, attributes=_request_attributes(record, triggers)
        )
        if pending.dropped:
            span.set_attribute("featureguard.dropped_events", pending.dropped)
        for at, trig in pending.triggers:
            span.add_event(TRIGGER_EVENT, _trigger_attributes(trig), timestamp=at)
        for at, err in pending.errors:
            attrs = {
                "featureguard.error": str(err.get("error")),
                "featureguard.fail_closed": bool(err.get("fail_closed")),
            }
            span.add_event(ERROR_EVENT, attrs, timestamp=at)
        if pending.errors:
            span.set_status(Status(StatusCode.ERROR, str(pending.errors[0][1].get("error"))))
        span.end(end_time=end)


def _request_attributes(
    record: Mapping[str, Any], triggers: list[Mapping[str, Any]]
) -> dict[str, Any]:
    return {
        "featureguard.request_id": str(record.get("request_id")),
        "featureguard.policies_triggered": [str(p) for p in record.get("policies_triggered", [])],
        "featureguard.blocked": bool(record.get("blocked")),
        "featureguard.blocked_sequences": [int(r) for r in record.get("blocked", [])],
        "featureguard.sequences": int(record.get("sequences", 0)),
        "featureguard.actions": sorted({str(t.get("action")) for t in triggers}),
        "featureguard.features": sorted({f for t in triggers for f in _active_features(t)}),
        "featureguard.prompt_tokens": int(record.get("prompt_tokens", 0)),
        "featureguard.completion_tokens": int(record.get("completion_tokens", 0)),
    }


def _trigger_attributes(record: Mapping[str, Any]) -> dict[str, Any]:
    features = [f for f in record.get("features", []) if _active(f)]
    return {
        "featureguard.policy": str(record.get("policy")),
        "featureguard.action": str(record.get("action")),
        "featureguard.severity": str(record.get("severity")),
        "featureguard.sequence": int(record.get("sequence", 0)),
        "featureguard.token_index": int(record.get("token_index", -1)),
        "featureguard.score": _number(record.get("score")),
        "featureguard.threshold": _number(record.get("threshold")),
        "featureguard.features": [f"{record.get('sae')}:{f.get('index')}" for f in features],
        "featureguard.activations": [_number(f.get("activation")) for f in features],
    }


def _active_features(record: Mapping[str, Any]) -> list[str]:
    """ "sae:index" of the trigger's features that were active (activation > 0): the ones
    that made the score, not every feature the policy names."""
    return [
        f"{record.get('sae')}:{f.get('index')}" for f in record.get("features", []) if _active(f)
    ]


def _active(feature: Mapping[str, Any]) -> bool:
    value = feature.get("activation")
    return isinstance(value, int | float) and value > 0


def _number(value: Any) -> float:
    """A float attribute; non-finite scores reach the log as strings ("NaN", "Infinity")."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


__all__ = ["ENV", "SPAN_NAME", "instrument", "instrument_from_env"]
