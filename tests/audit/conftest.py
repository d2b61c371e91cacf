"""A small audit log with known contents, written in the guard's record format.

Four requests over two hours, three policies (block, suppress, log), a guard error and an
event no reader knows. `FACTS` holds the numbers a summary of it must give.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest

from featureguard.audit import JsonlSink

POLICIES = {  # name: (action, severity, sae, feature, label, threshold)
    "unsafe": ("block", "high", "res6", 1234, "disables TLS", 3.0),
    "rude": ("suppress", "medium", "res6", 42, "insult", 2.0),
    "watch": ("log", "low", "res6", 7, "medical advice", 1.0),
}


@dataclass
class Req:
    """One request: its rows as (prompt tokens, reply tokens), and (row, token index, policy,
    activation) for each trigger."""

    id: str
    time: str
    rows: list[tuple[list[str], list[str]]]
    hits: list[tuple[int, int, str, float]] = field(default_factory=list)
    error: str | None = None


VOCAB: dict[str, int] = {}


def tid(token: str) -> int:
    """A stable id per token text."""
    return VOCAB.setdefault(token, 100 + len(VOCAB))


REQUESTS = [
    Req("r1", "2025-01-01T10:05:00.000000Z",
        [(["def", " f", "():"], [" verify", "=False", " ok"]), (["hi"], [" there"])],
        [(0, 1, "watch", 1.5), (0, 4, "unsafe", 4.0)]),
    Req("r2", "2025-01-01T10:40:00.000000Z", [(["you"], [" are", " dumb", " dumb"])],
        [(0, 2, "rude", 2.5), (0, 3, "rude", 3.5)]),
    Req("r3", "2025-01-01T11:10:00.000000Z", [(["hello"], [" world"])], error="boom"),
    Req("r4", "2025-01-01T11:20:00.000000Z", [(["x", " =", " 1"], [" verify", "=False"])],
        [(0, 4, "unsafe", 5.0), (0, 4, "watch", 1.2)]),
]  # fmt: skip

FACTS = {
    "requests": 4, "rows": 5, "triggers": 6, "guard_errors": 1, "blocked_rows": 2,
    "block_rate": 2 / 5, "by_policy": {"unsafe": 2, "rude": 2, "watch": 2},
    "hours": {"2025-01-01T10": (2, 4), "2025-01-01T11": (2, 2)},
}  # fmt: skip


def records(reqs: list[Req], *, include_text: bool = True) -> list[dict]:
    """The records the guard writes for `reqs`, in order (without hashes)."""
    out: list[dict] = []
    for req in reqs:
        blocked: dict[int, str] = {}
        for row, index, name, act in req.hits:
            action, severity, sae, feature, label, threshold = POLICIES[name]
            prompt, reply = req.rows[row]
            token = (prompt + reply)[index]
            rec = {"event": "policy_triggered", "timestamp": req.time, "request_id": req.id,
                   "sequence": row, "policy": name, "action": action, "severity": severity,
                   "sae": sae, "hook": "blocks.6.hook_resid_post",
                   "features": [{"index": feature, "label": label, "activation": act}],
                   "score": act, "threshold": threshold, "token_index": index,
                   "token_id": tid(token), "token": token,
                   "scope": "prompt" if index < len(prompt) else "response"}  # fmt: skip
            if not include_text:
                del rec["token"]
            out.append(rec)
            if action == "block":
                blocked.setdefault(row, name)
        if req.error:
            out.append({"event": "guard_error", "timestamp": req.time, "request_id": req.id,
                        "error": req.error, "fail_closed": False})  # fmt: skip
        rows = []
        for r, (prompt, reply) in enumerate(req.rows):
            row = {"prompt_ids": [tid(t) for t in prompt], "reply_ids": [tid(t) for t in reply]}
            if include_text:
                row["tokens"] = prompt + reply
            if r in blocked:
                row["blocked_by"] = blocked[r]
            rows.append(row)
        out.append({
            "event": "request_completed", "timestamp": req.time, "request_id": req.id,
            "sequences": len(req.rows), "policies_triggered": sorted({h[2] for h in req.hits}),
            "blocked": sorted(blocked), "rows": rows,
            "prompt_tokens": sum(len(p) for p, _ in req.rows),
            "completion_tokens": sum(len(r) for _, r in req.rows), "duration_ms": 12.5,
        })  # fmt: skip
    return out


def write_log(path: Path, reqs: list[Req] = REQUESTS, *, include_text: bool = True,
              extra: list[dict] = ()) -> Path:  # fmt: skip
    """`reqs` as a hash-chained JSONL file (plus `extra` records at the end)."""
    with JsonlSink(path) as sink:
        for rec in records(reqs, include_text=include_text) + list(extra):
            sink.write(rec)
    return path


@pytest.fixture
def log(tmp_path: Path) -> Path:
    """The sample log, with one record of an event no reader knows at its end."""
    custom = {"event": "custom_note", "timestamp": "2025-01-01T11:30:00.000000Z", "note": "hi"}
    return write_log(tmp_path / "audit.jsonl", extra=[custom])


@pytest.fixture(scope="session")
def sample() -> SimpleNamespace:
    """This module's helpers for tests (pytest's importlib mode cannot import a conftest)."""
    return SimpleNamespace(Req=Req, requests=REQUESTS, facts=FACTS, policies=POLICIES,
                           records=records, write_log=write_log, tid=tid)  # fmt: skip
