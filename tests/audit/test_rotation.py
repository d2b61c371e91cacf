"""JsonlSink rotation: numbered segments that stay one chain, crash states around the rename,
and verify / iter_records / read / the CLI over a rotated log."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import featureguard.audit.sink as sink_module
from featureguard.audit import GENESIS_HASH, JsonlSink, iter_records, read, verify
from featureguard.audit.chain import canonical_json, log_files, segment_path, segments
from featureguard.cli import main
from featureguard.errors import AuditError, ChainBrokenError


def _record(n: int, pad: int = 100) -> dict:
    return {"event": "note", "n": n, "pad": "x" * pad}


def _line_size(n: int, pad: int = 100) -> int:
    """Bytes of the line `_record(n, pad)` takes on disk (hashes included)."""
    sealed = {**_record(n, pad), "prev_hash": "0" * 64, "hash": "0" * 64}
    return len(canonical_json(sealed)) + 1


def _write(path: Path, numbers, **options) -> JsonlSink:
    with JsonlSink(path, **options) as sink:
        for n in numbers:
            sink.write(_record(n))
    return sink


def _ns(path: Path) -> list[int]:
    return [json.loads(line)["n"] for line in path.read_text(encoding="utf-8").splitlines()]


def _chain_links(files: list[Path]) -> None:
    """Assert the first record of each file chains from the last record of the file before."""
    prev = GENESIS_HASH
    for file in files:
        lines = file.read_text(encoding="utf-8").splitlines()
        assert json.loads(lines[0])["prev_hash"] == prev, file.name
        prev = json.loads(lines[-1])["hash"]


def test_segment_names_sort_oldest_first(tmp_path: Path) -> None:
    """audit.jsonl's segments are audit.NNNNNN.jsonl, ordered by number (also past six digits);
    other files next to it are not segments."""
    path = tmp_path / "audit.jsonl"
    assert segment_path(path, 3).name == "audit.000003.jsonl"
    assert segment_path(tmp_path / "audit", 12).name == "audit.000012"
    for name in ("audit.1000000.jsonl", "audit.999999.jsonl", "audit.000002.jsonl",
                 "audit.2024.jsonl", "audit.000001.json", "other.000001.jsonl"):  # fmt: skip
        (tmp_path / name).touch()
    assert [n for n, _ in segments(path)] == [2, 999999, 1000000]
    assert log_files(path)[-1].name == "audit.1000000.jsonl"  # no active file: segments only


def test_rotation_by_size_keeps_one_chain(tmp_path: Path) -> None:
    """Files never pass max_bytes, the chain runs across them, and verify, iter_records and
    read see one log."""
    path = tmp_path / "audit.jsonl"
    size = _line_size(0)
    sink = _write(path, range(20), max_bytes=3 * size + 10)
    files = log_files(path)
    assert [f.name for f in files] == [f"audit.{i:06d}.jsonl" for i in range(1, 7)] + [
        "audit.jsonl"
    ]
    assert [_ns(f) for f in files][:2] == [[0, 1, 2], [3, 4, 5]] and _ns(path) == [18, 19]
    assert all(f.stat().st_size <= 3 * size + 10 for f in files)
    _chain_links(files)
    report = verify(path)
    assert (report.ok, report.records, report.files) == (True, 20, 7)
    assert report.last_hash == sink.last_hash
    assert [r["n"] for r in iter_records(path)] == list(range(20))
    assert [r.line for r in read(path, verify=True)] == list(range(1, 21))
    assert [r.line for r in read(path)] == list(range(1, 21))


def test_record_bigger_than_max_bytes_gets_a_file_of_its_own(tmp_path: Path) -> None:
    """A file is never rotated before it holds a record: an oversized one is written alone."""
    path = tmp_path / "audit.jsonl"
    with JsonlSink(path, max_bytes=50) as sink:
        for n in range(3):
            sink.write(_record(n))
    assert [_ns(f) for f in log_files(path)] == [[0], [1], [2]]
    assert verify(path).ok


def test_rotation_by_age(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file whose first record is max_seconds old is rotated at the next write."""
    now = [1000.0]
    monkeypatch.setattr(sink_module, "_now", lambda: now[0])
    path = tmp_path / "audit.jsonl"
    with JsonlSink(path, max_seconds=10) as sink:
        for n, t in enumerate([1000, 1004, 1009.9, 1010, 1015, 1019.9, 1020.5, 1100]):
            now[0] = t
            sink.write(_record(n))
    assert [_ns(f) for f in log_files(path)] == [[0, 1, 2], [3, 4, 5], [6], [7]]
    assert verify(path).ok


def test_age_of_a_resumed_file_counts_from_its_first_timestamp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reopening does not make an old file young: its first record's timestamp is its age."""
    path = tmp_path / "audit.jsonl"
    with JsonlSink(path) as sink:
        sink.write({"event": "x", "timestamp": "2025-01-01T00:00:00.000000Z"})
    start = 1735689600.0  # 2025-01-01T00:00:00Z
    monkeypatch.setattr(sink_module, "_now", lambda: start + 59)
    with JsonlSink(path, max_seconds=60) as sink:
        sink.write({"event": "y"})
    assert len(log_files(path)) == 1
    monkeypatch.setattr(sink_module, "_now", lambda: start + 60)
    with JsonlSink(path, max_seconds=60) as sink:
        sink.write({"event": "z"})
    assert len(log_files(path)) == 2 and verify(path).ok


def test_reopening_continues_numbering_and_chain(tmp_path: Path) -> None:
    """A new sink on a rotated log numbers its segments after the newest one and chains on."""
    path = tmp_path / "audit.jsonl"
    size = _line_size(0)
    _write(path, range(5), max_bytes=2 * size)
    _write(path, range(5, 9), max_bytes=2 * size)
    files = log_files(path)
    assert [f.name for f in files][-2:] == ["audit.000004.jsonl", "audit.jsonl"]
    assert [n for f in files for n in _ns(f)] == list(range(9))
    assert verify(path).records == 9


def test_turning_rotation_off_keeps_the_chain(tmp_path: Path) -> None:
    """Segments left by an earlier writer stay part of the chain when rotation is off."""
    path = tmp_path / "audit.jsonl"
    _write(path, range(4), max_bytes=_line_size(0) + 1)  # one record per file
    _write(path, range(4, 6))
    assert [_ns(f) for f in log_files(path)] == [[0], [1], [2], [3, 4, 5]]
    assert verify(path).records == 6


def test_crash_after_rename_before_new_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                            ) -> None:  # fmt: skip
    """The writer dies after renaming the active file and before creating the next one: a new
    sink finds no active file, resumes from the newest segment, and verify sees one chain."""
    path = tmp_path / "audit.jsonl"
    size = _line_size(0)
    sink = JsonlSink(path, max_bytes=2 * size)
    for n in range(2):
        sink.write(_record(n))
    last = sink.last_hash

    def no_more_files(*args, **kwargs):
        raise OSError("simulated crash")

    monkeypatch.setattr(sink_module, "open", no_more_files, raising=False)
    with pytest.raises(AuditError, match="stopped after a failed write"):
        sink.write(_record(2))
    monkeypatch.undo()
    assert not path.exists() and [f.name for f in log_files(path)] == ["audit.000001.jsonl"]
    assert verify(path).ok
    resumed = JsonlSink(path)
    assert resumed.last_hash == last
    resumed.write(_record(3))
    resumed.close()
    report = verify(path)
    assert (report.ok, report.records, report.files) == (True, 3, 2)


@pytest.mark.parametrize("state", ["missing", "empty", "cut"])
def test_new_active_file_without_a_record_resumes_from_the_segment(
    tmp_path: Path, state: str
) -> None:
    """Active file absent, empty, or holding only the cut start of its first record (the
    states a crash around a rename can leave): the chain goes on from the newest segment."""
    path = tmp_path / "audit.jsonl"
    first = _write(path, range(3))
    path.rename(segment_path(path, 1))
    if state == "empty":
        path.touch()
    elif state == "cut":
        path.write_bytes(b'{"event":"policy_trig')
    second = _write(path, [3, 4])
    assert json.loads(path.read_text().splitlines()[-2])["prev_hash"] == first.last_hash
    report = verify(path)
    assert report.records == 5 and report.files == 2
    if state == "cut":
        assert (report.ok, report.first_bad_line, report.file) == (False, 1, str(path))
        assert report.reason.startswith("audit.jsonl line 1 is cut off")
        assert "resumed the chain" in report.reason
    else:
        assert report.ok and report.last_hash == second.last_hash


def test_rotating_a_file_with_a_cut_line_ends_it_with_a_newline(tmp_path: Path) -> None:
    """A resumed cut file that is rotated before any write gets its cut line ended, so the
    segment holds whole lines; verify reports the cut line and the chain resumed across files."""
    path = tmp_path / "audit.jsonl"
    _write(path, range(3))
    data = path.read_bytes()
    path.write_bytes(data[:-30])  # cut the last record
    with JsonlSink(path, max_bytes=len(data)) as sink:
        sink.write(_record(3))
    segment = segment_path(path, 1)
    assert segment.read_bytes().endswith(b"\n") and _ns(path) == [3]
    report = verify(path)
    assert (report.ok, report.records, report.first_bad_line) == (False, 3, 3)
    assert report.file == str(segment) and "resumed" in report.reason


def _rotated(tmp_path: Path) -> tuple[Path, list[Path]]:
    path = tmp_path / "audit.jsonl"
    _write(path, range(9), max_bytes=3 * _line_size(0))
    files = log_files(path)
    assert len(files) == 3 and all(len(_ns(f)) == 3 for f in files)
    return path, files


def test_verify_names_the_edited_segment(tmp_path: Path) -> None:
    """An edit in a segment is reported at its line in that file."""
    path, files = _rotated(tmp_path)
    lines = files[1].read_text(encoding="utf-8").splitlines(keepends=True)
    lines[1] = lines[1].replace('"n":4', '"n":40')
    files[1].write_text("".join(lines), encoding="utf-8")
    report = verify(path)
    assert (report.ok, report.file, report.first_bad_line, report.records) == (
        False, str(files[1]), 2, 4)  # fmt: skip
    assert report.reason == "audit.000002.jsonl line 2: hash does not match its content (edited)"
    with pytest.raises(ChainBrokenError, match=r"audit\.000002\.jsonl line 2") as info:
        list(read(path, verify=True))
    assert info.value.line == 2


def test_verify_names_a_missing_segment(tmp_path: Path) -> None:
    """A deleted segment breaks the chain at the first line of the file after it."""
    path, files = _rotated(tmp_path)
    files[1].unlink()
    report = verify(path)
    assert (report.file, report.first_bad_line, report.records) == (str(path), 1, 3)
    assert report.reason == (
        "audit.jsonl line 1: prev_hash is not the hash of audit.000001.jsonl line 3 "
        "(a line or a whole file was deleted, inserted or moved)"
    )


def test_verify_needs_the_first_segment(tmp_path: Path) -> None:
    """Without the oldest segment the chain no longer starts from 64 zeros."""
    path, files = _rotated(tmp_path)
    files[0].unlink()
    report = verify(path)
    assert (report.file, report.first_bad_line) == (str(files[1]), 1)
    assert "the chain start (64 zeros)" in report.reason


def test_cut_tail_of_the_active_file_after_segments(tmp_path: Path) -> None:
    """A cut last line of the active file is a truncated tail, named with its file."""
    path, _ = _rotated(tmp_path)
    path.write_bytes(path.read_bytes()[:-20])
    report = verify(path)
    assert (report.truncated_tail, report.records, report.first_bad_line) == (True, 8, 3)
    assert report.reason == (
        "audit.jsonl line 3 is cut off (the writer stopped mid-line); 8 records before it verify"
    )


def test_cli_verifies_segments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`featureguard audit verify PATH` checks the segments too and names a broken one."""
    path, files = _rotated(tmp_path)
    assert main(["audit", "verify", str(path)]) == 0
    assert "ok, 9 records" in capsys.readouterr().out
    files[0].write_text(files[0].read_text(encoding="utf-8").replace('"n":1', '"n":7'))
    assert main(["audit", "verify", str(path)]) == 1
    out = capsys.readouterr().out
    assert "FAILED at line 2: audit.000001.jsonl line 2: hash does not match" in out


def test_guard_builds_the_sink_from_the_policy_file(tmp_path: Path) -> None:
    """The guard's JsonlSink takes fsync and rotate from the policy file's audit section."""
    from policy_cases import BASE

    from featureguard.guard import open_audit
    from featureguard.policy import load_policies_text

    text = BASE + "audit:\n  fsync: record\n  rotate: {max_bytes: 4096, max_seconds: 30}\n"
    log = open_audit(load_policies_text(text), tmp_path / "audit.jsonl")
    sink = log.sink
    assert isinstance(sink, JsonlSink)
    assert (sink.fsync, sink.max_bytes, sink.max_seconds) == ("record", 4096, 30.0)
    sink.close()
    default = open_audit(load_policies_text(BASE), tmp_path / "b.jsonl").sink
    assert (default.fsync, default.max_bytes, default.max_seconds) == ("request", None, None)
    default.close()
