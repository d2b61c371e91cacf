"""Typed reading of audit logs: records as frozen dataclasses, grouped per request, followed live.

    for rec in featureguard.audit.read("featureguard-audit.jsonl"):
        if isinstance(rec, PolicyTriggered): ...
    pandas.DataFrame(to_records("featureguard-audit.jsonl"))

Everything streams: one line in memory at a time. Grouping per request and following a live
file are in `audit/requests.py`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any

from featureguard.audit.chain import GENESIS_HASH, log_files, parse_line
from featureguard.audit.verify import _lines, _link_problem, _Where, iter_records
from featureguard.errors import AuditError, ChainBrokenError

__all__ = ["FeatureActivation", "GuardErrorRecord", "PolicyTriggered", "Record",
           "RequestCompleted", "Row", "Unknown", "parse", "read", "to_records"]  # fmt: skip


@dataclass(frozen=True, slots=True, kw_only=True)
class FeatureActivation:
    """One feature of a trigger."""

    index: int
    """Global index in the SAE."""
    label: str | None
    """The label the policy gives it."""
    activation: float
    """Its activation on the triggering token."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Row:
    """One row (sequence) of a request: what the user sent and what the model replied."""

    prompt_ids: tuple[int, ...]
    """The prompt's token ids, without padding."""
    reply_ids: tuple[int, ...]
    """The reply's scored token ids, up to (not including) end-of-sequence."""
    tokens: tuple[str, ...] | None
    """Text of each token of prompt + reply; None when the log keeps no text."""
    blocked_by: str | None
    """The policy that blocked the row (or `guard_error`); None when not blocked."""

    @property
    def ids(self) -> tuple[int, ...]:
        """prompt_ids + reply_ids: a trigger's `token_index` indexes this."""
        return self.prompt_ids + self.reply_ids


@dataclass(frozen=True, slots=True, kw_only=True)
class Record:
    """Fields every record has."""

    line: int
    """1-based line in the file."""
    event: str
    """The event name."""
    timestamp: str
    """UTC, ISO 8601 with microseconds and Z."""
    request_id: str | None
    """The guarded call it belongs to (None for events without one)."""
    hash: str
    """This record's chain hash."""
    extra: Mapping[str, Any] = field(default_factory=dict, hash=False)
    """Fields this reader does not type (e.g. `policy_file`), read-only."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicyTriggered(Record):
    """A policy triggered on one token."""

    sequence: int
    """Row of the request."""
    policy: str
    """The policy's name."""
    action: str
    """log, block, suppress or steer."""
    severity: str
    """low, medium or high."""
    sae: str
    """The SAE's name."""
    hook: str
    """The hook point."""
    features: tuple[FeatureActivation, ...]
    """The policy's features with their activations on the token."""
    score: float
    """Σ weight·activation."""
    threshold: float
    """The policy's threshold."""
    token_index: int
    """Index into the row's prompt + reply tokens."""
    token_id: int
    """The token's id."""
    token: str | None
    """The token's text; None when the log keeps no text."""
    scope: str
    """prompt or response: where the token was."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestCompleted(Record):
    """A guarded call ended."""

    sequences: int
    """Rows in the call."""
    policies_triggered: tuple[str, ...]
    """Policies that triggered anywhere in it."""
    blocked: tuple[int, ...]
    """Rows that were stopped."""
    prompt_tokens: int
    """Prompt tokens, padding excluded."""
    completion_tokens: int
    """Generated tokens, through each row's end-of-sequence."""
    duration_ms: float
    """Wall time of the call."""
    rows: tuple[Row, ...]
    """Token ids (and texts) per row; empty in logs written before rows were recorded."""


@dataclass(frozen=True, slots=True, kw_only=True)
class GuardErrorRecord(Record):
    """Scoring raised during a call (a `guard_error` event)."""

    error: str
    """What went wrong."""
    fail_closed: bool
    """Whether every reply of the call was withheld because of it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Unknown(Record):
    """Any other event, kept whole."""

    fields: Mapping[str, Any] = field(default_factory=dict, hash=False)
    """The record as written, hashes included."""


_COMMON = ("event", "timestamp", "request_id", "hash", "prev_hash")


def _float(value: Any) -> float:
    return float(value)  # "NaN", "Infinity", "-Infinity" (how non-finite floats are written)


def _row(raw: Mapping[str, Any]) -> Row:
    tokens = raw.get("tokens")
    return Row(
        prompt_ids=tuple(raw.get("prompt_ids", ())),
        reply_ids=tuple(raw.get("reply_ids", ())),
        tokens=tuple(tokens) if tokens is not None else None,
        blocked_by=raw.get("blocked_by"),
    )


def _triggered(r: dict[str, Any]) -> dict[str, Any]:
    feats = tuple(FeatureActivation(index=int(f["index"]), label=f.get("label"),
                                    activation=_float(f["activation"]))
                  for f in r.pop("features", ()))  # fmt: skip
    return {"sequence": r.pop("sequence"), "policy": r.pop("policy"), "action": r.pop("action"),
            "severity": r.pop("severity", "medium"), "sae": r.pop("sae", ""),
            "hook": r.pop("hook", ""), "features": feats, "score": _float(r.pop("score")),
            "threshold": _float(r.pop("threshold")), "token_index": r.pop("token_index"),
            "token_id": r.pop("token_id"), "token": r.pop("token", None),
            "scope": r.pop("scope", "response")}  # fmt: skip


def _completed(r: dict[str, Any]) -> dict[str, Any]:
    return {"sequences": r.pop("sequences", 0),
            "policies_triggered": tuple(r.pop("policies_triggered", ())),
            "blocked": tuple(r.pop("blocked", ())), "prompt_tokens": r.pop("prompt_tokens", 0),
            "completion_tokens": r.pop("completion_tokens", 0),
            "duration_ms": _float(r.pop("duration_ms", 0.0)),
            "rows": tuple(_row(row) for row in r.pop("rows", ()))}  # fmt: skip


def _guard_error(r: dict[str, Any]) -> dict[str, Any]:
    return {"error": str(r.pop("error", "")), "fail_closed": bool(r.pop("fail_closed", False))}


_TYPES: dict[str, tuple[type[Record], Callable[[dict[str, Any]], dict[str, Any]]]] = {
    "policy_triggered": (PolicyTriggered, _triggered),
    "request_completed": (RequestCompleted, _completed),
    "guard_error": (GuardErrorRecord, _guard_error),
}


def parse(record: Mapping[str, Any], line: int = 0) -> Record:
    """The typed form of one record dict (as `iter_records` yields it); AuditError if an event
    this reader knows lacks a field it needs."""
    event = record.get("event")
    common = {"line": line, "event": str(event), "timestamp": str(record.get("timestamp", "")),
              "request_id": record.get("request_id"),
              "hash": str(record.get("hash", ""))}  # fmt: skip
    if event not in _TYPES:
        return Unknown(**common, fields=MappingProxyType(dict(record)))
    cls, build = _TYPES[event]
    rest = {k: v for k, v in record.items() if k not in _COMMON}
    try:
        typed = build(rest)
    except (KeyError, TypeError, ValueError) as exc:
        raise AuditError(f"line {line}: {event} record lacks or mangles {exc}") from exc
    return cls(**common, **typed, extra=MappingProxyType(rest))


def read(path: str | os.PathLike[str], *, verify: bool = False) -> Iterator[Record]:
    """Yield the typed records of the audit file at ``path``, in order.

    With ``verify``, each line is also checked against the chain as it is read, and
    ChainBrokenError (with ``line``) is raised at the first line that fails, a cut tail
    included; records before it have been yielded. Without it, only unreadable lines raise.

    A rotated log is read from its oldest segment to the file at ``path``, as one chain; a
    record's ``line`` then counts lines across the files, in that order.
    """
    if not verify:
        for number, record in enumerate(iter_records(path), 1):
            yield parse(record, number)
        return
    path = Path(path)
    try:
        files = log_files(path)
    except OSError as exc:
        raise AuditError(f"cannot list audit log {path}: {exc.strerror or exc}") from exc
    where = _Where(files)
    prev_hash, prev_line, prev_file = GENESIS_HASH, 0, files[0]
    for count, (file, number, raw, _last) in enumerate(_lines(files), 1):
        record = parse_line(raw)
        if record is None:
            cut = "cut off mid-line" if not raw.endswith(b"\n") else "not an audit record"
            raise ChainBrokenError(f"{file}:{number}: {cut}", line=number)
        problem = _link_problem(record, prev_hash, prev_line, number, where=where(file, number),
                                after=where(prev_file, prev_line) if prev_line else None,
                                new_file=number == 1 and prev_file != file)  # fmt: skip
        if problem is not None:
            raise ChainBrokenError(f"{path}: {problem}", line=number)
        prev_hash, prev_line, prev_file = record["hash"], number, file
        yield parse(record, count if where.several else number)


def to_records(source: str | os.PathLike[str] | Iterable[Record]) -> list[dict[str, Any]]:
    """Flat dicts, one per record, for ``pandas.DataFrame(to_records(path))``.

    Scalars stay scalars; a trigger's features become three lists (``feature_indices``,
    ``feature_labels``, ``feature_activations``); request rows are dropped (ids per token are
    not a column). ``source`` is a path or records from :func:`read`.
    """
    records = read(source) if isinstance(source, str | os.PathLike) else source
    out = []
    for rec in records:
        flat: dict[str, Any] = {}
        for f in fields(rec):
            value = getattr(rec, f.name)
            if f.name in ("extra", "rows"):
                continue
            if f.name == "fields":
                flat.update((k, v) for k, v in value.items() if k not in flat)
            elif f.name == "features":
                flat["feature_indices"] = [x.index for x in value]
                flat["feature_labels"] = [x.label for x in value]
                flat["feature_activations"] = [x.activation for x in value]
            else:
                flat[f.name] = list(value) if isinstance(value, tuple) else value
        out.append(flat | {k: v for k, v in rec.extra.items() if k not in flat})
    return out
