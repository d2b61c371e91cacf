"""featureguard.audit.read: typed records, verification while reading, flat records, following."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import pytest

import featureguard.audit as audit
from featureguard.audit import JsonlSink
from featureguard.audit.chain import segments
from featureguard.audit.read import Row
from featureguard.audit.requests import Follower, RequestGrouper
from featureguard.errors import AuditError, ChainBrokenError


def test_read_yields_typed_records_in_order(log: Path) -> None:
    """Each event becomes its dataclass; fields are typed; lines are numbered from 1."""
    recs = list(audit.read(log))
    assert [type(r).__name__ for r in recs[:3]] == [
        "PolicyTriggered", "PolicyTriggered", "RequestCompleted",
    ]  # fmt: skip
    assert [r.line for r in recs] == list(range(1, len(recs) + 1))
    first = recs[0]
    assert isinstance(first, audit.PolicyTriggered)
    assert (first.request_id, first.policy, first.action, first.token_index) == (
        "r1", "watch", "log", 1,
    )  # fmt: skip
    assert first.features[0].label == "medical advice" and first.features[0].activation == 1.5
    assert first.token == " f" and first.scope == "prompt"
    done = recs[2]
    assert isinstance(done, audit.RequestCompleted)
    assert done.blocked == (0,) and done.sequences == 2
    assert done.rows[0].tokens == ("def", " f", "():", " verify", "=False", " ok")
    assert done.rows[0].blocked_by == "unsafe" and done.rows[1].blocked_by is None


def test_records_are_frozen(log: Path) -> None:
    """Typed records cannot be changed."""
    rec = next(audit.read(log))
    with pytest.raises(dataclasses.FrozenInstanceError):
        rec.policy = "other"  # type: ignore[misc]


def test_guard_error_and_unknown_events(log: Path) -> None:
    """guard_error gets its own type; an event no reader knows is kept whole as Unknown."""
    recs = list(audit.read(log))
    [err] = [r for r in recs if isinstance(r, audit.GuardErrorRecord)]
    assert (err.request_id, err.error, err.fail_closed) == ("r3", "boom", False)
    last = recs[-1]
    assert isinstance(last, audit.Unknown) and last.event == "custom_note"
    assert last.fields["note"] == "hi" and last.request_id is None


def test_row_ids_index_the_tokens(log: Path) -> None:
    """A trigger's token_index points into its row's prompt_ids + reply_ids."""
    recs = list(audit.read(log))
    done = next(r for r in recs if isinstance(r, audit.RequestCompleted))
    trig = recs[1]
    row: Row = done.rows[trig.sequence]
    assert row.ids[trig.token_index] == trig.token_id
    assert row.tokens[trig.token_index] == trig.token


def test_read_with_verify_passes_a_good_log(log: Path) -> None:
    """verify=True reads an intact log to its end."""
    assert len(list(audit.read(log, verify=True))) == len(list(audit.read(log)))


def test_read_with_verify_stops_at_an_edited_line(log: Path) -> None:
    """An edited line raises ChainBrokenError naming it, after the records before it."""
    lines = log.read_text(encoding="utf-8").splitlines(keepends=True)
    lines[3] = lines[3].replace('"score":2.5', '"score":0.5')
    log.write_text("".join(lines), encoding="utf-8")
    seen = []
    with pytest.raises(ChainBrokenError) as info:
        for rec in audit.read(log, verify=True):
            seen.append(rec)
    assert info.value.line == 4 and len(seen) == 3
    assert len(list(audit.read(log))) == 12  # without verify, the content is read as it is


def test_read_with_verify_reports_a_cut_tail(log: Path) -> None:
    """A last line cut mid-way is named as cut off."""
    data = log.read_bytes()
    log.write_bytes(data[:-40])
    with pytest.raises(ChainBrokenError, match="cut off") as info:
        list(audit.read(log, verify=True))
    assert info.value.line == 12


def test_read_missing_file_is_an_audit_error(tmp_path: Path) -> None:
    """A missing file raises AuditError when reading starts."""
    with pytest.raises(AuditError):
        list(audit.read(tmp_path / "nope.jsonl"))


def test_to_records_is_flat(log: Path) -> None:
    """to_records gives one flat dict per record: scalars and lists only, no nested records."""
    flat = audit.to_records(log)
    assert len(flat) == 12
    trig = flat[0]
    assert trig["event"] == "policy_triggered" and trig["feature_indices"] == [7]
    assert trig["feature_labels"] == ["medical advice"] and trig["feature_activations"] == [1.5]
    done = flat[2]
    assert done["blocked"] == [0] and "rows" not in done and done["duration_ms"] == 12.5
    assert flat[-1]["note"] == "hi"
    for row in flat:
        for value in row.values():
            assert isinstance(value, str | int | float | bool | list | type(None)), value


def test_to_records_accepts_records(log: Path) -> None:
    """to_records also takes the records read() yields (e.g. filtered)."""
    picked = (r for r in audit.read(log) if isinstance(r, audit.RequestCompleted))
    assert [r["request_id"] for r in audit.to_records(picked)] == ["r1", "r2", "r3", "r4"]


def test_grouper_returns_each_request_on_completion(log: Path) -> None:
    """RequestGrouper gathers a request's triggers and errors and returns it when it completes."""
    grouper = RequestGrouper()
    done = [v for rec in audit.read(log) if (v := grouper.add(rec)) is not None]
    assert [v.request_id for v in done] == ["r1", "r2", "r3", "r4"]
    assert [len(v.triggers) for v in done] == [2, 2, 0, 2]
    assert done[2].errors[0].error == "boom"
    assert grouper.unfinished() == []


def test_follower_reads_only_whole_new_lines(tmp_path: Path, sample: SimpleNamespace) -> None:
    """Follower.poll returns the lines appended since the last poll, and waits for a line's end."""
    path = tmp_path / "live.jsonl"
    recs = sample.records(sample.requests)
    follower = Follower(sample.write_log(path, sample.requests[:1]))
    assert [r.event for r in follower.poll()] == [r["event"] for r in recs[:3]]
    assert list(follower.poll()) == []
    with JsonlSink(path) as sink:
        sink.write(recs[3])
    data = path.read_bytes()
    path.write_bytes(data[:-10])  # the writer is mid-line
    assert list(follower.poll()) == []
    path.write_bytes(data)
    [rec] = follower.poll()
    assert rec.line == 4 and rec.request_id == "r2"


def test_follower_reads_the_rest_of_a_rotated_file(tmp_path: Path) -> None:
    """Records written between a poll and a rotation are read from the segment the file
    became, before the new file's records, none missed and none twice."""
    path = tmp_path / "live.jsonl"
    follower = Follower(path)
    with JsonlSink(path, max_bytes=400) as sink:
        sink.write({"event": "request_completed", "request_id": "r0"})
        assert [r.request_id for r in follower.poll()] == ["r0"]
        for i in range(1, 12):  # several rotations between two polls
            sink.write({"event": "request_completed", "request_id": f"r{i}"})
        assert len(segments(path)) >= 2
        assert [r.request_id for r in follower.poll()] == [f"r{i}" for i in range(1, 12)]
        sink.write({"event": "request_completed", "request_id": "r12"})
        assert [r.request_id for r in follower.poll()] == ["r12"]
