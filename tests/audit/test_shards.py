"""Shard sets: one chain per writer plus an anchor log, checked together (no Ray needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from featureguard.audit import AuditLog, JsonlSink
from featureguard.audit.chain import canonical_json, record_hash
from featureguard.audit.shards import (
    AnchorWriter,
    anchors_path,
    find_shards,
    sets_at,
    shard_path,
    verify_set,
)
from featureguard.cli import main
from featureguard.errors import AuditError


def _write(log: Path, writer: str, n: int, **sink: object) -> Path:
    path = shard_path(log, writer)
    with JsonlSink(path, **sink) as s:  # type: ignore[arg-type]
        audit = AuditLog(s)
        for i in range(n):
            audit.request_completed(request_id=f"{writer}-{i}", sequences=1)
    return path


def test_two_shards_and_anchors_verify(tmp_path: Path) -> None:
    """Anchored shards verify, and the anchors cover every record."""
    log = tmp_path / "audit.jsonl"
    _write(log, "a", 3)
    _write(log, "b", 5)
    writer = AnchorWriter(log)
    heads = writer.anchor()
    writer.close()
    assert {k: h.records for k, h in heads.items()} == {"audit.a.jsonl": 3, "audit.b.jsonl": 5}
    report = verify_set(log)
    assert report.ok, report.problems
    assert report.anchored == {"audit.a.jsonl": 3, "audit.b.jsonl": 5}
    assert report.unanchored == {"audit.a.jsonl": 0, "audit.b.jsonl": 0}


def test_unchanged_heads_write_no_new_anchor(tmp_path: Path) -> None:
    """Anchoring again without new records adds nothing to the anchor log."""
    log = tmp_path / "audit.jsonl"
    _write(log, "a", 2)
    writer = AnchorWriter(log)
    writer.anchor()
    writer.anchor()
    _write(log, "a", 1)  # resumes the chain: 3 records
    writer.anchor()
    writer.close()
    lines = anchors_path(log).read_text().splitlines()
    assert [json.loads(x)["shards"]["audit.a.jsonl"]["records"] for x in lines] == [2, 3]


def test_records_after_the_last_anchor_are_counted(tmp_path: Path) -> None:
    """Records written after the latest anchor verify and are reported as unanchored."""
    log = tmp_path / "audit.jsonl"
    _write(log, "a", 2)
    writer = AnchorWriter(log)
    writer.anchor()
    _write(log, "a", 4)
    writer.sink.close()
    report = verify_set(log)
    assert report.ok and report.unanchored == {"audit.a.jsonl": 4}


def test_shard_cut_below_an_anchor_names_shard_and_line(tmp_path: Path) -> None:
    """Cutting whole records off a shard's end still leaves a valid chain; the anchor catches
    it, naming the shard and the line of the missing anchored record."""
    log = tmp_path / "audit.jsonl"
    path = _write(log, "a", 4)
    AnchorWriter(log).close()
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:2]))
    report = verify_set(log)
    assert not report.ok and report.shards["audit.a.jsonl"].ok  # the chain alone looks fine
    assert report.problems == (
        "audit.a.jsonl line 4: anchored record 4 is missing; the shard ends after 2 records "
        "(cut back below an anchored head)",
    )


def test_rewritten_anchored_record_is_caught(tmp_path: Path) -> None:
    """A shard rewritten with a fresh valid chain fails against its anchor."""
    log = tmp_path / "audit.jsonl"
    path = _write(log, "a", 2)
    AnchorWriter(log).close()
    records = [json.loads(x) for x in path.read_text().splitlines()]
    prev, out = "0" * 64, []
    for r in records:
        body = {k: v for k, v in r.items() if k != "hash"} | {"prev_hash": prev, "sequences": 9}
        body["hash"] = prev = record_hash(body)
        out.append(canonical_json(body) + "\n")
    path.write_text("".join(out))
    report = verify_set(log)
    assert report.shards["audit.a.jsonl"].ok and not report.ok
    assert "audit.a.jsonl line 2: record 2 is not the one anchored" in report.problems[0]


def test_missing_shard_is_reported(tmp_path: Path) -> None:
    """An anchored shard that is gone fails the set."""
    log = tmp_path / "audit.jsonl"
    path = _write(log, "a", 1)
    AnchorWriter(log).close()
    path.unlink()
    assert verify_set(log).problems == (
        "audit.a.jsonl: anchored at record 1, but the shard is missing",
    )


def test_rotated_shard_is_followed(tmp_path: Path) -> None:
    """A shard that rotates into segments is read across them, incrementally."""
    log = tmp_path / "audit.jsonl"
    writer = AnchorWriter(log)
    _write(log, "a", 3, max_bytes=400)
    writer.anchor()
    _write(log, "a", 3, max_bytes=400)
    heads = writer.anchor()
    writer.close()
    assert heads["audit.a.jsonl"].records == 6
    assert find_shards(log) == [shard_path(log, "a")]  # segments are not shards
    assert verify_set(log).ok


def test_writer_ids_are_checked() -> None:
    """Ids that would collide with segments or the anchor log are refused."""
    for bad in ("000001", "anchors", "a.b", ""):
        with pytest.raises(AuditError, match="writer id"):
            shard_path("audit.jsonl", bad)


def test_sets_are_found_by_folder_name_or_anchor_log(tmp_path: Path) -> None:
    """A folder, the set's name and its anchor log all name the set."""
    log = tmp_path / "audit.jsonl"
    _write(log, "a", 1)
    assert sets_at(log) == [] and sets_at(tmp_path) == []
    AnchorWriter(log).close()
    assert sets_at(tmp_path) == sets_at(log) == sets_at(anchors_path(log)) == [log]


def test_cli_verifies_a_folder_of_shards(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`featureguard audit verify DIR`: exit 0 for an intact set, 1 once a shard is cut."""
    log = tmp_path / "audit.jsonl"
    path = _write(log, "a", 3)
    _write(log, "b", 1)
    AnchorWriter(log).close()
    assert main(["audit", "verify", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "(shard set): ok, 2 shard(s), 4 records, 1 anchor(s)" in out
    path.write_text(path.read_text().splitlines(keepends=True)[0])
    assert main(["audit", "verify", str(log)]) == 1
    assert "problem: audit.a.jsonl line 3: anchored record 3 is missing" in capsys.readouterr().out


def test_cli_refuses_a_folder_without_anchor_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A folder with no anchor log is a usage error, not a silent pass."""
    assert main(["audit", "verify", str(tmp_path)]) == 2
    assert "without an anchor log" in capsys.readouterr().err
