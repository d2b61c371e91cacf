"""What a guarded call writes to the audit log."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import tiny_world as tw

import featureguard as fg
from featureguard.audit import iter_records, verify

world = tw.world_fixture()


def guarded(world: tw.World, tmp_path: Path, sink: fg.MemorySink | None = None,
            audit: dict | None = None, **policy: Any) -> fg.Guard:  # fmt: skip
    doc = tw.policy_doc(world, tmp_path, **policy)
    doc["audit"].update(audit or {})
    path = tw.write_yaml(doc, tmp_path / "p.yaml")
    return fg.wrap(world.model, path, tokenizer=world.tokenizer, audit=sink)


def triggered(sink: fg.MemorySink) -> list[dict]:
    return [r for r in sink.records if r["event"] == "policy_triggered"]


def completed(sink: fg.MemorySink) -> list[dict]:
    return [r for r in sink.records if r["event"] == "request_completed"]


def test_trigger_record_fields(world: tw.World, tmp_path: Path) -> None:
    """A policy_triggered record names the request, row, policy, SAE, features, score and token."""
    sink = fg.MemorySink()
    with guarded(world, tmp_path, sink, action="block", severity="high") as guard:
        guard.generate(tw.PROMPTS, request_id="req-1", max_new_tokens=8, do_sample=False)
        [t] = guard.last[world.row].triggers
    [rec] = triggered(sink)
    token_id = int(world.bare[world.row, world.position])
    assert {k: rec[k] for k in ("request_id", "sequence", "policy", "action", "severity")} == {
        "request_id": "req-1", "sequence": world.row, "policy": "watch", "action": "block",
        "severity": "high",
    }  # fmt: skip
    assert (rec["sae"], rec["hook"]) == ("s", world.hook)
    assert rec["features"] == [
        {"index": tw.TARGET, "label": "chosen token", "activation": pytest.approx(t.score)}
    ]
    assert rec["score"] == pytest.approx(t.score) and rec["score"] > rec["threshold"]
    assert rec["threshold"] == pytest.approx(world.threshold)
    assert (rec["token_index"], rec["token_id"]) == (world.token_index, token_id)
    assert rec["token"] == world.tokenizer.decode([token_id])
    assert rec["scope"] == "response"
    assert rec["policy_file"] == str(tmp_path / "p.yaml")


def test_request_id_generated_per_call(world: tw.World, tmp_path: Path) -> None:
    """Without a request_id each call gets its own, shared by all of that call's records."""
    sink = fg.MemorySink()
    with guarded(world, tmp_path, sink) as guard:
        ids = []
        for _ in range(2):
            tw.generate(world.model, world.tokenizer, tw.PROMPTS, 8)
            ids.append(guard.last_request_id)
    assert len(set(ids)) == 2 and all(ids)
    assert [r["request_id"] for r in sink.records] == [ids[0], ids[0], ids[1], ids[1]]


def test_include_text_false_drops_token_text(world: tw.World, tmp_path: Path) -> None:
    """With `audit: {include_text: false}` records keep the token id and drop its text."""
    sink = fg.MemorySink()
    with guarded(world, tmp_path, sink, audit={"include_text": False}):
        tw.generate(world.model, world.tokenizer, tw.PROMPTS, 8)
    [rec] = triggered(sink)
    assert "token" not in rec
    assert rec["token_id"] == int(world.bare[world.row, world.position])
    assert rec["features"][0]["label"] == "chosen token"


def test_one_request_completed_per_call(world: tw.World, tmp_path: Path) -> None:
    """Each call ends with exactly one request_completed record, after its triggers."""
    sink = fg.MemorySink()
    with guarded(world, tmp_path, sink) as guard:
        guard.generate(tw.PROMPTS, request_id="a", max_new_tokens=8)
        guard.generate(tw.PROMPTS[(world.row + 1) % 4], request_id="b", max_new_tokens=8)
    assert [(r["event"], r["request_id"]) for r in sink.records] == [
        ("policy_triggered", "a"), ("request_completed", "a"), ("request_completed", "b"),
    ]  # fmt: skip
    assert [r["sequences"] for r in completed(sink)] == [4, 1]
    assert [r["policies_triggered"] for r in completed(sink)] == [["watch"], []]


def test_request_completed_counts(world: tw.World, tmp_path: Path) -> None:
    """request_completed lists the blocked rows and counts prompt and completion tokens; a
    blocked row's completion ends with its EOS, not with the padding after it."""
    sink = fg.MemorySink()
    with guarded(world, tmp_path, sink, action="block") as guard:
        guard.generate(tw.PROMPTS, max_new_tokens=8, do_sample=False)
    [rec] = completed(sink)
    assert rec["blocked"] == [world.row]
    assert rec["prompt_tokens"] == sum(len(p) for p in tw.PROMPTS)  # one token per character
    blocked_row = world.position - world.prompt_len + 2  # up to the trigger, then EOS
    assert rec["completion_tokens"] == 8 * (len(tw.PROMPTS) - 1) + blocked_row
    assert rec["duration_ms"] >= 0


def test_audit_file_verifies(world: tw.World, tmp_path: Path) -> None:
    """The JSONL file of several calls holds every record in order and its chain verifies."""
    with guarded(world, tmp_path, action="block") as guard:
        guard.generate(tw.PROMPTS, request_id="one", max_new_tokens=8)
        tw.generate(world.model, world.tokenizer, tw.PROMPTS, 8)
    log = tmp_path / "audit.jsonl"
    events = [r["event"] for r in iter_records(log)]
    assert events == ["policy_triggered", "request_completed"] * 2
    report = verify(log)
    assert report.ok and report.records == 4
