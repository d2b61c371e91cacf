"""Streaming: only tokens whose own forward pass has scored them are shown."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import tiny_world as tw
import torch
from transformers import LogitsProcessor, LogitsProcessorList

import featureguard as fg

world = tw.world_fixture()


class Boom(Exception):
    """Raised by a user's logits processor."""


class RaisingProcessor(LogitsProcessor):
    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        raise Boom("logits processor failed")


def guard_for(world: tw.World, tmp_path: Path, **policy: Any) -> fg.Guard:
    path = tw.write_policy(world, tmp_path, **policy)
    return fg.wrap(world.model, path, tokenizer=world.tokenizer, audit=fg.MemorySink())


def reply_text(world: tw.World, ids: torch.Tensor, prompt_len: int, n: int) -> str:
    return world.tokenizer.decode(ids[prompt_len : prompt_len + n], skip_special_tokens=True)


def test_stream_yields_the_reply(world: tw.World, tmp_path: Path) -> None:
    """Under a log policy the stream is the unwrapped reply's text, all max_new_tokens of it."""
    bare = world.single(world.row)[0]
    prompt_len = world.prompt_len - world.pads(world.row)
    with guard_for(world, tmp_path) as guard:
        chunks = list(guard.stream(tw.PROMPTS[world.row], max_new_tokens=8, do_sample=False))
        text = guard.last[0].text
    assert "".join(chunks) == reply_text(world, bare, prompt_len, 8) == text
    assert len(chunks) > 1


def test_stream_of_edited_reply_matches_generate(world: tw.World, tmp_path: Path) -> None:
    """A suppressed reply streams exactly the text guard.generate returns for it."""
    spec = {"method": "clamp", "value": -2.0 * world.score}
    with guard_for(world, tmp_path, action="suppress", suppress=spec) as guard:
        prompt = tw.PROMPTS[world.row]
        [reply] = guard.generate(prompt, max_new_tokens=8, do_sample=False)
        streamed = "".join(guard.stream(prompt, max_new_tokens=8, do_sample=False))
    assert streamed == reply


def test_streamer_drops_the_unscored_last_token(world: tw.World, tmp_path: Path) -> None:
    """With model.generate and guard.streamer(), the last token (never scored) is not shown."""
    bare = world.single(world.row)[0]
    prompt_len = world.prompt_len - world.pads(world.row)
    enc = tw.encode(world.tokenizer, [tw.PROMPTS[world.row]])
    with guard_for(world, tmp_path, threshold=1e6) as guard:
        streamer = guard.streamer()
        kwargs = dict(**enc, max_new_tokens=8, do_sample=False, streamer=streamer)
        thread = threading.Thread(target=world.model.generate, kwargs=kwargs)
        thread.start()
        text = "".join(streamer)
        thread.join()
    assert text == reply_text(world, bare, prompt_len, 7)


def test_stream_reraises_generation_errors(world: tw.World, tmp_path: Path) -> None:
    """An exception inside the streamed generation is raised to the reader, not swallowed."""
    with guard_for(world, tmp_path) as guard, pytest.raises(Boom):
        list(guard.stream("abc", max_new_tokens=8,
                          logits_processor=LogitsProcessorList([RaisingProcessor()])))  # fmt: skip


def test_streamer_refuses_a_batch(world: tw.World, tmp_path: Path) -> None:
    """A streamer follows one sequence: a batch of prompts is refused with GuardError."""
    enc = tw.encode(world.tokenizer, tw.PROMPTS)
    with guard_for(world, tmp_path) as guard, pytest.raises(fg.GuardError, match="batch size 1"):
        world.model.generate(**enc, max_new_tokens=2, streamer=guard.streamer())


def test_stream_needs_a_tokenizer(world: tw.World, tmp_path: Path) -> None:
    """Streaming through a guard wrapped without a tokenizer raises GuardError saying so."""
    path = tw.write_policy(world, tmp_path)
    with (
        fg.wrap(world.model, path, audit=fg.MemorySink()) as guard,
        pytest.raises(fg.GuardError, match="tokenizer"),
    ):
        list(guard.stream("abc", max_new_tokens=2))
