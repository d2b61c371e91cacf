"""`GuardedLLM`: a LangChain completion model (text in, text out) guarded by featureguard, in
process or over a featureguard server's `/v1/completions`."""

from __future__ import annotations

from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseLLM
from langchain_core.outputs import Generation, LLMResult

from featureguard.integrations.langchain import _guard_backend, _server_backend
from featureguard.integrations.langchain._params import GuardedParams, Replies
from featureguard.integrations.langchain._server_backend import COMPLETIONS


class GuardedLLM(GuardedParams, BaseLLM):
    """A completion model guarded by featureguard: `guard=` or `base_url=` as for
    `GuardedChatModel`. Each generation's `generation_info` holds `finish_reason` and
    `featureguard` (the outcome and its `request_id`). The prompts of one call are generated
    together: locally as one left-padded batch, on a server as one request; either way one
    audit request."""

    @property
    def _llm_type(self) -> str:
        return "featureguard-llm"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return self.identifying

    def _generate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        if self.guard is not None:
            return _result(_guard_backend.complete(self, prompts, stop, kwargs))
        request = _server_backend.request(self, COMPLETIONS, {"prompt": prompts}, stop, kwargs)
        return _result(_server_backend.post(self, *request))

    async def _agenerate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        if self.guard is not None:  # generation is synchronous: LangChain runs it in a thread
            return await super()._agenerate(prompts, stop, run_manager, **kwargs)
        request = _server_backend.request(self, COMPLETIONS, {"prompt": prompts}, stop, kwargs)
        return _result(await _server_backend.apost(self, *request))


def _result(replies: Replies) -> LLMResult:
    generations = [
        [
            Generation(
                text=r.text,
                generation_info={"finish_reason": r.finish_reason, "featureguard": r.featureguard},
            )
        ]
        for r in replies.choices
    ]
    usage = {
        "prompt_tokens": replies.prompt_tokens,
        "completion_tokens": replies.completion_tokens,
        "total_tokens": replies.prompt_tokens + replies.completion_tokens,
    }
    return LLMResult(
        generations=generations,
        llm_output={
            "model_name": replies.model,
            "request_id": replies.request_id,
            "token_usage": usage,
        },
    )
