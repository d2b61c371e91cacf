"""Which tokens are scored and when a policy triggers: scope, window, padding and specials, and
several SAEs at several layers."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import tiny_world as tw
import torch

import featureguard as fg

world = tw.world_fixture()


def triggers(guard: fg.Guard) -> list[tuple[str, int, int, bool]]:
    """(policy, row, token_index, in_prompt) of every trigger of the latest call."""
    return [(t.policy, r, t.token_index, t.in_prompt)
            for r, o in enumerate(guard.last) for t in o.triggers]  # fmt: skip


def with_sae(world: tw.World, tmp_path: Path, target: tw.Aim, **policy: Any) -> Path:
    """A policy file whose SAE `s` is `target`'s folder (threshold: `target`'s by default)."""
    doc = tw.policy_doc(world, tmp_path, **{"threshold": target.threshold, **policy})
    doc["saes"]["s"] = {"path": str(target.sae_dir), "hook": target.hook}
    return tw.write_yaml(doc, tmp_path / "p.yaml")


@pytest.mark.parametrize(
    ("aimed_at", "scope", "fires"),
    [
        ("reply", "response", True),
        ("reply", "both", True),
        ("reply", "prompt", False),
        ("prompt", "prompt", True),
        ("prompt", "both", True),
        ("prompt", "response", False),
    ],
)
def test_scope(world: tw.World, tmp_path: Path, aimed_at: str, scope: str, fires: bool) -> None:
    """A policy triggers on its token exactly when the token's part (prompt/reply) is in scope."""
    if aimed_at == "reply":
        row, position = world.row, world.position
        path = tw.write_policy(world, tmp_path, scope=scope)
    else:
        target = world.aim(tmp_path / "sae-prompt", world.prompt_tokens())
        row, position = target.row, target.position
        path = with_sae(world, tmp_path, target, scope=scope)
    with fg.wrap(world.model, path, tokenizer=world.tokenizer, audit=fg.MemorySink()) as guard:
        out = tw.generate(world.model, world.tokenizer, tw.PROMPTS, 8)
        got = triggers(guard)
    assert torch.equal(out, world.bare)
    expected = [("watch", row, position - world.pads(row), aimed_at == "prompt")]
    assert got == (expected if fires else [])


def test_window_two_needs_two_in_a_row(world: tw.World, tmp_path: Path) -> None:
    """With window 2, one token above threshold alone never triggers."""
    path = tw.write_policy(world, tmp_path, window=2)
    with fg.wrap(world.model, path, tokenizer=world.tokenizer, audit=fg.MemorySink()) as guard:
        tw.generate(world.model, world.tokenizer, tw.PROMPTS, 8)
        assert triggers(guard) == []


def runs_above(scores: torch.Tensor, real: torch.Tensor, threshold: float, window: int
               ) -> list[tuple[int, int]]:  # fmt: skip
    """Reference: (row, position) where `window` real tokens in a row score above threshold."""
    hits = []
    for r in range(scores.shape[0]):
        run = 0
        for t in range(scores.shape[1]):
            run = run + 1 if real[r, t] and scores[r, t] > threshold else 0
            if run >= window:
                hits.append((r, t))
    return hits


def pick_threshold(scores: torch.Tensor, real: torch.Tensor) -> float:
    """A threshold in a clear gap of the real tokens' scores for which window 2 triggers at
    least once and window 3 triggers less often than window 2."""
    values = scores[real].sort(descending=True).values.tolist()
    best = None
    for hi, lo in itertools.pairwise(values):
        t = (hi + lo) / 2
        w2, w3 = (len(runs_above(scores, real, t, w)) for w in (2, 3))
        if w2 and w3 < w2 and (best is None or hi - lo > best[0]):
            best = (hi - lo, t)
    assert best is not None and best[0] > 1e-4
    return best[1]


@pytest.mark.parametrize("window", [1, 2, 3])
def test_window_triggers_on_runs(world: tw.World, tmp_path: Path, window: int) -> None:
    """A window-n policy triggers exactly where n real tokens in a row, across the prompt/reply
    boundary and across forward passes, score above its threshold."""
    enc = tw.encode(world.tokenizer, tw.PROMPTS)
    path = tw.write_policy(world, tmp_path, threshold=1e6)
    with (
        fg.wrap(world.model, path, tokenizer=world.tokenizer, audit=fg.MemorySink()),
        tw.around_guard(world.model, world.hook) as passes,
    ):
        out = tw.generate(world.model, world.tokenizer, tw.PROMPTS, 8)
    pre = torch.cat([p.before for p in passes], dim=1) @ world.basis[tw.TARGET]  # [b, T-1]
    scores = pre.clamp(min=0)  # relu: the feature's activation is the score (weight 1)
    mask = tw.generation_mask(enc["attention_mask"], out.shape[1] - 1).bool()
    real = tw.real_tokens(out[:, :-1]) & mask
    threshold = pick_threshold(scores, real)
    path = tw.write_policy(world, tmp_path, threshold=threshold, window=window)
    with fg.wrap(world.model, path, tokenizer=world.tokenizer, audit=fg.MemorySink()) as guard:
        tw.generate(world.model, world.tokenizer, tw.PROMPTS, 8)
        got = [(r, i + world.pads(r)) for _, r, i, _ in triggers(guard)]
    assert sorted(got) == runs_above(scores, real, threshold, window)


@contextmanager
def padding_embedding(model: torch.nn.Module) -> Iterator[None]:
    """Give the pad token a random embedding (llama and qwen2 zero it, and with it every pad
    activation); the weights are restored on exit."""
    weight = model.get_input_embeddings().weight
    saved = weight[0].clone()
    with torch.no_grad():
        weight[0] = torch.randn(weight.shape[1], generator=torch.Generator().manual_seed(0))
    try:
        yield
    finally:
        with torch.no_grad():
            weight[0] = saved


@pytest.mark.parametrize("fill", ["<pad>", "x"])
def test_padding_never_scored(world: tw.World, tmp_path: Path, fill: str) -> None:
    """A feature aimed at a padding position's activation never triggers on padding, whether
    the padding is the pad token or an ordinary token that the attention mask hides."""
    enc = tw.encode(world.tokenizer, tw.PROMPTS)
    enc["input_ids"][enc["attention_mask"] == 0] = world.tokenizer.convert_tokens_to_ids(fill)
    with padding_embedding(world.model):
        bare = world.model.generate(**enc, max_new_tokens=8, do_sample=False)
        mask = tw.generation_mask(enc["attention_mask"], bare.shape[1])
        pads = [(r, p) for r in range(len(tw.PROMPTS)) for p in range(world.pads(r))]
        target = tw.aim(world.model, world.hook, bare, mask, pads, tmp_path / "sae-pad",
                        compare=tw.real_tokens(bare) & mask.bool(), strict=False)  # fmt: skip
        threshold = 0.9 * target.score
        path = with_sae(world, tmp_path, target, threshold=threshold)
        with (
            fg.wrap(world.model, path, tokenizer=world.tokenizer, audit=fg.MemorySink()) as guard,
            tw.around_guard(world.model, world.hook) as passes,
        ):
            out = world.model.generate(**enc, max_new_tokens=8, do_sample=False)
            got = triggers(guard)
    pad_score = float(passes[0].before[target.row, target.position] @ target.basis[tw.TARGET])
    assert pad_score > threshold > 0  # it would trigger if padding were scored
    assert torch.equal(out, bare)
    for _, r, index, _ in got:
        assert index >= 0
        assert tw.real_tokens(out[r, index + world.pads(r)])


def test_bos_never_scored(world: tw.World, tmp_path: Path) -> None:
    """A feature aimed at the BOS token's activation never triggers, though BOS scores above."""
    enc = tw.encode_with_bos(world.tokenizer, tw.PROMPTS)
    bare = world.model.generate(**enc, max_new_tokens=8, do_sample=False)
    mask = tw.generation_mask(enc["attention_mask"], bare.shape[1])
    bos = [(r, int((row == 1).nonzero()[0])) for r, row in enumerate(enc["input_ids"])]
    target = tw.aim(world.model, world.hook, bare, mask, bos, tmp_path / "sae-bos")
    path = with_sae(world, tmp_path, target)
    with (
        fg.wrap(world.model, path, tokenizer=world.tokenizer, audit=fg.MemorySink()) as guard,
        tw.around_guard(world.model, world.hook) as passes,
    ):
        out = world.model.generate(**enc, max_new_tokens=8, do_sample=False)
        got = triggers(guard)
    bos_score = float(passes[0].before[target.row, target.position] @ target.basis[tw.TARGET])
    assert bos_score > target.threshold
    assert torch.equal(out, bare)
    assert got == []


def test_two_saes_at_two_layers(world: tw.World, tmp_path: Path) -> None:
    """A policy file with SAEs at two layers triggers the policies of both, each on its token."""
    early = world.aim(tmp_path / "sae-early", world.reply_tokens(), hook="blocks.0.hook_resid_post")
    doc = tw.policy_doc(world, tmp_path)
    doc["saes"]["early"] = {"path": str(early.sae_dir), "hook": early.hook}
    doc["policies"].append({"name": "early", "sae": "early", "features": [{"index": tw.TARGET}],
                            "threshold": early.threshold, "action": "log"})  # fmt: skip
    path = tw.write_yaml(doc, tmp_path / "p.yaml")
    sink = fg.MemorySink()
    with fg.wrap(world.model, path, tokenizer=world.tokenizer, audit=sink) as guard:
        out = tw.generate(world.model, world.tokenizer, tw.PROMPTS, 8)
        got = sorted(triggers(guard))
    assert torch.equal(out, world.bare)
    assert got == sorted([
        ("watch", world.row, world.token_index, False),
        ("early", early.row, early.position - world.pads(early.row), False),
    ])  # fmt: skip
    hooks = {r["policy"]: r["hook"] for r in sink.records if r["event"] == "policy_triggered"}
    assert hooks == {"watch": world.hook, "early": "blocks.0.hook_resid_post"}
