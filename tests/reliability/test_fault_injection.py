"""Fault injection: an exception raised anywhere on the scoring and editing path, at any step,
of any type, ends as fail_mode says, with a `guard_error` record, and leaves the model usable.

Each trial draws (seeded) where the fault is raised, at which call of that place (0 is the
prompt's forward pass, later calls are decoding steps) and what is raised. The figures in
docs/reliability.md are these trial counts.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import openai
import pytest
import tiny_world as tw
import torch
from serving import running

import featureguard as fg
from featureguard.engine import LayerEngine
from featureguard.guard import CLOSED_MESSAGE
from featureguard.integrations.server import GuardedService, create_app
from featureguard.sae.model import SAE

world = tw.world_fixture()

TRIALS = 100  # per architecture and fail_mode: 300 per fail_mode over the three architectures
NEW_TOKENS = 6
SITES = {  # where the fault is raised: every place a forward pass runs guard code
    "sae.encode_subset": (SAE, "encode_subset"),
    "engine.windowed": (LayerEngine, "_windowed"),
    "engine.edit": (LayerEngine, "_edit"),
}
FAULTS = (
    RuntimeError("injected"),
    ValueError("injected"),
    IndexError("injected"),
    ZeroDivisionError("injected"),
    MemoryError("injected"),
    torch.OutOfMemoryError("injected"),
    AssertionError("injected"),
)


def policy_file(world: tw.World, tmp_path: Path, fail_mode: str) -> Path:
    """A log policy on the aimed token beside a conditional suppress policy that never triggers,
    so the editing path runs on every step and nothing is blocked or edited when nothing fails."""
    doc = {**tw.policy_doc(world, tmp_path), "fail_mode": fail_mode}
    doc["policies"].append({
        "name": "never", "sae": "s", "features": [{"index": tw.TARGET + 1, "max": 1.0}],
        "threshold": 1e9, "action": "suppress",
        "suppress": {"method": "clamp", "value": 0.0, "mode": "conditional"},
    })  # fmt: skip
    return tw.write_yaml(doc, tmp_path / f"{fail_mode}.yaml")


@contextmanager
def fault_at(site: str, call: int, fault: BaseException) -> Iterator[None]:
    """Raise `fault` from the `call`-th call (0-based) of `site` and every call after it."""
    owner, name = SITES[site]
    original = getattr(owner, name)
    calls = iter(range(10**9))

    def faulty(*args: Any, **kwargs: Any) -> Any:
        if next(calls) >= call:
            raise fault
        return original(*args, **kwargs)

    setattr(owner, name, faulty)
    try:
        yield
    finally:
        setattr(owner, name, original)


def draw(rng: random.Random) -> tuple[str, int, BaseException]:
    return rng.choice(sorted(SITES)), rng.randrange(NEW_TOKENS), rng.choice(FAULTS)


@pytest.mark.parametrize("fail_mode", ["closed", "open"])
def test_injected_faults_end_as_fail_mode_says(world: tw.World, tmp_path: Path, fail_mode: str
                                               ) -> None:  # fmt: skip
    """closed: every reply is withheld; open: every reply is the unguarded one. Both: one
    guard_error record per failing layer call naming the fault, one request_completed per call,
    and the next call without a fault is guarded normally (the model stays usable)."""
    sink = fg.MemorySink()
    rng = random.Random(f"{world.arch}-{fail_mode}")
    with fg.wrap(world.model, policy_file(world, tmp_path, fail_mode), tokenizer=world.tokenizer,
                 audit=sink) as guard:  # fmt: skip
        clean = guard.generate(tw.PROMPTS, max_new_tokens=NEW_TOKENS)
        clean_triggers = [[t.token_index for t in o.triggers] for o in guard.last]
        assert any(clean_triggers) and not any(o.blocked for o in guard.last)
        failures = []
        for trial in range(TRIALS):
            site, call, fault = draw(rng)
            rid = f"trial-{trial}"
            with fault_at(site, call, fault):
                replies = guard.generate(tw.PROMPTS, max_new_tokens=NEW_TOKENS, request_id=rid)
            outcomes = guard.last
            errors = [r for r in sink.records
                      if r["event"] == "guard_error" and r["request_id"] == rid]  # fmt: skip
            done = [r for r in sink.records
                    if r["event"] == "request_completed" and r["request_id"] == rid]  # fmt: skip
            expected = [CLOSED_MESSAGE] * len(clean) if fail_mode == "closed" else clean
            ok = (
                replies == expected
                and all(o.blocked == (fail_mode == "closed") for o in outcomes)
                and errors
                and all(type(fault).__name__ in e["error"] and e["fail_closed"] is (
                        fail_mode == "closed") for e in errors)
                and len(done) == 1
            )  # fmt: skip
            again = guard.generate(tw.PROMPTS, max_new_tokens=NEW_TOKENS)
            usable = again == clean and [[t.token_index for t in o.triggers]
                                         for o in guard.last] == clean_triggers  # fmt: skip
            if not (ok and usable):
                failures.append((trial, site, call, repr(fault), replies, again))
    assert failures == [], f"{len(failures)} of {TRIALS} trials failed: {failures[:3]}"


@pytest.mark.parametrize("world", ["llama"], indirect=True)
@pytest.mark.parametrize("fail_mode", ["closed", "open"])
def test_injected_fault_through_the_server(world: tw.World, tmp_path: Path, fail_mode: str
                                           ) -> None:  # fmt: skip
    """Over HTTP: closed answers `content_filter` with the withheld message, open the unguarded
    reply; both write the guard_error record under the request's id, and the server goes on."""
    sink = fg.MemorySink()
    with fg.wrap(world.model, policy_file(world, tmp_path, fail_mode), tokenizer=world.tokenizer,
                 audit=sink) as guard:  # fmt: skip
        clean = guard.generate(tw.PROMPTS[0], max_new_tokens=NEW_TOKENS)[0]
        with running(create_app(GuardedService(guard, "tiny"))) as url:
            client = openai.OpenAI(base_url=f"{url}/v1", api_key="-", max_retries=0)

            def ask(rid: str) -> Any:
                return client.completions.create(
                    model="tiny", prompt=tw.PROMPTS[0], max_tokens=NEW_TOKENS, temperature=0,
                    extra_headers={"X-Request-ID": rid}).choices[0]  # fmt: skip

            for trial, (site, call, fault) in enumerate(map(draw, [random.Random(0)] * 20)):
                with fault_at(site, call, fault):
                    faulty = ask(f"fault-{trial}")
                after = ask(f"after-{trial}")
                if fail_mode == "closed":
                    assert (faulty.finish_reason, faulty.text) == ("content_filter",
                                                                   CLOSED_MESSAGE)  # fmt: skip
                else:
                    assert (faulty.finish_reason, faulty.text) == ("length", clean)
                assert (after.finish_reason, after.text) == ("length", clean)
                assert any(r["event"] == "guard_error" and r["request_id"] == f"fault-{trial}"
                           for r in sink.records)  # fmt: skip
