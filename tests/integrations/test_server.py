"""The OpenAI-compatible server, driven by the official `openai` client over real HTTP.

A tiny Llama and an SAE aimed at the 4th generated token of one prompt (`tiny_world`): a
block policy on that feature stops that prompt's reply at exactly that token, and no other.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import tiny_world as tw
import torch
from serving import running
from tokenizers import processors

import featureguard as fg
from featureguard.audit import iter_records, verify
from featureguard.integrations.server import GuardedService, QueueFull, create_app
from featureguard.integrations.server import service as service_module

MESSAGE = "withheld by the test policy"
API_KEY = "test-key"
GEN_OFFSET = 3  # the aimed token is the 4th generated one (tiny_world's default)


class Served:
    """A running server: its URL, guard, audit log and what the unwrapped model says."""

    def __init__(self, world: tw.World, audit: Path, url: str, guard: fg.Guard,
                 bare: dict[str, torch.Tensor]) -> None:  # fmt: skip
        self.world, self.audit, self.url, self.guard, self.bare = world, audit, url, guard, bare
        self.blocked_prompt = tw.PROMPTS[world.row]
        self.clean_prompt = tw.PROMPTS[(world.row + 1) % len(tw.PROMPTS)]

    def client(self, key: str = API_KEY) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0)

    def reply_ids(self, prompt: str, n: int) -> list[int]:
        """The unwrapped model's first `n` greedy reply tokens for `prompt`."""
        prompt_len = len(self.world.tokenizer(prompt)["input_ids"])
        return self.bare[prompt][prompt_len : prompt_len + n].tolist()

    def bare_reply(self, prompt: str, n: int) -> str:
        """Those tokens as the server shows them (`decode`)."""
        return self.world.tokenizer.decode(self.reply_ids(prompt, n), skip_special_tokens=True)

    def reply_chars(self, prompt: str, n: int) -> str:
        """Those tokens as a string that tokenizes back to them (one character each:
        `decode` puts spaces between this tokenizer's tokens)."""
        return "".join(self.world.tokenizer.batch_decode([[i] for i in self.reply_ids(prompt, n)]))


@pytest.fixture(scope="module")
def served(world: tw.World, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("server")
    bare = {p: tw.generate(world.model, world.tokenizer, [p], 12)[0] for p in tw.PROMPTS}
    policy = tw.write_policy(world, tmp, action="block", message=MESSAGE)  # policy "watch"
    audit = tmp / "audit.jsonl"
    guard = fg.wrap(world.model, policy, tokenizer=world.tokenizer, audit=audit)
    app = create_app(GuardedService(guard, "tiny-llama", max_queue=16), api_key=API_KEY)
    with running(app) as url:
        yield Served(world, audit, url, guard, bare)
    guard.detach()


def _records(path: Path, event: str) -> list[dict[str, Any]]:
    return [r for r in iter_records(path) if r["event"] == event]


def test_chat_clean_reply_equals_unwrapped_model(served: Served) -> None:
    raw = served.client().chat.completions.with_raw_response.create(
        model="tiny-llama",
        messages=[{"role": "user", "content": served.clean_prompt}],
        max_tokens=8,
        temperature=0,
    )
    reply = raw.parse()
    assert reply.choices[0].message.content == served.bare_reply(served.clean_prompt, 8)
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 8
    assert raw.headers["X-Featureguard-Policies"] == ""
    assert raw.headers["X-Featureguard-Blocked"] == "false"
    assert reply.featureguard["policies_triggered"] == []
    assert raw.headers["X-Request-ID"] == reply.featureguard["request_id"]


def test_chat_blocked_reply_is_the_policy_message(served: Served) -> None:
    raw = served.client().chat.completions.with_raw_response.create(
        model="tiny-llama",
        messages=[{"role": "user", "content": served.blocked_prompt}],
        max_tokens=8,
        temperature=0,
        extra_headers={"X-Request-ID": "blocked-1"},
    )
    reply = raw.parse()
    assert reply.choices[0].finish_reason == "content_filter"
    assert reply.choices[0].message.content == MESSAGE
    assert raw.headers["X-Featureguard-Policies"] == "watch"
    assert raw.headers["X-Featureguard-Blocked"] == "true"
    assert raw.headers["X-Request-ID"] == "blocked-1"
    [choice] = reply.featureguard["choices"]
    assert choice["blocked_by"] == "watch"
    prompt_len = len(served.world.tokenizer(served.blocked_prompt)["input_ids"])
    assert [t["token_index"] for t in choice["triggers"]] == [prompt_len + GEN_OFFSET]
    [record] = [
        r for r in _records(served.audit, "request_completed") if r["request_id"] == "blocked-1"
    ]
    assert record["blocked"] == [0]


def test_stream_never_shows_the_blocked_token(served: Served) -> None:
    stream = served.client().chat.completions.create(
        model="tiny-llama",
        messages=[{"role": "user", "content": served.blocked_prompt}],
        max_tokens=8,
        temperature=0,
        stream=True,
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    shown = served.bare_reply(served.blocked_prompt, GEN_OFFSET)  # the tokens before the trigger
    assert text == (f"{shown}\n{MESSAGE}" if shown else MESSAGE)
    assert chunks[-1].choices[0].finish_reason == "content_filter"
    assert chunks[-1].featureguard["choices"][0]["blocked_by"] == "watch"


def test_stream_clean_reply_matches_non_streamed(served: Served) -> None:
    client = served.client()
    ask = dict(model="tiny-llama", messages=[{"role": "user", "content": served.clean_prompt}],
               max_tokens=8, temperature=0)  # fmt: skip
    whole = client.chat.completions.create(**ask).choices[0].message.content
    chunks = list(client.chat.completions.create(**ask, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole
    assert len([c for c in chunks if c.choices[0].delta.content]) > 1
    assert chunks[-1].choices[0].finish_reason == "length"


def test_completion_and_stop_string(served: Served) -> None:
    client = served.client()
    full = served.bare_reply(served.clean_prompt, 8)
    done = client.completions.create(model="tiny-llama", prompt=served.clean_prompt, max_tokens=8,
                                     temperature=0)  # fmt: skip
    assert done.choices[0].text == full
    stop = full[4:6]
    cut = client.completions.create(model="tiny-llama", prompt=served.clean_prompt, max_tokens=8,
                                    temperature=0, stop=[stop])  # fmt: skip
    assert cut.choices[0].text == full[: full.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    streamed = client.completions.create(
        model="tiny-llama", prompt=served.clean_prompt, max_tokens=8, temperature=0,
        stop=[stop], stream=True,
    )  # fmt: skip
    assert "".join(c.choices[0].text for c in streamed) == full[: full.index(stop)]


def test_completions_batch_and_n(served: Served) -> None:
    done = served.client().completions.create(
        model="tiny-llama", prompt=[served.clean_prompt, served.blocked_prompt], max_tokens=8,
        temperature=0, n=2,
    )  # fmt: skip
    reasons = [c.finish_reason for c in sorted(done.choices, key=lambda c: c.index)]
    assert reasons == ["length", "length", "content_filter", "content_filter"]
    assert done.featureguard["policies_triggered"] == ["watch"]


def test_sampling_with_seed_repeats(served: Served) -> None:
    client = served.client()
    ask = dict(model="tiny-llama", prompt="abc", max_tokens=8, temperature=1.0, top_p=0.9, seed=7)
    assert (
        client.completions.create(**ask).choices[0].text
        == client.completions.create(**ask).choices[0].text
    )


def test_score_endpoint(served: Served) -> None:
    text = served.blocked_prompt + served.reply_chars(served.blocked_prompt, GEN_OFFSET + 1)
    response = httpx.post(f"{served.url}/v1/featureguard/score", json={"input": [text, "abc"]},
                          headers={"Authorization": f"Bearer {API_KEY}"})  # fmt: skip
    assert response.status_code == 200
    flagged, clean = response.json()["results"]
    prompt_len = len(served.world.tokenizer(served.blocked_prompt)["input_ids"])
    index = prompt_len + GEN_OFFSET
    assert flagged["flagged"] and flagged["blocked_by"] == "watch"
    assert [t["token_index"] for t in flagged["triggers"]] == [index]
    scores = flagged["scores"]["watch"]
    assert scores[index] == pytest.approx(served.world.score, rel=1e-4)
    others = [s for i, s in enumerate(scores) if i != index and s is not None]
    assert len(scores) == len(flagged["tokens"]) and max(others) < served.world.threshold
    assert not clean["flagged"] and clean["triggers"] == []
    assert response.headers["X-Featureguard-Policies"] == "watch"


def test_eight_concurrent_clients_each_audited(served: Served) -> None:
    client = served.client()

    def ask(i: int) -> str:
        prompt = served.blocked_prompt if i % 2 else served.clean_prompt
        reply = client.chat.completions.create(
            model="tiny-llama", messages=[{"role": "user", "content": prompt}], max_tokens=6,
            temperature=0, extra_headers={"X-Request-ID": f"concurrent-{i}"},
        )  # fmt: skip
        return reply.choices[0].finish_reason

    with ThreadPoolExecutor(8) as pool:
        reasons = list(pool.map(ask, range(8)))
    assert reasons == ["length", "content_filter"] * 4
    done = _records(served.audit, "request_completed")
    ids = [r["request_id"] for r in done if r["request_id"].startswith("concurrent-")]
    assert sorted(ids) == sorted(f"concurrent-{i}" for i in range(8))
    for r in done:
        if r["request_id"].startswith("concurrent-"):
            odd = int(r["request_id"].rsplit("-", 1)[1]) % 2
            assert r["blocked"] == ([0] if odd else [])
    assert verify(served.audit).ok


def test_langchain_over_the_server(served: Served) -> None:
    """A LangChain chat model pointed at the server gets the block and the fired policy."""
    from featureguard.integrations.langchain import GuardedChatModel

    chat = GuardedChatModel(base_url=served.url, api_key=API_KEY, max_tokens=8, temperature=0)
    reply = chat.invoke(served.blocked_prompt)
    assert reply.content == MESSAGE
    assert reply.response_metadata["finish_reason"] == "content_filter"
    assert reply.response_metadata["featureguard"]["blocked_by"] == "watch"


def test_wrong_api_key_is_refused(served: Served) -> None:
    with pytest.raises(openai.AuthenticationError) as caught:
        served.client(key="wrong").models.list()
    assert caught.value.status_code == 401
    assert httpx.get(f"{served.url}/health").json()["status"] == "ok"  # health needs no key


def test_models_lists_the_model(served: Served) -> None:
    assert [m.id for m in served.client().models.list()] == ["tiny-llama"]


def test_bad_request_names_the_field(served: Served) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        served.client().chat.completions.create(
            model="tiny-llama", messages=[{"role": "user", "content": "a"}], temperature=5
        )
    assert "temperature" in str(caught.value)


def test_full_queue_answers_503_with_retry_after(served: Served) -> None:
    service = GuardedService(served.guard, "tiny-llama", max_queue=0)
    release = threading.Event()
    service.submit(release.wait)  # occupies the only worker; no room to wait
    try:
        with pytest.raises(QueueFull):
            service.submit(lambda: None)
        from fastapi.testclient import TestClient

        response = TestClient(create_app(service)).post(
            "/v1/completions", json={"prompt": "abc", "max_tokens": 2}
        )
        assert response.status_code == 503
        assert int(response.headers["Retry-After"]) >= 1
    finally:
        release.set()
        service.close()


def test_chat_template_is_applied(served: Served) -> None:
    tok = served.world.tokenizer
    service = GuardedService(served.guard, "tiny-llama")
    try:
        messages = [{"role": "system", "content": "be safe"}, {"role": "user", "content": "hi"}]
        assert service.chat_prompt(messages) == "be safe\nhi"  # no template: contents joined
        tok.chat_template = (
            "{% for m in messages %}{{ m['role'][0] }}: {{ m['content'] }}\n{% endfor %}"
        )
        assert service.chat_prompt(messages) == "s: be safe\nu: hi\n"
        tok.chat_template = "{{ bos_token }}" + tok.chat_template
        assert service.chat_prompt(messages) == "<bos>s: be safe\nu: hi\n"  # no BOS added
        adds_bos = tw.char_tokenizer()
        adds_bos.backend_tokenizer.post_processor = processors.TemplateProcessing(
            single="<bos> $A", special_tokens=[("<bos>", 1)])  # fmt: skip
        assert service_module._adds_bos(adds_bos) and not service_module._adds_bos(tok)
        with pytest.MonkeyPatch.context() as mp:  # as if the model's tokenizer added it
            mp.setattr(service_module, "_adds_bos", lambda _tok: True)
            assert service.chat_prompt(messages) == "s: be safe\nu: hi\n"  # not twice
    finally:
        tok.chat_template = None
        service.close()


def test_serve_command_builds_the_demo_server(tmp_path: Path) -> None:
    """`featureguard serve`'s defaults: the demo model under the demo unsafe-code policy."""
    from fastapi.testclient import TestClient

    from featureguard.cli import build_parser
    from featureguard.integrations.server.command import build

    args = build_parser().parse_args(["serve", "--audit", str(tmp_path / "a.jsonl")])
    assert (args.host, args.port) == ("127.0.0.1", 8000)
    app = build(args)
    try:
        health = TestClient(app).get("/health").json()
        assert health == {"status": "ok", "model": "demo-coder", "policies": ["unsafe-code"]}
    finally:
        app.state.service.guard.detach()
        app.state.service.close()


def test_serve_refuses_a_folder_without_a_model(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from featureguard.cli import main

    assert main(["serve", "--model", str(tmp_path)]) == 2
    assert "not a transformers model folder" in capsys.readouterr().err
