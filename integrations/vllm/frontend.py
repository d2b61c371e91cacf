"""Guarded vLLM engines for Python callers: `GuardedLLM` (offline) and `GuardedAsyncLLM`.

Both build the engine with `engine_kwargs` (featureguard's worker and logits processor, eager
execution, no prefix caching, the policy file and sentinel in `additional_config`), send each
request with `guarded_params` (its audit id and policy selection in `extra_args`, the sentinel
in `stop_token_ids`), and pass every output through `release`, which holds back the one token
vLLM streams before scoring it and reports a blocked request as `content_filter`.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

from vllm import SamplingParams
from vllm.outputs import RequestOutput
from vllm.sampling_params import RequestOutputKind

from featureguard.errors import GuardError
from featureguard.integrations.vllm import geometry
from featureguard.integrations.vllm.config import (
    CONFIG_KEY,
    POLICIES_ARG,
    REQUEST_ID_ARG,
    WITHHELD_MESSAGE,
    AdapterConfig,
)
from featureguard.integrations.vllm.worker import worker_cls
from featureguard.policy import load_policies

STOP_PROCESSOR = "featureguard.integrations.vllm.stop:GuardStop"
CONTENT_FILTER = "content_filter"


def default_sentinel(model: str | os.PathLike[str]) -> int:
    """The last id of the model's vocabulary: in most checkpoints a padding or reserved id that
    the model never emits. Pass `sentinel=` when yours is a real token."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(model))
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    sentinel = int(config.vocab_size) - 1
    specials = {getattr(config, k, None) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    if sentinel in specials:
        raise GuardError(f"the last vocabulary id {sentinel} is a special token of {model}: "
                         "pass sentinel= an id the model never emits")  # fmt: skip
    return sentinel


def engine_kwargs(
    model: str | os.PathLike[str],
    policies: str | os.PathLike[str],
    *,
    sentinel: int | None = None,
    **engine: Any,
) -> dict[str, Any]:
    """Keyword arguments for `vllm.LLM(...)` or `AsyncEngineArgs(...)` that guard the engine
    with `policies`. `engine` holds any other vLLM engine argument; settings the guard cannot
    honour (`enforce_eager=False`, prefix caching on) are refused."""
    import vllm

    geometry.check_version(vllm.__version__)
    if engine.get("enforce_eager") is False:
        raise GuardError("enforce_eager=False: featureguard's hooks need eager execution (the "
                         "first release; see docs/vllm.md for the CUDA-graph design)")  # fmt: skip
    if engine.get("enable_prefix_caching"):
        raise GuardError("enable_prefix_caching=True: a cached prompt prefix is never scored")
    if engine.get("async_scheduling"):
        raise GuardError("async_scheduling=True: a step would be scheduled before the guard's stop")
    load_policies(policies)  # a bad policy file fails here, not in the worker
    config = AdapterConfig(
        policies=os.path.abspath(policies),  # the workers may run elsewhere in the tree
        sentinel=default_sentinel(model) if sentinel is None else sentinel,
    )
    additional = {**(engine.pop("additional_config", None) or {}), **config.to_additional()}
    processors = [*(engine.pop("logits_processors", None) or []), STOP_PROCESSOR]
    return {
        **engine,
        "model": os.fspath(model),
        "worker_cls": worker_cls(),
        "logits_processors": processors,
        "additional_config": additional,
        "enforce_eager": True,
        "enable_prefix_caching": False,
        "async_scheduling": False,
    }


def guarded_params(
    params: SamplingParams,
    *,
    sentinel: int,
    request_id: str,
    policies: Sequence[str] | None = None,
) -> SamplingParams:
    """A copy of `params` for one guarded request: the audit id and policy selection (None:
    every policy) in `extra_args`, the sentinel among the stop tokens, and one more token to
    generate, since the last token is never scored (`release` drops it)."""
    if params.min_tokens:
        raise GuardError("min_tokens > 0 would mask the stop token that ends a blocked request")
    if params.n > 1:
        raise GuardError("n > 1 is not supported by the guarded frontends: send n requests")
    out = params.clone()
    extra = {**(out.extra_args or {}), REQUEST_ID_ARG: request_id}
    if policies is not None:
        extra[POLICIES_ARG] = ",".join(policies)
    out.extra_args = extra
    out.stop_token_ids = [*(out.stop_token_ids or []), sentinel]
    if out.max_tokens is not None:
        out.max_tokens += 1
    return out


def release(output: RequestOutput, sentinel: int, tokenizer: Any) -> RequestOutput:
    """`output` as a guarded caller may see it (in place): without the last token while it is
    unscored (still streaming, or ended by the length limit), and for a request the guard
    stopped, `finish_reason == "content_filter"`, no stop reason, the tokens released before
    the trigger and the withheld message as text."""
    for completion in output.outputs:
        ids = list(completion.token_ids)
        blocked = completion.stop_reason == sentinel
        if blocked:
            ids = ids[:-1] if ids and ids[-1] == sentinel else ids
            ids = ids[:-1]  # the token whose own forward pass triggered the block
            completion.finish_reason, completion.stop_reason = CONTENT_FILTER, None
        elif completion.finish_reason in (None, "length"):
            ids = ids[:-1]  # not scored yet: its forward pass is the next step's
        if len(ids) != len(completion.token_ids):
            completion.token_ids = ids
            completion.text = (WITHHELD_MESSAGE if blocked else
                               tokenizer.decode(ids, skip_special_tokens=True))  # fmt: skip
    return output


class _GuardedEngine:
    """An engine built with `engine_kwargs`: `model`, `policies`, `sentinel` and any other vLLM
    engine argument."""

    def __init__(
        self,
        model: str | os.PathLike[str],
        policies: str | os.PathLike[str],
        *,
        sentinel: int | None = None,
        **engine: Any,
    ) -> None:
        kwargs = engine_kwargs(model, policies, sentinel=sentinel, **engine)
        self.sentinel: int = kwargs["additional_config"][CONFIG_KEY]["sentinel"]
        self._start(kwargs)

    def _start(self, kwargs: dict[str, Any]) -> None:
        raise NotImplementedError


class GuardedLLM(_GuardedEngine):
    """`vllm.LLM` guarded by a policy file; `generate` as vLLM's, one audit id per prompt."""

    def _start(self, kwargs: dict[str, Any]) -> None:
        from vllm import LLM

        self.llm = LLM(**kwargs)
        self.tokenizer = self.llm.get_tokenizer()

    def generate(
        self,
        prompts: Any,
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        *,
        request_ids: Sequence[str] | None = None,
        policies: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> list[RequestOutput]:
        """Like `LLM.generate`; each prompt is one audited request (`request_ids`, default
        fresh ids), guarded by `policies` (names; default all). Outputs pass through `release`;
        the audit records are written before this returns."""
        count = 1 if isinstance(prompts, str | dict) else len(prompts)
        fresh = [uuid.uuid4().hex for _ in range(count)]
        ids = list(request_ids) if request_ids is not None else fresh
        if len(ids) != count or len(set(ids)) != count:
            raise GuardError(f"{count} prompts need {count} distinct request ids, got {ids}")
        base = sampling_params or SamplingParams()
        per = list(base) if isinstance(base, Sequence) else [base] * count
        params = [guarded_params(p, sentinel=self.sentinel, request_id=rid, policies=policies)
                  for p, rid in zip(per, ids, strict=True)]  # fmt: skip
        try:
            outputs = self.llm.generate(prompts, params, **kwargs)
        finally:
            self.llm.collective_rpc("fg_finish", args=(ids,))
        return [release(o, self.sentinel, self.tokenizer) for o in outputs]

    def status(self) -> list[dict[str, Any]]:
        """Each worker's `fg_status`: policy file, policies, requests in flight."""
        return self.llm.collective_rpc("fg_status")


class GuardedAsyncLLM(_GuardedEngine):
    """`vllm.v1.engine.async_llm.AsyncLLM` guarded by a policy file, streaming only scored
    tokens."""

    def _start(self, kwargs: dict[str, Any]) -> None:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        self.engine = AsyncLLM.from_engine_args(AsyncEngineArgs(**kwargs))

    async def generate(
        self,
        prompt: Any,
        sampling_params: SamplingParams,
        request_id: str,
        *,
        policies: Sequence[str] | None = None,
    ) -> AsyncIterator[RequestOutput]:
        """Like `AsyncLLM.generate` (cumulative outputs), each passed through `release`."""
        if sampling_params.output_kind == RequestOutputKind.DELTA:
            raise GuardError("guarded streaming needs cumulative outputs, not DELTA ones")
        params = guarded_params(sampling_params, sentinel=self.sentinel, request_id=request_id,
                                policies=policies)  # fmt: skip
        tokenizer = self.engine.get_tokenizer()
        try:
            async for output in self.engine.generate(prompt, params, request_id):
                yield release(output, self.sentinel, tokenizer)
        finally:
            await self.engine.collective_rpc("fg_finish", args=([request_id],))

    def shutdown(self) -> None:
        self.engine.shutdown()
