"""featureguard inside a vLLM worker: score each step's rows, edit, decide, audit.

One `GuardRuntime` per worker process. Its hooks sit on the model from load time (a forward
pre-hook on the model, which labels the step's rows, and a forward hook on each hooked decoder
layer). The scoring, windows, decisions and edits are the library's own `LayerEngine`; the
audit records are the library's own `outcomes.collect`. What this module adds is the mapping
between vLLM's flattened step and the engine's `[batch, seq, d]` calls:

- each request keeps a `GenerationState` of batch 1 across steps (records, window runs,
  blocked flag, errors), exactly what a one-row `model.generate` call would have built;
- a step's spans are grouped by (policy selection, phase, length), and each group is one
  engine call on `[requests, length, d]`, so there is no padding and no Python loop per token;
- vLLM's decoder layers return `(hidden, residual)` and fuse the residual add into the next
  layer's norm, so the residual stream is `hidden + residual`: that sum is scored, and an edit
  `x → x'` is written as `hidden + (x' − x)`, leaving rows the engine did not touch bit-identical.

Nothing here may raise into vLLM (an exception in a hook kills the engine): failures are
recorded on the requests concerned, which the policy file's `fail_mode` (closed by default)
then blocks.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from featureguard.audit.trace import TraceWriter
from featureguard.engine import GenerationState, LayerEngine, StepContext, StepRecord
from featureguard.errors import HookError
from featureguard.guard import CLOSED_MESSAGE, compile_layers, eos_id, open_audit, special_ids
from featureguard.integrations.vllm import geometry
from featureguard.integrations.vllm.config import (
    REQUEST_ID_ARG,
    AdapterConfig,
    selected_policies,
)
from featureguard.outcomes import collect
from featureguard.policy import PolicySet, load_policies

# What an engine carries from one step of a request to the next (GenerationState fields): the
# window runs and the latched policies, each [batch, n_policies].
_CARRIED = (("runs", torch.long), ("latched", torch.bool))

Selection = tuple[str, ...]


@dataclass(slots=True)
class _Request:
    """One vLLM request as the guard follows it across steps."""

    audit_id: str
    selection: Selection
    prompt_len: int
    state: GenerationState
    started: float = field(default_factory=time.perf_counter)
    next_position: int = 0
    audited: bool = True
    """False for a request seen again after its frontend finished it (an abort vLLM has not
    processed yet): it is stopped, and its records are not written twice."""


@dataclass(slots=True)
class _Group:
    """Equally long spans of one policy selection and phase: one engine call per hooked layer.
    Built once per step, not once per layer."""

    spans: list[geometry.Span]
    rows: torch.Tensor  # [r * n] long: the step's flattened rows, span after span
    valid: torch.Tensor  # [r, n] bool: tokens to score (not special tokens)


@dataclass(slots=True)
class _Step:
    """The current forward pass: its labelled rows, grouped for the engine."""

    requests: list[str]
    groups: dict[tuple[Selection, bool, int], _Group]


class GuardRuntime:
    """The guard of one vLLM worker: hooks on its model, per-request state, the audit log."""

    def __init__(
        self, runner: Any, config: AdapterConfig, tokenizer: Any, *, writes_audit: bool
    ) -> None:
        """`writes_audit` is False on every tensor-parallel rank but the first: all ranks score
        and edit alike (the hidden state is replicated there), one writes the records."""
        geometry.check_runner(runner)
        self.runner, self.model, self.tokenizer = runner, runner.get_model(), tokenizer
        self.policies: PolicySet = load_policies(config.policies)
        self.sentinel = config.sentinel
        self.audit = open_audit(self.policies, None) if writes_audit else None
        spec = self.policies.audit.trace
        if spec and writes_audit:
            self.trace: TraceWriter | None = TraceWriter(spec.path, mode=spec.features, k=spec.k)
        else:
            self.trace = None
        self._trace_topk = spec.k if spec and spec.features == "topk" else 0
        self.fail_closed = self.policies.fail_mode == "closed"
        self.device = next(self.model.parameters()).device
        self._special = special_ids(self.model, tokenizer).to(self.device)
        self._eos = eos_id(self.model, tokenizer)
        self._all: Selection = tuple(sorted(p.name for p in self.policies.policies))
        self._engines: dict[Selection, dict[torch.nn.Module, LayerEngine]] = {}
        self.requests: dict[str, _Request] = {}
        self._finished_early: set[str] = set()  # finished by a frontend, not yet by vLLM
        self._scheduled: Any = None  # the scheduler output of the step being executed
        self._step: _Step | None = None
        self._handles = [self.model.register_forward_pre_hook(self._before, with_kwargs=True)]
        # Every SAE of the file is compiled now: bad hooks and SAEs fail at start-up.
        for module in self._engines_for(self._all):
            self._handles.append(module.register_forward_hook(self._after_layer))

    # ---- per step ----------------------------------------------------------------------------
    def begin_step(self, scheduler_output: Any) -> None:
        """Called by the worker before each step; finishes the requests vLLM reports done."""
        done = geometry.finished(scheduler_output)
        self.finish(done)
        self._finished_early -= done  # vLLM reports each request once: nothing more will come
        self._scheduled = scheduler_output

    def end_step(self) -> None:
        self._scheduled, self._step = None, None

    def _before(self, _module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        scheduled, self._step = self._scheduled, None
        if scheduled is None or not scheduled.total_num_scheduled_tokens:
            return None  # vLLM's own dummy and profiling passes
        try:
            self._step = self._label(scheduled, kwargs["positions"], kwargs["input_ids"])
        except Exception as exc:  # fail safe: an unlabelled step is scored for nobody
            self._fail(scheduled.num_scheduled_tokens, f"labelling the step: {_what(exc)}")
        return None

    def _label(self, scheduled: Any, positions: torch.Tensor, ids: torch.Tensor) -> _Step:
        for rid in scheduled.num_scheduled_tokens:
            if rid not in self.requests:
                self.requests[rid] = self._register(rid)
        lens = {rid: req.prompt_len for rid, req in self.requests.items()}
        spans = geometry.step_spans(self.runner, scheduled, positions, lens)
        total = scheduled.total_num_scheduled_tokens
        valid = ~torch.isin(ids[:total], self._special)  # [rows]
        by_key: dict[tuple[Selection, bool, int], list[geometry.Span]] = {}
        for span in spans:
            req = self.requests[span.request]
            self._advance(req, span, valid)
            by_key.setdefault((req.selection, span.is_prompt, span.count), []).append(span)
        groups = {}
        for (selection, is_prompt, n), group in by_key.items():
            starts = torch.tensor([s.start for s in group], device=valid.device)
            rows = (starts[:, None] + torch.arange(n, device=valid.device)).reshape(-1)
            groups[selection, is_prompt, n] = _Group(group, rows, valid[rows].view(len(group), n))
        return _Step(list(scheduled.num_scheduled_tokens), groups)

    def _register(self, rid: str) -> _Request:
        info = geometry.request_info(self.runner, rid)
        audit_id = str(info.extra_args.get(REQUEST_ID_ARG) or rid.rpartition("-")[0] or rid)
        chosen = selected_policies(info.extra_args)
        req = _Request(audit_id, self._all if chosen is None else chosen, len(info.prompt_ids),
                       GenerationState(batch=1, device=self.device))  # fmt: skip
        if rid in self._finished_early:
            req.audited = False
            req.state.blocked |= True
        unknown = sorted(set(req.selection) - set(self._all))
        if unknown:
            self._error(req, f"unknown policies {unknown}; the policy file has {list(self._all)}")
        return req

    def _advance(self, req: _Request, span: geometry.Span, valid: torch.Tensor) -> None:
        """Move a request's state to this span, which must continue where the last one ended."""
        if span.position < req.next_position:  # preempted, now recomputed from the start
            errors, blocked = req.state.errors, req.state.blocked
            req.state = GenerationState(batch=1, device=self.device)
            req.state.errors, req.state.blocked = errors, blocked
        elif span.position > req.next_position:
            skipped = f"{req.next_position}-{span.position - 1}"
            self._error(req, f"positions {skipped} were never computed (prefix caching must "
                             "be off for guarded requests)")  # fmt: skip
        rows = valid[span.start : span.start + span.count][None]  # [1, n]
        req.state.context = StepContext(valid=rows, is_prompt=span.is_prompt,
                                        position=span.position)  # fmt: skip
        req.next_position = span.position + span.count

    def _after_layer(self, module: torch.nn.Module, args: tuple, output: Any) -> Any:
        step = self._step
        if step is None:
            return None
        try:
            hidden, residual = output
            x = hidden + residual  # [rows, d]: the residual stream after this layer
            edited = hidden
            for (selection, is_prompt, _), group in step.groups.items():
                engine = self._engines_for(selection).get(module)
                if engine is None:
                    continue
                try:
                    edited = self._score(engine, x, hidden, edited, group, is_prompt)
                except Exception as exc:
                    self._fail([s.request for s in group.spans],
                               f"{engine.sae_name}@{engine.hook}: {_what(exc)}")  # fmt: skip
            return None if edited is hidden else (edited, residual)
        except Exception as exc:
            self._fail(step.requests, f"decoder-layer hook: {_what(exc)}")
            return None

    def _score(
        self,
        engine: LayerEngine,
        x: torch.Tensor,
        hidden: torch.Tensor,
        edited: torch.Tensor,
        group: _Group,
        is_prompt: bool,
    ) -> torch.Tensor:
        """One engine call for a group of equally long spans; each request gets its slice of
        the record, window runs and blocked flag. Returns `hidden` with this group's edits."""
        spans, rows = group.spans, group.rows
        r, n = group.valid.shape
        xs = x[rows].view(r, n, -1)  # [r, n, d]
        state = GenerationState(batch=r, device=x.device)
        state.context = StepContext(valid=group.valid, is_prompt=is_prompt, position=0)
        reqs = [self.requests[s.request] for s in spans]
        for carry, dtype in _CARRIED:
            carried = [getattr(req.state, carry).get(id(engine)) for req in reqs]
            if any(c is not None for c in carried):
                zero = torch.zeros(1, len(engine.policies), dtype=dtype, device=x.device)
                getattr(state, carry)[id(engine)] = torch.cat(
                    [zero if c is None else c for c in carried])  # fmt: skip
        out = engine(xs, state)
        rec = state.records[-1]
        for i, (span, req) in enumerate(zip(spans, reqs, strict=True)):
            one = slice(i, i + 1)
            top = None if rec.top is None else (rec.top[0][one], rec.top[1][one])
            req.state.records.append(StepRecord(
                engine, span.position, is_prompt, rec.activations[one], rec.scores[one],
                rec.triggered[one], rec.valid[one], top))  # fmt: skip
            for carry, _ in _CARRIED:
                if id(engine) in getattr(state, carry):
                    getattr(req.state, carry)[id(engine)] = getattr(state, carry)[id(engine)][one]
            req.state.blocked |= state.blocked[one]
        if out is None:
            return edited
        delta = (out - xs).view(r * n, -1)  # zero on rows the engine left alone
        changed = (delta != 0).any(dim=-1, keepdim=True)  # [r*n, 1]
        edited = edited.clone() if edited is hidden else edited
        edited[rows] = torch.where(changed, hidden[rows] + delta, hidden[rows])
        return edited

    # ---- decisions, failures, the end of a request ---------------------------------------------
    def blocked_rows(self, order: list[str]) -> torch.Tensor:
        """[len(order)] bool on the device: which of these requests must stop now. A request
        the guard has not seen is stopped when the policy file fails closed."""
        unseen = torch.full((1,), self.fail_closed, device=self.device)
        return torch.cat([self.requests[r].state.blocked if r in self.requests else unseen
                          for r in order])  # fmt: skip

    def _fail(self, rids: Iterable[str], message: str) -> None:
        for rid in rids:
            req = self.requests.get(rid)
            if req is None:
                try:
                    req = self.requests[rid] = self._register(rid)
                except Exception:  # not even registered: blocked_rows treats it as unseen
                    continue
            self._error(req, message)

    def _error(self, req: _Request, message: str) -> None:
        req.state.errors.append(message)
        if self.fail_closed:
            req.state.blocked |= True

    def finish(self, rids: Iterable[str]) -> None:
        """Write the audit records of finished requests (vLLM ids) and forget them."""
        for rid in rids:
            req = self.requests.pop(rid, None)
            seq = geometry.sequence(self.runner, rid)
            if req is None or not req.audited or self.audit is None or seq is None:
                continue
            ids = torch.tensor([seq])
            collect(state=req.state, prompt=ids[:, : req.prompt_len], mask=None, sequences=ids,
                    request_id=req.audit_id, started=req.started, tokenizer=self.tokenizer,
                    audit=self.audit, closed_message=CLOSED_MESSAGE,
                    fail_closed=self.fail_closed, eos=self._eos,
                    include_text=self.policies.audit.include_text, trace=self.trace)  # fmt: skip

    def finish_audit_ids(self, audit_ids: Iterable[str]) -> int:
        """Finish every request carrying one of these audit ids (the frontend knows only those,
        so they must be unique among the requests in flight); the number finished."""
        wanted = set(audit_ids)
        done = [rid for rid, req in self.requests.items() if req.audit_id in wanted]
        self.finish(done)
        self._finished_early.update(done)
        return len(done)

    def close(self) -> None:
        """Remove the hooks and close the audit log."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        if self.audit is not None:
            self.audit.sink.close()

    # ---- compiled policies ----------------------------------------------------------------------
    def _engines_for(self, selection: Selection) -> dict[torch.nn.Module, LayerEngine]:
        """The engines of a policy selection, by hooked module; compiled once per selection."""
        if selection not in self._engines:
            chosen = [p for p in self.policies.policies if p.name in selection]
            engines = {}
            for point, engine in compile_layers(self.model, self.policies, chosen,
                                                trace_topk=self._trace_topk):  # fmt: skip
                _check_decoder_output(self.model, point.module_path, point.site, point.name)
                engines[point.module] = engine
            self._engines[selection] = engines
        return self._engines[selection]


def _check_decoder_output(model: torch.nn.Module, path: str, site: str, name: str) -> None:
    """HookError unless the hook is a decoder layer's output, the one place where vLLM's
    `(hidden, residual)` pair holds the residual stream."""
    parent, _, index = path.rpartition(".")
    layers = model.get_submodule(parent) if parent else None
    if site != "output" or not index.isdigit() or not isinstance(layers, torch.nn.ModuleList):
        raise HookError(
            f"hook '{name}' ({path} {site}): the vLLM adapter reads decoder-layer outputs only "
            "(blocks.L.hook_resid_post or model.layers.L)"
        )


def _what(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


__all__ = ["GuardRuntime"]
