"""transformers pipelines: a plain pipeline over a wrapped model is guarded; `guarded_pipeline`
reports the user-visible text and the outcome per sequence, one prompt or a batch."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import tiny_world as tw
from transformers import pipeline

import featureguard as fg
from featureguard.integrations.pipelines import guarded_pipeline

MESSAGE = "withheld by the test policy"
GREEDY = {"max_new_tokens": 8, "do_sample": False}


@pytest.fixture
def policy(world: tw.World, tmp_path: Path) -> Path:
    """Block policy `watch`, firing on the world's chosen token of PROMPTS[world.row]."""
    return tw.write_policy(world, tmp_path, action="block", message=MESSAGE)


def reply_ids(world: tw.World, row: int) -> list[int]:
    """The unwrapped model's greedy reply to PROMPTS[row] alone (8 new tokens)."""
    return world.single(row)[0, len(tw.PROMPTS[row]) :].tolist()  # one token per character


def free_rows(world: tw.World) -> list[int]:
    return [r for r in range(len(tw.PROMPTS)) if r != world.row]


def test_plain_pipeline_over_wrapped_model_is_guarded(world: tw.World, policy: Path) -> None:
    """The reply ends with the trigger token (EOS follows it) and guard.last shows the block."""
    trigger = world.token_index - len(tw.PROMPTS[world.row])  # the trigger's index in the reply
    with fg.wrap(world.model, policy, tokenizer=world.tokenizer, audit=fg.MemorySink()) as guard:
        pipe = pipeline("text-generation", model=world.model, tokenizer=world.tokenizer)
        [out] = pipe(tw.PROMPTS[world.row], return_full_text=False, **GREEDY)
        [outcome] = guard.last
    bare = reply_ids(world, world.row)
    assert trigger + 1 < len(bare)  # unguarded, the reply goes on after the trigger
    upto = world.tokenizer.decode(bare[: trigger + 1], skip_special_tokens=True)
    assert out["generated_text"] == upto
    assert outcome.blocked and outcome.blocked_by == "watch" and outcome.text == MESSAGE
    assert [(t.policy, t.token_index) for t in outcome.triggers] == [("watch", world.token_index)]


def test_guarded_pipeline_replaces_blocked_reply(world: tw.World, policy: Path) -> None:
    """The blocked reply is the policy's message; the outcome and request id ride along."""
    sink = fg.MemorySink()
    pipe = guarded_pipeline(world.model, policy, world.tokenizer, audit=sink)
    try:
        [out] = pipe(tw.PROMPTS[world.row], request_id="mine", **GREEDY)
        [free] = pipe(tw.PROMPTS[free_rows(world)[0]], **GREEDY)
    finally:
        pipe.guard.detach()
    assert out["generated_text"] == MESSAGE
    report = out["featureguard"]
    assert (report["blocked"], report["blocked_by"], report["policies"]) == (
        True,
        "watch",
        ["watch"],
    )
    assert report["finish_reason"] == "content_filter"
    [trig] = report["triggers"]
    assert (trig["policy"], trig["action"], trig["token_index"]) == (
        "watch",
        "block",
        world.token_index,
    )
    completed = [r for r in sink.records if r["event"] == "request_completed"]
    assert report["request_id"] == "mine"
    assert [r["request_id"] for r in completed] == ["mine", free["featureguard"]["request_id"]]
    # an unblocked reply is the unwrapped model's 8 tokens: max_new_tokens counts scored ones
    row = free_rows(world)[0]
    expected = world.tokenizer.decode(reply_ids(world, row), skip_special_tokens=True)
    assert free["generated_text"] == expected
    assert free["featureguard"]["blocked"] is False and free["featureguard"]["triggers"] == []


def test_guarded_pipeline_full_text_keeps_the_prompt(world: tw.World, policy: Path) -> None:
    """With return_full_text=True the prompt is followed by the message, not the raw decode."""
    pipe = guarded_pipeline(world.model, policy, world.tokenizer, audit=fg.MemorySink())
    try:
        [out] = pipe(tw.PROMPTS[world.row], return_full_text=True, **GREEDY)
    finally:
        pipe.guard.detach()
    assert out["generated_text"] == tw.PROMPTS[world.row] + MESSAGE


@pytest.mark.parametrize("batch_size", [1, 4])
def test_guarded_pipeline_list_of_prompts(world: tw.World, policy: Path, batch_size: int) -> None:
    """Each prompt gets its own record; only the triggering prompt is withheld. A batch is one
    audit request shared by its rows; batch_size 1 makes one request per prompt."""
    sink = fg.MemorySink()
    pipe = guarded_pipeline(world.model, policy, world.tokenizer, audit=sink)
    try:
        outs = pipe(tw.PROMPTS, batch_size=batch_size, **GREEDY)
    finally:
        pipe.guard.detach()
    assert [len(o) for o in outs] == [1] * len(tw.PROMPTS)
    texts = [o[0]["generated_text"] for o in outs]
    blocked_by = [o[0]["featureguard"]["blocked_by"] for o in outs]
    if batch_size == 1:
        expected = [
            world.tokenizer.decode(reply_ids(world, r), skip_special_tokens=True)
            for r in range(len(tw.PROMPTS))
        ]
    else:  # the rows of one left-padded batch: the world's own bare generation
        p = world.prompt_len
        expected = [
            world.tokenizer.decode(world.bare[r, p:], skip_special_tokens=True)
            for r in range(len(tw.PROMPTS))
        ]
    expected[world.row] = MESSAGE
    assert texts == expected
    assert blocked_by == ["watch" if r == world.row else None for r in range(len(tw.PROMPTS))]
    ids = [o[0]["featureguard"]["request_id"] for o in outs]
    completed = [r for r in sink.records if r["event"] == "request_completed"]
    assert [r["request_id"] for r in completed] == list(dict.fromkeys(ids))
    assert len(set(ids)) == (len(tw.PROMPTS) if batch_size == 1 else 1)
    assert [r["blocked"] for r in completed] == (
        [[0] if r == world.row else [] for r in range(len(tw.PROMPTS))]
        if batch_size == 1
        else [[world.row]]
    )


def test_guarded_pipeline_refuses_token_ids(world: tw.World, policy: Path) -> None:
    """Token ids would carry the withheld span: refused before generating."""
    pipe = guarded_pipeline(world.model, policy, world.tokenizer, audit=fg.MemorySink())
    try:
        with pytest.raises(fg.GuardError, match="text only"):
            pipe(tw.PROMPTS[0], return_tensors=True, **GREEDY)
        with pytest.raises(fg.GuardError, match="one sequence per prompt"):
            pipe(tw.PROMPTS[0], num_return_sequences=2, max_new_tokens=8, do_sample=True)
    finally:
        pipe.guard.detach()


def test_guarded_pipeline_chat_full_text(world: tw.World, policy: Path) -> None:
    """A chat with return_full_text=True: its messages, then the guarded reply as a plain
    assistant message (the text the guard reports, not the raw decode)."""
    tok = copy.deepcopy(world.tokenizer)
    tok.chat_template = (
        "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}a:{% endif %}"
    )
    chat = [{"role": "user", "content": tw.PROMPTS[world.row]}]
    pipe = guarded_pipeline(world.model, policy, tok, audit=fg.MemorySink())
    try:
        [out] = pipe(chat, return_full_text=True, **GREEDY)
        [outcome] = pipe.guard.last
    finally:
        pipe.guard.detach()
    assert out["generated_text"] == [*chat, {"role": "assistant", "content": outcome.text}]
    assert out["featureguard"]["blocked"] == outcome.blocked
