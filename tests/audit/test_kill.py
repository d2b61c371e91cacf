"""Kill test: a writer killed with SIGKILL mid-stream loses no acknowledged record, leaves at
most a cut last line, and a new JsonlSink resumes the chain across the cut.

Each run starts tests/support/audit_writer.py (JsonlSink with fsync="request", records of
1 byte to 256 KB), which prints a record's number only after ``write`` returned; the parent
kills it at a seeded random moment, then checks the files with ``verify``, reopens them with a
new sink and checks the chain again. SIGKILL tests the process dying, not the machine: what
``write`` handed to the kernel survives it with or without fsync.
"""

from __future__ import annotations

import json
import random
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from featureguard.audit import JsonlSink, verify
from featureguard.audit.chain import log_files, parse_line

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL (POSIX)")

WRITER = Path(__file__).resolve().parents[1] / "support" / "audit_writer.py"
RUNS = 20
ROTATING_RUNS = 10
BIG_RUNS = 6


def _kill_mid_stream(path: Path, seed: int, max_bytes: int, big: bool) -> list[int]:
    """Run the writer, SIGKILL it 5-250 ms (seeded) after its first acknowledgement, and
    return the acknowledged record numbers."""
    delay = random.Random(seed).uniform(0.005, 0.25)
    proc = subprocess.Popen(
        [sys.executable, str(WRITER), str(path), str(seed), str(max_bytes), *["big"][:big]],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    acks: list[int] = []
    started = threading.Event()

    def drain() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.endswith(b"\n"):  # one os.write of a few bytes to a pipe is never split
                acks.append(int(line))
                started.set()
        started.set()

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        assert started.wait(20), "the writer printed nothing"
        time.sleep(delay)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        reader.join(10)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode() if proc.stderr else ""
    return acks


def _whole_records(path: Path) -> list[dict]:
    """The records of every whole line of the log's files, in order (cut lines skipped)."""
    out = []
    for file in log_files(path):
        with file.open("rb") as stream:
            for raw in stream:
                record = parse_line(raw)
                if record is not None:
                    out.append(record)
    return out


def _check_run(path: Path, acks: list[int], max_bytes: int) -> bool:
    """Assert nothing acknowledged is lost and the chain holds, then reopen, write, and assert
    the chain resumed. Returns whether the kill left a cut line."""
    report = verify(path)
    records = _whole_records(path)
    seqs = [r["seq"] for r in records]
    assert seqs == list(range(len(seqs))), "records lost, duplicated or reordered"
    assert set(acks) <= set(seqs), f"acknowledged but lost: {sorted(set(acks) - set(seqs))[:5]}"
    assert acks == list(range(len(acks))) and len(seqs) - len(acks) in (0, 1)
    assert report.records == len(records)
    if not report.ok:  # only a cut last line of the active file may be wrong
        assert report.truncated_tail, report.reason
        assert report.file == str(path)
        lines = path.read_bytes().split(b"\n")
        assert report.first_bad_line == len(lines) and lines[-1] != b""
    for file in log_files(path) if max_bytes else ():  # over max_bytes only when alone
        data = file.read_bytes()
        assert len(data) <= max_bytes or data.rstrip(b"\n").count(b"\n") == 0, file.name
    cut = report.truncated_tail
    cut_file = path.read_bytes() if cut else b""  # the active file, cut line last

    with JsonlSink(path, fsync="request", max_bytes=max_bytes or None) as sink:
        assert sink.last_hash == (records[-1]["hash"] if records else "0" * 64)
        for n in range(3):
            sink.write({"event": "request_completed", "seq": len(seqs) + n, "after_kill": True})
    again = verify(path)
    assert again.records == len(records) + 3 and not again.truncated_tail
    if cut:
        # The break stays where the cut line is: in the active file, or in the segment it became
        # if the resumed writer rotated it away.
        assert (again.ok, again.first_bad_line) == (False, report.first_bad_line)
        assert again.file == str(path) or Path(again.file).read_bytes().startswith(cut_file)
        assert "a later writer resumed the chain after it; the chain verifies across it" in (
            again.reason
        )
    else:
        assert again.ok, again.reason
    assert [r["seq"] for r in _whole_records(path)] == list(range(len(seqs) + 3))
    return cut


def _runs(tmp_path: Path, count: int, max_bytes: int, first_seed: int, big: bool = False
          ) -> int:  # fmt: skip
    started = time.perf_counter()
    acked, cuts, files = [], 0, []
    for seed in range(first_seed, first_seed + count):
        folder = tmp_path / f"run{seed}"
        path = folder / "audit.jsonl"
        acks = _kill_mid_stream(path, seed, max_bytes, big)
        acked.append(len(acks))
        files.append(len(log_files(path)))
        cuts += _check_run(path, acks, max_bytes)
        shutil.rmtree(folder)  # runs write megabytes each
    summary = {
        "runs": count, "max_bytes": max_bytes, "big": big,
        "acked": {"min": min(acked), "median": statistics.median(acked), "max": max(acked)},
        "files_per_run_max": max(files), "truncated_tails": cuts, "lost": 0,
        "seconds": round(time.perf_counter() - started, 1),
    }  # fmt: skip
    print("kill test:", json.dumps(summary))
    assert min(acked) > 0
    return cuts


def test_sigkill_loses_no_acknowledged_record(tmp_path: Path) -> None:
    """20 writers killed mid-stream: every acknowledged record is in the file, the file holds
    whole records and at most a cut tail, and a new sink resumes the chain across the cut."""
    _runs(tmp_path, RUNS, 0, first_seed=1)


def test_sigkill_while_rotating_keeps_one_chain(tmp_path: Path) -> None:
    """The same with rotation at 64 KB (a rename every few records): kills land around renames,
    and the segments and the active file still verify as one chain with nothing lost."""
    _runs(tmp_path, ROTATING_RUNS, 64 * 1024, first_seed=101)


def test_sigkill_during_multi_megabyte_writes(tmp_path: Path) -> None:
    """Records of 1-4 MB, whose writes a kill can cut (Linux can stop a write to a file part
    way on SIGKILL): a cut record is only ever the last line, and the chain resumes after it.
    How many runs end cut depends on timing (most kills land in encoding, hashing or fsync,
    so few do); the checks hold either way."""
    _runs(tmp_path, BIG_RUNS, 0, first_seed=201, big=True)
