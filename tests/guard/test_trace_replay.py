"""Traces written by the guard, and replay: re-scoring stored traffic matches re-running it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tiny_world as tw
from safetensors import safe_open

import featureguard as fg
from featureguard.audit.read import RequestCompleted, read
from featureguard.audit.report import build_report
from featureguard.audit.trace import TraceReader
from featureguard.cli import main
from featureguard.errors import PolicyError
from featureguard.policy import load_policies
from featureguard.policy.model import TraceSpec
from featureguard.replay import replay

world = tw.world_fixture()
Key = tuple[str, int, str, int]


def run(world: tw.World, tmp_path: Path, *, trace: dict | None = None, include_text: bool = True,
        request_id: str = "req", sink: fg.MemorySink | None = None, name: str = "p.yaml",
        **policy: Any) -> tuple[list[fg.SequenceOutcome], Path]:  # fmt: skip
    """Generate PROMPTS greedily under one policy on TARGET; return the outcomes and the file."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    doc = tw.policy_doc(world, tmp_path, **policy)
    doc["audit"]["include_text"] = include_text
    if trace is not None:
        doc["audit"]["trace"] = {"path": str(tmp_path / "trace"), **trace}
    path = tw.write_yaml(doc, tmp_path / name)
    with fg.wrap(world.model, path, tokenizer=world.tokenizer, audit=sink) as guard:
        guard.generate(tw.PROMPTS, request_id=request_id, max_new_tokens=8, do_sample=False)
        return guard.last, path


def keys(outcomes: list[fg.SequenceOutcome], request_id: str = "req") -> set[Key]:
    return {(request_id, r, t.policy, t.token_index) for r, o in enumerate(outcomes)
            for t in o.triggers}  # fmt: skip


def target_acts(trace: Path, scope: str = "both") -> np.ndarray:
    """Every scored TARGET activation of the trace (reply tokens only for scope response)."""
    req = next(iter(TraceReader(trace)))
    layer = req.layers[0]
    acts = layer.acts[..., layer.features.index(tw.TARGET)]
    mask = req.valid.copy()
    if scope == "response":
        mask[:, : req.prompt_len] = False
    return np.sort(acts[mask])


def between(values: np.ndarray, q: float) -> float:
    """A threshold halfway between two neighbouring values near quantile q (a clear margin)."""
    i = int(q * (len(values) - 1))
    while values[i + 1] - values[i] < 1e-4:
        i += 1
    return float(values[i] + values[i + 1]) / 2


def test_policy_file_reads_the_trace_section(tmp_path: Path, world: tw.World) -> None:
    """audit.trace becomes a TraceSpec; features and k have defaults."""
    doc = tw.policy_doc(world, tmp_path)
    doc["audit"]["trace"] = {"path": "t"}
    assert load_policies(doc).audit.trace == TraceSpec(
        features="policy", k=32, path="t", where=None
    )  # type: ignore[arg-type]
    doc["audit"]["trace"] = {"path": "t", "features": "topk", "k": 4}
    spec = load_policies(doc).audit.trace
    assert spec is not None and (spec.features, spec.k) == ("topk", 4)
    assert load_policies(tw.policy_doc(world, tmp_path)).audit.trace is None


def test_request_completed_has_each_rows_token_ids_and_texts(tmp_path: Path, world: tw.World
                                                             ) -> None:  # fmt: skip
    """request_completed.rows holds every row's prompt and reply ids and token texts; a
    trigger's token_index indexes them."""
    sink = fg.MemorySink()
    run(world, tmp_path, sink=sink)
    [done] = [r for r in sink.records if r["event"] == "request_completed"]
    rows = done["rows"]
    assert len(rows) == 4
    for r, row in enumerate(rows):
        pad = world.pads(r)
        assert row["prompt_ids"] == world.bare[r, pad : world.prompt_len].tolist()
        assert row["reply_ids"] == world.bare[r, world.prompt_len : world.prompt_len + 8].tolist()
        ids = row["prompt_ids"] + row["reply_ids"]
        assert row["tokens"] == [world.tokenizer.decode([i]) for i in ids]
    [trig] = [r for r in sink.records if r["event"] == "policy_triggered"]
    row = rows[trig["sequence"]]
    assert (row["prompt_ids"] + row["reply_ids"])[trig["token_index"]] == trig["token_id"]
    assert row["tokens"][trig["token_index"]] == trig["token"]


def test_blocked_row_reply_ends_at_the_block(tmp_path: Path, world: tw.World) -> None:
    """A blocked row's reply ids end with the blocking token (not the forced EOS or padding)
    and the row names its policy."""
    sink = fg.MemorySink()
    run(world, tmp_path, sink=sink, action="block")
    [done] = [r for r in sink.records if r["event"] == "request_completed"]
    row = done["rows"][world.row]
    assert row["blocked_by"] == "watch"
    assert len(row["prompt_ids"]) + len(row["reply_ids"]) == world.token_index + 1
    assert "blocked_by" not in done["rows"][(world.row + 1) % 4]


def test_include_text_false_keeps_all_text_out(tmp_path: Path, world: tw.World) -> None:
    """Without text, no record carries token text (ids stay) and the trace holds none either."""
    sink = fg.MemorySink()
    run(world, tmp_path, sink=sink, include_text=False, trace={"features": "topk", "k": 4})
    for rec in sink.records:
        text = json.dumps(rec)
        assert not {"token", "tokens", "text", "prompt", "reply"} & _keys(rec), rec
        assert "import os" not in text and "hello there" not in text
    [done] = [r for r in sink.records if r["event"] == "request_completed"]
    assert done["rows"][0]["prompt_ids"]
    shard = next((tmp_path / "trace").glob("shard-*.safetensors"))
    with safe_open(str(shard), framework="np") as f:
        meta = f.metadata()
        assert all(f.get_tensor(k).dtype.kind in "biuf" for k in f.keys())  # noqa: SIM118
    assert "hello" not in json.dumps(meta) and "tokens" not in json.dumps(meta)


def _keys(value: Any) -> set[str]:
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in _keys(v)}
    if isinstance(value, list):
        return {k for v in value for k in _keys(v)}
    return set()


def test_trace_stores_what_the_engine_scored(tmp_path: Path, world: tw.World) -> None:
    """The trace's activations at the trigger equal the trigger's score, its triggered mask
    marks exactly the trigger, and padding and special tokens are marked not scored."""
    outcomes, _ = run(world, tmp_path, trace={})
    [trig] = outcomes[world.row].triggers
    [req] = list(TraceReader(tmp_path / "trace"))
    assert (req.request_id, req.mode, req.k, req.prompt_len) == ("req", "policy", None,
                                                                 world.prompt_len)  # fmt: skip
    layer = req.layers[0]
    assert layer.features == (tw.TARGET,) and layer.labels == {tw.TARGET: "chosen token"}
    assert layer.acts[world.row, world.position, 0] == pytest.approx(trig.score, abs=0)
    assert np.argwhere(layer.triggered[..., 0]).tolist() == [[world.row, world.position]]
    assert req.pads == tuple(world.pads(r) for r in range(4))
    assert not req.valid[0, : world.pads(0)].any() and req.valid[0, world.pads(0)]
    np.testing.assert_array_equal(req.ids[:, : req.valid.shape[1]],
                                  world.bare[:, : req.valid.shape[1]].numpy())  # fmt: skip


def test_replay_of_the_same_policies_reproduces_the_triggers(tmp_path: Path, world: tw.World
                                                             ) -> None:  # fmt: skip
    """Replaying the file that made the trace finds exactly the triggers that happened."""
    outcomes, path = run(world, tmp_path, trace={}, action="block")
    report = replay(tmp_path / "trace", path)
    assert {t.key for t in report.would} == {t.key for t in report.did} == keys(outcomes)
    [cmp] = report.policies
    assert (cmp.did, cmp.would, cmp.added, cmp.removed) == (1, 1, 0, 0)
    assert cmp.blocked_rows_did == cmp.blocked_rows_would == 1


@pytest.mark.parametrize(
    ("change", "scope", "q"),
    [({"action": "log"}, "both", 0.6), ({"action": "block"}, "response", 0.5),
     ({"action": "log", "window": 2}, "both", 0.3)],
    ids=["log", "block", "window-2"],
)  # fmt: skip
def test_stricter_threshold_replay_equals_rerun(
    tmp_path: Path, world: tw.World, change: dict, scope: str, q: float
) -> None:
    """A lower threshold replayed on the stored trace gives exactly the triggers that re-running
    the model under it gives (blocks cutting their rows short included)."""
    run(world, tmp_path / "a", trace={})
    threshold = between(target_acts(tmp_path / "a" / "trace", scope), q)
    assert threshold < world.threshold
    new = {"threshold": threshold, "scope": scope, **change}
    rerun, path = run(world, tmp_path / "b", **new)
    report = replay(tmp_path / "a" / "trace", path)
    assert {t.key for t in report.would} == keys(rerun)
    assert len(report.would) > 1
    scores = {t.key: t.score for t in report.would}
    for r, o in enumerate(rerun):
        for t in o.triggers:
            assert scores[("req", r, t.policy, t.token_index)] == pytest.approx(t.score, rel=1e-5)


def test_topk_trace_replays_features_no_policy_named(tmp_path: Path, world: tw.World) -> None:
    """A topk trace with k = d_sae holds every feature: a policy on another feature replays
    exactly as re-running the model with it (and is listed as read from the top-k lists)."""
    run(world, tmp_path / "a", trace={"features": "topk", "k": tw.D_SAE})
    [req] = list(TraceReader(tmp_path / "a" / "trace"))
    layer = req.layers[0]
    assert layer.top_indices is not None and layer.top_indices.shape[-1] == tw.D_SAE
    other = 5
    values = np.sort(np.where(layer.top_indices == other, layer.top_values, 0).sum(-1)[req.valid])
    threshold = between(values, 0.8)
    feature = {"index": other, "label": "another", "max": 1.0}
    rerun, path = run(world, tmp_path / "b", features=[feature], threshold=threshold)
    report = replay(tmp_path / "a" / "trace", path)
    assert {t.key for t in report.would} == keys(rerun) and rerun_has(rerun)
    assert report.approximate == ("watch:5",)


def rerun_has(outcomes: list[fg.SequenceOutcome]) -> bool:
    return any(o.triggers for o in outcomes)


def test_policy_trace_refuses_a_feature_it_lacks(tmp_path: Path, world: tw.World) -> None:
    """Replaying a policy on a feature a policy-mode trace did not store is a located
    PolicyError."""
    run(world, tmp_path, trace={})
    doc = tw.policy_doc(world, tmp_path, features=[{"index": 7}])
    new = tw.write_yaml(doc, tmp_path / "new.yaml")
    with pytest.raises(PolicyError) as info:
        replay(tmp_path / "trace", new)
    [problem] = info.value.problems
    assert problem.key == "policies[0].features[0].index" and problem.line is not None
    assert "feature 7 is not in the trace" in problem.message


def test_unknown_sae_is_refused(tmp_path: Path, world: tw.World) -> None:
    """A policy on an SAE the trace never hooked is a located PolicyError."""
    run(world, tmp_path, trace={})
    doc = tw.policy_doc(world, tmp_path)
    doc["saes"] = {"other": doc["saes"]["s"]}
    doc["policies"][0]["sae"] = "other"
    with pytest.raises(PolicyError, match="SAE 'other' is not in the trace"):
        replay(tmp_path / "trace", load_policies(doc))


def test_no_full_encode_without_a_topk_trace(tmp_path: Path, world: tw.World) -> None:
    """Without a topk trace the engine holds only the policies' features and keeps no top-k;
    with one it holds the whole SAE."""
    _, path = run(world, tmp_path, trace={})
    with fg.wrap(world.model, path, tokenizer=world.tokenizer, audit=fg.MemorySink()) as g:
        [layer] = g.layers
        assert layer.top is None
        assert list(layer.sae.features) == [tw.TARGET]
    assert next(iter(TraceReader(tmp_path / "trace"))).layers[0].top_values is None
    _, path = run(world, tmp_path / "k", trace={"features": "topk", "k": 3})
    with fg.wrap(world.model, path, tokenizer=world.tokenizer, audit=fg.MemorySink()) as g:
        assert g.layers[0].top is not None and g.layers[0].top.k == 3


def test_cli_replay_prints_the_comparison(tmp_path: Path, world: tw.World,
                                          capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    """`audit replay TRACE --policies NEW` prints per-policy counts and the changed triggers;
    --json prints them as JSON."""
    run(world, tmp_path / "a", trace={})
    threshold = between(target_acts(tmp_path / "a" / "trace"), 0.7)
    new = tw.write_yaml(tw.policy_doc(world, tmp_path, threshold=threshold), tmp_path / "n.yaml")
    trace = str(tmp_path / "a" / "trace")
    assert main(["audit", "replay", trace, "--policies", str(new), "--examples", "2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("replayed 1 request(s), 4 row(s)")
    assert out.splitlines()[1].split() == ["policy", "did", "would", "added", "removed",
                                           "blocked", "rows", "did", "would"]  # fmt: skip
    assert "  + req row " in out and "more change(s)" in out
    assert main(["audit", "replay", trace, "--policies", str(new), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    [cmp] = doc["policies"]
    assert cmp["did"] == 1 and cmp["would"] == cmp["added"] + 1 and cmp["removed"] == 0


def test_show_and_report_on_a_real_log(tmp_path: Path, world: tw.World,
                                       capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    """`audit show` marks the chosen token in its reply; the report with the trace colours
    every scored token of the request."""
    run(world, tmp_path, trace={}, action="block")
    log = tmp_path / "audit.jsonl"
    assert main(["audit", "show", str(log), "--request", "req"]) == 0
    out = capsys.readouterr().out
    token = world.tokenizer.decode([int(world.bare[world.row, world.position])])
    assert f"-- row {world.row} (blocked by watch)" in out
    assert f"[{token}] [withheld from the user]" in out
    done = next(r for r in read(log) if isinstance(r, RequestCompleted))
    page = build_report([log], trace=tmp_path / "trace")
    blob = page.split('id="fg-data">', 1)[1].split("</script>")[0]
    row = json.loads(blob)["requests"][0]["rows"][world.row]
    assert len(row["sc"]) == len(done.rows[world.row].ids)
    assert row["sc"][world.token_index][0] > world.threshold
