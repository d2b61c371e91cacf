"""`action: block`: the triggering row stops right after the trigger; other rows go on."""

from __future__ import annotations

from pathlib import Path

import tiny_world as tw
import torch

import featureguard as fg
from featureguard.audit import iter_records, verify

world = tw.world_fixture()

MESSAGE = "withheld by the test policy"
PAD, EOS = 0, 2


def blocking(world: tw.World, tmp_path: Path, **policy: object) -> fg.Guard:
    path = tw.write_policy(world, tmp_path, action="block", message=MESSAGE, **policy)
    return fg.wrap(world.model, path, tokenizer=world.tokenizer, audit=fg.MemorySink())


def prompt_target(world: tw.World, tmp_path: Path) -> tw.Aim:
    """An SAE whose TARGET fires on one real prompt token (the one that stands out most)."""
    return world.aim(tmp_path / "sae-prompt", world.prompt_tokens())


def prompt_block_policy(world: tw.World, tmp_path: Path, target: tw.Aim) -> Path:
    doc = tw.policy_doc(world, tmp_path, action="block", scope="prompt", message=MESSAGE,
                        threshold=target.threshold)  # fmt: skip
    doc["saes"]["s"]["path"] = str(target.sae_dir)
    return tw.write_yaml(doc, tmp_path / "p.yaml")


def test_blocked_row_ends_after_trigger(world: tw.World, tmp_path: Path) -> None:
    """The blocked row is the unwrapped row up to the trigger token, then EOS, then padding."""
    with blocking(world, tmp_path) as guard:
        out = tw.generate(world.model, world.tokenizer, tw.PROMPTS, 8)
        blocked = [o.blocked for o in guard.last]
    row, pos = world.row, world.position
    assert torch.equal(out[row, : pos + 1], world.bare[row, : pos + 1])
    assert int(out[row, pos + 1]) == EOS
    assert (out[row, pos + 2 :] == PAD).all()
    assert blocked == [r == row for r in range(len(tw.PROMPTS))]


def test_other_rows_unchanged(world: tw.World, tmp_path: Path) -> None:
    """Rows that do not trigger equal the unwrapped model's rows, to the last token."""
    with blocking(world, tmp_path):
        out = tw.generate(world.model, world.tokenizer, tw.PROMPTS, 8)
    others = [r for r in range(len(tw.PROMPTS)) if r != world.row]
    assert out.shape == world.bare.shape
    assert torch.equal(out[others], world.bare[others])


def test_guard_generate_returns_message(world: tw.World, tmp_path: Path) -> None:
    """guard.generate returns the policy's message for the blocked row and the text elsewhere."""
    with blocking(world, tmp_path) as guard:
        replies = guard.generate(tw.PROMPTS, max_new_tokens=8, do_sample=False)
        blocked_by = [o.blocked_by for o in guard.last]
    p = world.prompt_len
    expected = [world.tokenizer.decode(world.bare[r, p:], skip_special_tokens=True)
                for r in range(len(tw.PROMPTS))]  # fmt: skip
    expected[world.row] = MESSAGE
    assert replies == expected
    assert blocked_by == ["watch" if r == world.row else None for r in range(len(tw.PROMPTS))]


def test_stream_stops_before_trigger_token(world: tw.World, tmp_path: Path) -> None:
    """Streaming the blocked row's prompt yields exactly the unwrapped text before the trigger."""
    bare = world.single(world.row)[0]
    start, trigger = world.prompt_len - world.pads(world.row), world.token_index
    assert torch.equal(bare, world.bare[world.row, world.pads(world.row) :])
    with blocking(world, tmp_path) as guard:
        chunks = list(guard.stream(tw.PROMPTS[world.row], max_new_tokens=8, do_sample=False))
        outcome = guard.last[0]
    shown = world.tokenizer.decode(bare[start:trigger], skip_special_tokens=True)
    assert "".join(chunks) == shown
    assert outcome.blocked and outcome.text == MESSAGE
    assert [t.token_index for t in outcome.triggers] == [trigger]


def test_block_audit_file_verifies(world: tw.World, tmp_path: Path) -> None:
    """The JSONL audit file holds the block's policy_triggered record and its chain verifies."""
    path = tw.write_policy(world, tmp_path, action="block", message=MESSAGE)
    log = tmp_path / "audit.jsonl"
    with fg.wrap(world.model, path, tokenizer=world.tokenizer):
        tw.generate(world.model, world.tokenizer, tw.PROMPTS, 8)
    records = list(iter_records(log))
    assert [r["event"] for r in records] == ["policy_triggered", "request_completed"]
    rec = records[0]
    assert (rec["policy"], rec["action"], rec["sequence"]) == ("watch", "block", world.row)
    assert rec["token_index"] == world.token_index
    assert records[1]["blocked"] == [world.row]
    assert verify(log).ok


def test_prompt_scope_block_streams_nothing(world: tw.World, tmp_path: Path) -> None:
    """A prompt-scope block stops before any reply token: nothing is streamed."""
    target = prompt_target(world, tmp_path)
    path = prompt_block_policy(world, tmp_path, target)
    prompt = tw.PROMPTS[target.row]
    with fg.wrap(world.model, path, tokenizer=world.tokenizer, audit=fg.MemorySink()) as guard:
        chunks = list(guard.stream(prompt, max_new_tokens=8, do_sample=False))
        outcome = guard.last[0]
    assert chunks == []
    assert outcome.blocked and outcome.text == MESSAGE
    [t] = outcome.triggers
    assert t.in_prompt and t.token_index == target.position - world.pads(target.row)


def test_prompt_scope_block_reply_is_message(world: tw.World, tmp_path: Path) -> None:
    """A prompt-scope block's row gets EOS as its first token; guard.generate gives the message."""
    target = prompt_target(world, tmp_path)
    path = prompt_block_policy(world, tmp_path, target)
    with fg.wrap(world.model, path, tokenizer=world.tokenizer, audit=fg.MemorySink()) as guard:
        out = tw.generate(world.model, world.tokenizer, tw.PROMPTS, 8)
        replies = guard.generate(tw.PROMPTS, max_new_tokens=8, do_sample=False)
    p = world.prompt_len
    assert out[target.row, p].item() == EOS
    assert (out[target.row, p + 1 :] == PAD).all()
    assert replies[target.row] == MESSAGE
    others = [r for r in range(len(tw.PROMPTS)) if r != target.row]
    assert torch.equal(out[others], world.bare[others])


def test_prompt_scope_block_with_sampling(world: tw.World, tmp_path: Path) -> None:
    """With sampling too, a prompt-scope block makes EOS the row's first generated token."""
    target = prompt_target(world, tmp_path)
    path = prompt_block_policy(world, tmp_path, target)
    enc = tw.encode(world.tokenizer, tw.PROMPTS)
    with fg.wrap(world.model, path, tokenizer=world.tokenizer, audit=fg.MemorySink()) as guard:
        torch.manual_seed(0)
        out = world.model.generate(**enc, max_new_tokens=8, do_sample=True, top_k=5)
        blocked = [o.blocked for o in guard.last]
    assert out[target.row, world.prompt_len].item() == EOS
    assert blocked == [r == target.row for r in range(len(tw.PROMPTS))]
