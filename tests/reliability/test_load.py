"""Load: many threads through one guard, many clients through one server. Every request gets
exactly its own reply and exactly one `request_completed` record, no record carries another
request's tokens, and the chain of the audit file verifies. Figures: docs/reliability.md.

Greedy decoding makes each request's reply a function of its prompt, so a reply or a record
that mixed two requests shows up as a difference from the same request made alone.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai
import pytest
import tiny_world as tw
import torch
from serving import running

import featureguard as fg
from featureguard.audit import iter_records, verify
from featureguard.integrations.server import GuardedService, create_app

LIBRARY_REQUESTS, LIBRARY_THREADS = 1000, 16
SERVER_REQUESTS, SERVER_CLIENTS = 200, 8
NEW_TOKENS = 6
MESSAGE = "withheld under load"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tw.World:
    torch.set_num_threads(1)
    return tw.build_world(tmp_path_factory.mktemp("world"), "llama")


@pytest.fixture
def guard(world: tw.World, tmp_path: Path) -> Iterator[fg.Guard]:
    """A block policy on the aimed token, auditing to a file of its own."""
    policy = tw.write_policy(world, tmp_path, action="block", message=MESSAGE)
    with fg.wrap(world.model, policy, tokenizer=world.tokenizer,
                 audit=tmp_path / "audit.jsonl") as guard:  # fmt: skip
        yield guard


def prompts() -> list[str]:
    """Distinct prompts: the four of tiny_world (one of them blocked) and numbered variants."""
    return tw.PROMPTS + [f"{p} {n}" for n in range(6) for p in tw.PROMPTS]


def records_by_request(path: Path) -> tuple[dict[str, list[dict]], dict[str, list[dict]]]:
    done: dict[str, list[dict]] = {}
    triggered: dict[str, list[dict]] = {}
    for record in iter_records(path):
        if record["event"] == "request_completed":
            done.setdefault(record["request_id"], []).append(record)
        elif record["event"] == "policy_triggered":
            triggered.setdefault(record["request_id"], []).append(record)
    return done, triggered


Sent = dict[str, tuple[str, str]]  # request id -> (prompt, "reply" or "score")


def check_records(path: Path, sent: Sent, expected: dict[tuple[str, str], dict]) -> None:
    """One request_completed per request sent and none other; each record's prompt and reply
    tokens, blocked rows and trigger count are those of the same request made alone; each
    trigger names a token of its own request; the chain verifies."""
    report = verify(path)
    assert report.ok, report.reason
    done, triggered = records_by_request(path)
    assert sorted(done) == sorted(sent) and all(len(r) == 1 for r in done.values())
    assert set(triggered) <= set(sent)
    for rid, key in sent.items():
        [record] = done[rid]
        [row] = record["rows"]
        tokens = row["prompt_ids"] + row["reply_ids"]
        mine = triggered.get(rid, [])
        got = {"ids": tokens, "blocked": record["blocked"], "triggers": len(mine)}
        assert got == expected[key], rid
        assert all(tokens[t["token_index"]] == t["token_id"] for t in mine), rid


def made_alone(guard: fg.Guard, path: Path) -> tuple[dict[str, dict[str, Any]], Sent, dict]:
    """Each prompt generated, streamed and scored alone, before any concurrency: what each
    call returned, the requests sent, and what their records hold."""
    alone, sent = {}, {}
    for i, prompt in enumerate(prompts()):
        rids = {kind: f"alone-{kind}-{i}" for kind in ("generate", "stream", "score")}
        reply = guard.generate(prompt, max_new_tokens=NEW_TOKENS, request_id=rids["generate"])
        streamed = guard.stream(prompt, max_new_tokens=NEW_TOKENS, request_id=rids["stream"])
        alone[prompt] = {
            "generate": reply[0],
            "stream": "".join(streamed),
            "score": guard.score(prompt, request_id=rids["score"])[0].outcome.to_dict(),
        }
        sent |= {rid: (prompt, kind_of(kind)) for kind, rid in rids.items()}
    done, triggered = records_by_request(path)
    expected = {}
    for rid, key in sent.items():
        [row] = done[rid][0]["rows"]
        expected[key] = {"ids": row["prompt_ids"] + row["reply_ids"],
                         "blocked": done[rid][0]["blocked"],
                         "triggers": len(triggered.get(rid, []))}  # fmt: skip
    assert any(e["blocked"] for e in expected.values())
    return alone, sent, expected


def kind_of(call: str) -> str:
    """generate and stream write the same record for a prompt; score reads it as a reply."""
    return "score" if call == "score" else "reply"


def test_library_threads_never_mix_requests(guard: fg.Guard, tmp_path: Path) -> None:
    """1000 requests from 16 threads (generate, stream, score) through one guard."""
    audit = tmp_path / "audit.jsonl"
    alone, sent, expected = made_alone(guard, audit)
    rng = random.Random(0)
    calls = ["generate"] * 8 + ["stream", "score"]
    plan = [(f"load-{i}", rng.choice(prompts()), rng.choice(calls))
            for i in range(LIBRARY_REQUESTS)]  # fmt: skip

    def call(rid: str, prompt: str, kind: str) -> bool:
        if kind == "generate":
            got: Any = guard.generate(prompt, max_new_tokens=NEW_TOKENS, request_id=rid)[0]
        elif kind == "stream":
            got = "".join(guard.stream(prompt, max_new_tokens=NEW_TOKENS, request_id=rid))
        else:
            got = guard.score(prompt, request_id=rid)[0].outcome.to_dict()
        return got == alone[prompt][kind]

    with ThreadPoolExecutor(LIBRARY_THREADS) as pool:
        same = list(pool.map(lambda p: call(*p), plan))
    assert Counter(same) == Counter({True: LIBRARY_REQUESTS})
    sent |= {rid: (prompt, kind_of(kind)) for rid, prompt, kind in plan}
    check_records(audit, sent, expected)


def test_server_clients_never_mix_requests(guard: fg.Guard, tmp_path: Path) -> None:
    """200 requests from 8 clients (chat, streamed chat, completions) through one server."""
    audit = tmp_path / "audit.jsonl"
    alone, sent, expected = made_alone(guard, audit)
    rng = random.Random(1)
    calls = ["chat", "chat", "stream", "completion"]
    plan = [(f"http-{i}", rng.choice(prompts()), rng.choice(calls))
            for i in range(SERVER_REQUESTS)]  # fmt: skip
    app = create_app(GuardedService(guard, "tiny", max_queue=SERVER_CLIENTS * 2))
    with running(app) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="-", max_retries=0)

        def call(rid: str, prompt: str, kind: str) -> bool:
            ask: dict[str, Any] = {"model": "tiny", "max_tokens": NEW_TOKENS, "temperature": 0,
                                   "extra_headers": {"X-Request-ID": rid}}  # fmt: skip
            if kind == "completion":
                got = client.completions.create(prompt=prompt, **ask).choices[0].text
                return got == alone[prompt]["generate"]
            messages = [{"role": "user", "content": prompt}]
            if kind == "chat":
                got = client.chat.completions.create(messages=messages, **ask)
                return got.choices[0].message.content == alone[prompt]["generate"]
            chunks = client.chat.completions.create(messages=messages, stream=True, **ask)
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            if alone[prompt]["generate"] == MESSAGE:  # the scored tokens, then the message
                return text.startswith(alone[prompt]["stream"]) and text.endswith(MESSAGE)
            return text == alone[prompt]["stream"]

        with ThreadPoolExecutor(SERVER_CLIENTS) as pool:
            same = list(pool.map(lambda p: call(*p), plan))
    assert Counter(same) == Counter({True: SERVER_REQUESTS})
    sent |= {rid: (prompt, "reply") for rid, prompt, _ in plan}
    check_records(audit, sent, expected)
