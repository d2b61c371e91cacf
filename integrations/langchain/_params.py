"""What both LangChain models share: where the guard is (a local `Guard` or a server's URL),
the generation settings, and a backend-neutral reply."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from featureguard import Guard


@dataclass(frozen=True, slots=True)
class Reply:
    """One choice of a guarded call, as either backend reports it."""

    text: str
    """What the user may see: the reply, or the blocking policy's message."""
    finish_reason: str
    """`content_filter` when blocked, else `stop` or `length`."""
    featureguard: dict[str, Any] | None
    """The outcome (blocked, blocked_by, policies, triggers...) and its `request_id`; None when
    the server sent no `featureguard` field (it is not a featureguard server)."""


@dataclass(frozen=True, slots=True)
class Replies:
    """Every choice of one call, with its token counts and the model that answered."""

    choices: list[Reply]
    prompt_tokens: int
    completion_tokens: int
    model: str
    request_id: str | None


class GuardedParams(BaseModel):
    """Settings of a guarded LangChain model. Give exactly one of `guard` and `base_url`."""

    model_config = ConfigDict(arbitrary_types_allowed=True, populate_by_name=True)

    guard: Guard | None = Field(default=None, exclude=True)
    """A local guard (`featureguard.wrap(model, policies, tokenizer=tok)`); needs a tokenizer."""
    base_url: str | None = None
    """A featureguard server, e.g. `http://localhost:8000` (with or without `/v1`)."""
    api_key: SecretStr | None = None
    """Sent to the server as `Authorization: Bearer <key>`."""
    model_name: str | None = Field(default=None, alias="model")
    """The model's name sent to the server (it decides which model answers when several are
    served); reported back in `response_metadata["model_name"]`."""
    max_tokens: int = 256
    """New tokens at most (scored tokens, locally)."""
    temperature: float | None = None
    """0: greedy; > 0: sampling; None: the model's (or the server's) default."""
    generate_kwargs: dict[str, Any] = Field(default_factory=dict)
    """More keyword arguments for a local `model.generate` (top_p, repetition_penalty...)."""
    timeout: float = 120.0
    """Seconds to wait for the server."""
    http_client: httpx.Client | None = Field(default=None, exclude=True)
    """The client for server calls (a shared pool, a proxy, a test transport); default: one
    client per call."""
    http_async_client: httpx.AsyncClient | None = Field(default=None, exclude=True)
    """The same, for `ainvoke`/`abatch`."""

    @model_validator(mode="after")
    def _one_backend(self) -> GuardedParams:
        if (self.guard is None) == (self.base_url is None):
            raise ValueError("give exactly one of guard= (in process) and base_url= (a server)")
        if self.guard is not None and self.guard.tokenizer is None:
            raise ValueError("the guard needs a tokenizer: wrap(model, policies, tokenizer=tok)")
        return self

    def settings(self, kwargs: dict[str, Any]) -> tuple[int, float | None]:
        """`max_tokens` and `temperature` for one call: the call's (`.bind(...)`) or the model's."""
        max_tokens = kwargs.get("max_tokens", self.max_tokens)
        return max_tokens, kwargs.get("temperature", self.temperature)

    @property
    def identifying(self) -> dict[str, Any]:
        """What tells two such models apart in LangChain's caches and traces."""
        where = self.base_url or f"local:{type(self.guard.model).__name__}"
        return {
            "backend": where,
            "model": self.model_name,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
        }
