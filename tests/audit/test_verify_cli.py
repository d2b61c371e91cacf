"""featureguard audit verify on real-shaped logs: intact, tampered in each way, truncated."""

from __future__ import annotations

from pathlib import Path

import pytest

from featureguard.audit import JsonlSink
from featureguard.cli import main


def _lines(log: Path) -> list[str]:
    return log.read_text(encoding="utf-8").splitlines(keepends=True)


def _verify(log: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["audit", "verify", str(log)])
    return code, capsys.readouterr().out


def test_intact_log_verifies(log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An untouched log: exit 0, its record count and chain head."""
    code, out = _verify(log, capsys)
    assert code == 0 and "ok, 12 records, chain head" in out


@pytest.mark.parametrize(
    ("tamper", "line", "reason"),
    [
        ("edit", 5, "hash does not match its content (edited)"),
        ("delete", 5, "prev_hash is not the hash of line 4"),
        ("insert", 5, "prev_hash is not the hash of line 4"),
        ("swap", 4, "prev_hash is not the hash of line 3"),
    ],
)
def test_tampering_is_named_by_line(
    log: Path, capsys: pytest.CaptureFixture[str], tamper: str, line: int, reason: str
) -> None:
    """Edited, deleted, inserted and swapped lines each fail with exit 1 at the right line."""
    lines = _lines(log)
    if tamper == "edit":
        lines[4] = lines[4].replace('"score":3.5', '"score":0.1')
        assert '"score":0.1' in lines[4]
    elif tamper == "delete":
        del lines[4]
    elif tamper == "insert":
        lines.insert(4, lines[1])
    else:
        lines[3], lines[4] = lines[4], lines[3]
    log.write_text("".join(lines), encoding="utf-8")
    code, out = _verify(log, capsys)
    assert code == 1
    assert f"FAILED at line {line}: line {line}: {reason}" in out


def test_records_cut_off_the_end_still_verify(log: Path, capsys: pytest.CaptureFixture[str]
                                              ) -> None:  # fmt: skip
    """Whole records removed from the end leave a shorter chain that verifies (keep the head
    elsewhere to catch it): verify reports fewer records and another head."""
    _, before = _verify(log, capsys)
    log.write_text("".join(_lines(log)[:-2]), encoding="utf-8")
    code, after = _verify(log, capsys)
    assert code == 0 and "ok, 10 records" in after
    assert before.split("chain head ")[1] != after.split("chain head ")[1]


def test_truncated_tail_is_not_tampering(log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A last line cut mid-way (a crash) is reported as truncated, with the line, exit 1."""
    log.write_bytes(log.read_bytes()[:-25])
    code, out = _verify(log, capsys)
    assert code == 1
    assert "truncated at line 12: line 12 is cut off (the writer stopped mid-line)" in out
    assert "11 records before it verify" in out


def test_resumed_after_truncation_is_reported(log: Path, capsys: pytest.CaptureFixture[str]
                                              ) -> None:  # fmt: skip
    """A writer resuming a cut log keeps the chain; verify names the cut line and says the
    chain resumed across it."""
    log.write_bytes(log.read_bytes()[:-25])
    with JsonlSink(log) as sink:
        sink.write({"event": "request_completed", "timestamp": "2025-01-02T00:00:00.000000Z",
                    "request_id": "r9", "sequences": 1})  # fmt: skip
    code, out = _verify(log, capsys)
    assert code == 1 and "FAILED at line 12" in out
    assert "a later writer resumed the chain after it; the chain verifies across it" in out


def test_several_logs_report_each(log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                  ) -> None:  # fmt: skip
    """Each log gets its own line; one bad log makes the exit code 1."""
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(_lines(log)[1:]), encoding="utf-8")
    code = main(["audit", "verify", str(log), str(bad)])
    out = capsys.readouterr().out.splitlines()
    assert code == 1 and out[0].endswith("ok, 12 records, chain head " + out[0].split()[-1])
    assert out[1].startswith(f"{bad}: FAILED at line 1")
