"""Ray Serve LLM, guarded (`ray_serve.build_guarded_openai_app`), driven by the official `openai`
client: Serve's OpenAI router in front of a guarded vLLM `LLMServer`, on loopback. A blocked
completion ends with `content_filter` (also streamed, without the trigger token), another does
not; the client's request id reaches the audit log; a policy selection travels per request.

One local Ray with over-subscribed logical CPUs: with `num_cpus=2` Serve LLM's placement group,
router, controller and proxy do not all fit and the deployment never becomes ready.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
import vllm_world as vw
from vllm_world import VWorld

pytest.importorskip("vllm", reason=vw.NO_VLLM)
pytest.importorskip(
    "ray.serve.llm",
    reason="Ray Serve LLM is not installed: `make test-vllm` adds ray[serve], pyarrow and pandas",
)

from featureguard.integrations.ray._ray import ensure_ray
from featureguard.integrations.vllm.config import WITHHELD_MESSAGE
from featureguard.integrations.vllm.ray_serve import build_guarded_openai_app

openai = pytest.importorskip("openai", reason="the dev extra installs the openai client")
MODEL_ID = "tiny"


@pytest.fixture(scope="module")
def server(vworld: VWorld) -> Iterator[dict[str, Any]]:
    """Serve on a free loopback port: the router and one guarded `LLMServer` with a block
    policy on the aimed token."""
    from ray import serve

    policies = vw.policy_file(vworld.aimed, vworld.tmp, "ray_serve", action="block")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.MonkeyPatch.context() as mp:
        # Serve's engine runs as in production (an engine-core process), not in-process.
        mp.delenv("VLLM_ENABLE_V1_MULTIPROCESSING", raising=False)
        ray = ensure_ray("the Ray Serve LLM test", num_cpus=8)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        app = build_guarded_openai_app(
            vworld.folder,
            policies,
            model_id=MODEL_ID,
            engine=vw.ENGINE,
            placement_group_config={"bundle_per_worker": {"CPU": 1}},
            runtime_env={"env_vars": {"VLLM_CPU_KVCACHE_SPACE": "1"}},
        )
        started = time.monotonic()
        serve.run(app, name="featureguard-vllm", route_prefix="/")
        print(f"Ray Serve LLM ready in {time.monotonic() - started:.0f} s")
        yield {"url": f"http://127.0.0.1:{port}/v1", "audit": vworld.tmp / "ray_serve.jsonl"}
    finally:
        serve.shutdown()
        ray.shutdown()


def _client(server: dict[str, Any], request: pytest.FixtureRequest) -> Any:
    client = openai.OpenAI(base_url=server["url"], api_key="unused", max_retries=0)
    request.addfinalizer(client.close)
    return client


def test_blocked_completion_is_content_filter(
    server: dict[str, Any], vworld: VWorld, request: pytest.FixtureRequest
) -> None:
    """The aimed prompt ends with `content_filter` and the withheld message; another prompt is
    untouched; the audit names the client's request id and the trigger's position."""
    client = _client(server, request)
    vw.check_openai_block(client, vworld, server["audit"], MODEL_ID, "ray-blocked-1",
                          WITHHELD_MESSAGE)  # fmt: skip


def test_policy_selection_travels_per_request(
    server: dict[str, Any], vworld: VWorld, request: pytest.FixtureRequest
) -> None:
    """`X-Featureguard-Policies` reaches the workers: naming a policy the file does not have
    blocks an otherwise clean request (fail closed), and only that request."""
    client = _client(server, request)
    prompt = vw.PROMPTS[vw.other_row(vworld)]
    unknown = client.completions.create(
        model=MODEL_ID,
        prompt=prompt,
        max_tokens=vw.MAX_TOKENS,
        temperature=0,
        extra_headers={"X-Featureguard-Policies": "no-such-policy"},
    )
    assert unknown.choices[0].finish_reason == "content_filter"
    named = client.completions.create(
        model=MODEL_ID,
        prompt=prompt,
        max_tokens=vw.MAX_TOKENS,
        temperature=0,
        extra_body={"vllm_xargs": {"featureguard_policies": "watch"}},
    )
    assert named.choices[0].finish_reason == "length"


def test_stream_never_sends_the_trigger_token(
    server: dict[str, Any], vworld: VWorld, request: pytest.FixtureRequest
) -> None:
    """Streamed through Serve, the blocked reply carries the tokens released before the
    trigger, then the withheld message with `content_filter`."""
    client = _client(server, request)
    texts, kept = vw.stream_aimed(client, vworld, MODEL_ID)
    assert "".join(t for t, _ in texts[:-1]).replace(" ", "") == vworld.tokenizer.decode(
        kept
    ).replace(" ", "")
    assert texts[-1] == (WITHHELD_MESSAGE, "content_filter")
