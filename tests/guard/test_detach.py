"""`detach()` gives the model back exactly as it was, also after a failed generation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import tiny_world as tw
import torch
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
)

import featureguard as fg

world = tw.world_fixture()


class Boom(Exception):
    """Raised by the user's own generation callbacks below."""


class RaisingCriterion(StoppingCriteria):
    def __init__(self, after: int) -> None:
        self.calls, self.after = 0, after

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kw: Any) -> torch.Tensor:
        self.calls += 1
        if self.calls > self.after:
            raise Boom("stopping criterion failed")
        return torch.zeros(input_ids.shape[0], dtype=torch.bool)


class RaisingProcessor(LogitsProcessor):
    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        raise Boom("logits processor failed")


def is_pristine(model: torch.nn.Module) -> bool:
    """No hook on any module, and `generate` is the class's own method again."""
    return (
        not tw.hooked_modules(model)
        and "generate" not in vars(model)
        and model.generate.__func__ is type(model).generate
    )


def wrap(world: tw.World, tmp_path: Path, sink: fg.MemorySink | None = None, **policy: Any
         ) -> fg.Guard:  # fmt: skip
    path = tw.write_policy(world, tmp_path, **policy)
    return fg.wrap(world.model, path, tokenizer=world.tokenizer, audit=sink or fg.MemorySink())


def raise_inside_generate(world: tw.World, how: str) -> None:
    enc = tw.encode(world.tokenizer, tw.PROMPTS)
    extra: dict[str, Any] = {}
    if how == "stopping_criteria":
        extra["stopping_criteria"] = StoppingCriteriaList([RaisingCriterion(after=2)])
    else:
        extra["logits_processor"] = LogitsProcessorList([RaisingProcessor()])
    with pytest.raises(Boom):
        world.model.generate(**enc, max_new_tokens=8, do_sample=False, **extra)


def test_detach_removes_every_hook(world: tw.World, tmp_path: Path) -> None:
    """After detach no module carries a hook and `generate` is the class method again."""
    assert is_pristine(world.model)
    guard = wrap(world, tmp_path, action="suppress", suppress={"method": "ablate"})
    assert tw.hooked_modules(world.model) and "generate" in vars(world.model)
    tw.generate(world.model, world.tokenizer, tw.PROMPTS, 8)
    guard.detach()
    assert is_pristine(world.model)


def test_detach_restores_outputs(world: tw.World, tmp_path: Path) -> None:
    """After a guard that blocked and edited is detached, generation equals the unwrapped run."""
    guard = wrap(world, tmp_path, action="block")
    tw.generate(world.model, world.tokenizer, tw.PROMPTS, 8)
    guard.detach()
    guard = wrap(world, tmp_path, action="steer", steer={"value": 10.0})
    tw.generate(world.model, world.tokenizer, tw.PROMPTS, 8)
    guard.detach()
    assert torch.equal(tw.generate(world.model, world.tokenizer, tw.PROMPTS, 8), world.bare)


@pytest.mark.parametrize("how", ["stopping_criteria", "logits_processor"])
def test_detach_after_exception_in_generate(world: tw.World, tmp_path: Path, how: str) -> None:
    """A user callback raising inside generate propagates; detach still restores the model."""
    guard = wrap(world, tmp_path, action="block")
    raise_inside_generate(world, how)
    guard.detach()
    assert is_pristine(world.model)
    assert torch.equal(tw.generate(world.model, world.tokenizer, tw.PROMPTS, 8), world.bare)


@pytest.mark.parametrize("how", ["stopping_criteria", "logits_processor"])
def test_call_after_exception_works(world: tw.World, tmp_path: Path, how: str) -> None:
    """After a failed call the guard's per-call state is gone: the next call is guarded afresh."""
    sink = fg.MemorySink()
    with wrap(world, tmp_path, sink) as guard:
        raise_inside_generate(world, how)
        assert sink.records == []  # the failed call wrote nothing half-done
        with torch.no_grad():  # a plain forward pass outside generate is not scored
            world.model(**tw.encode(world.tokenizer, tw.PROMPTS))
        out = tw.generate(world.model, world.tokenizer, tw.PROMPTS, 8)
        triggers = [[t.token_index for t in o.triggers] for o in guard.last]
    assert torch.equal(out, world.bare)
    assert triggers == [[world.token_index] if r == world.row else [] for r in range(4)]
    assert [r["event"] for r in sink.records] == ["policy_triggered", "request_completed"]


def test_context_manager_detaches(world: tw.World, tmp_path: Path) -> None:
    """`with featureguard.wrap(...) as guard:` detaches on leaving the block."""
    with wrap(world, tmp_path, action="block") as guard:
        assert isinstance(guard, fg.Guard)
        tw.generate(world.model, world.tokenizer, tw.PROMPTS, 8)
    assert is_pristine(world.model)


def test_context_manager_detaches_on_error(world: tw.World, tmp_path: Path) -> None:
    """The with block detaches even when an exception leaves it."""
    with pytest.raises(Boom), wrap(world, tmp_path, action="block"):
        raise_inside_generate(world, "logits_processor")
        raise Boom("after generate")
    assert is_pristine(world.model)


def test_wrap_again_after_detach(world: tw.World, tmp_path: Path) -> None:
    """A detached model can be wrapped again, and the new guard works."""
    wrap(world, tmp_path).detach()
    with wrap(world, tmp_path) as guard:
        out = tw.generate(world.model, world.tokenizer, tw.PROMPTS, 8)
        fired = [bool(o.triggers) for o in guard.last]
    assert torch.equal(out, world.bare)
    assert fired == [r == world.row for r in range(4)]
