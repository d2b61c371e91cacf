"""After a guarded call: step records → per-row outcomes (`guard.last`), audit records and,
when the policy file asks for one, a trace shard (numpy arrays handed to `audit.trace`).

This is the only place decisions leave the device: once per call, a few small transfers.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from featureguard.audit import AuditLog
from featureguard.audit.trace import TraceWriter
from featureguard.engine import GenerationState, LayerEngine, StepRecord
from featureguard.errors import GuardError

GUARD_ERROR = "guard_error"


@dataclass(frozen=True, slots=True)
class Trigger:
    """One policy triggering on one token."""

    policy: str
    """The policy's name."""
    action: str
    """What the policy does: log, block, suppress or steer."""
    token_index: int
    """Position of the token in its row, prompt included, left padding excluded."""
    token: str | None
    """The token's text (None without a tokenizer)."""
    token_id: int
    """The token's id."""
    score: float
    """Σ weight × activation at that token."""
    features: dict[int, float]
    """Activation of each of the policy's features at that token."""
    in_prompt: bool
    """Whether the token belongs to the prompt."""

    def to_dict(self) -> dict[str, Any]:
        """As JSON-ready data (feature indices become string keys)."""
        return {
            "policy": self.policy,
            "action": self.action,
            "token_index": self.token_index,
            "token": self.token,
            "token_id": self.token_id,
            "score": self.score,
            "features": {str(i): a for i, a in self.features.items()},
            "in_prompt": self.in_prompt,
        }


@dataclass(slots=True)
class SequenceOutcome:
    """What happened to one row of the latest call."""

    blocked: bool = False
    """Whether the row was stopped (by a block policy, or by a guard error in closed mode)."""
    triggers: list[Trigger] = field(default_factory=list)
    """Every trigger, in token order."""
    text: str | None = None
    """The reply as the user sees it: scored tokens only, or the policy's message when
    blocked; None without a tokenizer."""
    blocked_by: str | None = None
    """Name of the policy that blocked the row (`guard_error` for a failure in closed mode)."""
    completion_tokens: int = 0
    """Tokens the row generated and the guard scored, through its end-of-sequence token."""
    ended: bool = False
    """Whether the row ended with its own end-of-sequence token (not the length limit)."""

    @property
    def finish_reason(self) -> str:
        """Why the reply ended, in OpenAI's words: `content_filter` (blocked), `stop` (the model
        ended it) or `length` (the token limit)."""
        if self.blocked:
            return "content_filter"
        return "stop" if self.ended else "length"

    @property
    def policies(self) -> list[str]:
        """Names of the policies that triggered, sorted."""
        return sorted({t.policy for t in self.triggers})

    def to_dict(self) -> dict[str, Any]:
        """As JSON-ready data: what servers and adapters report beside a reply."""
        return {
            "blocked": self.blocked,
            "blocked_by": self.blocked_by,
            "policies": self.policies,
            "finish_reason": self.finish_reason,
            "triggers": [t.to_dict() for t in self.triggers],
        }


@dataclass(frozen=True, slots=True)
class TextScore:
    """One text scored without generating (`Guard.score`): every token as a reply token."""

    tokens: list[str | None]
    """Each token's text (None without a tokenizer), special tokens included."""
    scores: dict[str, list[float | None]]
    """Per policy, its score at each token (None where the token is not scored: specials)."""
    outcome: SequenceOutcome
    """Triggers and whether a block policy would have stopped the text."""

    def to_dict(self) -> dict[str, Any]:
        """As JSON-ready data: what the server's score endpoint returns for one text."""
        outcome = self.outcome.to_dict()
        del outcome["finish_reason"]  # nothing was generated
        return {"flagged": bool(self.outcome.triggers), "tokens": self.tokens,
                "scores": self.scores, **outcome}  # fmt: skip


def token_scores(state: GenerationState, length: int) -> dict[str, list[float | None]]:
    """Per policy, the score of each of row 0's first `length` positions, from a call's records
    (None where the token was not scored)."""
    out: dict[str, list[float | None]] = {}
    for rec in state.records:
        valid = rec.valid[0].tolist() if rec.valid is not None else None
        for j, policy in enumerate(rec.layer.policies):
            row = out.setdefault(policy.name, [None] * length)
            for t, value in enumerate(rec.scores[0, :, j].float().tolist()):
                if valid is None or valid[t]:
                    row[rec.position + t] = value
    return out


def collect(
    *,
    state: GenerationState,
    prompt: torch.Tensor,
    mask: torch.Tensor | None,
    sequences: torch.Tensor,
    request_id: str | Sequence[str],
    started: float,
    tokenizer: Any,
    audit: AuditLog,
    closed_message: str,
    fail_closed: bool,
    eos: int | None,
    include_text: bool = True,
    trace: TraceWriter | None = None,
) -> list[SequenceOutcome]:
    """Turn a finished call's step records into outcomes, and write its audit records.

    `fail_closed` is the policy set's fail mode: whether a guard error withholds every reply.
    `eos` ends a row: its completion tokens are counted up to it, not through the padding after.
    `include_text` False keeps token texts out of `request_completed.rows` (ids stay); `trace`
    receives the call's per-token activations. A list `request_id` names each row's request
    (rows of one request next to each other): each request gets its own records, its rows
    numbered from 0, as if it had been a call of its own (batched serving).
    """
    b, prompt_len = prompt.shape
    rids = [request_id] * b if isinstance(request_id, str) else list(request_id)
    groups = _groups(rids)  # request id -> its rows (a range)
    pads = (prompt_len - mask.sum(dim=1)).tolist() if mask is not None else [0] * b
    seqs = sequences.tolist()
    outcomes = [SequenceOutcome() for _ in range(b)]
    decode = (lambda i: tokenizer.decode([i])) if tokenizer is not None else (lambda i: None)
    # Positions that went through a guarded forward pass: scored, or (when scoring raised) let
    # through by fail_mode open. Not from the records, which miss the steps that raised.
    ctx = state.context
    scored_len = 0 if ctx is None else ctx.position + ctx.valid.shape[1]
    for rec in state.records:
        hits = rec.triggered.nonzero().tolist()  # [[row, t, policy], ...]
        if not hits:
            continue
        rows, ts, _ = zip(*hits, strict=True)
        acts = rec.activations[list(rows), list(ts)].float().tolist()
        scores = rec.scores[list(rows), list(ts)].float().tolist()
        for (r, t, j), act, score in zip(hits, acts, scores, strict=True):
            policy, pos = rec.layer.policies[j], rec.position + t
            cols = rec.layer.cols[j].tolist()
            trig = Trigger(
                policy=policy.name,
                action=policy.action,
                token_index=pos - pads[r],
                token=decode(seqs[r][pos]),
                token_id=seqs[r][pos],
                score=score[j],
                features={f.index: act[c] for f, c in zip(policy.features, cols, strict=True)},
                in_prompt=rec.is_prompt,
            )
            outcomes[r].triggers.append(trig)
            if policy.action == "block" and not outcomes[r].blocked:
                outcomes[r].blocked, outcomes[r].blocked_by = True, policy.name
            audit.policy_triggered(
                request_id=rids[r],
                sequence=r - groups[rids[r]].start,
                policy=policy.name,
                action=policy.action,
                severity=policy.severity,
                sae=rec.layer.sae_name,
                hook=rec.layer.hook,
                features=[
                    {"index": f.index, "label": f.label, "activation": trig.features[f.index]}
                    for f in policy.features
                ],
                score=trig.score,
                threshold=policy.threshold,
                token_index=trig.token_index,
                token_id=trig.token_id,
                token=trig.token,
                scope="prompt" if rec.is_prompt else "response",
            )
    failed_closed = bool(state.errors) and fail_closed
    for error in state.errors:
        for rid in groups:
            audit.emit(GUARD_ERROR, request_id=rid, error=error, fail_closed=failed_closed)
    layers = {r.layer for r in state.records}
    messages = {p.name: p.message for layer in layers for p in layer.policies}
    for r, out in enumerate(outcomes):
        out.triggers.sort(key=lambda t: t.token_index)
        if failed_closed and not out.blocked:
            out.blocked, out.blocked_by = True, GUARD_ERROR
        if tokenizer is None:
            continue
        if out.blocked:
            out.text = messages.get(out.blocked_by, closed_message)
        else:
            out.text = tokenizer.decode(seqs[r][prompt_len:scored_len], skip_special_tokens=True)
    ends = [_reply_end(s[prompt_len:], scored_len - prompt_len, eos) for s in seqs]
    completion = [n for n, _ in ends]
    for out, (n, ended) in zip(outcomes, ends, strict=True):
        out.completion_tokens, out.ended = n, ended
    rows = _rows(seqs, pads, prompt_len, scored_len, eos, outcomes, tokenizer, include_text)
    duration_ms = round((time.perf_counter() - started) * 1000, 3)
    traced = None if trace is None else _trace_arrays(state, sequences, scored_len)
    for rid, span in groups.items():
        mine, cut = outcomes[span.start : span.stop], slice(span.start, span.stop)
        audit.request_completed(
            request_id=rid,
            sequences=len(span),
            policies_triggered=sorted({t.policy for o in mine for t in o.triggers}),
            blocked=[r for r, o in enumerate(mine) if o.blocked],
            prompt_tokens=int(prompt_len * len(span) - sum(pads[cut])),
            completion_tokens=int(sum(completion[cut])),
            duration_ms=duration_ms,
            rows=rows[cut],
        )
        if trace is not None and traced is not None:
            _write_trace(trace, rid, traced, prompt_len, pads, cut)
    return outcomes


def _groups(rids: list[str]) -> dict[str, range]:
    """Each request id's rows; GuardError unless every request's rows are next to each other."""
    groups: dict[str, range] = {}
    start = 0
    for r in range(1, len(rids) + 1):
        if r == len(rids) or rids[r] != rids[start]:
            if rids[start] in groups:
                raise GuardError(f"request id {rids[start]!r}: its rows must be next to each other")
            groups[rids[start]] = range(start, r)
            start = r
    return groups


def _rows(
    seqs: list[list[int]],
    pads: list[int],
    prompt_len: int,
    scored_len: int,
    eos: int | None,
    outcomes: list[SequenceOutcome],
    tokenizer: Any,
    include_text: bool,
) -> list[dict[str, Any]]:
    """Per row: the prompt's ids (no padding) and the reply's scored ids (up to EOS), the text of
    each token when allowed, and the policy that blocked it. `token_index` in trigger records
    indexes `prompt_ids + reply_ids`."""
    rows = []
    for r, seq in enumerate(seqs):
        reply = seq[prompt_len:scored_len]
        row: dict[str, Any] = {
            "prompt_ids": seq[pads[r] : prompt_len],
            "reply_ids": reply[: reply.index(eos)] if eos in reply else reply,
        }
        if include_text and tokenizer is not None:
            ids = row["prompt_ids"] + row["reply_ids"]
            row["tokens"] = tokenizer.batch_decode([[i] for i in ids])
        if outcomes[r].blocked:
            row["blocked_by"] = outcomes[r].blocked_by
        rows.append(row)
    return rows


def _trace_arrays(
    state: GenerationState, sequences: torch.Tensor, scored_len: int
) -> tuple[dict[str, np.ndarray], list[dict[str, Any]]]:
    """Gather each layer's step records into [b, S, ...] arrays (S: positions scored) on the
    device and move them once; with the layers' policies as they are."""
    b, dev = sequences.shape[0], state.device
    layers = list(dict.fromkeys(rec.layer for rec in state.records))
    valid = torch.zeros(b, scored_len, dtype=torch.bool, device=dev)
    arrays: dict[str, torch.Tensor] = {"ids": sequences.to(torch.int32), "valid": valid}
    meta_layers = []
    for i, layer in enumerate(layers):
        recs = [rec for rec in state.records if rec.layer is layer]
        arrays.update(_layer_arrays(f"L{i}.", recs, b, scored_len, dev, valid))
        meta_layers.append(_layer_meta(layer))
    return {key: t.cpu().numpy() for key, t in arrays.items()}, meta_layers


def _write_trace(
    trace: TraceWriter,
    request_id: str,
    traced: tuple[dict[str, np.ndarray], list[dict[str, Any]]],
    prompt_len: int,
    pads: list[int],
    rows: slice,
) -> None:
    """Hand the `rows` of one request (all, unless the call batched several) to the trace."""
    arrays, meta_layers = traced
    kept = {key: a if key.endswith(".seen") else a[rows] for key, a in arrays.items()}
    trace.write(
        request_id,
        kept,
        {"prompt_len": prompt_len, "pads": [int(p) for p in pads[rows]], "layers": meta_layers},
    )


def _layer_arrays(
    prefix: str, recs: list[StepRecord], b: int, s: int, dev: torch.device, valid: torch.Tensor
) -> dict[str, torch.Tensor]:
    first = recs[0]
    acts = torch.zeros(b, s, first.activations.shape[-1], dtype=torch.float32, device=dev)
    trig = torch.zeros(b, s, first.triggered.shape[-1], dtype=torch.bool, device=dev)
    seen = torch.zeros(s, dtype=torch.bool, device=dev)
    k = first.top[0].shape[-1] if first.top is not None else 0
    top_v = torch.zeros(b, s, k, dtype=torch.float32, device=dev)
    top_i = torch.zeros(b, s, k, dtype=torch.int32, device=dev)
    for rec in recs:
        span = slice(rec.position, rec.position + rec.triggered.shape[1])
        acts[:, span], trig[:, span], seen[span] = rec.activations, rec.triggered, True
        if rec.valid is not None:
            valid[:, span] = rec.valid
        if rec.top is not None:
            top_v[:, span], top_i[:, span] = rec.top[0], rec.top[1].to(torch.int32)
    out = {prefix + "acts": acts, prefix + "triggered": trig, prefix + "seen": seen}
    if first.top is not None:
        out |= {prefix + "top_values": top_v, prefix + "top_indices": top_i}
    return out


def _layer_meta(layer: LayerEngine) -> dict[str, Any]:
    labels = {str(f.index): f.label for p in layer.policies for f in p.features if f.label}
    policies = [
        {"name": p.name, "action": p.action, "severity": p.severity, "threshold": p.threshold,
         "window": p.window, "scope": p.scope,
         "features": [[f.index, f.weight] for f in p.features]}
        for p in layer.policies
    ]  # fmt: skip
    return {"sae": layer.sae_name, "hook": layer.hook, "features": list(layer.features),
            "labels": labels, "policies": policies}  # fmt: skip


def _reply_end(reply: list[int], scored: int, eos: int | None) -> tuple[int, bool]:
    """Tokens a row generated, and whether its own EOS ended it. The first `scored` reply
    tokens were scored; the EOS may be the token just after them (the last one generated is
    never read by a forward pass). Padding after the EOS is not generated."""
    seen = reply[: scored + 1]
    if eos is not None and eos in seen:
        return seen.index(eos) + 1, True
    return min(scored, len(reply)), False
