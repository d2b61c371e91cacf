"""`action: suppress`: clamp or ablate the named features, only where the policy says.

The SAE's decoder rows are orthonormal and `W_enc = W_decᵀ`, so a feature's pre-activation is
`q · x` exactly and an edit's effect can be read off the edited activation directly.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import tiny_world as tw
import torch

import featureguard as fg

world = tw.world_fixture()

OTHER = 7  # a second feature for ablation (weight 0: it does not change the score)


def run(world: tw.World, tmp_path: Path, **policy: object) -> tuple[torch.Tensor, list[tw.Pass]]:
    """Generate the batch under a suppress policy; the output and every pass at the hook."""
    out, passes, _ = run_with_triggers(world, tmp_path, **policy)
    return out, passes


def run_with_triggers(
    world: tw.World, tmp_path: Path, **policy: object
) -> tuple[torch.Tensor, list[tw.Pass], set[tuple[int, int]]]:
    """Like `run`, and the (row, padded position) of every trigger."""
    path = tw.write_policy(world, tmp_path, action="suppress", **policy)
    with (
        fg.wrap(world.model, path, tokenizer=world.tokenizer, audit=fg.MemorySink()) as guard,
        tw.around_guard(world.model, world.hook) as passes,
    ):
        out = tw.generate(world.model, world.tokenizer, tw.PROMPTS, 8)
        hits = {(r, t.token_index + world.pads(r)) for r, o in enumerate(guard.last)
                for t in o.triggers}  # fmt: skip
    return out, passes, hits


def trigger_pass(world: tw.World, passes: list[tw.Pass]) -> tw.Pass:
    """The forward pass that reads the chosen token (pass 0 is the prompt)."""
    return passes[world.position - world.prompt_len + 1]


def token_ids(out: torch.Tensor, prompt_len: int, k: int) -> torch.Tensor:
    """The ids that forward pass `k` read, from the final sequences."""
    return out[:, :prompt_len] if k == 0 else out[:, prompt_len + k - 1 : prompt_len + k]


def ablate_features() -> list[dict]:
    return [{"index": tw.TARGET, "label": "chosen token"}, {"index": OTHER, "weight": 0.0}]


@pytest.mark.parametrize("method", ["clamp", "ablate"])
def test_conditional_without_trigger_is_identical(
    world: tw.World, tmp_path: Path, method: str
) -> None:
    """A conditional suppress that never triggers leaves the output bit-identical."""
    spec = {"method": method, **({"value": -1.0} if method == "clamp" else {})}
    out, _ = run(world, tmp_path, threshold=1e6, suppress=spec)
    assert torch.equal(out, world.bare)


@pytest.mark.parametrize("factor", [0.25, -0.5])
def test_clamp_sets_target_at_trigger(world: tw.World, tmp_path: Path, factor: float) -> None:
    """At the trigger token the re-encoded TARGET pre-activation equals the clamp value."""
    value = factor * world.score
    _, passes = run(world, tmp_path, suppress={"method": "clamp", "value": value})
    step = trigger_pass(world, passes)
    q = world.basis[tw.TARGET]
    assert float(step.before[world.row, 0] @ q) > world.threshold
    assert float(step.after[world.row, 0] @ q) == pytest.approx(value, abs=1e-4)


def test_clamp_leaves_other_features(world: tw.World, tmp_path: Path) -> None:
    """A clamp of TARGET leaves every other feature's pre-activation where it was."""
    _, passes = run(world, tmp_path, suppress={"method": "clamp", "value": -0.5 * world.score})
    step = trigger_pass(world, passes)
    others = [i for i in range(tw.D_SAE) if i != tw.TARGET]
    before = world.basis[others] @ step.before[world.row, 0]
    after = world.basis[others] @ step.after[world.row, 0]
    torch.testing.assert_close(after, before, atol=1e-5, rtol=0)


@pytest.mark.parametrize("method", ["clamp", "ablate"])
def test_other_tokens_bit_identical(world: tw.World, tmp_path: Path, method: str) -> None:
    """Only triggering tokens are edited: every other token of every pass stays bit-identical."""
    features = ablate_features() if method == "ablate" else None
    spec = {"method": method, **({"value": 0.0} if method == "clamp" else {})}
    out, passes, hits = run_with_triggers(
        world, tmp_path, suppress=spec, **({"features": features} if features else {})
    )
    assert (world.row, world.position) in hits  # later tokens may trigger once the reply changes
    assert len(passes) == out.shape[1] - world.prompt_len
    p = world.prompt_len
    for k, step in enumerate(passes):
        same = (step.after == step.before).all(dim=-1)  # [b, s]
        first = 0 if k == 0 else p + k - 1
        expected = torch.ones_like(same)
        for r, pos in hits:
            if first <= pos < first + same.shape[1]:
                expected[r, pos - first] = False
        assert torch.equal(same, expected), f"pass {k}"


def test_clamp_times_max_uses_feature_max(world: tw.World, tmp_path: Path) -> None:
    """`times_max` clamps TARGET to that multiple of the feature's `max`."""
    feature_max = 3.0 * world.score
    features = [{"index": tw.TARGET, "max": feature_max}]
    _, passes = run(world, tmp_path, features=features,
                    suppress={"method": "clamp", "times_max": 0.1})  # fmt: skip
    step = trigger_pass(world, passes)
    got = float(step.after[world.row, 0] @ world.basis[tw.TARGET])
    assert got == pytest.approx(0.1 * feature_max, abs=1e-4)


def test_ablate_removes_named_directions(world: tw.World, tmp_path: Path) -> None:
    """Ablation leaves no component along any of the policy's decoder directions."""
    _, passes = run(world, tmp_path, features=ablate_features(), suppress={"method": "ablate"})
    step = trigger_pass(world, passes)
    named = world.basis[[tw.TARGET, OTHER]]
    assert float((named @ step.before[world.row, 0]).abs().max()) > 1e-2
    torch.testing.assert_close(named @ step.after[world.row, 0], torch.zeros(2), atol=1e-5, rtol=0)


def test_ablate_keeps_orthogonal_complement(world: tw.World, tmp_path: Path) -> None:
    """Ablation leaves the activation's projection on the orthogonal complement unchanged."""
    _, passes = run(world, tmp_path, features=ablate_features(), suppress={"method": "ablate"})
    step = trigger_pass(world, passes)
    named = world.basis[[tw.TARGET, OTHER]]
    rest = torch.eye(named.shape[1]) - named.T @ named
    torch.testing.assert_close(
        rest @ step.after[world.row, 0], rest @ step.before[world.row, 0], atol=1e-5, rtol=0
    )


@pytest.mark.parametrize("scope", ["both", "response"])
def test_always_edits_every_in_scope_token(world: tw.World, tmp_path: Path, scope: str) -> None:
    """Mode always clamps every real in-scope token and leaves padding and the rest untouched."""
    value = -0.3 * world.score
    spec = {"method": "clamp", "value": value, "mode": "always"}
    out, passes = run(world, tmp_path, threshold=1e6, scope=scope, suppress=spec)
    q = world.basis[tw.TARGET]
    for k, step in enumerate(passes):
        edit = tw.real_tokens(token_ids(out, world.prompt_len, k))
        if k == 0 and scope == "response":
            edit[:] = False
        pre = step.before @ q  # [b, s]
        expected = step.before + (value - pre.clamp(min=0))[..., None] * q
        torch.testing.assert_close(step.after[edit], expected[edit], atol=1e-5, rtol=0)
        assert torch.equal(step.after[~edit], step.before[~edit]), f"pass {k}"
        assert bool(edit.any()) != (k == 0 and scope == "response"), f"pass {k}"


@pytest.mark.parametrize("aimed_at", ["reply", "prompt"])
def test_latched_edits_every_token_from_the_first_trigger(
    world: tw.World, tmp_path: Path, aimed_at: str
) -> None:
    """Mode latched clamps every real token of a row from its first trigger on, and the whole
    prompt when the trigger is in it; tokens before, padding and other rows stay bit-identical."""
    threshold, basis, sae_dir = world.threshold, world.basis, world.sae_dir
    if aimed_at == "prompt":
        target = world.aim(tmp_path / "sae-prompt", world.prompt_tokens())
        threshold, basis, sae_dir = target.threshold, target.basis, target.sae_dir
    value = -0.3 * world.score
    spec = {"method": "clamp", "value": value, "mode": "latched"}
    doc = tw.policy_doc(world, tmp_path, action="suppress", threshold=threshold, suppress=spec)
    doc["saes"]["s"]["path"] = str(sae_dir)
    path = tw.write_yaml(doc, tmp_path / "p.yaml")
    with (
        fg.wrap(world.model, path, tokenizer=world.tokenizer, audit=fg.MemorySink()) as guard,
        tw.around_guard(world.model, world.hook) as passes,
    ):
        out = tw.generate(world.model, world.tokenizer, tw.PROMPTS, 8)
        first_hit: dict[int, int] = {}
        for r, o in enumerate(guard.last):
            for t in o.triggers:
                pos = t.token_index + world.pads(r)
                first_hit[r] = min(first_hit.get(r, pos), pos)
    p = world.prompt_len
    assert (first_hit[world.row] < p) == (aimed_at == "prompt")
    q = basis[tw.TARGET]
    for k, step in enumerate(passes):
        first = 0 if k == 0 else p + k - 1
        positions = torch.arange(first, first + step.before.shape[1])
        edit = tw.real_tokens(token_ids(out, p, k)).clone()
        for r in range(edit.shape[0]):
            hit = first_hit.get(r)
            if hit is None:
                edit[r] = False
            elif not (k == 0 and hit < p):  # a trigger in the prompt latches all of it
                edit[r] &= positions >= hit
        pre = step.before @ q  # [b, s]
        expected = step.before + (value - pre.clamp(min=0))[..., None] * q
        torch.testing.assert_close(step.after[edit], expected[edit], atol=1e-5, rtol=0)
        assert torch.equal(step.after[~edit], step.before[~edit]), f"pass {k}"
