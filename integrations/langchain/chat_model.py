"""`GuardedChatModel`: a LangChain chat model whose replies went through featureguard's
policies, in process (a `Guard`) or over HTTP (a featureguard server)."""

from __future__ import annotations

from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, ChatMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatResult

from featureguard.integrations.langchain import _guard_backend, _server_backend
from featureguard.integrations.langchain._params import GuardedParams, Replies
from featureguard.integrations.langchain._server_backend import CHAT

_ROLES = {"human": "user", "ai": "assistant", "system": "system", "tool": "tool"}


class GuardedChatModel(GuardedParams, BaseChatModel):
    """A chat model guarded by featureguard.

    Give `guard=` (a local `featureguard.wrap(...)` with a tokenizer) or `base_url=` (a
    featureguard server; `api_key=` if it asks for one). Each reply's `response_metadata` has
    `finish_reason` (`content_filter` when a policy blocked it: the content is then the
    policy's message) and `featureguard`: blocked, blocked_by, policies, triggers (policy,
    action, token, token_index, score, features) and the audit `request_id`. `.bind(max_tokens=,
    temperature=)` overrides the settings per call.
    """

    @property
    def _llm_type(self) -> str:
        return "featureguard-chat"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return self.identifying

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        wire = [to_openai(m) for m in messages]
        if self.guard is not None:
            return _result(_guard_backend.chat(self, wire, stop, kwargs))
        request = _server_backend.request(self, CHAT, {"messages": wire}, stop, kwargs)
        return _result(_server_backend.post(self, *request))

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if self.guard is not None:  # generation is synchronous: LangChain runs it in a thread
            return await super()._agenerate(messages, stop, run_manager, **kwargs)
        wire = [to_openai(m) for m in messages]
        request = _server_backend.request(self, CHAT, {"messages": wire}, stop, kwargs)
        return _result(await _server_backend.apost(self, *request))


def to_openai(message: BaseMessage) -> dict[str, str]:
    """A LangChain message as an OpenAI chat message (role and text content)."""
    role = message.role if isinstance(message, ChatMessage) else _ROLES.get(message.type)
    if role is None:
        raise ValueError(f"a {type(message).__name__} cannot be sent to a guarded chat model")
    content = message.content
    if not isinstance(content, str):
        parts = [p if isinstance(p, str) else p.get("text") for p in content]
        if any(not isinstance(p, str) for p in parts):
            raise ValueError("a guarded chat model takes text content only")
        content = "".join(parts)
    return {"role": role, "content": content}


def _result(replies: Replies) -> ChatResult:
    reply = replies.choices[0]  # one choice per chat call (the server defaults to n=1)
    usage = UsageMetadata(
        input_tokens=replies.prompt_tokens,
        output_tokens=replies.completion_tokens,
        total_tokens=replies.prompt_tokens + replies.completion_tokens,
    )
    metadata = {
        "finish_reason": reply.finish_reason,
        "featureguard": reply.featureguard,
        "model_name": replies.model,
    }
    message = AIMessage(content=reply.text, response_metadata=metadata, usage_metadata=usage)
    info = {"finish_reason": reply.finish_reason}
    return ChatResult(
        generations=[ChatGeneration(message=message, generation_info=info)],
        llm_output={"model_name": replies.model, "request_id": replies.request_id},
    )
