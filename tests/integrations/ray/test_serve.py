"""Guarded serving on Ray Serve: 2 replicas of the server's app, audit shards and anchors."""

from __future__ import annotations

import json
import socket
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import tiny_world as tw
from ray_world import TEXTS, Saved, library_triggers, same_triggers

from featureguard.audit import iter_records
from featureguard.audit.shards import find_shards, verify_set

ray_serve = pytest.importorskip("featureguard.integrations.ray.serve", reason="needs ray[serve]")
from ray import serve  # noqa: E402


class Deployed:
    def __init__(self, url: str, audit: Path) -> None:
        self.url, self.audit = url, audit

    def complete(self, prompt: str, rid: str, client: httpx.Client) -> httpx.Response:
        body = {"model": "tiny", "prompt": prompt, "max_tokens": 4, "temperature": 0}
        return client.post(f"{self.url}/v1/completions", json=body, headers={"X-Request-ID": rid})

    def anchor(self) -> dict[str, int]:
        return serve.get_app_handle(ray_serve.ANCHOR_APP).anchor.remote().result()

    def completed(self) -> list[dict[str, Any]]:
        return [r for shard in find_shards(self.audit) for r in iter_records(shard)
                if r["event"] == "request_completed"]  # fmt: skip


@pytest.fixture(scope="module")
def deployed(local_ray: Any, saved: Saved) -> Iterator[Deployed]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    audit = saved.tmp / "served" / "audit.jsonl"
    config = ray_serve.make_config(saved.model, saved.policies, audit=audit, model_id="tiny")
    ray_serve.deploy(config, replicas=2, port=port, anchor_interval=0.5, replica_cpus=0.5)
    yield Deployed(f"http://127.0.0.1:{port}", audit)
    ray_serve.shutdown()


def test_score_through_serve_matches_the_library(deployed: Deployed, saved: Saved) -> None:
    """Each text scored by a replica gives the library's triggers (policy, token, score)."""
    with httpx.Client(timeout=60) as client, ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda t: client.post(
            f"{deployed.url}/v1/featureguard/score", json={"input": t}), TEXTS))  # fmt: skip
    assert all(r.status_code == 200 for r in replies)
    served = [[(t["policy"], t["token_index"], t["score"]) for t in r.json()["results"][0]
               ["triggers"]] for r in replies]  # fmt: skip
    expected = library_triggers(saved, TEXTS)
    assert any(expected) and not all(expected)  # the policy splits the texts
    assert same_triggers(served, expected)


def test_64_concurrent_requests_one_record_each(deployed: Deployed) -> None:
    """64 concurrent completions: all answered with the server's headers, one
    request_completed each across the shards, both replicas used, batches formed, and the
    shards and anchors verify."""
    rids = [f"load-{i}" for i in range(64)]
    with httpx.Client(timeout=120) as client, ThreadPoolExecutor(16) as pool:
        replies = list(pool.map(lambda i: deployed.complete(
            tw.PROMPTS[i % len(tw.PROMPTS)], rids[i], client), range(64)))  # fmt: skip
    assert [r.status_code for r in replies] == [200] * 64
    for r in replies:
        blocked = r.headers["X-Featureguard-Blocked"] == "true"
        assert blocked == (r.json()["choices"][0]["finish_reason"] == "content_filter")
        assert r.json()["featureguard"]["request_id"] == r.headers["X-Request-ID"]
    deployed.anchor()
    counts = Counter(r["request_id"] for r in deployed.completed())
    assert all(counts[rid] == 1 for rid in rids)
    per_shard = [sum(r["event"] == "request_completed" and r["request_id"] in rids
                     for r in iter_records(s)) for s in find_shards(deployed.audit)]  # fmt: skip
    assert sorted(per_shard)[-2] > 0  # both replicas served
    durations = Counter(r["duration_ms"] for r in deployed.completed() if r["request_id"] in rids)
    assert max(durations.values()) > 1  # a batch's requests share one generation
    report = verify_set(deployed.audit)
    assert report.ok, report.problems
    assert sum(report.anchored.values()) == sum(r.records for r in report.shards.values())


def test_streaming_through_serve(deployed: Deployed) -> None:
    """A streamed chat reply ends with the featureguard report and [DONE]."""
    body = {"model": "tiny", "messages": [{"role": "user", "content": tw.PROMPTS[1]}],
            "max_tokens": 4, "temperature": 0, "stream": True}  # fmt: skip
    with httpx.stream("POST", f"{deployed.url}/v1/chat/completions", json=body, timeout=60) as r:
        lines = [x for x in r.iter_lines() if x.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    assert "featureguard" in json.loads(lines[-2].removeprefix("data: "))


def _replicas() -> list[str]:
    import ray

    return [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
            if "SERVE_REPLICA::featureguard#GuardedDeployment" in a["name"]]  # fmt: skip


def test_killed_replica_loses_nothing_anchored(deployed: Deployed) -> None:
    """Kill one replica mid-load: the other keeps serving, and every anchored record is still
    in its shard."""
    import ray

    [victim, *_] = _replicas()
    with httpx.Client(timeout=120) as client, ThreadPoolExecutor(8) as pool:
        load = [pool.submit(deployed.complete, tw.PROMPTS[i % 4], f"kill-{i}", client)
                for i in range(48)]  # fmt: skip
        while sum(f.done() for f in load) < 8:
            time.sleep(0.05)
        before = deployed.anchor()
        ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
        answered = [f.result() for f in load if f.exception() is None]
        after = [deployed.complete(tw.PROMPTS[0], f"after-{i}", client) for i in range(8)]
    assert sum(r.status_code == 200 for r in answered) >= 8
    assert [r.status_code for r in after] == [200] * 8  # the other replica serves
    deployed.anchor()
    report = verify_set(deployed.audit)
    anchored_problems = [p for p in report.problems if "anchored" in p]
    assert anchored_problems == []
    assert all(report.anchored.get(name, 0) >= n for name, n in before.items())
    assert all(r.ok or r.truncated_tail for r in report.shards.values()), report.problems
