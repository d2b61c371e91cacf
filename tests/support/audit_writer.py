"""Writes audit records through JsonlSink until it is killed, for tests/audit/test_kill.py.

    python tests/support/audit_writer.py PATH SEED MAX_BYTES [big]

Writes records numbered 0, 1, 2... (field ``seq``) in requests of 1-8 records, each request
ending in ``request_completed``, with ``fsync="request"`` and, when MAX_BYTES > 0, rotation at
MAX_BYTES. Record sizes vary (seeded): mostly under 1 KB, some of 1-8 KB, a few of 16-256 KB;
with ``big``, 1-4 MB each (writes long enough for a kill to cut one).
After ``write`` returns for a record, and only then, its number is written to stdout as one line
(one unbuffered ``os.write``): an acknowledged record must survive any kill after it.

Loads ``featureguard.audit.sink`` without running ``featureguard/__init__.py`` (which imports
torch and takes seconds): the two packages are registered as bare namespaces, so only the
sink, ``audit/chain.py`` and ``errors.py`` are imported. Stops by itself after 30 s.
"""

from __future__ import annotations

import os
import random
import sys
import time
import types
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "featureguard"


def _load_sink() -> type:
    for name, folder in (("featureguard", PACKAGE), ("featureguard.audit", PACKAGE / "audit")):
        module = types.ModuleType(name)
        module.__path__ = [str(folder)]
        sys.modules[name] = module
    from featureguard.audit.sink import JsonlSink

    return JsonlSink


def _pad(rng: random.Random, big: bool) -> int:
    if big:
        return rng.randrange(1 << 20, 4 << 20)
    roll = rng.random()
    if roll < 0.70:
        return rng.randrange(0, 1000)
    if roll < 0.97:
        return rng.randrange(1000, 8000)
    return rng.randrange(16_000, 256_000)


def main(path: str, seed: int, max_bytes: int, big: bool = False) -> None:
    sink_class = _load_sink()
    rng = random.Random(seed)
    sink = sink_class(path, fsync="request", max_bytes=max_bytes or None)
    deadline = time.monotonic() + 30
    seq, request = 0, 0
    while time.monotonic() < deadline:
        size = rng.randrange(1, 9)
        for i in range(size):
            event = "request_completed" if i == size - 1 else "policy_triggered"
            sink.write({"event": event, "seq": seq, "request_id": f"r{request}",
                        "pad": "x" * _pad(rng, big)})  # fmt: skip
            os.write(1, b"%d\n" % seq)
            seq += 1
        request += 1
    sink.close()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:] == ["big"])
