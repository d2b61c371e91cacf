"""`action: log`: the output is the unwrapped model's, and the trigger is reported exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import tiny_world as tw
import torch

import featureguard as fg

world = tw.world_fixture()

NEVER = 1e6  # a threshold no token reaches


@pytest.mark.parametrize("threshold", ["never", "chosen"])
def test_log_batch_output_is_identical(world: tw.World, tmp_path: Path, threshold: str) -> None:
    """A log policy, triggering or not, leaves the left-padded batch's greedy output unchanged."""
    path = tw.write_policy(
        world, tmp_path, threshold=NEVER if threshold == "never" else world.threshold
    )
    with fg.wrap(world.model, path, tokenizer=world.tokenizer, audit=fg.MemorySink()) as guard:
        out = tw.generate(world.model, world.tokenizer, tw.PROMPTS, 8)
        fired = [bool(o.triggers) for o in guard.last]
    assert torch.equal(out, world.bare)
    assert fired == [threshold == "chosen" and r == world.row for r in range(len(tw.PROMPTS))]


@pytest.mark.parametrize("threshold", ["never", "chosen"])
def test_log_single_output_is_identical(world: tw.World, tmp_path: Path, threshold: str) -> None:
    """A log policy, triggering or not, leaves a batch of one prompt's greedy output unchanged."""
    bare = world.single(world.row)
    path = tw.write_policy(
        world, tmp_path, threshold=NEVER if threshold == "never" else world.threshold
    )
    with fg.wrap(world.model, path, tokenizer=world.tokenizer, audit=fg.MemorySink()) as guard:
        out = tw.generate(world.model, world.tokenizer, [tw.PROMPTS[world.row]], 8)
        fired = bool(guard.last[0].triggers)
    assert torch.equal(out, bare)
    assert fired == (threshold == "chosen")


def test_log_trigger_reported_in_last(world: tw.World, tmp_path: Path) -> None:
    """guard.last reports the one trigger on the chosen token, with its text, score and feature."""
    path = tw.write_policy(world, tmp_path)
    with fg.wrap(world.model, path, tokenizer=world.tokenizer, audit=fg.MemorySink()) as guard:
        tw.generate(world.model, world.tokenizer, tw.PROMPTS, 8)
        last = guard.last
    assert [len(o.triggers) for o in last] == [int(r == world.row) for r in range(len(last))]
    [t] = last[world.row].triggers
    token_id = int(world.bare[world.row, world.position])
    assert (t.policy, t.action, t.token_index) == ("watch", "log", world.token_index)
    assert (t.token_id, t.token) == (token_id, world.tokenizer.decode([token_id]))
    assert not t.in_prompt
    assert t.score > world.threshold
    assert t.score == pytest.approx(world.score, abs=1e-4)
    assert t.features == {tw.TARGET: pytest.approx(t.score, abs=1e-6)}
    assert not any(o.blocked for o in last)


def test_log_trigger_reported_in_audit(world: tw.World, tmp_path: Path) -> None:
    """The audit holds one policy_triggered record for the chosen token, then request_completed."""
    path = tw.write_policy(world, tmp_path)
    sink = fg.MemorySink()
    with fg.wrap(world.model, path, tokenizer=world.tokenizer, audit=sink) as guard:
        tw.generate(world.model, world.tokenizer, tw.PROMPTS, 8)
        [t] = guard.last[world.row].triggers
    assert [r["event"] for r in sink.records] == ["policy_triggered", "request_completed"]
    rec = sink.records[0]
    assert (rec["policy"], rec["action"], rec["sequence"]) == ("watch", "log", world.row)
    assert (rec["token_index"], rec["token"], rec["scope"]) == (t.token_index, t.token, "response")
    assert rec["score"] == pytest.approx(t.score)
    assert sink.records[1]["blocked"] == []


@pytest.mark.parametrize("action", ["log", "suppress"])
def test_forward_applies_the_policies_to_whole_texts(tmp_path: Path, action: str) -> None:
    """guard.forward leaves logits alone under log and edits them under an always-on ablation."""
    world = tw.build_world(tmp_path, "llama")
    extra = {"suppress": {"method": "ablate", "mode": "always"}} if action == "suppress" else {}
    path = tw.write_policy(world, tmp_path, action=action, scope="response", **extra)
    ids, mask = world.bare, (world.bare != 0).long()
    with torch.no_grad():
        bare = world.model(input_ids=ids, attention_mask=mask).logits
    with fg.wrap(world.model, path, tokenizer=world.tokenizer, audit=fg.MemorySink()) as guard:
        guarded = guard.forward(ids, mask)
    assert torch.equal(guarded, bare) == (action == "log")
