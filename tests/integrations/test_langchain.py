"""LangChain: `GuardedChatModel` and `GuardedLLM` over a local guard (a tiny model whose block
policy fires) and over a featureguard server (its wire format, from an httpx mock transport)."""

from __future__ import annotations

import asyncio
import copy
import importlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import tiny_world as tw
from langchain_core.messages import HumanMessage, SystemMessage
from langchain_core.prompts import ChatPromptTemplate, PromptTemplate

import featureguard as fg
from featureguard.integrations.langchain import GuardedChatModel, GuardedLLM

MESSAGE = "withheld by the test policy"
EOS = 2


@pytest.fixture
def guard(world: tw.World, tmp_path: Path) -> Iterator[fg.Guard]:
    """Block policy `watch` on the world's chosen token, audited to memory."""
    path = tw.write_policy(world, tmp_path, action="block", message=MESSAGE)
    with fg.wrap(world.model, path, tokenizer=world.tokenizer, audit=fg.MemorySink()) as g:
        yield g


def reply_ids(world: tw.World, row: int) -> list[int]:
    """The unwrapped model's greedy reply to PROMPTS[row] alone (8 new tokens)."""
    return world.single(row)[0, len(tw.PROMPTS[row]) :].tolist()  # one token per character


def free_row(world: tw.World) -> int:
    return next(r for r in range(len(tw.PROMPTS)) if r != world.row)


def completed(guard: fg.Guard) -> list[dict[str, Any]]:
    return [r for r in guard.audit.sink.records if r["event"] == "request_completed"]


# ---- local guard -----------------------------------------------------------------------------
def test_chain_gets_blocked_reply_and_fired_policy(world: tw.World, guard: fg.Guard) -> None:
    """prompt | chat: the reply is the policy's message, and the metadata says which fired."""
    chain = ChatPromptTemplate.from_messages([("human", "{code}")]) | GuardedChatModel(
        guard=guard, max_tokens=8, temperature=0
    )
    msg = chain.invoke({"code": tw.PROMPTS[world.row]})
    assert msg.content == MESSAGE
    assert msg.response_metadata["finish_reason"] == "content_filter"
    report = msg.response_metadata["featureguard"]
    assert report["request_id"] == guard.last_request_id == completed(guard)[-1]["request_id"]
    assert (report["blocked"], report["blocked_by"], report["policies"]) == (
        True,
        "watch",
        ["watch"],
    )
    [trig] = report["triggers"]
    assert (trig["policy"], trig["action"], trig["token_index"]) == (
        "watch",
        "block",
        world.token_index,
    )
    assert trig["in_prompt"] is False and list(trig["features"]) == [str(tw.TARGET)]
    assert msg.usage_metadata["input_tokens"] == len(tw.PROMPTS[world.row])
    assert msg.usage_metadata["output_tokens"] == guard.last[0].completion_tokens


def test_unblocked_reply_is_the_models(world: tw.World, guard: fg.Guard) -> None:
    """Nothing fires: the content is the unwrapped model's greedy reply, max_tokens long."""
    row = free_row(world)
    ids = reply_ids(world, row)
    msg = GuardedChatModel(guard=guard, max_tokens=8, temperature=0).invoke(tw.PROMPTS[row])
    assert msg.content == world.tokenizer.decode(ids, skip_special_tokens=True)
    assert msg.response_metadata["finish_reason"] == ("stop" if EOS in ids else "length")
    report = msg.response_metadata["featureguard"]
    assert (report["blocked"], report["policies"], report["triggers"]) == (False, [], [])


def test_stop_sequence_cuts_the_reply(world: tw.World, guard: fg.Guard) -> None:
    """LangChain's `stop`: the reply ends before the first stop sequence; finish_reason stop."""
    row = free_row(world)
    full = world.tokenizer.decode(reply_ids(world, row), skip_special_tokens=True)
    stop = full.strip()[2:4]
    chat = GuardedChatModel(guard=guard, max_tokens=8, temperature=0)
    msg = chat.invoke(tw.PROMPTS[row], stop=[stop])
    assert msg.content == full[: full.find(stop)]
    assert msg.response_metadata["finish_reason"] == "stop"


def test_batch_keeps_each_outcome_with_its_reply(world: tw.World, guard: fg.Guard) -> None:
    """`batch` runs calls in threads over one guard: each reply carries its own outcome."""
    chat = GuardedChatModel(guard=guard, max_tokens=8, temperature=0)
    rows = [world.row, free_row(world), world.row]
    msgs = chat.batch([tw.PROMPTS[r] for r in rows])
    assert [m.response_metadata["featureguard"]["blocked_by"] for m in msgs] == [
        "watch" if r == world.row else None for r in rows
    ]
    assert [m.content == MESSAGE for m in msgs] == [r == world.row for r in rows]
    ids = [m.response_metadata["featureguard"]["request_id"] for m in msgs]
    assert sorted(ids) == sorted(r["request_id"] for r in completed(guard)) and len(set(ids)) == 3


def test_messages_joined_without_chat_template(world: tw.World, guard: fg.Guard) -> None:
    """A tokenizer without a chat template sees the contents joined by newlines."""
    GuardedChatModel(guard=guard, max_tokens=2, temperature=0).invoke(
        [SystemMessage("be brief"), HumanMessage("hello there")]
    )
    [row] = completed(guard)[-1]["rows"]
    assert row["prompt_ids"] == world.tokenizer("be brief\nhello there")["input_ids"]


def test_chat_template_applied(world: tw.World, tmp_path: Path) -> None:
    """A tokenizer with a chat template sees the template's ids, generation prompt included."""
    tok = copy.deepcopy(world.tokenizer)
    tok.chat_template = (
        "{% for m in messages %}{{ m['role'][0] }}:{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}a:{% endif %}"
    )
    path = tw.write_policy(world, tmp_path, action="block", message=MESSAGE)
    with fg.wrap(world.model, path, tokenizer=tok, audit=fg.MemorySink()) as guard:
        GuardedChatModel(guard=guard, max_tokens=2, temperature=0).invoke(
            [SystemMessage("be brief"), HumanMessage("hello there")]
        )
        [row] = completed(guard)[-1]["rows"]
    assert row["prompt_ids"] == tok("s:be brief\nu:hello there\na:")["input_ids"]


def test_llm_completes_a_batch_of_prompts(world: tw.World, guard: fg.Guard) -> None:
    """GuardedLLM: the prompts are one left-padded batch, one audit request; only the
    triggering prompt's text is withheld."""
    result = GuardedLLM(guard=guard, max_tokens=8, temperature=0).generate(tw.PROMPTS)
    p = world.prompt_len
    expected = [world.tokenizer.decode(world.bare[r, p:], skip_special_tokens=True)
                for r in range(len(tw.PROMPTS))]  # fmt: skip
    expected[world.row] = MESSAGE
    assert [g[0].text for g in result.generations] == expected
    infos = [g[0].generation_info for g in result.generations]
    assert [i["featureguard"]["blocked_by"] for i in infos] == [
        "watch" if r == world.row else None for r in range(len(tw.PROMPTS))
    ]
    assert infos[world.row]["finish_reason"] == "content_filter"
    [done] = completed(guard)
    assert {i["featureguard"]["request_id"] for i in infos} == {done["request_id"]}
    assert done["blocked"] == [world.row]


def test_needs_exactly_one_backend(guard: fg.Guard) -> None:
    with pytest.raises(ValueError, match="exactly one of guard"):
        GuardedChatModel()
    with pytest.raises(ValueError, match="exactly one of guard"):
        GuardedChatModel(guard=guard, base_url="http://localhost:8000")


# ---- server ----------------------------------------------------------------------------------
RID = "5f0c2a"
CHOICE_REPORT = {
    "index": 0,
    "blocked": True,
    "blocked_by": "unsafe-code",
    "policies": ["unsafe-code"],
    "finish_reason": "content_filter",
    "triggers": [
        {
            "policy": "unsafe-code",
            "action": "block",
            "token_index": 17,
            "token": "False",
            "token_id": 4321,
            "score": 4.5,
            "features": {"12": 3.4},
            "in_prompt": False,
        }
    ],
}
CHAT_RESPONSE = {
    "id": f"chatcmpl-{RID}",
    "object": "chat.completion",
    "created": 1700000000,
    "model": "demo-coder",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "This reply was withheld."},
            "finish_reason": "content_filter",
        }
    ],
    "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
    "featureguard": {"request_id": RID, "policies_triggered": ["unsafe-code"],
                     "choices": [CHOICE_REPORT]},
}  # fmt: skip
EXPECTED_REPORT = {k: v for k, v in CHOICE_REPORT.items() if k != "index"} | {"request_id": RID}


class Server:
    """An httpx transport answering like a featureguard server; keeps the requests it got."""

    def __init__(self, body: dict[str, Any], status: int = 200) -> None:
        self.body, self.status, self.requests = body, status, []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return httpx.Response(self.status, json=self.body)

    def json(self, i: int = -1) -> dict[str, Any]:
        return json.loads(self.requests[i].content)


def test_server_chain_parses_blocked_reply() -> None:
    """The request is OpenAI's chat format with the key; the reply carries the report."""
    server = Server(CHAT_RESPONSE)
    chat = GuardedChatModel(
        base_url="http://fg.test:8000", api_key="sk-test", model="demo-coder", max_tokens=64,
        temperature=0, http_client=httpx.Client(transport=httpx.MockTransport(server)),
    )  # fmt: skip
    prompt = ChatPromptTemplate.from_messages([("system", "You write code."), ("human", "{q}")])
    msg = (prompt | chat).invoke({"q": "fetch a URL"})
    [req] = server.requests
    assert str(req.url) == "http://fg.test:8000/v1/chat/completions"
    assert req.headers["authorization"] == "Bearer sk-test"
    assert server.json() == {
        "model": "demo-coder",
        "messages": [
            {"role": "system", "content": "You write code."},
            {"role": "user", "content": "fetch a URL"},
        ],
        "max_tokens": 64,
        "temperature": 0,
    }
    assert msg.content == "This reply was withheld."
    assert msg.response_metadata["finish_reason"] == "content_filter"
    assert msg.response_metadata["featureguard"] == EXPECTED_REPORT
    assert msg.response_metadata["model_name"] == "demo-coder"
    assert msg.usage_metadata == {"input_tokens": 11, "output_tokens": 7, "total_tokens": 18}


def test_server_without_key_and_with_v1_in_url() -> None:
    """No key: no Authorization header; a base URL ending in /v1 is not doubled; call
    settings (`bind`, `stop`) reach the body; unset ones are left to the server."""
    server = Server(CHAT_RESPONSE)
    chat = GuardedChatModel(
        base_url="http://fg.test/v1/",
        http_client=httpx.Client(transport=httpx.MockTransport(server)),
    )
    chat.bind(max_tokens=5).invoke("hi", stop=["\n\n"])
    [req] = server.requests
    assert str(req.url) == "http://fg.test/v1/chat/completions"
    assert "authorization" not in req.headers
    assert server.json() == {
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 5,
        "stop": ["\n\n"],
    }


def test_server_async() -> None:
    """ainvoke goes through the async client, with the same parsing."""
    server = Server(CHAT_RESPONSE)
    chat = GuardedChatModel(
        base_url="http://fg.test",
        http_async_client=httpx.AsyncClient(transport=httpx.MockTransport(server)),
    )
    msg = asyncio.run(chat.ainvoke("hi"))
    assert len(server.requests) == 1
    assert msg.response_metadata["featureguard"] == EXPECTED_REPORT


def test_server_error_says_what_the_server_said() -> None:
    server = Server({"error": {"message": "invalid API key"}}, status=401)
    chat = GuardedChatModel(
        base_url="http://fg.test", http_client=httpx.Client(transport=httpx.MockTransport(server))
    )
    with pytest.raises(httpx.HTTPStatusError, match=r"401.*invalid API key"):
        chat.invoke("hi")


def test_server_llm_uses_completions() -> None:
    """GuardedLLM posts the prompts to /v1/completions and reads one choice per prompt."""
    body = {
        "id": f"cmpl-{RID}", "object": "text_completion", "model": "demo-coder",
        "choices": [
            {"index": 1, "text": "x = 2", "finish_reason": "length"},
            {"index": 0, "text": "This reply was withheld.", "finish_reason": "content_filter"},
        ],
        "usage": {"prompt_tokens": 8, "completion_tokens": 9, "total_tokens": 17},
        "featureguard": {"request_id": RID, "policies_triggered": ["unsafe-code"], "choices": [
            CHOICE_REPORT,
            {"index": 1, "blocked": False, "blocked_by": None, "policies": [],
             "finish_reason": "length", "triggers": []},
        ]},
    }  # fmt: skip
    server = Server(body)
    llm = GuardedLLM(
        base_url="http://fg.test", http_client=httpx.Client(transport=httpx.MockTransport(server))
    )
    chain = PromptTemplate.from_template("{a}") | llm
    assert chain.invoke({"a": "one"}) == "This reply was withheld."
    result = llm.generate(["one", "two"])
    assert str(server.requests[-1].url) == "http://fg.test/v1/completions"
    assert server.json()["prompt"] == ["one", "two"]
    texts = [g[0].text for g in result.generations]
    assert texts == ["This reply was withheld.", "x = 2"]
    infos = [g[0].generation_info for g in result.generations]
    assert infos[0] == {"finish_reason": "content_filter", "featureguard": EXPECTED_REPORT}
    assert infos[1]["featureguard"]["blocked"] is False
    assert infos[1]["featureguard"]["request_id"] == RID
    assert result.llm_output["token_usage"]["total_tokens"] == 17


def test_import_without_langchain_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without langchain-core the package's import error names the extra to install."""
    for name in [m for m in sys.modules if m.startswith("featureguard.integrations.langchain")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "langchain_core", None)  # import now raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'featureguard\[langchain\]'"):
        importlib.import_module("featureguard.integrations.langchain")
