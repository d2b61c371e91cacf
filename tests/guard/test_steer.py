"""`action: steer`: every response token gets the features clamped to the steer value."""

from __future__ import annotations

from pathlib import Path

import pytest
import tiny_world as tw
import torch

import featureguard as fg

world = tw.world_fixture()


def steer(world: tw.World, tmp_path: Path, **policy: object) -> tuple[torch.Tensor, list[tw.Pass]]:
    """Generate the batch under a steer policy (default scope); output and passes at the hook."""
    path = tw.write_policy(world, tmp_path, action="steer", **policy)
    with (
        fg.wrap(world.model, path, tokenizer=world.tokenizer, audit=fg.MemorySink()),
        tw.around_guard(world.model, world.hook) as passes,
    ):
        out = tw.generate(world.model, world.tokenizer, tw.PROMPTS, 8)
    return out, passes


def assert_clamped(world: tw.World, out: torch.Tensor, passes: list[tw.Pass], value: float) -> None:
    """Every real response token: x' = x + (value - f) q, so its pre-activation moves to value."""
    q, p = world.basis[tw.TARGET], world.prompt_len
    for k, step in enumerate(passes[1:], start=1):
        real = tw.real_tokens(out[:, p + k - 1 : p + k])  # [b, 1]
        pre = step.before @ q
        expected = step.before + (value - pre.clamp(min=0))[..., None] * q
        torch.testing.assert_close(step.after[real], expected[real], atol=1e-5, rtol=0)
        assert torch.equal(step.after[~real], step.before[~real]), f"pass {k}"
        fired = real & (pre >= 0)
        torch.testing.assert_close(
            step.after[fired] @ q, torch.full_like(pre[fired], value), atol=1e-4, rtol=0
        )


@pytest.mark.parametrize("factor", [0.5, -0.5])
def test_steer_clamps_every_response_token(world: tw.World, tmp_path: Path, factor: float) -> None:
    """Each real response token's TARGET is clamped to the steer value (the error term kept)."""
    value = factor * world.score
    out, passes = steer(world, tmp_path, threshold=1e6, steer={"value": value})
    assert len(passes) == out.shape[1] - world.prompt_len
    assert_clamped(world, out, passes, value)


def test_steer_times_max(world: tw.World, tmp_path: Path) -> None:
    """`times_max` steers every response token to that multiple of the feature's `max`."""
    features = [{"index": tw.TARGET, "max": 2.0 * world.score}]
    out, passes = steer(world, tmp_path, features=features, steer={"times_max": 0.5})
    assert_clamped(world, out, passes, world.score)


@pytest.mark.parametrize("scope", ["both", "prompt", "response"])
def test_steer_leaves_prompt_untouched(world: tw.World, tmp_path: Path, scope: str) -> None:
    """The prompt's forward pass is bit-identical, whatever the policy's scoring scope."""
    _, passes = steer(world, tmp_path, scope=scope, steer={"value": 0.5 * world.score})
    assert torch.equal(passes[0].after, passes[0].before)
    assert not torch.equal(passes[1].after, passes[1].before)


def test_steer_changes_the_reply(world: tw.World, tmp_path: Path) -> None:
    """A strong steer changes the generated text, and leaves the prompt ids as they were."""
    out, _ = steer(world, tmp_path, steer={"value": 20.0 * world.score})
    p = world.prompt_len
    assert torch.equal(out[:, :p], world.bare[:, :p])
    assert not torch.equal(out[:, p:], world.bare[:, p:])
