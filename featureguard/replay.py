"""Replay stored traffic (a trace) against other policies: what would have triggered, against
what did.

The rule is the engine's, token by token: score = Σ weight·activation; above = score >
threshold on a token the guard scored (not padding or special, as recorded) that is in the
policy's scope (positions before the prompt's end are prompt); it triggers once `window` tokens
in a row are above. A block ends its row: triggers on later steps are dropped, as re-running the
model would never have produced those tokens (the prompt is one step, each reply token one).

What replay cannot know: tokens after the point where the *original* run blocked a row (they
were never generated), and how edits (suppress, steer) by different policies would have changed
the later tokens; the report notes both. Features that a `policy` trace did not store are
refused; a `topk` trace supplies any feature among each token's top k (0 where it is absent,
an approximation the report names). Scores are computed in float64 from the stored float32
activations, so a score within float rounding of its threshold may differ from the model's.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from featureguard.audit.trace import TraceLayer, TraceRequest, read_trace
from featureguard.errors import PolicyError
from featureguard.policy import Policy, PolicySet, PolicySource, load_policies

__all__ = ["PolicyComparison", "ReplayReport", "ReplayTrigger", "combine", "replay"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplayTrigger:
    """A policy triggering on one stored token (in the original run, or in the replay)."""

    request_id: str
    """The call."""
    sequence: int
    """Its row."""
    policy: str
    """The policy's name."""
    action: str
    """Its action."""
    token_index: int
    """Position in the row, prompt included, padding excluded (as in the audit log)."""
    token_id: int
    """The token's id."""
    score: float
    """Σ weight·activation at the token."""
    threshold: float
    """The policy's threshold."""
    in_prompt: bool
    """Whether the token belongs to the prompt."""

    @property
    def key(self) -> tuple[str, int, str, int]:
        """(request, row, policy, token): what compares a trigger with another run's."""
        return (self.request_id, self.sequence, self.policy, self.token_index)


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicyComparison:
    """One policy name's triggers in the original run against the replay."""

    policy: str
    """The name (a policy of either file)."""
    did: int
    """Triggers in the original run (0 for a new policy)."""
    would: int
    """Triggers in the replay (0 for a dropped policy)."""
    added: int
    """Triggers only in the replay."""
    removed: int
    """Triggers only in the original run."""
    blocked_rows_did: int
    """Rows this policy blocked in the original run."""
    blocked_rows_would: int
    """Rows it would have blocked."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplayReport:
    """Everything a replay found."""

    requests: int
    """Calls replayed."""
    rows: int
    """Rows replayed."""
    tokens: int
    """Tokens that were scored."""
    did: tuple[ReplayTrigger, ...]
    """The original triggers, as stored."""
    would: tuple[ReplayTrigger, ...]
    """The replay's triggers."""
    policies: tuple[PolicyComparison, ...]
    """Per policy name, in the new file's order, then dropped ones."""
    approximate: tuple[str, ...] = ()
    """`policy:feature` pairs read from top-k lists (0 where not in a token's top k)."""
    notes: tuple[str, ...] = field(default=())
    """Limits that apply to this replay, in words."""
    edited: bool = False
    """Whether the original run's policies edited activations (suppress, steer)."""

    @property
    def added(self) -> tuple[ReplayTrigger, ...]:
        """Triggers the replay has and the original run had not."""
        old = {t.key for t in self.did}
        return tuple(t for t in self.would if t.key not in old)

    @property
    def removed(self) -> tuple[ReplayTrigger, ...]:
        """Triggers of the original run the replay has not."""
        new = {t.key for t in self.would}
        return tuple(t for t in self.did if t.key not in new)


def _feature_acts(layer: TraceLayer, policy: Policy, approx: set[str]) -> np.ndarray:
    """[b, S, n_f] float64 activations of the policy's features, from the trace."""
    col = {f: i for i, f in enumerate(layer.features)}
    out = []
    for f in policy.features:
        if f.index in col:
            out.append(layer.acts[..., col[f.index]].astype(np.float64))
        elif layer.top_indices is not None:
            hit = layer.top_indices == f.index  # [b, S, k]
            out.append(np.where(hit, layer.top_values, 0).sum(-1).astype(np.float64))
            approx.add(f"{policy.name}:{f.index}")
        else:
            message = (f"feature {f.index} is not in the trace (it stored "
                       f"{list(layer.features)} of SAE '{layer.sae}'; a topk trace holds "
                       "every token's top k)")  # fmt: skip
            raise PolicyError([f.where.problem(message, "index")])
    return np.stack(out, axis=-1)


def _windowed(above: np.ndarray, window: int) -> np.ndarray:
    """[b, S] bool: tokens that end a run of `window` above-threshold tokens (the engine's rule;
    runs carry across steps because the positions of a call's steps are contiguous)."""
    idx = np.arange(above.shape[1])[None, :]
    last_break = np.maximum.accumulate(np.where(~above, idx, -1), axis=1)
    run = np.where(last_break < 0, idx + 1, idx - last_break)
    return above & (run >= window)


def _hits(req: TraceRequest, name: str, action: str, thr: float, triggered: np.ndarray,
          scores: np.ndarray) -> list[ReplayTrigger]:  # fmt: skip
    """One trigger per True of ``triggered`` [b, S], with its score from ``scores`` [b, S]."""
    out = []
    for r, pos in zip(*np.nonzero(triggered), strict=True):
        out.append(ReplayTrigger(
            request_id=req.request_id, sequence=int(r), policy=name, action=action,
            token_index=int(pos) - req.pads[r], token_id=int(req.ids[r, pos]),
            score=float(scores[r, pos]), threshold=thr, in_prompt=bool(pos < req.prompt_len),
        ))  # fmt: skip
    return out


def _score(acts: np.ndarray, weights: list[float]) -> np.ndarray:
    return acts @ np.asarray(weights, dtype=np.float64)  # [b, S]


def _replay_request(req: TraceRequest, policies: PolicySet, approx: set[str]
                    ) -> tuple[list[ReplayTrigger], list[ReplayTrigger]]:  # fmt: skip
    s = req.valid.shape[1]
    prompt = (np.arange(s) < req.prompt_len)[None, :]  # [1, S]
    did, would = [], []
    by_sae = {layer.sae: layer for layer in req.layers}
    for layer in req.layers:
        for j, p in enumerate(layer.policies):
            acts = np.stack([layer.acts[..., layer.features.index(f)] for f, _ in p.features], -1)
            scores = _score(acts.astype(np.float64), [w for _, w in p.features])
            did += _hits(req, p.name, p.action, p.threshold, layer.triggered[..., j], scores)
    for p in policies.policies:
        layer = by_sae.get(p.sae)
        if layer is None:
            traced = ", ".join(repr(name) for name in by_sae) or "none"
            message = f"SAE '{p.sae}' is not in the trace of request {req.request_id} ({traced})"
            raise PolicyError([p.where.problem(message, "sae")])
        hook = policies.saes[p.sae].hook
        if hook is not None and hook != layer.hook:
            message = f"the trace hooked SAE '{p.sae}' at {layer.hook}, this file at {hook}"
            raise PolicyError([policies.saes[p.sae].where.problem(message, "hook")])
        scores = _score(_feature_acts(layer, p, approx), [f.weight for f in p.features])
        scope = prompt if p.scope == "prompt" else ~prompt if p.scope == "response" else True
        above = (scores > p.threshold) & req.valid & layer.seen[None, :] & scope
        triggered = _windowed(above, p.window)
        would += _hits(req, p.name, p.action, p.threshold, triggered, scores)
    return did, _cut_at_blocks(would)


def _cut_at_blocks(hits: list[ReplayTrigger]) -> list[ReplayTrigger]:
    """Drop triggers on steps after the step where a block policy stopped their row."""

    def step(t: ReplayTrigger) -> int:  # the prompt is one forward pass
        return -1 if t.in_prompt else t.token_index

    stop: dict[int, int] = {}
    for t in hits:
        if t.action == "block":
            stop[t.sequence] = min(stop.get(t.sequence, step(t)), step(t))
    return [t for t in hits if step(t) <= stop.get(t.sequence, step(t))]


def _compare(did: list[ReplayTrigger], would: list[ReplayTrigger], order: list[str]
             ) -> tuple[PolicyComparison, ...]:  # fmt: skip
    names = order + sorted({t.policy for t in did} - set(order))
    out = []
    for name in names:
        old = {t.key for t in did if t.policy == name}
        new = {t.key for t in would if t.policy == name}

        def blocked(ts: list[ReplayTrigger], n: str = name) -> int:
            return len({(t.request_id, t.sequence) for t in ts
                        if t.policy == n and t.action == "block"})  # fmt: skip

        out.append(PolicyComparison(policy=name, did=len(old), would=len(new),
                                    added=len(new - old), removed=len(old - new),
                                    blocked_rows_did=blocked(did),
                                    blocked_rows_would=blocked(would)))  # fmt: skip
    return tuple(out)


def replay(trace: str | os.PathLike[str], policies: PolicySource | PolicySet) -> ReplayReport:
    """Re-score every call of the trace folder ``trace`` (or of every trace shard in it) with
    ``policies`` (a file or a set).

    PolicyError (located in the policy file) when a policy needs an SAE or feature the trace
    lacks; AuditError when the trace cannot be read.
    """
    pset = policies if isinstance(policies, PolicySet) else load_policies(policies)
    did: list[ReplayTrigger] = []
    would: list[ReplayTrigger] = []
    approx: set[str] = set()
    requests = rows = tokens = 0
    edited = False
    for req in read_trace(trace):
        d, w = _replay_request(req, pset, approx)
        did += d
        would += w
        requests, rows, tokens = requests + 1, rows + len(req.pads), tokens + int(req.valid.sum())
        edited |= any(p.action in ("suppress", "steer") for L in req.layers for p in L.policies)
    return _report(requests, rows, tokens, did, would, approx, edited, pset)


def combine(reports: Sequence[ReplayReport], policies: PolicySource | PolicySet) -> ReplayReport:
    """One report from the replays of disjoint parts of a trace (its shards, replayed apart
    with the same ``policies``): as if the whole trace had been replayed at once."""
    pset = policies if isinstance(policies, PolicySet) else load_policies(policies)
    return _report(
        sum(r.requests for r in reports), sum(r.rows for r in reports),
        sum(r.tokens for r in reports), [t for r in reports for t in r.did],
        [t for r in reports for t in r.would], {a for r in reports for a in r.approximate},
        any(r.edited for r in reports), pset,
    )  # fmt: skip


def _report(requests: int, rows: int, tokens: int, did: list[ReplayTrigger],
            would: list[ReplayTrigger], approx: set[str], edited: bool,
            pset: PolicySet) -> ReplayReport:  # fmt: skip
    notes = []
    cut = len({(t.request_id, t.sequence) for t in did if t.action == "block"})
    if cut:
        notes.append(f"{cut} row(s) were blocked in the original run: their replay ends where "
                     "they ended (later tokens were never generated)")  # fmt: skip
    if edited:
        notes.append("the original policies edited activations (suppress/steer): the stored "
                     "tokens are the edited run's")  # fmt: skip
    if any(p.action in ("suppress", "steer") for p in pset.policies):
        notes.append("replay scores the stored tokens; it cannot show how new edits would have "
                     "changed the tokens after them")  # fmt: skip
    return ReplayReport(
        requests=requests, rows=rows, tokens=tokens, did=tuple(did), would=tuple(would),
        policies=_compare(did, would, [p.name for p in pset.policies]),
        approximate=tuple(sorted(approx)), notes=tuple(notes), edited=edited,
    )  # fmt: skip
