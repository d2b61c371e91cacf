"""vLLM's own OpenAI-compatible server, guarded (`python -m featureguard.integrations.vllm.serve`),
driven by the official `openai` client: a blocked completion ends with `content_filter`, also
streamed, without the trigger token; the audit records carry the client's request id.

The server runs as in production: an API-server process and an engine-core process.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import vllm_world as vw
from vllm_world import VWorld

pytest.importorskip("vllm", reason=vw.NO_VLLM)

from featureguard.integrations.vllm.config import WITHHELD_MESSAGE

openai = pytest.importorskip("openai", reason="the dev extra installs the openai client")
MODEL_ID = "tiny"


@pytest.fixture(scope="module")
def server(vworld: VWorld) -> Iterator[dict[str, Any]]:
    """The guarded server on a free loopback port, with a block policy on the aimed token."""
    policies = vw.policy_file(vworld.aimed, vworld.tmp, "serve", action="block")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "VLLM_ENABLE_V1_MULTIPROCESSING"}
    command = [
        sys.executable,
        "-m",
        "featureguard.integrations.vllm.serve",
        str(vworld.folder),
        "--policies",
        str(policies),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--served-model-name",
        MODEL_ID,
        *_flags(vw.ENGINE),
    ]
    log = (vworld.tmp / "server.log").open("w")
    proc = subprocess.Popen(
        command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        _wait_healthy(port, proc, vworld.tmp / "server.log")
        yield {"url": f"http://127.0.0.1:{port}/v1", "audit": vworld.tmp / "serve.jsonl"}
    finally:
        proc.terminate()  # the API server stops its engine core itself
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)
        with contextlib.suppress(ProcessLookupError):  # whatever of its group is left
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        log.close()


def _flags(engine: dict[str, Any]) -> list[str]:
    return [
        arg for key, value in engine.items() for arg in (f"--{key.replace('_', '-')}", str(value))
    ]


def _wait_healthy(port: int, proc: subprocess.Popen, log: Any, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return
        except OSError:
            time.sleep(1)
    pytest.fail(f"the server did not start in {timeout} s:\n{log.read_text()[-3000:]}")


def test_blocked_completion_is_content_filter(
    server: dict[str, Any], vworld: VWorld, request: pytest.FixtureRequest
) -> None:
    """The aimed prompt ends with `content_filter` and the withheld message; another prompt of
    the same batch size is untouched; the audit names the client's request id and position."""
    client = openai.OpenAI(base_url=server["url"], api_key="unused")
    request.addfinalizer(client.close)
    vw.check_openai_block(client, vworld, server["audit"], MODEL_ID, "blocked-1", WITHHELD_MESSAGE)


def test_stream_never_sends_the_trigger_token(
    server: dict[str, Any], vworld: VWorld, request: pytest.FixtureRequest
) -> None:
    """Streamed, the blocked reply carries the tokens released before the trigger (vLLM may
    merge two into one chunk under load), never the trigger, then the withheld message with
    `content_filter`."""
    client = openai.OpenAI(base_url=server["url"], api_key="unused")
    request.addfinalizer(client.close)
    texts, kept = vw.stream_aimed(client, vworld, MODEL_ID)
    expected = [vworld.tokenizer.decode([t]).strip() for t in kept]
    assert [w for t, _ in texts[:-1] for w in t.split()] == [w for e in expected for w in e.split()]
    assert texts[-1] == (WITHHELD_MESSAGE, "content_filter")
