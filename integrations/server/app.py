"""The FastAPI app: OpenAI-compatible routes over a `GuardedService`.

    app = create_app(GuardedService(guard, "demo-coder"), api_key=None)

Every response names its request (`X-Request-ID`, taken from the request when given) and, when
not streamed, what fired (`X-Featureguard-Policies`, `X-Featureguard-Blocked`); the body's
`featureguard` field has the details per choice. A streamed reply's headers leave before any
token is generated, so there the `featureguard` field rides on the last chunk.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import re
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

try:
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse
except ImportError as exc:  # say which extra brings it, not just what is missing
    raise ImportError(
        "the featureguard server needs FastAPI and uvicorn: pip install 'featureguard[server]'"
    ) from exc

from featureguard.errors import FeatureguardError
from featureguard.integrations._local import new_request_id
from featureguard.integrations.server import protocol
from featureguard.integrations.server.service import (
    END,
    Completion,
    GuardedService,
    QueueFull,
    iterate_in_worker,
)

REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
DEFAULT_MAX_TOKENS = 128


class _HTTPError(Exception):
    def __init__(self, status: int, message: str, kind: str, headers: dict | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.headers = status, message, kind, headers


def create_app(service: GuardedService, *, api_key: str | None = None) -> FastAPI:
    """The server's routes over `service`; with `api_key`, every route but /health needs
    `Authorization: Bearer <api_key>`."""
    app = FastAPI(title="featureguard", description="Guarded OpenAI-compatible server")
    app.state.service = service
    model = service.model_id

    @app.exception_handler(_HTTPError)
    async def _http_error(_request: Request, exc: _HTTPError) -> JSONResponse:
        body = protocol.error_body(exc.message, exc.kind)
        return JSONResponse(body, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        message = f"{where}: {first.get('msg')}" if where else str(first.get("msg"))
        return JSONResponse(protocol.error_body(message, "invalid_request_error"), status_code=400)

    @app.middleware("http")
    async def _authorise(request: Request, call_next: Callable) -> Any:
        if api_key and request.url.path != "/health":
            given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
            if not hmac.compare_digest(given.encode(), api_key.encode()):
                body = protocol.error_body("invalid or missing API key", "invalid_request_error",
                                           "invalid_api_key")  # fmt: skip
                return JSONResponse(body, status_code=401)
        return await call_next(request)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        names = [p.name for p in service.guard.policies.policies]
        return {"status": "ok", "model": model, "policies": names}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        entry = {"id": model, "object": "model", "created": 0, "owned_by": "featureguard"}
        return {"object": "list", "data": [entry]}

    @app.post("/v1/chat/completions")
    async def chat(body: protocol.ChatRequest, request: Request) -> Any:
        rid = _request_id(request)
        sampling = _sampling(body)
        try:
            prompt = service.chat_prompt(
                [{"role": m.role, "content": m.text()} for m in body.messages]
            )
        except ValueError as exc:
            raise _HTTPError(400, str(exc), "invalid_request_error") from exc
        if body.stream:
            return _stream(service, prompt, sampling, rid, chat=True)
        done = await _guarded(service.complete_async([prompt], sampling, rid))
        return _json(protocol.chat_response(done, model), done)

    @app.post("/v1/completions")
    async def completions(body: protocol.CompletionRequest, request: Request) -> Any:
        rid, sampling, prompts = _request_id(request), _sampling(body), body.prompts()
        if body.stream:
            if len(prompts) != 1:
                raise _HTTPError(400, "stream one prompt per request", "invalid_request_error")
            return _stream(service, prompts[0], sampling, rid, chat=False)
        done = await _guarded(service.complete_async(prompts, sampling, rid))
        return _json(protocol.completion_response(done, model), done)

    @app.post("/v1/featureguard/score")
    async def score(body: protocol.ScoreRequest, request: Request) -> Any:
        rid = _request_id(request)
        texts = [body.input] if isinstance(body.input, str) else body.input
        results = await _run(service, lambda: service.score(texts, rid))
        fired = sorted({p for r in results for p in r.outcome.policies})
        headers = {"X-Request-ID": rid, "X-Featureguard-Policies": ",".join(fired)}
        return JSONResponse(protocol.score_response(results, rid, model), headers=headers)

    return app


def _request_id(request: Request) -> str:
    given = request.headers.get("x-request-id")
    if given is None:
        return new_request_id()
    if not REQUEST_ID.fullmatch(given):
        raise _HTTPError(
            400, "X-Request-ID: 1-128 letters, digits or ._:-", "invalid_request_error"
        )
    return given


def _sampling(body: protocol._Request) -> Any:
    try:
        return body.sampling(DEFAULT_MAX_TOKENS)
    except ValueError as exc:
        raise _HTTPError(400, str(exc), "invalid_request_error") from exc


def _busy(exc: QueueFull) -> _HTTPError:
    return _HTTPError(503, str(exc), "server_busy", {"Retry-After": str(exc.retry_after)})


async def _run(service: GuardedService, job: Callable[[], Any]) -> Any:
    """Queue `job` on the worker and wait for it without blocking the event loop."""
    try:
        future = service.submit(job)
    except QueueFull as exc:
        raise _busy(exc) from exc
    return await _guarded(asyncio.wrap_future(future))


async def _guarded(work: Awaitable[Any]) -> Any:
    """Await `work`: a full queue is a 503, a featureguard failure a 500."""
    try:
        return await work
    except QueueFull as exc:
        raise _busy(exc) from exc
    except FeatureguardError as exc:
        raise _HTTPError(500, f"featureguard: {exc}", "server_error") from exc


def _json(body: dict[str, Any], done: Completion) -> JSONResponse:
    fired = body["featureguard"]["policies_triggered"]
    headers = {
        "X-Request-ID": done.request_id,
        "X-Featureguard-Policies": ",".join(fired),
        "X-Featureguard-Blocked": "true"
        if any(c.outcome.blocked for c in done.choices)
        else "false",
    }
    return JSONResponse(body, headers=headers)


def _stream(service: GuardedService, prompt: str, sampling: Any, rid: str, *, chat: bool) -> Any:
    """Server-sent events: one chunk per scored piece of text, a last chunk with the finish
    reason (and the policy's message when blocked) and the `featureguard` report, then [DONE]."""
    model, cancelled = service.model_id, threading.Event()
    try:
        future, items = iterate_in_worker(
            service, lambda: service.stream(prompt, sampling, rid, cancelled)
        )
    except QueueFull as exc:
        raise _busy(exc) from exc

    def chunk(text: str | None, *, role: bool = False, **extra: Any) -> str:
        if chat:
            delta = {"role": "assistant"} if role else {}
            delta |= {"content": text} if text is not None else {}
            body = protocol.chat_chunk(rid, model, delta, **extra)
        else:
            body = protocol.completion_chunk(rid, model, text or "", **extra)
        return f"data: {json.dumps(body)}\n\n"

    async def events() -> AsyncIterator[str]:
        shown = False
        try:
            if chat:
                yield chunk(None, role=True)
            while (item := await asyncio.to_thread(items.get)) is not END:
                if not isinstance(item, Completion):
                    shown = True
                    yield chunk(item)
                    continue
                [choice] = item.choices
                if choice.outcome.blocked:  # what was shown was scored clean; then the message
                    yield chunk(("\n" if shown else "") + (choice.text or ""))
                usage = protocol.usage(item.prompt_tokens, item.completion_tokens)
                report = protocol.guard_report(item)
                yield chunk(None, finish=choice.finish_reason, featureguard=report, usage=usage)
            try:
                await asyncio.wrap_future(future)
            except Exception as exc:  # headers are gone: report in the stream, as OpenAI does
                body = protocol.error_body(f"featureguard: {exc}", "server_error")
                yield f"data: {json.dumps(body)}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            cancelled.set()  # the client left (or we are done): stop generating

    return StreamingResponse(
        events(), media_type="text/event-stream", headers={"X-Request-ID": rid}
    )
