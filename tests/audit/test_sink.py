"""JsonlSink and MemorySink: appending, resuming, cut files and OS errors."""

from __future__ import annotations

import json
import os
import re
import stat

import pytest

from featureguard.audit import JsonlSink, MemorySink, verify
from featureguard.errors import AuditError


def _write(path, count, start=0, **options):
    with JsonlSink(path, **options) as sink:
        for n in range(start, start + count):
            sink.write({"event": "policy_triggered", "n": n, "token": "tok"})
    return sink


def _cut_last_line(path, keep_bytes=7):
    data = path.read_bytes()
    last_start = data.rstrip(b"\n").rfind(b"\n") + 1
    path.write_bytes(data[: last_start + keep_bytes])


def test_reopening_continues_the_chain(tmp_path):
    """Closing and reopening a JsonlSink continues the chain; verify passes over both sessions."""
    path = tmp_path / "audit.jsonl"
    first = _write(path, 3)
    second = JsonlSink(path)
    assert second.last_hash == first.last_hash
    second.write({"event": "request_completed"})
    second.close()
    report = verify(path)
    assert report.ok and report.records == 4


def test_parent_folders_are_created(tmp_path):
    """JsonlSink creates missing parent folders."""
    path = tmp_path / "a" / "b" / "audit.jsonl"
    _write(path, 1)
    assert verify(path).ok


def _count_file_fsyncs(monkeypatch):
    """Replace os.fsync with a counter of fsyncs of regular files (folder fsyncs are not
    counted); returns the list of counts, one entry per call."""
    calls = []
    real = os.fsync

    def counting(fd):
        if stat.S_ISREG(os.fstat(fd).st_mode):
            calls.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fsync", counting)
    return calls


REQUEST = [
    {"event": "policy_triggered", "request_id": "r", "n": 1},
    {"event": "policy_triggered", "request_id": "r", "n": 2},
    {"event": "request_completed", "request_id": "r"},
]


@pytest.mark.parametrize(
    ("mode", "per_request"), [("request", 1), ("record", len(REQUEST)), ("never", 0)]
)
def test_fsync_modes_count_fsyncs(tmp_path, monkeypatch, mode, per_request):
    """request: one fsync per request_completed; record: one per record; never: none. The
    file is the same in every mode."""
    calls = _count_file_fsyncs(monkeypatch)
    path = tmp_path / "audit.jsonl"
    with JsonlSink(path, fsync=mode) as sink:
        for n in range(1, 4):
            for record in REQUEST:
                sink.write(record)
            assert len(calls) == n * per_request
    assert len(calls) == 3 * per_request  # closing after a request_completed adds none
    assert verify(path).records == 3 * len(REQUEST)


def test_request_mode_fsyncs_after_guard_error_and_on_close(tmp_path, monkeypatch):
    """A guard_error ends a request too; records written after the last end are fsynced when
    the sink closes."""
    calls = _count_file_fsyncs(monkeypatch)
    sink = JsonlSink(tmp_path / "audit.jsonl")  # fsync="request" is the default
    sink.write({"event": "policy_triggered"})
    assert calls == []
    sink.write({"event": "guard_error", "error": "boom"})
    assert len(calls) == 1
    sink.write({"event": "policy_triggered"})
    sink.close()
    assert len(calls) == 2


@pytest.mark.parametrize("bad", [True, False, "always", None])
def test_fsync_must_be_a_mode(tmp_path, bad):
    """The old boolean (or any other value) is refused, naming the modes."""
    with pytest.raises(ValueError, match="'request', 'record', 'never'"):
        JsonlSink(tmp_path / "audit.jsonl", fsync=bad)


def test_cut_file_resumes_on_a_new_line(tmp_path):
    """After a cut last line, a new sink writes whole, parseable lines and never joins the cut."""
    path = tmp_path / "audit.jsonl"
    _write(path, 4)
    _cut_last_line(path)
    _write(path, 2, start=10)
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b""  # every line, the cut one included, ends with a newline
    assert len(lines[3]) == 7  # the cut bytes stay as evidence, alone on their line
    assert [json.loads(line)["n"] for line in lines[4:-1]] == [10, 11]


def test_verify_after_resume_names_the_cut_line(tmp_path):
    """Verify on a resumed cut file fails at the cut line, says the chain resumed, counts all."""
    path = tmp_path / "audit.jsonl"
    _write(path, 4)
    _cut_last_line(path)
    _write(path, 2, start=10)
    report = verify(path)
    assert (report.ok, report.first_bad_line, report.truncated_tail) == (False, 4, False)
    assert report.records == 5 and "resumed" in report.reason


def test_record_missing_only_its_newline_is_kept(tmp_path):
    """A last record that lacks only its newline is chained from, after a newline is added."""
    path = tmp_path / "audit.jsonl"
    _write(path, 2)
    path.write_bytes(path.read_bytes().rstrip(b"\n"))
    _write(path, 1, start=5)
    report = verify(path)
    assert report.ok and report.records == 3


def test_refuses_to_resume_after_a_foreign_line(tmp_path):
    """A file whose last whole line is not a record is not appended to."""
    path = tmp_path / "audit.jsonl"
    _write(path, 2)
    with path.open("a") as file:
        file.write("not json\n")
    with pytest.raises(AuditError, match="cannot resume"):
        JsonlSink(path)


def test_directory_path_raises_audit_error_naming_it(tmp_path):
    """A path that is a directory raises AuditError with the path in the message."""
    with pytest.raises(AuditError, match=re.escape(str(tmp_path))):
        JsonlSink(tmp_path)


def test_write_after_close_raises(tmp_path):
    """Writing to a closed sink raises AuditError instead of losing the record."""
    sink = _write(tmp_path / "audit.jsonl", 1)
    with pytest.raises(AuditError, match="closed"):
        sink.write({"event": "late"})


def test_memory_sink_lines_match_the_file(tmp_path):
    """MemorySink chains exactly as JsonlSink writes: same records, same lines."""
    path = tmp_path / "audit.jsonl"
    memory = MemorySink()
    with JsonlSink(path) as sink:
        for n in range(3):
            assert sink.write({"event": "x", "n": n}) == memory.write({"event": "x", "n": n})
    assert path.read_text(encoding="utf-8") == "".join(line + "\n" for line in memory.lines())


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_failed_write_raises_and_stops_the_sink():
    """A write the OS refuses raises AuditError, and the sink refuses every later write."""
    sink = JsonlSink("/dev/full")
    for _ in range(2):
        with pytest.raises(AuditError, match="/dev/full stopped after a failed write"):
            sink.write({"event": "x"})
