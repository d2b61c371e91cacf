"""Summaries of audit logs: counts per policy, action, severity, feature and hour, block rate,
and the contexts that trigger most. One streaming pass in bounded memory: the counters are
bounded by the policies, features and hours seen, contexts by a pruned counter, and only the
requests still open (triggers waiting for their `request_completed`) are held.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from featureguard.audit.verify import iter_records
from featureguard.errors import AuditError

__all__ = ["Filters", "format_summary", "parse_time", "summarise"]

CONTEXT_BEFORE, CONTEXT_AFTER = 4, 2
_CONTEXT_CAP = 5000  # distinct contexts kept; pruned back to the most common half beyond it


def parse_time(text: str) -> str:
    """An ISO 8601 date or time as the log writes it (UTC, microseconds, Z), for comparing.

    A time without a zone is taken as UTC. AuditError when ``text`` is not ISO 8601.
    """
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError as exc:
        raise AuditError(f"expected an ISO 8601 date or time, got {text!r}") from exc
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True, slots=True, kw_only=True)
class Filters:
    """Which records count. Time and request filter every record; policy and severity filter
    triggers (and the blocks they caused), not the request and row totals."""

    policies: frozenset[str] = frozenset()
    """Only these policies (empty: all)."""
    severities: frozenset[str] = frozenset()
    """Only these severities (empty: all)."""
    since: str | None = None
    """Records at or after this time (as `parse_time` writes it)."""
    until: str | None = None
    """Records before this time."""
    request: str | None = None
    """Only this request id."""

    def record_ok(self, rec: dict[str, Any]) -> bool:
        ts = rec.get("timestamp", "")
        if (self.since and ts < self.since) or (self.until and ts >= self.until):
            return False
        return self.request is None or rec.get("request_id") == self.request

    def trigger_ok(self, rec: dict[str, Any]) -> bool:
        return (not self.policies or rec.get("policy") in self.policies) and (
            not self.severities or rec.get("severity") in self.severities
        )

    @property
    def narrows_triggers(self) -> bool:
        return bool(self.policies or self.severities)


@dataclass(slots=True)
class _Open:
    """A request whose completion has not been read yet."""

    policies: set[str] = field(default_factory=set)
    blocked: dict[int, str] = field(default_factory=dict)  # row -> the first policy to block it
    hits: list[tuple[str, int, int, str]] = field(default_factory=list)  # policy, row, index, tok


class _Tally:
    def __init__(self, filters: Filters, top: int, context_cap: int = _CONTEXT_CAP) -> None:
        self.filters, self.top, self.context_cap = filters, top, context_cap
        self.records = self.requests = self.rows = self.triggers = self.errors = 0
        self.blocked_rows = self.blocked_requests = self.prompt_tokens = self.completion = 0
        self.duration = 0.0
        self.policies: dict[str, Counter[str]] = {}
        self.actions: Counter[str] = Counter()
        self.severities: Counter[str] = Counter()
        self.features: dict[str, dict[str, Any]] = {}
        self.hours: dict[str, Counter[str]] = {}
        self.contexts: Counter[tuple[str, str]] = Counter()
        self.open: dict[str, _Open] = {}

    def add(self, rec: dict[str, Any]) -> None:
        if not self.filters.record_ok(rec):
            return
        self.records += 1
        event = rec.get("event")
        if event == "policy_triggered" and self.filters.trigger_ok(rec):
            self._trigger(rec)
        elif event == "request_completed":
            self._completed(rec)
        elif event == "guard_error":
            self.errors += 1

    def _hour(self, rec: dict[str, Any]) -> Counter[str]:
        return self.hours.setdefault(str(rec.get("timestamp", ""))[:13], Counter())

    def _trigger(self, rec: dict[str, Any]) -> None:
        policy, action = rec["policy"], rec.get("action", "?")
        self.triggers += 1
        self.policies.setdefault(policy, Counter())["triggers"] += 1
        self.actions[action] += 1
        self.severities[rec.get("severity", "?")] += 1
        self._hour(rec)["triggers"] += 1
        for f in rec.get("features", ()):
            key = f"{rec.get('sae', '')}:{f['index']}"
            entry = self.features.setdefault(key, {"label": f.get("label"), "triggers": 0,
                                                   "sum": 0.0, "max": float("-inf")})  # fmt: skip
            act = float(f["activation"])
            entry["triggers"] += 1
            entry["sum"] += act
            entry["max"] = max(entry["max"], act)
        pending = self.open.setdefault(rec.get("request_id") or "", _Open())
        pending.policies.add(policy)
        row = int(rec.get("sequence", 0))
        if action == "block":
            pending.blocked.setdefault(row, policy)
        token = rec.get("token")
        tok = token if token is not None else f"#{rec.get('token_id')}"
        pending.hits.append((policy, row, int(rec.get("token_index", -1)), tok))

    def _completed(self, rec: dict[str, Any]) -> None:
        self.requests += 1
        self.rows += int(rec.get("sequences", 0))
        self.prompt_tokens += int(rec.get("prompt_tokens", 0))
        self.completion += int(rec.get("completion_tokens", 0))
        self.duration += float(rec.get("duration_ms", 0.0))
        self._hour(rec)["requests"] += 1
        pending = self.open.pop(rec.get("request_id") or "", None) or _Open()
        blocked = pending.blocked if self.filters.narrows_triggers else set(rec.get("blocked", ()))
        self.blocked_rows += len(blocked)
        self.blocked_requests += bool(blocked)
        self._close(pending, rec.get("rows") or ())

    def _close(self, pending: _Open, rows: Sequence[dict[str, Any]]) -> None:
        for policy in pending.policies:
            self.policies[policy]["requests"] += 1
        for policy in pending.blocked.values():
            self.policies[policy]["blocked_rows"] += 1
        for policy, row, index, tok in pending.hits:
            self.contexts[(policy, _context(rows, row, index, tok))] += 1
        if len(self.contexts) > self.context_cap:
            self.contexts = Counter(dict(self.contexts.most_common(self.context_cap // 2)))

    def result(self) -> dict[str, Any]:
        for pending in self.open.values():  # requests cut off before their completion
            self._close(pending, ())
        self.open = {}
        rate = self.blocked_rows / self.rows if self.rows else 0.0
        features = {k: {"label": v["label"], "triggers": v["triggers"],
                        "mean_activation": v["sum"] / v["triggers"], "max_activation": v["max"]}
                    for k, v in sorted(self.features.items())}  # fmt: skip
        return {
            "records": self.records, "requests": self.requests, "rows": self.rows,
            "triggers": self.triggers, "guard_errors": self.errors,
            "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion,
            "mean_duration_ms": self.duration / self.requests if self.requests else 0.0,
            "blocked_rows": self.blocked_rows, "blocked_requests": self.blocked_requests,
            "block_rate": rate,
            "policies": {p: {"triggers": c["triggers"], "requests": c["requests"],
                             "blocked_rows": c["blocked_rows"]}
                         for p, c in sorted(self.policies.items())},
            "actions": dict(sorted(self.actions.items())),
            "severities": dict(sorted(self.severities.items())),
            "features": features,
            "hours": {h: {"requests": c["requests"], "triggers": c["triggers"]}
                      for h, c in sorted(self.hours.items())},
            "top_contexts": [{"policy": p, "context": ctx, "triggers": n}
                             for (p, ctx), n in self.contexts.most_common(self.top)],
        }  # fmt: skip


def _show(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t")


def _bracket(token: str) -> str:
    """`token` in brackets, its leading whitespace kept outside: ` [dumb]`."""
    text = _show(token)
    word = text.lstrip()
    return f"{text[: len(text) - len(word)]}[{word.rstrip()}]"


def _context(rows: Sequence[dict[str, Any]], row: int, index: int, tok: str) -> str:
    """The trigger's token in brackets with a few tokens around it, from the row's tokens."""
    data = rows[row] if row < len(rows) else {}
    tokens, sep = data.get("tokens"), ""
    if tokens is None:
        ids = list(data.get("prompt_ids", ())) + list(data.get("reply_ids", ()))
        tokens, sep = [f"#{i}" for i in ids], " "
    if not 0 <= index < len(tokens):
        return _bracket(tok).strip()
    left = tokens[max(0, index - CONTEXT_BEFORE) : index]
    right = tokens[index + 1 : index + 1 + CONTEXT_AFTER]
    return sep.join([*map(_show, left), _bracket(tokens[index]), *map(_show, right)]).strip()


def summarise(
    paths: Iterable[str | os.PathLike[str]], filters: Filters | None = None, *, top: int = 10
) -> dict[str, Any]:
    """One summary of the audit files at ``paths`` (read in order, without checking hashes)."""
    tally = _Tally(filters or Filters(), top)
    for path in paths:
        for rec in iter_records(path):
            tally.add(rec)
    return tally.result()


def format_summary(s: dict[str, Any]) -> str:
    """The summary as text tables."""
    pct = f"{100 * s['block_rate']:.1f}%"
    req_pct = f"{100 * s['blocked_requests'] / s['requests']:.1f}%" if s["requests"] else "-"
    out = [
        f"{s['records']:,} records: {s['requests']:,} requests ({s['rows']:,} rows), "
        f"{s['triggers']:,} triggers, {s['guard_errors']:,} guard errors",
        f"blocked: {s['blocked_rows']:,} of {s['rows']:,} rows ({pct}), "
        f"{s['blocked_requests']:,} of {s['requests']:,} requests ({req_pct})",
        "",
    ]
    out += _table(
        ["policy", "triggers", "requests", "blocked rows"],
        [[p, v["triggers"], v["requests"], v["blocked_rows"]] for p, v in s["policies"].items()],
    )
    out += _table(["action", "triggers"], [[k, v] for k, v in s["actions"].items()])
    out += _table(["severity", "triggers"], [[k, v] for k, v in s["severities"].items()])
    out += _table(
        ["feature", "label", "triggers", "mean act", "max act"],
        [
            [
                k,
                v["label"] or "",
                v["triggers"],
                f"{v['mean_activation']:.3f}",
                f"{v['max_activation']:.3f}",
            ]
            for k, v in s["features"].items()
        ],
    )
    out += _table(
        ["hour (UTC)", "requests", "triggers"],
        [
            [h.replace("T", " ") + ":00", v["requests"], v["triggers"]]
            for h, v in s["hours"].items()
        ],
    )
    out += _table(["triggers", "policy", "context"],
                  [[c["triggers"], c["policy"], c["context"]]
                   for c in s["top_contexts"]])  # fmt: skip
    return "\n".join(out).rstrip() + "\n"


def _table(head: list[str], rows: list[list[Any]]) -> list[str]:
    if not rows:
        return []
    cells = [head] + [[f"{c:,}" if isinstance(c, int) else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(head))]
    lines = []
    for r in cells:
        parts = [c.rjust(w) if i and r[i][:1].isdigit() else c.ljust(w)
                 for i, (c, w) in enumerate(zip(r, widths, strict=True))]  # fmt: skip
        lines.append("  ".join(parts).rstrip())
    return [*lines, ""]
