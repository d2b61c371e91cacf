"""Misuse and bad wiring raise featureguard errors that say what is wrong; scoring failures
follow the policy file's fail_mode."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import tiny_world as tw
import torch

import featureguard as fg
from featureguard.engine import LayerEngine
from featureguard.guard import CLOSED_MESSAGE

world = tw.world_fixture()

EOS, PAD = 2, 0


def raising(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError("scoring exploded")


def wrap_doc(world: tw.World, doc: dict, tmp_path: Path, sink: fg.MemorySink | None = None
             ) -> fg.Guard:  # fmt: skip
    path = tw.write_yaml(doc, tmp_path / "p.yaml")
    return fg.wrap(world.model, path, tokenizer=world.tokenizer, audit=sink or fg.MemorySink())


def line_of(path: Path, text: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line)


# ---- wiring ------------------------------------------------------------------------------------
def test_feature_index_beyond_d_sae(world: tw.World, tmp_path: Path) -> None:
    """A feature index >= d_sae raises PolicyError naming the policy file, the line and d_sae."""
    path = tw.write_policy(world, tmp_path, features=[{"index": 99}])
    with pytest.raises(fg.PolicyError) as info:
        fg.wrap(world.model, path, tokenizer=world.tokenizer, audit=fg.MemorySink())
    message = str(info.value)
    assert f"{path}:{line_of(path, 'index: 99')}:" in message
    assert "99" in message and f"d_sae {tw.D_SAE}" in message
    assert not tw.hooked_modules(world.model) and "generate" not in vars(world.model)


def test_unknown_hook_lists_near_names(world: tw.World, tmp_path: Path) -> None:
    """A hook that does not exist raises HookError naming the file and the nearest real hooks."""
    doc = tw.policy_doc(world, tmp_path)
    doc["saes"]["s"]["hook"] = "blocks.1.hook_resid_pots"
    with pytest.raises(fg.HookError) as info:
        wrap_doc(world, doc, tmp_path)
    message = str(info.value)
    assert "blocks.1.hook_resid_pots" in message and "blocks.1.hook_resid_post" in message
    assert str(tmp_path / "p.yaml") in message
    assert not tw.hooked_modules(world.model) and "generate" not in vars(world.model)


def test_sae_width_mismatch(world: tw.World, tmp_path: Path) -> None:
    """An SAE whose d_in differs from the layer's width raises PairingError with both numbers."""
    narrow = tmp_path / "sae-narrow"
    tw.write_saelens(narrow, torch.linalg.qr(torch.randn(16, tw.D_SAE))[0].T, world.hook)
    doc = tw.policy_doc(world, tmp_path)
    doc["saes"]["s"]["path"] = str(narrow)
    with pytest.raises(fg.PairingError) as info:
        wrap_doc(world, doc, tmp_path)
    assert "d_in=16" in str(info.value) and "width 32" in str(info.value)
    assert "generate" not in vars(world.model)


def test_wrap_twice(world: tw.World, tmp_path: Path) -> None:
    """Wrapping a wrapped model raises GuardError; the first guard keeps working."""
    path = tw.write_policy(world, tmp_path)
    with fg.wrap(world.model, path, tokenizer=world.tokenizer, audit=fg.MemorySink()) as guard:
        with pytest.raises(fg.GuardError, match="already wrapped"):
            fg.wrap(world.model, path, tokenizer=world.tokenizer, audit=fg.MemorySink())
        out = tw.generate(world.model, world.tokenizer, tw.PROMPTS, 8)
        assert [bool(o.triggers) for o in guard.last] == [r == world.row for r in range(4)]
    assert torch.equal(out, world.bare)


# ---- generation modes --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("setting", "match"), [({"num_beams": 2}, "beam search"), ({"use_cache": False}, "KV cache")]
)
@pytest.mark.parametrize("via", ["argument", "generation_config"])
def test_unsupported_generation_mode(
    world: tw.World, tmp_path: Path, setting: dict, match: str, via: str
) -> None:
    """Beam search and use_cache=False raise GuardError, and the guard works afterwards."""
    enc = tw.encode(world.tokenizer, tw.PROMPTS)
    if via == "argument":
        kwargs: dict[str, Any] = {**setting, "max_new_tokens": 8, "do_sample": False}
    else:
        config = copy.deepcopy(world.model.generation_config)
        config.update(**setting, max_new_tokens=8, do_sample=False)
        kwargs = {"generation_config": config}
    path = tw.write_policy(world, tmp_path)
    with fg.wrap(world.model, path, tokenizer=world.tokenizer, audit=fg.MemorySink()):
        with pytest.raises(fg.GuardError, match=match):
            world.model.generate(**enc, **kwargs)
        assert torch.equal(tw.generate(world.model, world.tokenizer, tw.PROMPTS, 8), world.bare)


def test_detached_guard_refuses_to_generate(world: tw.World, tmp_path: Path) -> None:
    """After detach, guard.generate and guard.stream raise GuardError rather than run unguarded."""
    path = tw.write_policy(world, tmp_path, action="block")
    guard = fg.wrap(world.model, path, tokenizer=world.tokenizer, audit=fg.MemorySink())
    guard.detach()
    with pytest.raises(fg.GuardError, match="detached"):
        guard.generate(tw.PROMPTS, max_new_tokens=8)
    with pytest.raises(fg.GuardError, match="detached"):
        list(guard.stream(tw.PROMPTS[world.row], max_new_tokens=8))


# ---- fail_mode ---------------------------------------------------------------------------------
def test_fail_closed_blocks_rows(world: tw.World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                 ) -> None:  # fmt: skip
    """fail_mode closed: a scoring exception blocks the rows and writes a guard_error record."""
    doc = {**tw.policy_doc(world, tmp_path), "fail_mode": "closed"}
    sink = fg.MemorySink()
    monkeypatch.setattr(LayerEngine, "_windowed", raising)
    with wrap_doc(world, doc, tmp_path, sink) as guard:
        out = tw.generate(world.model, world.tokenizer, tw.PROMPTS, 8)
        outcomes = guard.last
        replies = guard.generate(tw.PROMPTS, max_new_tokens=8)
    assert out.shape[1] == world.prompt_len + 1 and (out[:, -1] == EOS).all()
    assert [(o.blocked, o.blocked_by) for o in outcomes] == [(True, "guard_error")] * 4
    assert replies == [CLOSED_MESSAGE] * 4
    errors = [r for r in sink.records if r["event"] == "guard_error"]
    assert errors and all(r["fail_closed"] is True for r in errors)
    assert "scoring exploded" in errors[0]["error"] and "s@" + world.hook in errors[0]["error"]
    done = [r for r in sink.records if r["event"] == "request_completed"]
    assert [r["blocked"] for r in done] == [[0, 1, 2, 3]] * 2


def test_fail_closed_model_stays_usable(world: tw.World, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """After a call that failed closed, the next call is guarded normally."""
    doc = {**tw.policy_doc(world, tmp_path), "fail_mode": "closed"}
    with wrap_doc(world, doc, tmp_path) as guard:
        with monkeypatch.context() as patch:
            patch.setattr(LayerEngine, "_windowed", raising)
            tw.generate(world.model, world.tokenizer, tw.PROMPTS, 8)
        out = tw.generate(world.model, world.tokenizer, tw.PROMPTS, 8)
        outcomes = guard.last
    assert torch.equal(out, world.bare)
    assert [o.blocked for o in outcomes] == [False] * 4
    assert [bool(o.triggers) for o in outcomes] == [r == world.row for r in range(4)]


def test_fail_open_passes_reply(world: tw.World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                ) -> None:  # fmt: skip
    """fail_mode open: the reply goes through unchanged, with guard_error records."""
    doc = {**tw.policy_doc(world, tmp_path, action="block"), "fail_mode": "open"}
    sink = fg.MemorySink()
    monkeypatch.setattr(LayerEngine, "_windowed", raising)
    with wrap_doc(world, doc, tmp_path, sink) as guard:
        out = tw.generate(world.model, world.tokenizer, tw.PROMPTS, 8)
        outcomes = guard.last
    assert torch.equal(out, world.bare)
    assert [o.blocked for o in outcomes] == [False] * 4
    errors = [r for r in sink.records if r["event"] == "guard_error"]
    assert errors and all(r["fail_closed"] is False for r in errors)
    assert sink.records[-1]["event"] == "request_completed" and sink.records[-1]["blocked"] == []


def test_fail_open_error_beside_a_block(world: tw.World, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """fail_mode open: when another SAE fails while a policy blocks, the block stands and the
    guard_error record does not claim the call failed closed."""
    early = world.aim(tmp_path / "sae-early", world.reply_tokens(), hook="blocks.0.hook_resid_post")
    doc = {**tw.policy_doc(world, tmp_path, action="block"), "fail_mode": "open"}
    doc["saes"]["early"] = {"path": str(early.sae_dir), "hook": early.hook}
    doc["policies"].append({"name": "early", "sae": "early", "features": [{"index": tw.TARGET}],
                            "threshold": early.threshold, "action": "log"})  # fmt: skip
    sink = fg.MemorySink()
    with wrap_doc(world, doc, tmp_path, sink) as guard:
        [failing] = [layer for layer in guard.layers if layer.sae_name == "early"]
        monkeypatch.setattr(failing, "_windowed", raising)
        guard.generate(tw.PROMPTS[world.row], max_new_tokens=8)
        outcome = guard.last[0]
    assert (outcome.blocked, outcome.blocked_by) == (True, "watch")
    errors = [r for r in sink.records if r["event"] == "guard_error"]
    assert errors and all(r["fail_closed"] is False for r in errors)
