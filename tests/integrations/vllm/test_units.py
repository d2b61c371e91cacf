"""The adapter's pieces without an engine: row labels, version and runner checks, the
frontend's request parameters and what a caller is allowed to see of an output."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import vllm_world as vw

pytest.importorskip("vllm", reason=vw.NO_VLLM)

from vllm import SamplingParams

from featureguard.errors import GuardError
from featureguard.integrations.vllm import geometry
from featureguard.integrations.vllm.config import (
    POLICIES_ARG,
    REQUEST_ID_ARG,
    WITHHELD_MESSAGE,
    AdapterConfig,
    selected_policies,
)
from featureguard.integrations.vllm.frontend import engine_kwargs, guarded_params, release
from featureguard.integrations.vllm.geometry import Span
from featureguard.integrations.vllm.serve import GuardMiddleware, _Rewrite

SENTINEL = 63


def step(order: list[str], counts: dict[str, int]) -> tuple[SimpleNamespace, SimpleNamespace]:
    runner = SimpleNamespace(
        input_batch=SimpleNamespace(req_ids=[*order, "stale"], num_reqs=len(order))
    )
    scheduled = SimpleNamespace(
        num_scheduled_tokens=counts, total_num_scheduled_tokens=sum(counts.values())
    )
    return runner, scheduled


def test_rows_are_labelled_in_batch_order_and_split_at_the_prompt_end() -> None:
    """A decode row, a prefill chunk and a chunk crossing its prompt's end (a preempted request
    recomputing) get the right request, position and phase, in persistent-batch order."""
    runner, scheduled = step(["b", "a", "c"], {"a": 3, "b": 1, "c": 4})
    positions = torch.tensor([7, 0, 1, 2, 3, 4, 5, 6])
    spans = geometry.step_spans(runner, scheduled, positions, {"a": 10, "b": 4, "c": 5})
    assert spans == [
        Span("b", 0, 1, 7, False),
        Span("a", 1, 3, 0, True),
        Span("c", 4, 2, 3, True),
        Span("c", 6, 2, 5, False),
    ]


def test_labels_that_disagree_with_positions_are_refused() -> None:
    """Counts that do not match the model's positions raise instead of mislabelling rows."""
    runner, scheduled = step(["a", "b"], {"a": 2, "b": 2})
    with pytest.raises(GuardError, match="positions"):
        geometry.step_spans(runner, scheduled, torch.tensor([0, 1, 5, 5]), {"a": 9, "b": 9})


@pytest.mark.parametrize("version", ["0.31.2", "0.33.0", "1.0.0", "dev"])
def test_unknown_vllm_versions_are_refused(version: str) -> None:
    """Any vLLM outside the tested range is refused, naming the range."""
    with pytest.raises(GuardError, match=r">=0\.32,<0\.33"):
        geometry.check_version(version)


def test_a_runner_other_than_v1_is_refused() -> None:
    """A model runner that is not the V1 runner (Model Runner V2) is refused."""
    with pytest.raises(GuardError, match="V1 model runner"):
        geometry.check_runner(SimpleNamespace(input_batch=None))


def test_guarded_params_carry_the_request_and_the_sentinel() -> None:
    """Audit id and policy selection ride in extra_args; the sentinel is a stop token; one more
    token is asked for, since the last one is never scored; the caller's params are unchanged."""
    params = SamplingParams(max_tokens=5, stop_token_ids=[7], extra_args={"mine": 1})
    out = guarded_params(params, sentinel=SENTINEL, request_id="r1", policies=["b", "a"])
    assert out.extra_args == {"mine": 1, REQUEST_ID_ARG: "r1", POLICIES_ARG: "b,a"}
    assert out.stop_token_ids == [7, SENTINEL] and out.max_tokens == 6
    assert params.max_tokens == 5 and params.stop_token_ids == [7]
    assert selected_policies(out.extra_args) == ("a", "b")
    assert selected_policies({}) is None


@pytest.mark.parametrize("bad", [{"min_tokens": 2}, {"n": 2}])
def test_settings_that_break_the_stop_are_refused(bad: dict[str, int]) -> None:
    with pytest.raises(GuardError):
        guarded_params(SamplingParams(**bad), sentinel=SENTINEL, request_id="r")


@pytest.mark.parametrize(
    "bad", [{"enforce_eager": False}, {"enable_prefix_caching": True}, {"async_scheduling": True}]
)
def test_engine_settings_the_guard_cannot_honour_are_refused(bad: dict[str, bool]) -> None:
    with pytest.raises(GuardError):
        engine_kwargs("unused-model", "unused.yaml", **bad)


class _Tok:
    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(chr(ord("a") + i) for i in ids)


def output(ids: list[int], finish: str | None, stop: int | None = None) -> SimpleNamespace:
    completion = SimpleNamespace(token_ids=ids, text="raw", finish_reason=finish, stop_reason=stop)
    return SimpleNamespace(outputs=[completion])


@pytest.mark.parametrize(
    ("ids", "finish", "stop", "kept", "reason", "text"),
    [
        ([1, 2, 3, SENTINEL], "stop", SENTINEL, [1, 2], "content_filter", WITHHELD_MESSAGE),
        ([SENTINEL], "stop", SENTINEL, [], "content_filter", WITHHELD_MESSAGE),
        ([1, 2, 3], None, None, [1, 2], None, "bc"),
        ([1, 2, 3], "length", None, [1, 2], "length", "bc"),
        ([1, 2, 0], "stop", None, [1, 2, 0], "stop", "raw"),
    ],
)
def test_release_shows_only_scored_tokens(
    ids: list[int],
    finish: str | None,
    stop: int | None,
    kept: list[int],
    reason: str | None,
    text: str,
) -> None:
    """Blocked: the trigger and the sentinel go, content_filter; streaming or cut by length:
    the unscored last token is held back; ended by the model: untouched."""
    [c] = release(output(ids, finish, stop), SENTINEL, _Tok()).outputs
    assert (list(c.token_ids), c.finish_reason, c.text) == (kept, reason, text)
    assert c.stop_reason in (None, stop) and c.stop_reason != SENTINEL


def test_adapter_config_round_trips_and_rejects_garbage() -> None:
    config = AdapterConfig(policies="/p.yaml", sentinel=SENTINEL)
    assert AdapterConfig.from_additional(config.to_additional()) == config
    for bad in (None, {}, {"featureguard": {"policies": "/p.yaml", "sentinel": "x"}}):
        with pytest.raises(GuardError, match="featureguard"):
            AdapterConfig.from_additional(bad)


def _sse(text: str, finish: str | None = None, stop: int | None = None) -> bytes:
    choice = {"index": 0, "text": text, "finish_reason": finish, "stop_reason": stop}
    return b"data: " + json.dumps({"choices": [choice]}).encode() + b"\n\n"


def _respond(kind: bytes, bodies: list[bytes]) -> list[dict[str, Any]]:
    """What `_Rewrite` sends for a response of content type `kind` sent in `bodies`."""
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def respond() -> None:
        wrapped = _Rewrite(SENTINEL, "r-1").wrap(send)
        await wrapped(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", kind), (b"content-length", b"9")],
            }
        )
        for i, body in enumerate(bodies):
            await wrapped(
                {"type": "http.response.body", "body": body, "more_body": i < len(bodies) - 1}
            )

    asyncio.run(respond())
    return sent


def _texts(sent: list[dict[str, Any]]) -> list[tuple[str, str | None]]:
    stream = b"".join(m.get("body", b"") for m in sent)
    events = [e for e in stream.split(b"\n\n") if e.startswith(b"data: {")]
    return [(c["text"], c["finish_reason"]) for e in events for c in json.loads(e[6:])["choices"]]


def test_stream_releases_each_chunk_once_the_next_arrives() -> None:
    """Unblocked, every chunk reaches the client, each only after the next one exists."""
    sent = _respond(
        b"text/event-stream", [_sse("a"), _sse("b"), _sse("c", "length"), b"data: [DONE]\n\n"]
    )
    assert [_texts([m]) for m in sent[1:]] == [
        [],
        [("a", None)],
        [("b", None), ("c", "length")],
        [],
    ]
    assert (b"x-request-id", b"r-1") in sent[0]["headers"]


def test_stream_drops_the_trigger_chunk_of_a_blocked_choice() -> None:
    """Blocked, the chunk of the trigger token is never sent; the end is content_filter."""
    sent = _respond(b"text/event-stream", [_sse("a") + _sse("b"), _sse("", "stop", SENTINEL)])
    assert _texts(sent) == [("a", None), (WITHHELD_MESSAGE, "content_filter")]


def test_whole_responses_are_rewritten_with_their_length() -> None:
    """A JSON body's blocked choice becomes content_filter; Content-Length follows the body."""
    body = {
        "choices": [
            {"index": 0, "text": "ab", "finish_reason": "stop", "stop_reason": SENTINEL},
            {"index": 1, "text": "cd", "finish_reason": "length", "stop_reason": None},
        ]
    }
    sent = _respond(b"application/json", [json.dumps(body).encode()])
    out = json.loads(sent[1]["body"])
    assert [(c["text"], c["finish_reason"]) for c in out["choices"]] == [
        (WITHHELD_MESSAGE, "content_filter"),
        ("cd", "length"),
    ]
    assert dict(sent[0]["headers"])[b"content-length"] == str(len(sent[1]["body"])).encode()


def test_middleware_adds_guard_settings_and_refuses_a_duplicate_id() -> None:
    """A request goes on with its audit id, policy selection and the sentinel stop token; the
    same X-Request-ID while it is in flight gets 409; the audit is flushed at the end."""
    seen: list[dict[str, Any]] = []
    flushed: list[Any] = []
    release_first = asyncio.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(json.loads((await receive())["body"]))
        await release_first.wait()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": b"{}"})

    async def collective_rpc(method: str, args: tuple) -> None:
        flushed.append((method, args))

    state = SimpleNamespace(
        vllm_config=SimpleNamespace(
            additional_config=AdapterConfig(policies="/p.yaml", sentinel=SENTINEL).to_additional()
        ),
        engine_client=SimpleNamespace(collective_rpc=collective_rpc),
    )
    middleware = GuardMiddleware(app)

    async def call(sent: list[dict[str, Any]]) -> None:
        body = json.dumps({"prompt": "x", "stop_token_ids": [7]}).encode()
        scope = {
            "type": "http",
            "method": "POST",
            "path": "/v1/completions",
            "app": SimpleNamespace(state=state),
            "headers": [(b"x-request-id", b"r-9"), (b"x-featureguard-policies", b"a,b")],
        }

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await middleware(scope, receive, send)

    async def both() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        first: list[dict[str, Any]] = []
        second: list[dict[str, Any]] = []
        running = asyncio.create_task(call(first))
        while not seen:
            await asyncio.sleep(0)
        await call(second)
        release_first.set()
        await running
        return first, second

    first, second = asyncio.run(both())
    assert seen == [
        {
            "prompt": "x",
            "stop_token_ids": [7, SENTINEL],
            "vllm_xargs": {REQUEST_ID_ARG: "r-9", POLICIES_ARG: "a,b"},
        }
    ]
    assert first[0]["status"] == 200 and second[0]["status"] == 409
    assert flushed == [("fg_finish", (["r-9"],))]
