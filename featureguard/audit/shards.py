"""Audit logs with many writers: one hash chain (a shard) per writer, and an anchor log.

One chain has one writer (``JsonlSink``). Replicas of a served model, or the actors of a scan,
each write their own shard next to the set's name::

    audit.jsonl                  the set's name (no file needs to exist under it)
    audit.<writer>.jsonl         a shard: one writer's chain, rotated like any log
    audit.anchors.jsonl          the anchor log: itself a chain, kept by one AnchorWriter

Every few seconds the anchor writer reads each shard's whole records from disk and, when any
shard moved on, appends one record ``{"event": "anchor", "timestamp": ..., "shards": {"audit.
<writer>.jsonl": {"records": n, "hash": h}}}``: the shard's n-th record has hash h. ``verify_set``
checks each shard's chain, the anchor log's chain, and that every anchored record is still in
its shard with that hash. So a shard cut back, or rewritten, below a head that was anchored is
caught, naming the shard and line; records written after the last anchor are only as safe as
one chain (the report counts them). The anchor writer reads the shards' files, so writers and
anchor writer share a file system (one machine, or a shared volume).
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

from featureguard.audit.chain import GENESIS_HASH, log_files, parse_line
from featureguard.audit.log import add_timestamp
from featureguard.audit.sink import FsyncMode, JsonlSink
from featureguard.audit.verify import VerifyReport, verify
from featureguard.errors import AuditError

__all__ = ["ANCHOR_EVENT", "AnchorWriter", "SetReport", "ShardHead", "anchors_path",
           "find_shards", "shard_path", "verify_set"]  # fmt: skip

ANCHOR_EVENT = "anchor"
_ANCHORS = "anchors"
WRITER_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
"""A writer id: letters, digits, '_' and '-' (not only digits: those name rotated segments)."""


def shard_path(log: str | os.PathLike[str], writer: str) -> Path:
    """The shard of ``writer`` in the set ``log``: ``audit.jsonl`` and ``r1`` give
    ``audit.r1.jsonl``."""
    if not WRITER_ID.fullmatch(writer) or writer.isdigit() or writer == _ANCHORS:
        raise AuditError(f"writer id {writer!r}: expected 1-64 letters, digits, '_' or '-', "
                         f"not only digits and not {_ANCHORS!r}")  # fmt: skip
    log = Path(log)
    return log.with_name(f"{log.stem}.{writer}{log.suffix}")


def anchors_path(log: str | os.PathLike[str]) -> Path:
    """The anchor log of the set ``log``: ``audit.anchors.jsonl``."""
    log = Path(log)
    return log.with_name(f"{log.stem}.{_ANCHORS}{log.suffix}")


def set_name(anchors: str | os.PathLike[str]) -> Path:
    """The set an anchor log belongs to: ``audit.anchors.jsonl`` gives ``audit.jsonl``."""
    anchors = Path(anchors)
    return anchors.with_name(anchors.name.replace(f".{_ANCHORS}", "", 1))


def find_shards(log: str | os.PathLike[str]) -> list[Path]:
    """The shards of the set ``log`` on disk, by name (not their rotated segments)."""
    log = Path(log)
    pattern = re.compile(re.escape(log.stem) + r"\.([A-Za-z0-9_-]{1,64})" + re.escape(log.suffix))
    try:
        names = sorted(os.listdir(log.parent))
    except FileNotFoundError:
        return []
    found = [(name, m[1]) for name in names if (m := pattern.fullmatch(name))]
    return [log.with_name(name) for name, writer in found
            if not writer.isdigit() and writer != _ANCHORS]  # fmt: skip


@dataclass(frozen=True, slots=True)
class ShardHead:
    """How far a shard's chain reached when it was read."""

    records: int
    """Whole records in the shard (its rotated segments included)."""
    hash: str
    """The last one's hash (64 zeros for none)."""


class _Tail:
    """A shard's head, read incrementally: only the bytes added since the last read (the whole
    log again after a rotation)."""

    def __init__(self, path: Path) -> None:
        self.path, self.inode, self.offset = path, -1, 0
        self.head = ShardHead(0, GENESIS_HASH)

    def read(self) -> ShardHead:
        try:
            stat = self.path.stat()
        except FileNotFoundError:  # between a rotation's rename and the new file
            return self.head
        if stat.st_ino != self.inode or stat.st_size < self.offset:
            self.inode, self.offset, self.head = stat.st_ino, 0, ShardHead(0, GENESIS_HASH)
            for segment in log_files(self.path)[:-1]:
                self.head = _advance(self.head, segment.read_bytes())
        with self.path.open("rb") as file:
            file.seek(self.offset)
            data = file.read()
        whole = data[: data.rfind(b"\n") + 1]  # a line still being written waits for next time
        self.offset += len(whole)
        self.head = _advance(self.head, whole)
        return self.head


def _advance(head: ShardHead, data: bytes) -> ShardHead:
    records, last = head.records, head.hash
    for line in data.splitlines():
        record = parse_line(line)
        if record is not None:
            records, last = records + 1, record["hash"]
    return ShardHead(records, last)


class AnchorWriter:
    """Appends every shard's head to the set's anchor log: on ``anchor()``, and every
    ``interval`` seconds after ``start()``. One per set; thread-safe."""

    def __init__(self, log: str | os.PathLike[str], *, fsync: FsyncMode = "record") -> None:
        self.log = Path(log)
        self.sink = JsonlSink(anchors_path(self.log), fsync=fsync)
        self._tails: dict[Path, _Tail] = {}
        self._last: dict[str, ShardHead] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def anchor(self) -> dict[str, ShardHead]:
        """Read every shard's head and record them when any moved on; returns the heads."""
        with self._lock:
            for path in find_shards(self.log):
                self._tails.setdefault(path, _Tail(path))
            heads = {p.name: t.read() for p, t in self._tails.items()}
            heads = {name: h for name, h in heads.items() if h.records}
            if heads != self._last:
                shards = {n: {"records": h.records, "hash": h.hash} for n, h in heads.items()}
                self.sink.write(add_timestamp(None, "", {"event": ANCHOR_EVENT, "shards": shards}))
                self._last = heads
            return heads

    def start(self, interval: float) -> None:
        """Anchor every ``interval`` seconds on a daemon thread until ``close()``."""

        def loop() -> None:
            while not self._stop.wait(interval):
                self.anchor()

        self._thread = threading.Thread(target=loop, name="featureguard-anchors", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the thread, anchor a last time, close the anchor log."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.anchor()
        self.sink.close()


@dataclass(frozen=True, slots=True, kw_only=True)
class SetReport:
    """The outcome of checking a set: each shard, the anchor log, and the anchors against the
    shards."""

    ok: bool
    """Every chain verifies and every anchored record is in its shard."""
    anchors: VerifyReport
    """The anchor log's own chain."""
    shards: dict[str, VerifyReport]
    """Each shard's chain, by file name."""
    problems: tuple[str, ...]
    """What is wrong, in words (chains and anchors)."""
    anchored: dict[str, int] = field(default_factory=dict)
    """Per shard, how many of its records the latest anchor covers."""
    unanchored: dict[str, int] = field(default_factory=dict)
    """Per shard, records after its latest anchor (as safe as one chain)."""


def verify_set(log: str | os.PathLike[str]) -> SetReport:
    """Check the set ``log`` (shards, anchor log and anchors); AuditError if a file cannot be
    read."""
    log = Path(log)
    anchors = verify(anchors_path(log))
    shards = {p.name: verify(p) for p in find_shards(log)}
    problems = [f"{anchors_path(log).name}: {anchors.reason}"] if not anchors.ok else []
    problems += [f"{name}: {r.reason}" for name, r in shards.items() if not r.ok]
    wanted = _anchored(anchors_path(log), anchors.records)
    for name, heads in wanted.items():
        if name not in shards:
            problems.append(f"{name}: anchored at record {max(heads)}, but the shard is missing")
            continue
        problems += _check_heads(log.with_name(name), heads)
    latest = {name: max(heads) for name, heads in wanted.items()}
    counts = {name: _Tail(log.with_name(name)).read().records for name in shards}
    return SetReport(
        ok=not problems, anchors=anchors, shards=shards, problems=tuple(problems),
        anchored=latest,
        unanchored={n: max(0, c - latest.get(n, 0)) for n, c in counts.items()},
    )  # fmt: skip


def _anchored(path: Path, records: int) -> dict[str, dict[int, str]]:
    """Per shard name, {record number: hash} from the first ``records`` (verified) anchors."""
    out: dict[str, dict[int, str]] = {}
    if not path.exists():
        return out
    with path.open("rb") as file:
        for _, line in zip(range(records), file, strict=False):
            record = parse_line(line) or {}
            for name, head in (record.get("shards") or {}).items():
                out.setdefault(name, {})[int(head["records"])] = str(head["hash"])
    return out


def _check_heads(shard: Path, heads: dict[int, str]) -> list[str]:
    """Problems with the anchored records ``heads`` ({number: hash}) of ``shard``."""
    problems, n = [], 0
    for file in log_files(shard):
        with file.open("rb") as lines:
            for number, line in enumerate(lines, 1):
                record = parse_line(line)
                if record is None:
                    continue
                n += 1
                if n in heads and heads[n] != record["hash"]:
                    problems.append(f"{file.name} line {number}: record {n} is not the one "
                                    "anchored (its hash differs: rewritten)")  # fmt: skip
    missing = [k for k in heads if k > n]
    if missing:
        problems.append(f"{shard.name} line {max(missing)}: anchored record {max(missing)} is "
                        f"missing; the shard ends after {n} records (cut back below an "
                        "anchored head)")  # fmt: skip
    return problems


def sets_at(path: str | os.PathLike[str]) -> list[Path]:
    """The sets ``path`` names: every set of a folder (found by its anchor log), the set of an
    anchor log, or ``path`` itself when its anchor log exists; [] otherwise."""
    path = Path(path)
    if path.is_dir():
        return [set_name(p) for p in sorted(path.glob(f"*.{_ANCHORS}.jsonl"))]
    if path.name.endswith(f".{_ANCHORS}{path.suffix}"):
        return [set_name(path)]
    return [path] if anchors_path(path).exists() else []
