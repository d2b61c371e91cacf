"""`wrap()` and `Guard`: attach policies to a model in place, guard its generation, detach.

A guard owns three kinds of hooks, all removed by `detach()`:
- one forward pre-hook on the model, which tells the layers which tokens a forward pass holds
  (padding, special tokens, prompt or generated) before any layer runs;
- one hook per hooked layer, which runs that layer's `LayerEngine` (score, decide, edit);
- `model.generate`, replaced on the instance by a wrapper that adds a per-row stopping
  criterion and a logits processor (a blocked row's next token is end-of-sequence), then
  writes the audit records and `guard.last` when the call ends.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
)

from featureguard.audit import AuditLog, JsonlSink, MemorySink
from featureguard.audit.trace import TraceWriter
from featureguard.engine import GenerationState, LayerEngine, StepContext
from featureguard.errors import GuardError, HookError, PairingError, PolicyError
from featureguard.hooks import HookPoint, check_model_name, resolve_hook
from featureguard.outcomes import SequenceOutcome, TextScore, Trigger, collect, token_scores
from featureguard.policy import Policy, PolicySet, PolicySource, load_policies
from featureguard.sae import load_sae
from featureguard.streaming import GuardedStreamer

AuditTarget = str | os.PathLike | JsonlSink | MemorySink
CLOSED_MESSAGE = "This reply was withheld: the safety guard failed (fail_mode: closed)."


class Guard:
    """Policies attached to a model. Make one with `featureguard.wrap`."""

    def __init__(
        self, model: torch.nn.Module, policies: PolicySet, tokenizer: Any, audit: AuditLog
    ) -> None:
        self.model, self.policies, self.tokenizer, self.audit = model, policies, tokenizer, audit
        # The latest call's outcome, whichever thread made it: read it only where no other
        # thread generates (the adapters hold `call_lock`); `generate()` returns its own call's.
        self.last: list[SequenceOutcome] = []
        self.last_request_id: str | None = None
        self._this_thread = threading.local()  # `.last`: this thread's latest outcome
        self.layers: list[LayerEngine] = []
        self._state: GenerationState | None = None
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._points: list[HookPoint] = []  # where the layers' hooks sit, for `_stop_after_hooks`
        self._lock = threading.Lock()  # one guarded generation at a time per model
        self._special = special_ids(model, tokenizer)
        self._attached = False
        self._owns_sink = False  # set by wrap() when it opened the audit file itself
        spec = policies.audit.trace
        self.trace = TraceWriter(spec.path, mode=spec.features, k=spec.k) if spec else None
        self._trace_topk = spec.k if spec and spec.features == "topk" else 0

    # ---- attach / detach ---------------------------------------------------------------------
    def _attach(self) -> None:
        layers = compile_layers(
            self.model, self.policies, self.policies.policies, trace_topk=self._trace_topk
        )
        try:
            for point, engine in layers:
                self.layers.append(engine)
                self._handles.append(
                    point.attach(lambda x, engine=engine: self._on_layer(engine, x))
                )
                self._points.append(point)
            self._handles.append(
                self.model.register_forward_pre_hook(self._before_forward, with_kwargs=True)
            )
        except BaseException:
            self._remove_hooks()
            raise
        original = self.model.generate

        def generate(*args: Any, **kwargs: Any) -> Any:
            return self._generate(original, args, kwargs)

        self.model.generate = generate
        self._attached = True

    def detach(self) -> None:
        """Remove every hook and restore `model.generate`: the model is exactly as before."""
        self._remove_hooks()
        if self._attached:
            del self.model.generate  # the instance attribute; the class method shows again
            self._attached = False
        if self._owns_sink:
            self.audit.sink.close()

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._points.clear()

    def __enter__(self) -> Guard:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.detach()

    # ---- per forward pass ----------------------------------------------------------------------
    def _before_forward(self, _module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        state = self._state
        if state is None:
            return None
        ids = kwargs.get("input_ids", args[0] if args else None)
        mask = kwargs.get("attention_mask")
        if ids is None:
            raise GuardError("guarded generation needs input_ids (inputs_embeds is not supported)")
        s = ids.shape[1]
        if self._special.device != ids.device:  # moved once, not on every step
            self._special = self._special.to(ids.device)
        valid = ~torch.isin(ids, self._special)
        if mask is not None:
            valid &= mask[:, -s:].bool()
        first = state.context is None
        position = 0 if first else state.context.position + state.context.valid.shape[1]
        if not first and s != 1:
            raise GuardError("guarded generation needs the KV cache (use_cache=True)")
        is_prompt = first and not state.as_reply
        state.context = StepContext(valid=valid, is_prompt=is_prompt, position=position)
        return None

    def _on_layer(self, engine: LayerEngine, x: torch.Tensor) -> torch.Tensor | None:
        state = self._state
        if state is None:  # a plain forward outside guarded generation
            return None
        try:
            return engine(x, state)
        except Exception as exc:  # fail safe: never let a scoring bug pass silently
            state.errors.append(f"{engine.sae_name}@{engine.hook}: {type(exc).__name__}: {exc}")
            if self.policies.fail_mode == "closed":
                state.blocked |= True
            return None

    # ---- generation ----------------------------------------------------------------------------
    def _generate(self, original: Any, args: tuple, kwargs: dict) -> Any:
        # A setting comes from the call, else from its generation_config, else the model's.
        config = kwargs.get("generation_config") or getattr(self.model, "generation_config", None)

        def setting(name: str) -> Any:
            return kwargs[name] if name in kwargs else getattr(config, name, None)

        if (setting("num_beams") or 1) > 1 or kwargs.get("assistant_model") is not None:
            raise GuardError("guarded generation supports greedy and sampling, not beam search")
        if setting("use_cache") is False:
            raise GuardError("guarded generation needs the KV cache (use_cache=True)")
        ids = kwargs.get("input_ids", kwargs.get("inputs", args[0] if args else None))
        if not isinstance(ids, torch.Tensor):
            raise GuardError("guarded generate needs input_ids as a tensor")
        request_id = kwargs.pop("request_id", None) or uuid.uuid4().hex
        mask = kwargs.get("attention_mask")
        copies = setting("num_return_sequences") or 1
        if not isinstance(request_id, str):  # one id per prompt row: a batch of requests
            request_id = list(request_id)
            if len(request_id) != ids.shape[0]:
                raise GuardError(f"{ids.shape[0]} prompt rows but {len(request_id)} request ids")
            request_id = [rid for rid in request_id for _ in range(copies)]
        if copies > 1:  # generate expands each prompt row into `copies` rows, in place
            ids = ids.repeat_interleave(copies, dim=0)
            mask = None if mask is None else mask.repeat_interleave(copies, dim=0)
        with self._lock:
            state = GenerationState(batch=ids.shape[0], device=ids.device)
            kwargs["stopping_criteria"] = StoppingCriteriaList(
                [*(kwargs.get("stopping_criteria") or []), _StopBlocked(state)]
            )
            eos = eos_id(self.model, self.tokenizer)
            if eos is not None:
                kwargs["logits_processor"] = LogitsProcessorList(
                    [*(kwargs.get("logits_processor") or []), _ForceEOS(state, eos)]
                )
            started = time.perf_counter()
            self._state = state
            try:
                out = original(*args, **kwargs)
            finally:
                self._state = None
            sequences = out if isinstance(out, torch.Tensor) else out.sequences
            self.last = self._collect(state, ids, mask, sequences, request_id, started, eos,
                                      trace=self.trace)  # fmt: skip
            self.last_request_id = request_id if isinstance(request_id, str) else None
            self._this_thread.last = self.last
        return out

    def _collect(
        self,
        state: GenerationState,
        prompt: torch.Tensor,
        mask: torch.Tensor | None,
        sequences: torch.Tensor,
        request_id: str | list[str],
        started: float,
        eos: int | None,
        trace: TraceWriter | None = None,
    ) -> list[SequenceOutcome]:
        """`outcomes.collect` with this guard's tokenizer, audit log and policy-file settings."""
        return collect(
            state=state,
            prompt=prompt,
            mask=mask,
            sequences=sequences,
            request_id=request_id,
            started=started,
            tokenizer=self.tokenizer,
            audit=self.audit,
            closed_message=CLOSED_MESSAGE,
            fail_closed=self.policies.fail_mode == "closed",
            eos=eos,
            include_text=self.policies.audit.include_text,
            trace=trace,
        )

    def generate(
        self,
        prompts: str | Sequence[str],
        *,
        request_id: str | Sequence[str] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        """Generate replies to `prompts`; a blocked reply is replaced by its policy's message.
        A list `request_id` (one id per prompt, a request's prompts next to each other) batches
        several requests into one call, each audited as a call of its own."""
        self._require_attached()
        enc = self._encode(prompts)
        self.model.generate(**enc, request_id=request_id, **_with_scored_last(kwargs))
        return [o.text or "" for o in self._this_thread.last]

    def stream(self, prompt: str, *, request_id: str | None = None, **kwargs: Any) -> Iterator[str]:
        """Yield the reply's text as it is generated, only for tokens already scored."""
        streamer = self.streamer()
        enc = self._encode(prompt)
        failure: list[BaseException] = []

        def run() -> None:
            try:
                self.model.generate(
                    **enc, streamer=streamer, request_id=request_id, **_with_scored_last(kwargs)
                )
            except BaseException as exc:  # re-raised in the reader's thread
                failure.append(exc)
                streamer.end()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        yield from streamer
        thread.join()
        if failure:
            raise failure[0]

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits of one guarded forward pass over whole texts, every token scored as a reply
        token and edited as the policies say (teacher forcing: what a policy costs in
        log-likelihood). Blocks are not enforced and no audit record is written."""
        self._require_attached()
        with self._lock:
            logits, _ = self._read_as_reply(input_ids, attention_mask)
            assert logits is not None  # asked for
            return logits

    def _read_as_reply(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        logits: bool = True,
    ) -> tuple[torch.Tensor | None, GenerationState]:
        """One forward pass with every token scored as a reply token: logits and the records.
        Without `logits` the pass stops once every hooked layer has run, so the layers above the
        deepest hook cost nothing (and None comes back for the logits). The caller holds the
        lock."""
        state = GenerationState(batch=input_ids.shape[0], device=input_ids.device)
        state.as_reply = True
        out = None
        stops = [] if logits else self._stop_after_hooks()
        self._state = state
        try:
            with torch.no_grad():
                out = self.model(input_ids=input_ids, attention_mask=attention_mask).logits
        except _Scored:
            pass
        finally:
            self._state = None
            for handle in stops:
                handle.remove()
        return out, state

    def _stop_after_hooks(self) -> list[torch.utils.hooks.RemovableHandle]:
        """Hooks after the guard's own that end the pass (`_Scored`) once all have run."""
        fired: set[int] = set()

        def after(i: int) -> None:
            fired.add(i)
            if len(fired) == len(self._points):
                raise _Scored

        return [p.attach(lambda _x, i=i: after(i)) for i, p in enumerate(self._points)]

    def score(
        self,
        texts: str | Sequence[str],
        *,
        request_id: str | Sequence[str] | None = None,
        trace: TraceWriter | None = None,
    ) -> list[TextScore]:
        """Score texts without generating, like a moderation call: every token is read as a
        reply token; each policy's score per token, the triggers, and whether a block policy
        would have stopped the text. Audited like a reply: one request per text, with the id
        `request_id` for a single text and `request_id-i` for text i of several (or, given a
        list, one id per text). `trace` also stores each text's activations there. The forward
        pass stops after the deepest hooked layer: no logits are needed."""
        self._require_attached()
        if self.tokenizer is None:
            raise GuardError("guard.score needs a tokenizer: wrap(model, policies, tokenizer=)")
        device = next(self.model.parameters()).device
        texts = [texts] if isinstance(texts, str) else list(texts)
        if request_id is not None and not isinstance(request_id, str):
            ids_for = list(request_id)
            if len(ids_for) != len(texts):
                raise GuardError(f"score: {len(texts)} texts but {len(ids_for)} request ids")
        else:
            request_id = request_id or uuid.uuid4().hex
            ids_for = [request_id] if len(texts) == 1 else [f"{request_id}-{i}"
                                                            for i in range(len(texts))]  # fmt: skip
        results = []
        # One text at a time: without padding, token positions are the same in every record.
        for text, rid in zip(texts, ids_for, strict=True):
            ids = encode_prompts(self.tokenizer, text, device)["input_ids"]
            with self._lock:
                started = time.perf_counter()
                _, state = self._read_as_reply(ids, logits=False)
                # the whole text is the "reply": an empty prompt
                [outcome] = self._collect(state, ids[:, :0], None, ids, rid, started, eos=None,
                                          trace=trace)  # fmt: skip
            tokens = self.tokenizer.batch_decode([[t] for t in ids[0].tolist()])
            results.append(TextScore(tokens, token_scores(state, ids.shape[1]), outcome))
        return results

    def streamer(self) -> GuardedStreamer:
        """A streamer for `model.generate(streamer=...)` that holds each token until scored."""
        self._require_attached()
        if self.tokenizer is None:
            raise GuardError("streaming needs a tokenizer: wrap(model, policies, tokenizer=tok)")
        return GuardedStreamer(self, self.tokenizer)

    def _require_attached(self) -> None:
        if not self._attached:  # the model's generate is no longer guarded: refuse, not pretend
            raise GuardError("this guard is detached; wrap the model again to generate through it")

    def _encode(self, prompts: str | Sequence[str]) -> dict[str, torch.Tensor]:
        if self.tokenizer is None:
            raise GuardError("guard.generate needs a tokenizer: wrap(model, policies, tokenizer=)")
        return encode_prompts(self.tokenizer, prompts, next(self.model.parameters()).device)


class _Scored(Exception):
    """Raised from a hook to end a scoring pass once every hooked layer has run."""


class _StopBlocked(StoppingCriteria):
    """Ends exactly the rows a block policy stopped; other rows go on."""

    def __init__(self, state: GenerationState) -> None:
        self.state = state

    def __call__(
        self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any
    ) -> torch.Tensor:
        return self.state.blocked.to(input_ids.device).clone()


class _ForceEOS(LogitsProcessor):
    """A blocked row's next token is end-of-sequence, so nothing follows the trigger."""

    def __init__(self, state: GenerationState, eos: int) -> None:
        self.state, self.eos = state, eos

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        forced = torch.full_like(scores, float("-inf"))
        forced[:, self.eos] = 0.0
        return torch.where(self.state.blocked.to(scores.device)[:, None], forced, scores)


def compile_layers(
    model: torch.nn.Module,
    policies: PolicySet,
    chosen: Sequence[Policy],
    *,
    trace_topk: int = 0,
) -> list[tuple[HookPoint, LayerEngine]]:
    """The `chosen` policies of `policies` compiled against `model`, one engine per SAE they
    use (in file order), each with the hook point it runs at. `Guard` and the engine adapters
    (`featureguard.integrations.vllm`) both attach what this returns. `trace_topk` > 0 loads
    every feature (a `topk` trace encodes them all)."""
    by_sae: dict[str, list[Policy]] = {}
    for p in chosen:
        by_sae.setdefault(p.sae, []).append(p)
    return [_compile_layer(model, policies, sae, ps, trace_topk) for sae, ps in by_sae.items()]


def _compile_layer(
    model: torch.nn.Module, policies: PolicySet, name: str, chosen: list[Policy], trace_topk: int
) -> tuple[HookPoint, LayerEngine]:
    """SAE `name` of `policies` checked against `model`, and the `chosen` policies on it
    compiled: where its hook sits and the engine to run there."""
    spec = policies.saes[name]
    features = sorted({f.index for p in chosen for f in p.features})
    header = load_sae(spec.path, features=[])  # config and shapes only
    bad = [
        f.where.problem(f"feature index {f.index} >= d_sae {header.d_sae} of SAE '{name}'", "index")
        for p in chosen
        for f in p.features
        if f.index >= header.d_sae
    ]
    if bad:
        raise PolicyError(bad)
    hook_name = spec.hook or header.cfg.hook
    if not hook_name:
        raise PolicyError([spec.where.problem("the SAE's config names no hook; set 'hook'")])
    try:
        point = resolve_hook(model, hook_name)
    except HookError as exc:
        raise HookError(str(spec.where.problem(str(exc), "hook"))) from exc
    what = f"SAE '{name}' ({spec.path})"
    try:
        point.check_width(header.d_in, what)
    except PairingError as exc:
        raise PairingError(str(spec.where.problem(str(exc)))) from exc
    check_model_name(model, header.cfg.model_name, what)
    param = next(point.module.parameters(), None)
    if param is None:  # a parameter-free module: use the model's placement
        param = next(model.parameters())
    engine = LayerEngine(
        sae_name=name,
        hook=hook_name,
        sae=load_sae(spec.path, features=None if trace_topk else features),
        policies=chosen,
        device=param.device,
        dtype=param.dtype,
        trace_topk=trace_topk,
    )
    return point, engine


def encode_prompts(
    tokenizer: Any, prompts: str | Sequence[str], device: torch.device
) -> dict[str, torch.Tensor]:
    """input_ids and attention_mask for a batch, left-padded as decoder-only models need."""
    texts = [prompts] if isinstance(prompts, str) else list(prompts)
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    try:
        enc = tokenizer(texts, return_tensors="pt", padding=True)
    finally:
        tokenizer.padding_side = side
    return {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}


def scored_max_new_tokens(n: int) -> int:
    """`max_new_tokens` to ask of a guarded `model.generate` for `n` scored tokens: the last
    token generated never gets its own forward pass, so it is never scored, and the guard's
    readers (`SequenceOutcome.text`, the streamer) drop it."""
    return n + 1


def _with_scored_last(kwargs: dict) -> dict:
    if "max_new_tokens" in kwargs:
        return {**kwargs, "max_new_tokens": scored_max_new_tokens(kwargs["max_new_tokens"])}
    return kwargs


def special_ids(model: torch.nn.Module, tokenizer: Any) -> torch.Tensor:
    """Token ids a guard never scores: the tokenizer's special tokens and the model config's
    BOS, EOS and padding ids."""
    ids: set[int] = set()
    if tokenizer is not None:
        ids.update(int(i) for i in tokenizer.all_special_ids)
    cfg = getattr(model, "config", None)
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = getattr(cfg, key, None)
        values = value if isinstance(value, list | tuple) else [value]
        ids.update(int(v) for v in values if v is not None)
    return torch.tensor(sorted(ids), dtype=torch.long)


def eos_id(model: torch.nn.Module, tokenizer: Any) -> int | None:
    """The end-of-sequence id (the model's generation config, else the tokenizer's), or None."""
    gen = getattr(model, "generation_config", None)
    eos = getattr(gen, "eos_token_id", None)
    if eos is None and tokenizer is not None:
        eos = tokenizer.eos_token_id
    if isinstance(eos, list | tuple):
        eos = eos[0] if eos else None
    return None if eos is None else int(eos)


def open_audit(policies: PolicySet, audit: AuditTarget | None) -> AuditLog:
    """The audit log a policy set asks for, or `audit` instead (a path or a sink)."""
    target = audit if audit is not None else policies.audit.path
    if isinstance(target, JsonlSink | MemorySink):
        sink: JsonlSink | MemorySink = target
    else:  # the policy file's durability and rotation apply to an overriding path too
        spec, rotate = policies.audit, policies.audit.rotate
        sink = JsonlSink(Path(target), fsync=spec.fsync,
                         max_bytes=rotate.max_bytes if rotate else None,
                         max_seconds=rotate.max_seconds if rotate else None)  # fmt: skip
    static = {"policy_file": policies.file} if policies.file else None
    return AuditLog(sink, include_text=policies.audit.include_text, static=static)


def wrap(
    model: torch.nn.Module,
    policies: PolicySource | PolicySet,
    tokenizer: Any = None,
    *,
    audit: AuditTarget | None = None,
) -> Guard:
    """Attach `policies` to `model` in place; `model.generate` is guarded until `detach()`.

    `policies` is a YAML path, a parsed mapping or a `PolicySet`. `audit` overrides the policy
    file's audit path (a path, a `JsonlSink`, or a `MemorySink` for tests).
    """
    policy_set = policies if isinstance(policies, PolicySet) else load_policies(policies)
    if getattr(model, "generate", None) is None:
        raise GuardError(f"{type(model).__name__} has no generate(); wrap a *ForCausalLM model")
    if "generate" in vars(model):
        raise GuardError("this model is already wrapped: detach() the other guard first")
    guard = Guard(model, policy_set, tokenizer, open_audit(policy_set, audit))
    guard._owns_sink = not isinstance(audit, JsonlSink | MemorySink)
    try:
        guard._attach()
    except BaseException:
        guard.detach()
        raise
    return guard


__all__ = ["Guard", "SequenceOutcome", "Trigger", "wrap"]
