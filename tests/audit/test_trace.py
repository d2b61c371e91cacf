"""featureguard.audit.trace: shards round-trip, writes are atomic, crashes leave readable traces."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from featureguard.audit.trace import INDEX, TraceReader, TraceWriter, read_trace
from featureguard.errors import AuditError

META = {
    "prompt_len": 3,
    "pads": [1, 0],
    "layers": [{
        "sae": "res6", "hook": "blocks.6.hook_resid_post", "features": [7, 1234],
        "labels": {"1234": "tls"},
        "policies": [{"name": "p", "action": "log", "severity": "low", "threshold": 1.0,
                      "window": 1, "scope": "both", "features": [[1234, 2.0], [7, 0.5]]}],
    }],
}  # fmt: skip


def _arrays(seed: int = 0, topk: bool = False) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {
        "ids": rng.integers(0, 50, (2, 6)).astype(np.int32),
        "valid": np.array([[False, True, True, True, True], [True] * 5]),
        "L0.acts": rng.random((2, 5, 2)).astype(np.float32),
        "L0.triggered": rng.random((2, 5, 1)) > 0.5,
        "L0.seen": np.ones(5, dtype=bool),
    }
    if topk:
        out["L0.top_values"] = rng.random((2, 5, 3)).astype(np.float32)
        out["L0.top_indices"] = rng.integers(0, 4096, (2, 5, 3)).astype(np.int32)
    return out


def test_round_trip(tmp_path: Path) -> None:
    """What is written is read back: arrays bit for bit, metadata as typed objects."""
    arrays = _arrays()
    writer = TraceWriter(tmp_path / "t", mode="policy", k=32)
    assert writer.write("req-1", arrays, META) == "shard-00000001.safetensors"
    [req] = list(read_trace(tmp_path / "t"))
    assert (req.request_id, req.mode, req.k, req.prompt_len, req.pads) == (
        "req-1", "policy", None, 3, (1, 0),
    )  # fmt: skip
    np.testing.assert_array_equal(req.ids, arrays["ids"])
    np.testing.assert_array_equal(req.valid, arrays["valid"])
    [layer] = req.layers
    np.testing.assert_array_equal(layer.acts, arrays["L0.acts"])
    np.testing.assert_array_equal(layer.triggered, arrays["L0.triggered"])
    assert layer.features == (7, 1234) and layer.labels == {1234: "tls"}
    assert layer.policies[0].features == ((1234, 2.0), (7, 0.5))
    assert layer.top_values is None


def test_topk_arrays_round_trip(tmp_path: Path) -> None:
    """A topk trace keeps k and the top-k values and indices."""
    arrays = _arrays(topk=True)
    TraceWriter(tmp_path / "t", mode="topk", k=3).write("r", arrays, META)
    [req] = list(read_trace(tmp_path / "t"))
    assert (req.mode, req.k) == ("topk", 3)
    np.testing.assert_array_equal(req.layers[0].top_indices, arrays["L0.top_indices"])


def test_shards_append_and_are_found_by_request(tmp_path: Path) -> None:
    """Each write adds a shard and an index line; a reopened writer continues the numbering."""
    TraceWriter(tmp_path, mode="policy", k=1).write("a", _arrays(1), META)
    TraceWriter(tmp_path, mode="policy", k=1).write("b", _arrays(2), META)
    reader = TraceReader(tmp_path)
    assert [e["shard"] for e in reader.entries] == [
        "shard-00000001.safetensors", "shard-00000002.safetensors",
    ]  # fmt: skip
    found = reader.find("b")
    assert found is not None and found.shard == "shard-00000002.safetensors"
    assert reader.find("zzz") is None and len(reader) == 2


def test_no_temporary_files_are_left(tmp_path: Path) -> None:
    """Shards are renamed into place: only shards and the index remain."""
    writer = TraceWriter(tmp_path, mode="policy", k=1)
    for i in range(3):
        writer.write(f"r{i}", _arrays(i), META)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        INDEX, *(f"shard-0000000{i}.safetensors" for i in (1, 2, 3)),
    ]  # fmt: skip


def test_cut_index_line_is_skipped_and_the_next_write_starts_a_new_line(tmp_path: Path) -> None:
    """An index line cut by a crash is ignored, and a new writer does not glue onto it."""
    TraceWriter(tmp_path, mode="policy", k=1).write("a", _arrays(), META)
    with (tmp_path / INDEX).open("a", encoding="utf-8") as index:
        index.write('{"shard": "shard-000')
    assert len(TraceReader(tmp_path)) == 1
    TraceWriter(tmp_path, mode="policy", k=1).write("b", _arrays(), META)
    assert [e["request_id"] for e in TraceReader(tmp_path).entries] == ["a", "b"]


def test_orphan_shard_is_ignored_and_not_overwritten(tmp_path: Path) -> None:
    """A shard renamed into place whose index line never came is ignored by readers and keeps
    its number (the next shard takes the one after)."""
    save_file(_arrays(), str(tmp_path / "shard-00000001.safetensors"))
    (tmp_path / INDEX).write_text("")
    name = TraceWriter(tmp_path, mode="policy", k=1).write("a", _arrays(), META)
    assert name == "shard-00000002.safetensors"
    assert [e["request_id"] for e in TraceReader(tmp_path).entries] == ["a"]


def test_missing_trace_is_an_audit_error(tmp_path: Path) -> None:
    """Reading a folder without an index raises AuditError naming it."""
    with pytest.raises(AuditError, match=r"index\.jsonl"):
        TraceReader(tmp_path / "nope")


def test_unknown_version_is_refused(tmp_path: Path) -> None:
    """A shard of another trace version raises AuditError."""
    TraceWriter(tmp_path, mode="policy", k=1).write("a", _arrays(), META)
    shard = tmp_path / "shard-00000001.safetensors"
    doc = {"version": 99, "request_id": "a"}
    save_file(_arrays(), str(shard), metadata={"featureguard_trace": json.dumps(doc)})
    with pytest.raises(AuditError, match="trace version 99"):
        list(read_trace(tmp_path))


def test_corrupt_shard_is_an_audit_error(tmp_path: Path) -> None:
    """A shard that is not safetensors raises AuditError naming the file."""
    TraceWriter(tmp_path, mode="policy", k=1).write("a", _arrays(), META)
    (tmp_path / "shard-00000001.safetensors").write_bytes(b"garbage")
    with pytest.raises(AuditError, match="shard-00000001"):
        list(read_trace(tmp_path))
