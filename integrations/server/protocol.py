"""The OpenAI wire format: request bodies (validated) and response bodies (built).

Only what a guarded local model can honour is accepted; anything else in a request is
ignored, as OpenAI-compatible servers commonly do, except settings that would silently
change the meaning of a reply (`n` with streaming, `logprobs`), which are refused.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from featureguard.integrations.server.service import Completion, Sampling
from featureguard.outcomes import TextScore


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1, le=4096)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=4096)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = Field(default=1, ge=1, le=16)
    stream: bool = False
    logprobs: bool | int | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else (value or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("stop takes at most 4 non-empty strings")
        return value

    def sampling(self, default_max_tokens: int) -> Sampling:
        if self.stream and self.n > 1:
            raise ValueError("n > 1 cannot be streamed: stream one reply per request")
        if self.logprobs:
            raise ValueError("logprobs are not supported by this server")
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        return Sampling(
            max_tokens=self.max_completion_tokens or self.max_tokens or default_max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            stop=stop,
            seed=self.seed,
            n=self.n,
        )


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[dict[str, Any]]

    def text(self) -> str:
        """The message's text; content parts other than text are refused."""
        if isinstance(self.content, str):
            return self.content
        if any(part.get("type") != "text" for part in self.content):
            raise ValueError("only text content parts are supported")
        return "".join(str(part.get("text", "")) for part in self.content)


class ChatRequest(_Request):
    messages: list[ChatMessage] = Field(min_length=1)


class CompletionRequest(_Request):
    prompt: str | list[str]

    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    input: str | list[str] = Field(min_length=1)
    model: str | None = None


# ---- responses -------------------------------------------------------------------------------
def guard_report(done: Completion) -> dict[str, Any]:
    """The `featureguard` field of every response: what fired, per choice."""
    return {
        "request_id": done.request_id,
        "policies_triggered": sorted({p for c in done.choices for p in c.outcome.policies}),
        "choices": [{"index": c.index, **c.outcome.to_dict()} for c in done.choices],
    }


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def chat_response(done: Completion, model: str) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{done.request_id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": c.index,
                "message": {"role": "assistant", "content": c.text},
                "finish_reason": c.finish_reason,
                "logprobs": None,
            }
            for c in done.choices
        ],
        "usage": usage(done.prompt_tokens, done.completion_tokens),
        "featureguard": guard_report(done),
    }


def completion_response(done: Completion, model: str) -> dict[str, Any]:
    return {
        "id": f"cmpl-{done.request_id}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": c.index, "text": c.text, "finish_reason": c.finish_reason, "logprobs": None}
            for c in done.choices
        ],
        "usage": usage(done.prompt_tokens, done.completion_tokens),
        "featureguard": guard_report(done),
    }


def chat_chunk(request_id: str, model: str, delta: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{request_id}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": extra.pop("finish", None)}],
        **extra,
    }


def completion_chunk(request_id: str, model: str, text: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": f"cmpl-{request_id}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "text": text, "finish_reason": extra.pop("finish", None), "logprobs": None}
        ],
        **extra,
    }


def score_response(results: list[TextScore], request_id: str, model: str) -> dict[str, Any]:
    return {
        "id": f"fgscore-{request_id}",
        "object": "featureguard.score",
        "model": model,
        "request_id": request_id,
        "results": [r.to_dict() for r in results],
    }


def error_body(message: str, kind: str, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}
