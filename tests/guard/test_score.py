"""`guard.score`: a text scored without generating, every token as a reply token."""

from __future__ import annotations

from pathlib import Path

import pytest
import tiny_world as tw
import torch
from transformers import LogitsProcessor, LogitsProcessorList

import featureguard as fg

world = tw.world_fixture()
EOS = 2


def _aimed_text(world: tw.World) -> tuple[str, int]:
    """The aimed row's prompt and reply up to the aimed token, as a string that tokenizes to
    exactly those ids, and the aimed token's index in it."""
    row = world.bare[world.row, world.pads(world.row) : world.position + 1].tolist()
    return "".join(world.tokenizer.batch_decode([[i] for i in row])), world.token_index


def test_score_finds_the_aimed_token(world: tw.World, tmp_path: Path) -> None:
    text, index = _aimed_text(world)
    sink = fg.MemorySink()
    path = tw.write_policy(world, tmp_path, action="block", message="no")
    with fg.wrap(world.model, path, tokenizer=world.tokenizer, audit=sink) as guard:
        [scored] = guard.score(text, request_id="s-1")
    assert [t.token_index for t in scored.outcome.triggers] == [index]
    assert scored.outcome.blocked and scored.outcome.blocked_by == "watch"
    assert scored.scores["watch"][index] == pytest.approx(world.score, rel=1e-4)
    assert len(scored.tokens) == len(scored.scores["watch"]) == index + 1
    events = [(r["event"], r["request_id"]) for r in sink.records]
    assert events == [("policy_triggered", "s-1"), ("request_completed", "s-1")]


def test_score_several_texts_get_their_own_requests(world: tw.World, tmp_path: Path) -> None:
    text, _ = _aimed_text(world)
    sink = fg.MemorySink()
    with fg.wrap(world.model, tw.write_policy(world, tmp_path), tokenizer=world.tokenizer,
                 audit=sink) as guard:  # fmt: skip
        scored = guard.score([text, "abc"], request_id="r")
    assert [bool(s.outcome.triggers) for s in scored] == [True, False]
    done = [r["request_id"] for r in sink.records if r["event"] == "request_completed"]
    assert done == ["r-0", "r-1"]
    assert scored[1].to_dict()["flagged"] is False


def test_finish_reason_and_completion_tokens(world: tw.World, tmp_path: Path) -> None:
    path = tw.write_policy(world, tmp_path, action="block", message="no")
    with fg.wrap(world.model, path, tokenizer=world.tokenizer, audit=fg.MemorySink()) as guard:
        guard.generate(tw.PROMPTS, max_new_tokens=8, do_sample=False)
        outcomes = guard.last
    for r, out in enumerate(outcomes):
        if r == world.row:
            assert out.finish_reason == "content_filter"
            assert out.completion_tokens == world.position - world.prompt_len + 2  # + EOS
        else:
            assert out.finish_reason in ("stop", "length")
            assert out.completion_tokens <= 8
            assert (out.finish_reason == "length") == (out.completion_tokens == 8 and not out.ended)


class _EOSAt(LogitsProcessor):
    """Forces end-of-sequence as the `k`-th generated token."""

    def __init__(self, prompt_len: int, k: int) -> None:
        self.at = prompt_len + k - 1

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if input_ids.shape[1] == self.at:
            scores = torch.full_like(scores, float("-inf"))
            scores[:, EOS] = 0.0
        return scores


@pytest.mark.parametrize("k", [1, 3])
def test_a_reply_ended_by_its_own_eos_says_stop(world: tw.World, tmp_path: Path, k: int) -> None:
    """Also when the EOS is the last token generated, which no forward pass reads."""
    prompt = tw.PROMPTS[0]
    prompt_len = len(world.tokenizer(prompt)["input_ids"])
    with fg.wrap(world.model, tw.write_policy(world, tmp_path, threshold=1e6),
                 tokenizer=world.tokenizer, audit=fg.MemorySink()) as guard:  # fmt: skip
        guard.generate(prompt, max_new_tokens=8, do_sample=False,
                       logits_processor=LogitsProcessorList([_EOSAt(prompt_len, k)]))  # fmt: skip
        [out] = guard.last
    assert (out.finish_reason, out.completion_tokens, out.ended) == ("stop", k, True)


def test_num_return_sequences_gives_an_outcome_per_row(world: tw.World, tmp_path: Path) -> None:
    path = tw.write_policy(world, tmp_path, action="block", message="no")
    with fg.wrap(world.model, path, tokenizer=world.tokenizer, audit=fg.MemorySink()) as guard:
        # top_k=1: sampling that is greedy (transformers refuses copies of a greedy row)
        replies = guard.generate(tw.PROMPTS, max_new_tokens=8, do_sample=True, top_k=1,
                                 num_return_sequences=2)  # fmt: skip
        blocked = [o.blocked for o in guard.last]
    assert len(replies) == 2 * len(tw.PROMPTS)
    assert blocked == [r // 2 == world.row for r in range(2 * len(tw.PROMPTS))]


def test_score_skips_the_layers_above_the_hook(world: tw.World, tmp_path: Path) -> None:
    """Scoring stops after the deepest hooked layer: the last layer and the head never run,
    and the scores are those of a full pass."""
    text, index = _aimed_text(world)
    calls: list[int] = []
    *_, last = next(m for m in world.model.modules() if isinstance(m, torch.nn.ModuleList))
    handle = last.register_forward_hook(lambda *_: calls.append(1))
    try:
        with fg.wrap(world.model, tw.write_policy(world, tmp_path), tokenizer=world.tokenizer,
                     audit=fg.MemorySink()) as guard:  # fmt: skip
            [scored] = guard.score(text)
            full = guard.forward(world.tokenizer(text, return_tensors="pt")["input_ids"])
    finally:
        handle.remove()
    assert calls == [1]  # only guard.forward's full pass reached it
    assert full.shape[1] == len(scored.tokens)
    assert scored.scores["watch"][index] == pytest.approx(world.score, rel=1e-4)


def test_score_takes_one_request_id_per_text(world: tw.World, tmp_path: Path) -> None:
    """A list of ids names each text's request; a wrong count is a GuardError."""
    sink = fg.MemorySink()
    with fg.wrap(world.model, tw.write_policy(world, tmp_path), tokenizer=world.tokenizer,
                 audit=sink) as guard:  # fmt: skip
        guard.score(["ab", "cd"], request_id=["x", "y"])
        with pytest.raises(fg.GuardError, match="2 texts but 1 request ids"):
            guard.score(["ab", "cd"], request_id=["x"])
    done = [r["request_id"] for r in sink.records if r["event"] == "request_completed"]
    assert done == ["x", "y"]


def test_generate_batches_requests_with_records_of_their_own(world: tw.World,
                                                             tmp_path: Path) -> None:  # fmt: skip
    """generate with one id per prompt: each request gets its own request_completed, its
    rows numbered from 0, and its triggers under its id."""
    sink = fg.MemorySink()
    prompts = tw.PROMPTS[:3]
    ids = ["a", "a", "b"] if world.row < 2 else ["a", "b", "b"]
    with fg.wrap(world.model, tw.write_policy(world, tmp_path), tokenizer=world.tokenizer,
                 audit=sink) as guard:  # fmt: skip
        guard.generate(prompts, request_id=ids, max_new_tokens=world.max_new_tokens,
                       do_sample=False)  # fmt: skip
    done = {r["request_id"]: r for r in sink.records if r["event"] == "request_completed"}
    assert sorted(done) == ["a", "b"]
    assert [done[k]["sequences"] for k in ("a", "b")] == [ids.count("a"), ids.count("b")]
    hits = [(r["request_id"], r["sequence"]) for r in sink.records
            if r["event"] == "policy_triggered"]  # fmt: skip
    owner = ids[world.row] if world.row < 3 else None
    first = ids.index(owner) if owner else 0
    assert hits == ([(owner, world.row - first)] if owner else [])
