"""verify, verify_or_raise and iter_records: every kind of tampering is found and located."""

from __future__ import annotations

import json

import pytest

from featureguard.audit import (
    GENESIS_HASH,
    JsonlSink,
    iter_records,
    verify,
    verify_or_raise,
)
from featureguard.audit.chain import canonical_json, seal
from featureguard.errors import AuditError, ChainBrokenError

LINES = 6
FIELDS = ["event", "timestamp", "feature", "score", "token_id", "prev_hash", "hash"]


def _log(path):
    """Write a 6-record log and return its lines (without newlines)."""
    with JsonlSink(path) as sink:
        for n in range(LINES):
            sink.write(
                {
                    "event": "policy_triggered",
                    "timestamp": f"2025-01-01T00:00:0{n}.000000Z",
                    "feature": 100 + n,
                    "score": 0.5 + n,
                    "token_id": n,
                }
            )
    return path.read_text(encoding="utf-8").splitlines()


def _save(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def _edited(value):
    if isinstance(value, str):
        return value[:-1] + ("0" if value[-1] != "0" else "1")
    return value + 1


@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize("line", range(1, LINES + 1))
def test_editing_any_field_is_located(tmp_path, line, field):
    """Changing any one field of any line fails verify at that line."""
    path = tmp_path / "audit.jsonl"
    lines = _log(path)
    record = json.loads(lines[line - 1])
    record[field] = _edited(record[field])
    lines[line - 1] = canonical_json(record)
    _save(path, lines)
    report = verify(path)
    assert (report.ok, report.first_bad_line, report.truncated_tail) == (False, line, False)


@pytest.mark.parametrize("line", range(1, LINES))
def test_deleting_a_line_is_located_after_the_gap(tmp_path, line):
    """Deleting any line but the last fails verify at the line after the gap."""
    path = tmp_path / "audit.jsonl"
    lines = _log(path)
    del lines[line - 1]
    _save(path, lines)
    assert verify(path).first_bad_line == line


def test_deleting_the_last_line_needs_the_stored_head(tmp_path):
    """Cutting the last record leaves a valid chain; only a stored last_hash reveals it."""
    path = tmp_path / "audit.jsonl"
    lines = _log(path)
    head = verify(path).last_hash
    _save(path, lines[:-1])
    report = verify(path)
    assert report.ok and report.last_hash != head


@pytest.mark.parametrize("chained", [True, False], ids=["chained", "unchained"])
@pytest.mark.parametrize("line", range(1, LINES + 1))
def test_inserting_a_forged_line_is_located(tmp_path, line, chained):
    """A forged line with a self-consistent hash inserted before line k fails verify.

    It fails at the forged line when its prev_hash is wrong, else at the displaced line after it.
    """
    path = tmp_path / "audit.jsonl"
    lines = _log(path)
    before = json.loads(lines[line - 2])["hash"] if line > 1 else GENESIS_HASH
    prev_hash = before if chained else "f" * 64
    forged = seal({"event": "request_completed", "timestamp": "x"}, prev_hash)
    lines.insert(line - 1, canonical_json(forged))
    _save(path, lines)
    assert verify(path).first_bad_line == (line + 1 if chained else line)


@pytest.mark.parametrize("line", range(1, LINES))
def test_swapping_adjacent_lines_is_located(tmp_path, line):
    """Swapping lines k and k+1 fails verify at line k."""
    path = tmp_path / "audit.jsonl"
    lines = _log(path)
    lines[line - 1], lines[line] = lines[line], lines[line - 1]
    _save(path, lines)
    assert verify(path).first_bad_line == line


def test_cut_tail_is_reported_apart_from_tampering(tmp_path):
    """A last line cut mid-write is a truncated tail, with a reason unlike tampering's."""
    path = tmp_path / "audit.jsonl"
    lines = _log(path)
    path.write_text("\n".join(lines)[:-9], encoding="utf-8")
    report = verify(path)
    assert (report.ok, report.first_bad_line, report.truncated_tail) == (False, LINES, True)
    assert report.records == LINES - 1
    assert (
        report.reason
        == "line 6 is cut off (the writer stopped mid-line); 5 records before it verify"
    )


def test_garbage_line_in_the_middle_is_tampering(tmp_path):
    """A whole line that is not a record, where the chain does not resume across it, is bad."""
    path = tmp_path / "audit.jsonl"
    lines = _log(path)
    lines[2] = "{not json"
    _save(path, lines)
    report = verify(path)
    assert (report.first_bad_line, report.truncated_tail) == (3, False)
    assert "not an audit record" in report.reason


def test_cut_line_does_not_hide_later_tampering(tmp_path):
    """After a resumed cut, an edit further down is still found and reported."""
    path = tmp_path / "audit.jsonl"
    lines = _log(path)
    path.write_text("\n".join(lines)[:-9], encoding="utf-8")
    with JsonlSink(path) as sink:
        sink.write({"event": "a"})
        sink.write({"event": "b"})
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[7] = lines[7].replace('"b"', '"c"')
    _save(path, lines)
    report = verify(path)
    assert (report.first_bad_line, report.records) == (8, 6)
    assert "edited" in report.reason


def test_empty_file_verifies(tmp_path):
    """An empty file is a valid log of zero records."""
    path = tmp_path / "audit.jsonl"
    path.touch()
    report = verify(path)
    assert (report.ok, report.records, report.last_hash) == (True, 0, GENESIS_HASH)


def test_missing_file_raises_audit_error(tmp_path):
    """Verifying a file that does not exist raises AuditError naming it."""
    path = tmp_path / "absent.jsonl"
    with pytest.raises(AuditError, match=r"absent\.jsonl"):
        verify(path)


def test_verify_or_raise_carries_the_line(tmp_path):
    """verify_or_raise raises ChainBrokenError whose line is the first bad line."""
    path = tmp_path / "audit.jsonl"
    lines = _log(path)
    del lines[1]
    _save(path, lines)
    with pytest.raises(ChainBrokenError) as info:
        verify_or_raise(path)
    assert info.value.line == 2


def test_iter_records_yields_every_record(tmp_path):
    """iter_records streams the records in file order."""
    path = tmp_path / "audit.jsonl"
    _log(path)
    assert [record["feature"] for record in iter_records(path)] == list(range(100, 106))


def test_iter_records_names_a_bad_line(tmp_path):
    """iter_records raises AuditError with the line number instead of skipping a bad line."""
    path = tmp_path / "audit.jsonl"
    lines = _log(path)
    lines[3] = "oops"
    _save(path, lines)
    with pytest.raises(AuditError, match=r"audit\.jsonl:4:"):
        list(iter_records(path))
