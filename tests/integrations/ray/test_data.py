"""Corpus scans on Ray Data: the library's triggers, audit shards, and traces that replay."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from ray_world import TEXTS, Saved, library_triggers, same_triggers

from featureguard.audit.shards import verify_set
from featureguard.cli import main
from featureguard.errors import FeatureguardError
from featureguard.replay import replay

data = pytest.importorskip("featureguard.integrations.ray.data", reason="needs ray[data]")


def _results(output: Path) -> dict[str, dict[str, Any]]:
    rows = [json.loads(line) for f in sorted((output / "results").glob("*.json"))
            for line in f.read_text().splitlines()]  # fmt: skip
    return {r["id"]: r for r in rows}


@pytest.fixture(scope="module")
def scanned(local_ray: Any, saved: Saved) -> Path:
    corpus = saved.tmp / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"row-{i}", "text": t}) + "\n"
                              for i, t in enumerate(TEXTS)))  # fmt: skip
    output = saved.tmp / "scan"
    summary = data.scan(corpus, saved.policies, output, model=saved.model, workers=2,
                        batch_size=3, trace=True, cpus_per_worker=0.5)  # fmt: skip
    assert summary.rows == len(TEXTS)
    return output


def test_scan_matches_the_library(scanned: Path, saved: Saved) -> None:
    """Per row, the scan's triggers are the library's (policy, token index, score to 1e-5),
    and its max score is at least every trigger's."""
    rows = _results(scanned)
    got = [[(t["policy"], t["token_index"], t["score"]) for t in rows[f"row-{i}"]["triggers"]]
           for i in range(len(TEXTS))]  # fmt: skip
    expected = library_triggers(saved, TEXTS)
    assert any(expected) and same_triggers(got, expected)
    for i, triggers in enumerate(expected):
        [best] = rows[f"row-{i}"]["max_scores"]
        assert all(best["score"] >= s - 1e-6 for _, _, s in triggers)


def test_scan_writes_verifiable_audit_shards(scanned: Path) -> None:
    """Each actor's audit shard, anchored once at the end: one request per row."""
    report = verify_set(scanned / "audit.jsonl")
    assert report.ok, report.problems
    assert len(report.shards) == 2  # both actors scored rows
    assert sum(report.unanchored.values()) == 0


def test_replay_reads_the_scan_trace_shards(
    scanned: Path, saved: Saved, capsys: pytest.CaptureFixture[str]
) -> None:
    """`featureguard audit replay` over the scan's traces finds the scan's triggers again."""
    report = replay(scanned / "traces", saved.policies)
    assert report.requests == len(TEXTS) and not report.added and not report.removed
    wanted = {(f"row-{i}", p, idx) for i, ts in enumerate(library_triggers(saved, TEXTS))
              for p, idx, _ in ts}  # fmt: skip
    assert {(t.request_id, t.policy, t.token_index) for t in report.would} == wanted
    assert main(["audit", "replay", str(scanned / "traces"), "--policies",
                 str(saved.policies)]) == 0  # fmt: skip
    assert f"replayed {len(TEXTS)} request(s)" in capsys.readouterr().out


def test_replay_on_ray_equals_the_local_replay(
    scanned: Path, saved: Saved, capsys: pytest.CaptureFixture[str]
) -> None:
    """`featureguard audit replay --ray`: the shards replayed by 2 Ray Data actors give the
    report of the local replay of the whole folder, and the CLI prints the same table."""
    local = replay(scanned / "traces", saved.policies)
    on_ray = data.replay(scanned / "traces", saved.policies, workers=2, cpus_per_worker=0.5)
    assert on_ray == local and on_ray.requests == len(TEXTS) and on_ray.would
    argv = ["audit", "replay", str(scanned / "traces"), "--policies", str(saved.policies)]
    assert main(argv) == 0
    plain = capsys.readouterr().out
    assert main([*argv, "--ray", "--workers", "2"]) == 0
    assert capsys.readouterr().out == plain


def test_parquet_input_without_ids(local_ray: Any, saved: Saved) -> None:
    """Parquet text without an id column: ids come from the text; same triggers."""
    corpus = saved.tmp / "corpus.parquet"
    pq.write_table(pa.table({"body": TEXTS}), corpus)
    output = saved.tmp / "scan-parquet"
    data.scan(corpus, saved.policies, output, model=saved.model, workers=1,
              text_column="body", cpus_per_worker=0.5)  # fmt: skip
    rows = sorted(_results(output).values(), key=lambda r: r["tokens"])
    assert len(rows) == len(TEXTS) and all(r["id"].startswith("t-") for r in rows)
    assert sum(r["flagged"] for r in rows) == sum(bool(t) for t in library_triggers(saved, TEXTS))


def test_scan_refuses_an_unknown_input(saved: Saved) -> None:
    """A missing input is a FeatureguardError naming it."""
    with pytest.raises(FeatureguardError, match="no such input"):
        data.scan(saved.tmp / "nope.jsonl", saved.policies, saved.tmp / "x", model=saved.model)
