"""featureguard inside vLLM's engine (`GuardedLLM`): hook placement, row labels under
continuous batching and chunked prefill, per-request block, log and suppression, fail-closed.

One guarded engine serves the module; each test selects its policy per request.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import tiny_world as tw
import torch
import vllm_world as vw
from vllm_world import ENGINE, VWorld, greedy, shutdown, token_prompts

pytest.importorskip("vllm", reason=vw.NO_VLLM)

import featureguard as fg
from featureguard.audit import MemorySink
from featureguard.engine import LayerEngine
from featureguard.guard import scored_max_new_tokens
from featureguard.integrations.vllm import geometry
from featureguard.integrations.vllm.config import WITHHELD_MESSAGE
from featureguard.integrations.vllm.frontend import GuardedLLM
from featureguard.integrations.vllm.runtime import GuardRuntime

HIGH = 1e6  # a threshold no token reaches


@pytest.fixture(scope="module")
def policies(vworld: VWorld) -> dict[str, Any]:
    """One file, five policies on the aimed feature; each test picks one per request."""
    a = vworld.aimed
    doc = {
        "version": 1,
        "saes": {"s": {"path": str(a.sae_dir), "hook": vw.HOOK}},
        "policies": [
            _policy("block", a.threshold, action="block"),
            _policy("log", a.threshold, action="log"),
            _policy("quiet", HIGH, action="suppress", suppress={"method": "clamp", "value": 0}),
            _policy(
                "clamp", a.threshold, action="suppress", suppress={"method": "clamp", "value": 0}
            ),
            # fires wherever the feature is active two tokens in a row, prompt and reply: runs
            # that cross prefill chunks and the prompt's end
            _policy("window", 0.0, action="log", window=2, scope="both"),
        ],
        "audit": {"path": str(vworld.tmp / "audit.jsonl")},
    }
    return {"path": tw.write_yaml(doc, vworld.tmp / "policies.yaml"), "doc": doc}


def _policy(name: str, threshold: float, **rest: object) -> dict[str, object]:
    feature = {"index": tw.TARGET, "label": "chosen token", "max": threshold * 2 or 1.0}
    return {"name": name, "sae": "s", "features": [feature], "threshold": threshold, **rest}


@pytest.fixture(scope="module")
def guarded(vworld: VWorld, policies: dict[str, Any]) -> Iterator[GuardedLLM]:
    llm = GuardedLLM(vworld.folder, policies["path"], **ENGINE)
    yield llm
    shutdown(llm.llm)


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int, int, bool]]:
    """Every span the runtime labels while a test runs: (request, position, count, is_prompt)."""
    seen: list[tuple[str, int, int, bool]] = []
    original = geometry.step_spans

    def spy(*args: Any) -> list[geometry.Span]:
        out = original(*args)
        seen.extend((s.request, s.position, s.count, s.is_prompt) for s in out)
        return out

    monkeypatch.setattr(geometry, "step_spans", spy)
    return seen


def audit_records(vworld: VWorld, request_ids: list[str]) -> list[dict[str, Any]]:
    lines = (vworld.tmp / "audit.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("request_id") in request_ids]


def run(llm: GuardedLLM, vworld: VWorld, tag: str, policy: str) -> tuple[list[Any], list[str]]:
    ids = [f"{tag}-{i}" for i in range(len(vworld.prompts))]
    outs = llm.generate(token_prompts(vworld.prompts), greedy(), request_ids=ids, policies=[policy])
    return outs, ids


def test_hook_reads_what_transformers_computes(
    guarded: GuardedLLM, vworld: VWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The residual stream the guard reads in vLLM (hidden + residual after layer 1) equals
    transformers' output of that layer for the same tokens, within 1e-4, row by row."""
    seen: dict[str, dict[int, torch.Tensor]] = {}
    original = GuardRuntime._score

    def spy(self: GuardRuntime, engine: Any, x: torch.Tensor, *args: Any) -> Any:
        for span in args[2].spans:  # (hidden, edited, group, is_prompt)
            rows = seen.setdefault(self.requests[span.request].audit_id, {})
            for t in range(span.count):
                rows[span.position + t] = x[span.start + t].clone()
        return original(self, engine, x, *args)

    monkeypatch.setattr(GuardRuntime, "_score", spy)
    outs, ids = run(guarded, vworld, "placement", "log")
    for rid, prompt, out in zip(ids, vworld.prompts, outs, strict=True):
        sequence = prompt + list(out.outputs[0].token_ids)
        fed = len(seen[rid])  # a final EOS is never fed back
        assert fed >= len(sequence) - 1
        read = torch.stack([seen[rid][p] for p in range(fed)])  # [T, d]
        expected = tw.activations(vworld.model, vw.HOOK, torch.tensor([sequence[:fed]]))[0]
        torch.testing.assert_close(read, expected, atol=1e-4, rtol=0)


def test_block_stops_one_request_right_after_its_trigger(
    guarded: GuardedLLM, vworld: VWorld
) -> None:
    """In a batch of mixed prompt lengths, prefilled in chunks, the request whose token
    triggers stops right before it (content_filter); the others equal unguarded vLLM."""
    outs, ids = run(guarded, vworld, "block", "block")
    a = vworld.aimed
    kept = a.position - len(vworld.prompts[a.row])  # generated tokens before the trigger
    for row, (out, plain) in enumerate(zip(outs, vworld.plain, strict=True)):
        completion = out.outputs[0]
        if row == a.row:
            assert list(completion.token_ids) == plain[:kept]
            assert completion.finish_reason == "content_filter"
            assert completion.text == WITHHELD_MESSAGE
        else:
            assert list(completion.token_ids) == plain
            assert completion.finish_reason == ("stop" if plain[-1] == 2 else "length")
    records = audit_records(vworld, ids)
    triggers = [r for r in records if r["event"] == "policy_triggered"]
    assert [(t["request_id"], t["token_index"], t["policy"]) for t in triggers] == [
        (ids[a.row], a.position, "block")
    ]
    completed = {r["request_id"]: r for r in records if r["event"] == "request_completed"}
    assert sorted(completed) == sorted(ids)
    assert completed[ids[a.row]]["rows"][0]["blocked_by"] == "block"
    assert completed[ids[a.row]]["rows"][0]["reply_ids"] == vworld.plain[a.row][: kept + 1]


def test_rows_are_labelled_by_request_and_position(
    guarded: GuardedLLM, vworld: VWorld, spans: list[tuple[str, int, int, bool]]
) -> None:
    """Every position of every request is labelled exactly once, prompt positions as prompt,
    and the long prompts in several chunks."""
    outs, ids = run(guarded, vworld, "labels", "log")
    by_audit = {o.request_id: o for o in outs}
    covered: dict[str, list[tuple[int, bool]]] = {}
    for request, position, count, is_prompt in spans:
        covered.setdefault(request, []).extend((position + t, is_prompt) for t in range(count))
    assert len(covered) == len(ids)
    chunks = {}
    for request, labels in covered.items():
        out = by_audit[request.rpartition("-")[0]]
        n_prompt, n_out = len(out.prompt_token_ids), len(out.outputs[0].token_ids)
        # every prompt token and every released token but a final EOS went through a pass
        assert [p for p, _ in labels] == list(range(len(labels)))
        assert len(labels) == n_prompt + n_out - (out.outputs[0].finish_reason == "stop")
        assert all(is_prompt == (p < n_prompt) for p, is_prompt in labels)
        chunks[n_prompt] = sum(1 for s in spans if s[0] == request and s[3])
    assert max(chunks) > ENGINE["max_num_batched_tokens"] and chunks[max(chunks)] > 1


def test_log_and_quiet_suppression_leave_outputs_identical(
    guarded: GuardedLLM, vworld: VWorld
) -> None:
    """A log policy that fires, and a conditional suppression that never triggers, change no
    token of any request; the log policy's trigger is audited at the aimed position."""
    for policy in ("log", "quiet"):
        outs, ids = run(guarded, vworld, policy, policy)
        assert [list(o.outputs[0].token_ids) for o in outs] == vworld.plain
        triggers = [
            (r["request_id"], r["token_index"])
            for r in audit_records(vworld, ids)
            if r["event"] == "policy_triggered"
        ]
        expected = [(ids[vworld.aimed.row], vworld.aimed.position)] if policy == "log" else []
        assert triggers == expected


def test_suppression_matches_the_library(guarded: GuardedLLM, vworld: VWorld) -> None:
    """A conditional clamp that fires edits vLLM's residual stream as the library edits
    transformers': the same greedy tokens for the aimed prompt."""
    row = vworld.aimed.row
    outs = guarded.generate(token_prompts([vworld.prompts[row]]), greedy(), policies=["clamp"])
    doc = {
        "version": 1,
        "saes": {"s": {"path": str(vworld.aimed.sae_dir), "hook": vw.HOOK}},
        "policies": [
            _policy(
                "clamp",
                vworld.aimed.threshold,
                action="suppress",
                suppress={"method": "clamp", "value": 0},
            )
        ],
    }
    with fg.wrap(vworld.model, doc, tokenizer=vworld.tokenizer, audit=MemorySink()) as guard:
        ids = torch.tensor([vworld.prompts[row]])
        with torch.no_grad():
            library = guard.model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=vw.MAX_TOKENS,
                do_sample=False,
            )
    assert guard.last[0].triggers, "the clamp must fire for this test to mean anything"
    assert list(outs[0].outputs[0].token_ids) == library[0, ids.shape[1] :].tolist()


def test_hook_error_blocks_the_row_and_the_engine_survives(
    guarded: GuardedLLM, vworld: VWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exception inside the hook blocks that request (fail closed) and is audited; the
    engine goes on serving, with outputs as before."""

    def broken(self: LayerEngine, x: torch.Tensor, state: Any) -> None:
        raise RuntimeError("scoring bug")

    with monkeypatch.context() as patch:
        patch.setattr(LayerEngine, "__call__", broken)
        [out] = guarded.generate(
            token_prompts(vworld.prompts[:1]), greedy(), request_ids=["broken"], policies=["log"]
        )
    assert out.outputs[0].finish_reason == "content_filter"
    assert list(out.outputs[0].token_ids) == []
    errors = [r for r in audit_records(vworld, ["broken"]) if r["event"] == "guard_error"]
    assert errors and "RuntimeError: scoring bug" in errors[0]["error"]
    outs, _ = run(guarded, vworld, "after-error", "log")
    assert [list(o.outputs[0].token_ids) for o in outs] == vworld.plain


def test_unknown_policy_fails_closed(guarded: GuardedLLM, vworld: VWorld) -> None:
    """A request selecting a policy the file does not have is blocked before any token and
    the error is audited (fail closed), rather than served unguarded."""
    [out] = guarded.generate(
        token_prompts(vworld.prompts[:1]), greedy(), request_ids=["unknown"], policies=["nope"]
    )
    assert (list(out.outputs[0].token_ids), out.outputs[0].finish_reason) == ([], "content_filter")
    errors = [r["error"] for r in audit_records(vworld, ["unknown"]) if r["event"] == "guard_error"]
    assert errors and all("unknown policies ['nope']" in e for e in errors)


def test_status_names_the_policies(guarded: GuardedLLM, policies: dict[str, Any]) -> None:
    """`fg_status` over collective_rpc: the worker guards the file's policies, none in flight."""
    [status] = guarded.status()
    names = [p["name"] for p in policies["doc"]["policies"]]
    assert status == {
        "installed": True,
        "policies_file": str(policies["path"]),
        "policies": names,
        "in_flight": 0,
        "sentinel": vw.SENTINEL,
    }


def test_windows_and_scopes_match_the_library(guarded: GuardedLLM, vworld: VWorld) -> None:
    """A two-token window over prompt and reply fires on exactly the tokens as the library on
    transformers: window runs carry across prefill chunks, from the prompt into the reply, and
    from step to step."""
    _, ids = run(guarded, vworld, "window", "window")
    fired: dict[str, list[tuple[int, str]]] = {}
    for r in audit_records(vworld, ids):
        if r["event"] == "policy_triggered":
            fired.setdefault(r["request_id"], []).append((r["token_index"], r["scope"]))
    doc = {
        "version": 1,
        "saes": {"s": {"path": str(vworld.aimed.sae_dir), "hook": vw.HOOK}},
        "policies": [_policy("window", 0.0, action="log", window=2, scope="both")],
    }
    with fg.wrap(vworld.model, doc, tokenizer=vworld.tokenizer, audit=MemorySink()) as guard:
        for rid, prompt in zip(ids, vworld.prompts, strict=True):
            x = torch.tensor([prompt])
            with torch.no_grad():
                guard.model.generate(
                    input_ids=x,
                    attention_mask=torch.ones_like(x),
                    max_new_tokens=scored_max_new_tokens(vw.MAX_TOKENS),
                    do_sample=False,
                )
            library = [
                (t.token_index, "prompt" if t.in_prompt else "response")
                for t in guard.last[0].triggers
            ]
            assert fired.get(rid, []) == library, rid
    assert sum(map(len, fired.values())) > 4, "the window policy must fire for this to mean much"
    assert {scope for hits in fired.values() for _, scope in hits} == {"prompt", "response"}
