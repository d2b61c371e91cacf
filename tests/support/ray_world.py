"""The Ray tests' world: the tiny model saved to disk, a block policy that splits TEXTS, and
the library's triggers to compare with."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tiny_world as tw

MESSAGE = "withheld by the test policy"
TEXTS = [*tw.PROMPTS, "import os\ndef f(x): return x", "z" * 40, "a"]


@dataclass
class Saved:
    """The module's tiny world as a model folder and a block policy file on disk."""

    world: tw.World
    model: Path
    policies: Path
    tmp: Path


def save(world: tw.World, tmp: Path) -> Saved:
    """The world's model and tokenizer in `tmp/model`, and a block policy on them."""
    model = tmp / "model"
    world.model.save_pretrained(model)
    world.tokenizer.save_pretrained(model)
    # A threshold between the texts' highest scores, so that about half of TEXTS trigger.
    probe = Saved(world, model, tw.write_policy(world, tmp, name="probe.yaml"), tmp)
    highest = sorted(max(v for v in s.scores["watch"] if v is not None)
                     for s in _scored(probe, TEXTS))  # fmt: skip
    middle = len(highest) // 2
    threshold = (highest[middle - 1] + highest[middle]) / 2
    policies = tw.write_policy(world, tmp, action="block", message=MESSAGE, threshold=threshold)
    return Saved(world, model, policies, tmp)


def _scored(saved: Saved, texts: list[str]) -> list[Any]:
    import featureguard as fg
    from featureguard.audit import MemorySink

    with fg.wrap(saved.world.model, saved.policies, tokenizer=saved.world.tokenizer,
                 audit=MemorySink()) as guard:  # fmt: skip
        return guard.score(texts)


def library_triggers(saved: Saved, texts: list[str]) -> list[list[tuple[str, int, float]]]:
    """(policy, token index, score) of each text's triggers, from `Guard.score` in-process."""
    scored = _scored(saved, texts)
    return [[(t.policy, t.token_index, t.score) for t in s.outcome.triggers] for s in scored]


def same_triggers(a: list[list[tuple[str, int, float]]], b: list[list[tuple[str, int, float]]]
                  ) -> bool:  # fmt: skip
    """Equal policies and token indices, scores within 1e-5."""
    return len(a) == len(b) and all(
        len(x) == len(y) and all(p == q and i == j and abs(s - t) <= 1e-5
                                 for (p, i, s), (q, j, t) in zip(x, y, strict=True))
        for x, y in zip(a, b, strict=True)
    )  # fmt: skip
