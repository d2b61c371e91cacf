"""OpenTelemetry: one `featureguard.request` span per guarded call, built from the audit
records, with exact attributes, one event per trigger, and error status on a guard error."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import tiny_world as tw
import torch
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

import featureguard as fg
from featureguard.audit import AuditLog
from featureguard.integrations import otel

MESSAGE = "withheld by the test policy"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tw.World]:
    """One tiny llama world; fails the module if a test leaves a guard on its model."""
    torch.set_num_threads(1)
    w = tw.build_world(tmp_path_factory.mktemp("world"), "llama")
    yield w
    assert "generate" not in vars(w.model) and not tw.hooked_modules(w.model)


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


def fake_guard() -> SimpleNamespace:
    """What `instrument` needs of a guard: its audit log (records written by hand)."""
    return SimpleNamespace(audit=AuditLog(fg.MemorySink()))


def trigger(log: AuditLog, rid: str, policy: str = "p", *, action: str = "log", **kw: Any) -> None:
    fields = dict(sequence=0, policy=policy, action=action, severity="low", sae="res6",
                  hook="blocks.6.hook_resid_post", score=2.5, threshold=1.0, token_index=4,
                  token_id=9, token="x", scope="response",
                  features=[{"index": 7, "label": "f", "activation": 2.5},
                            {"index": 8, "label": "g", "activation": 0.0}])  # fmt: skip
    log.policy_triggered(request_id=rid, **{**fields, **kw})


def complete(log: AuditLog, rid: str, *, duration_ms: float = 12.5, **kw: Any) -> None:
    fields = dict(sequences=1, policies_triggered=[], blocked=[], prompt_tokens=3,
                  completion_tokens=4, rows=[])  # fmt: skip
    log.request_completed(request_id=rid, duration_ms=duration_ms, **{**fields, **kw})


def by_id(spans: tuple[ReadableSpan, ...]) -> dict[str, ReadableSpan]:
    return {s.attributes["featureguard.request_id"]: s for s in spans}


# ---- a real guard ----------------------------------------------------------------------------
def test_one_span_per_request_with_exact_attributes(
    world: tw.World, tmp_path: Path, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """Three guarded calls, three spans; the blocked call's span says what fired, where."""
    path = tw.write_policy(world, tmp_path, action="block", message=MESSAGE, severity="high")
    free = next(r for r in range(len(tw.PROMPTS)) if r != world.row)
    sink = fg.MemorySink()
    with fg.wrap(world.model, path, tokenizer=world.tokenizer, audit=sink) as guard:
        otel.instrument(guard, tracer_provider=provider)
        guard.generate(tw.PROMPTS[world.row], request_id="blocked", max_new_tokens=8)
        [outcome] = guard.last
        guard.generate(tw.PROMPTS[free], request_id="free", max_new_tokens=8)
        [free_outcome] = guard.last
        guard.generate(tw.PROMPTS[free], request_id="again", max_new_tokens=2)
    spans = exporter.get_finished_spans()
    assert [s.name for s in spans] == ["featureguard.request"] * 3
    assert list(by_id(spans)) == ["blocked", "free", "again"]
    span = by_id(spans)["blocked"]
    assert dict(span.attributes) == {
        "featureguard.request_id": "blocked",
        "featureguard.policies_triggered": ("watch",),
        "featureguard.blocked": True,
        "featureguard.blocked_sequences": (0,),
        "featureguard.sequences": 1,
        "featureguard.actions": ("block",),
        "featureguard.features": (f"s:{tw.TARGET}",),
        "featureguard.prompt_tokens": len(tw.PROMPTS[world.row]),  # one token per character
        "featureguard.completion_tokens": outcome.completion_tokens,
    }
    [trig] = outcome.triggers
    [event] = span.events
    assert event.name == "featureguard.policy_triggered"
    assert dict(event.attributes) == {
        "featureguard.policy": "watch",
        "featureguard.action": "block",
        "featureguard.severity": "high",
        "featureguard.sequence": 0,
        "featureguard.token_index": world.token_index,
        "featureguard.score": trig.score,
        "featureguard.threshold": world.threshold,
        "featureguard.features": (f"s:{tw.TARGET}",),
        "featureguard.activations": (trig.features[tw.TARGET],),
    }
    [done] = [r for r in sink.records if r.get("request_id") == "blocked"
              and r["event"] == "request_completed"]  # fmt: skip
    assert span.end_time - span.start_time == int(done["duration_ms"] * 1_000_000)
    assert span.start_time <= event.timestamp <= span.end_time
    assert span.status.status_code == StatusCode.UNSET
    quiet = by_id(spans)["free"]
    assert quiet.attributes["featureguard.blocked"] is False
    assert quiet.attributes["featureguard.policies_triggered"] == ()
    assert quiet.attributes["featureguard.actions"] == ()
    assert quiet.attributes["featureguard.completion_tokens"] == free_outcome.completion_tokens
    assert quiet.events == ()


# ---- records by hand -------------------------------------------------------------------------
def test_guard_error_sets_error_status(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    guard = fake_guard()
    otel.instrument(guard, tracer_provider=provider)
    guard.audit.emit("guard_error", request_id="r1", error="res6@hook: boom", fail_closed=True)
    complete(guard.audit, "r1", blocked=[0])
    [span] = exporter.get_finished_spans()
    assert span.status.status_code == StatusCode.ERROR
    assert span.status.description == "res6@hook: boom"
    [event] = span.events
    assert event.name == "featureguard.guard_error"
    assert dict(event.attributes) == {
        "featureguard.error": "res6@hook: boom",
        "featureguard.fail_closed": True,
    }
    assert span.attributes["featureguard.blocked"] is True


def test_interleaved_requests_keep_their_own_triggers(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """Records of concurrent requests interleave in the log: each span gets its own, and only
    active features (activation > 0) count as fired."""
    guard = fake_guard()
    otel.instrument(guard, tracer_provider=provider)
    trigger(guard.audit, "a", "p1", action="log")
    trigger(guard.audit, "b", "p2", action="suppress", sae="res9")
    trigger(guard.audit, "a", "p3", action="block")
    complete(guard.audit, "b", policies_triggered=["p2"])
    complete(guard.audit, "a", policies_triggered=["p1", "p3"], blocked=[0], duration_ms=3.0)
    spans = by_id(exporter.get_finished_spans())
    assert [e.attributes["featureguard.policy"] for e in spans["a"].events] == ["p1", "p3"]
    assert [e.attributes["featureguard.policy"] for e in spans["b"].events] == ["p2"]
    assert spans["a"].attributes["featureguard.actions"] == ("block", "log")
    assert spans["a"].attributes["featureguard.features"] == ("res6:7",)
    assert spans["b"].attributes["featureguard.features"] == ("res9:7",)
    assert spans["a"].events[0].attributes["featureguard.activations"] == (2.5,)
    assert spans["a"].end_time - spans["a"].start_time == 3_000_000


def test_many_threads_one_span_each(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """N requests from several threads: N spans, each with its own 3 events."""
    guard = fake_guard()
    otel.instrument(guard, tracer_provider=provider)

    def work(t: int) -> None:
        for i in range(25):
            rid = f"{t}-{i}"
            for k in range(3):
                trigger(guard.audit, rid, f"p{k}", token_index=k)
            complete(guard.audit, rid)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    spans = by_id(exporter.get_finished_spans())
    assert len(spans) == 100
    assert all(
        [e.attributes["featureguard.policy"] for e in s.events] == ["p0", "p1", "p2"]
        for s in spans.values()
    )


def test_buffer_is_bounded(
    provider: TracerProvider, exporter: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the limits the oldest pending request is dropped, and extra events are counted."""
    monkeypatch.setattr(otel, "MAX_PENDING_REQUESTS", 2)
    monkeypatch.setattr(otel, "MAX_EVENTS_PER_REQUEST", 2)
    guard = fake_guard()
    otel.instrument(guard, tracer_provider=provider)
    for rid in ("old", "mid", "new"):
        trigger(guard.audit, rid)
    for _ in range(3):
        trigger(guard.audit, "new")
    for rid in ("old", "mid", "new"):
        complete(guard.audit, rid)
    spans = by_id(exporter.get_finished_spans())
    assert [len(spans[r].events) for r in ("old", "mid", "new")] == [0, 1, 2]
    assert spans["new"].attributes["featureguard.dropped_events"] == 2
    assert "featureguard.dropped_events" not in spans["mid"].attributes


def test_uninstrument_stops_spans(provider: TracerProvider, exporter: InMemorySpanExporter) -> None:
    guard = fake_guard()
    uninstrument = otel.instrument(guard, tracer_provider=provider)
    complete(guard.audit, "one")
    uninstrument()
    complete(guard.audit, "two")
    assert list(by_id(exporter.get_finished_spans())) == ["one"]


def test_span_is_a_child_of_the_current_span(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """Inside a traced request (a server's HTTP span) the guard's span is its child."""
    guard = fake_guard()
    otel.instrument(guard, tracer=provider.get_tracer("test"))
    with provider.get_tracer("test").start_as_current_span("http") as parent:
        complete(guard.audit, "r")
    span = by_id([s for s in exporter.get_finished_spans() if s.name != "http"])["r"]
    assert span.parent.span_id == parent.get_span_context().span_id


def test_instrument_from_env(
    provider: TracerProvider, exporter: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Off unless FEATUREGUARD_OTEL is 1/true; then the global tracer provider is used."""
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: provider)
    guard = fake_guard()
    for value in (None, "0", "no", ""):
        environ = {} if value is None else {"FEATUREGUARD_OTEL": value}
        otel.instrument_from_env(guard, environ)()  # returns a no-op to call
    complete(guard.audit, "off")
    assert exporter.get_finished_spans() == ()
    otel.instrument_from_env(guard, {"FEATUREGUARD_OTEL": "True"})
    complete(guard.audit, "on")
    assert list(by_id(exporter.get_finished_spans())) == ["on"]
    monkeypatch.setenv("FEATUREGUARD_OTEL", "1")
    other = fake_guard()
    otel.instrument_from_env(other)
    complete(other.audit, "env")
    assert list(by_id(exporter.get_finished_spans())) == ["on", "env"]


def test_missing_opentelemetry_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    """instrument_from_env stays a no-op without the extra; instrument names it."""
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    guard = fake_guard()
    otel.instrument_from_env(guard, {})()
    with pytest.raises(ImportError, match=r"pip install 'featureguard\[otel\]'"):
        otel.instrument(guard)
