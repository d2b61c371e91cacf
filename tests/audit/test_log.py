"""AuditLog: the structlog pipeline from an event to a chained record."""

from __future__ import annotations

import json
import math
import re
import threading

import pytest
import structlog

from featureguard.audit import AuditLog, JsonlSink, MemorySink, verify
from featureguard.errors import AuditError

TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")


def test_emit_returns_the_written_record():
    """emit returns the record as the sink stored it, with event, timestamp and hashes."""
    sink = MemorySink()
    record = AuditLog(sink).emit("policy_triggered", feature=7)
    assert sink.records == [record]
    assert record["event"] == "policy_triggered" and record["feature"] == 7
    assert TIMESTAMP.fullmatch(record["timestamp"])
    assert {"prev_hash", "hash"} <= record.keys()


def test_convenience_methods_name_their_event():
    """policy_triggered and request_completed emit records with those event names."""
    sink = MemorySink()
    log = AuditLog(sink)
    log.policy_triggered(feature=1)
    log.request_completed(tokens=3)
    assert [record["event"] for record in sink.records] == ["policy_triggered", "request_completed"]


def test_static_fields_are_merged_into_every_record():
    """Static context appears in each record; a field passed with the event wins."""
    sink = MemorySink()
    log = AuditLog(sink, static={"policy_file": "p.yaml", "policy_sha256": "ab"})
    log.emit("a")
    log.emit("b", policy_file="other.yaml")
    assert [record["policy_file"] for record in sink.records] == ["p.yaml", "other.yaml"]
    assert all(record["policy_sha256"] == "ab" for record in sink.records)


def test_redaction_drops_text_and_keeps_ids():
    """include_text=False removes token/text/prompt/reply, also nested, and keeps token ids."""
    sink = MemorySink()
    log = AuditLog(sink, include_text=False, static={"prompt": "secret prompt"})
    record = log.policy_triggered(
        token="secret", token_id=42, text="t", reply="r", tokens=[{"token": "s", "token_id": 9}]
    )
    assert not {"token", "text", "prompt", "reply"} & record.keys()
    assert record["token_id"] == 42 and record["tokens"] == [{"token_id": 9}]


def test_text_is_kept_by_default():
    """include_text defaults to True: token text is written."""
    record = AuditLog(MemorySink()).policy_triggered(token="hello", token_id=1)
    assert record["token"] == "hello"


def test_non_finite_scores_become_strings(tmp_path):
    """NaN and infinities are written as strings, so the record is kept and the file verifies."""
    path = tmp_path / "audit.jsonl"
    with JsonlSink(path) as sink:
        record = AuditLog(sink).emit(
            "policy_triggered", score=math.nan, bounds=[math.inf, -math.inf]
        )
    assert (record["score"], record["bounds"]) == ("NaN", ["Infinity", "-Infinity"])
    assert verify(path).ok


def test_non_json_value_is_refused_and_not_written():
    """A field JSON cannot hold raises AuditError and leaves the log unchanged."""
    sink = MemorySink()
    with pytest.raises(AuditError, match="not strict JSON"):
        AuditLog(sink).emit("x", tensor=object())
    assert sink.records == []


@pytest.mark.parametrize("key", ["timestamp", "prev_hash", "hash"])
def test_reserved_fields_are_refused(key):
    """A caller may not set timestamp or the chain fields."""
    with pytest.raises(AuditError, match=key):
        AuditLog(MemorySink()).emit("x", **{key: "forged"})


def test_threads_write_whole_lines_in_one_chain(tmp_path):
    """8 threads x 50 events through one AuditLog give 400 whole lines and a valid chain."""
    path = tmp_path / "audit.jsonl"
    with JsonlSink(path) as sink:
        log = AuditLog(sink)
        threads = [
            threading.Thread(
                target=lambda t=t: [log.policy_triggered(thread=t, n=n) for n in range(50)]
            )
            for t in range(8)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 400 and all(json.loads(line)["event"] for line in lines)
    report = verify(path)
    assert report.ok and report.records == 400


def test_global_structlog_config_is_untouched():
    """Building and using an AuditLog leaves structlog.get_config() as it was."""
    before = structlog.get_config()
    AuditLog(MemorySink(), include_text=False, static={"a": 1}).emit("x")
    assert structlog.get_config() == before


def test_global_structlog_config_is_not_used():
    """An application's structlog.configure does not reach the audit pipeline."""
    saved = structlog.get_config()

    def explode(*_args):
        raise AssertionError("global processor ran")

    structlog.configure(processors=[explode])
    try:
        record = AuditLog(MemorySink()).emit("x", n=1)
    finally:
        structlog.configure(**saved)
    assert record["n"] == 1
