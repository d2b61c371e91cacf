"""`GuardedAsyncLLM`: a streamed reply never shows a token before its own forward pass scored
it, and a blocked one ends with `content_filter` without its trigger token. The engine core
runs in its own process, as `AsyncLLM` does in production."""

from __future__ import annotations

import asyncio

import pytest
import vllm_world as vw
from vllm_world import ENGINE, VWorld, greedy, token_prompts

pytest.importorskip("vllm", reason=vw.NO_VLLM)

from featureguard.integrations.vllm.frontend import GuardedAsyncLLM


def test_stream_holds_back_the_unscored_token(
    vworld: VWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every streamed output is a prefix of the tokens before the trigger; the last one is
    exactly those tokens, with content_filter."""
    monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING")
    policies = vw.policy_file(vworld.aimed, vworld.tmp, "async", action="block")
    a = vworld.aimed
    kept = vworld.plain[a.row][: a.position - len(vworld.prompts[a.row])]

    async def stream() -> list[tuple[list[int], str | None]]:
        llm = GuardedAsyncLLM(vworld.folder, policies, **ENGINE)
        try:
            [prompt] = token_prompts([vworld.prompts[a.row]])
            return [
                (list(o.outputs[0].token_ids), o.outputs[0].finish_reason)
                async for o in llm.generate(prompt, greedy(), "async-1")
            ]
        finally:
            llm.shutdown()

    seen = asyncio.run(stream())
    assert seen[-1] == (kept, "content_filter")
    assert all(ids == kept[: len(ids)] and reason is None for ids, reason in seen[:-1])
    assert len(seen) > 2  # it did stream
