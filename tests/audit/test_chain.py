"""The chain rule: canonical JSON, the hash formula, and what a sealed record looks like."""

from __future__ import annotations

import hashlib
import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from featureguard.audit import GENESIS_HASH, JsonlSink, canonical_json, verify
from featureguard.audit.chain import parse_line, seal
from featureguard.errors import AuditError

_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet=st.characters(blacklist_categories=("Cs",))),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=10,
)
_payloads = st.dictionaries(
    st.text(min_size=1).filter(lambda key: key not in ("prev_hash", "hash")), _json_values
)


def _independent_hash(record: dict) -> str:
    body = {key: value for key, value in record.items() if key != "hash"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256((body["prev_hash"] + text).encode("utf-8")).hexdigest()


def test_written_file_verifies(tmp_path):
    """A file written by JsonlSink verifies, with one record per write."""
    path = tmp_path / "audit.jsonl"
    with JsonlSink(path) as sink:
        for n in range(5):
            sink.write({"event": "policy_triggered", "n": n})
    report = verify(path)
    assert report.ok and report.records == 5 and report.last_hash == sink.last_hash


def test_hash_matches_documented_formula(tmp_path):
    """Each line's hash is sha256(prev_hash + canonical JSON without hash), chained from zeros."""
    path = tmp_path / "audit.jsonl"
    with JsonlSink(path) as sink:
        for n in range(3):
            sink.write({"event": "policy_triggered", "score": n / 3, "token": "café ✓"})
    prev = "0" * 64
    for line in path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        assert record["prev_hash"] == prev
        assert record["hash"] == _independent_hash(record)
        prev = record["hash"]


@given(_payloads)
def test_any_json_payload_seals_and_round_trips(payload):
    """Any strict-JSON payload seals to a line that parses back to a record with a valid hash."""
    record = parse_line(canonical_json(seal(payload, GENESIS_HASH)))
    assert record is not None and record["hash"] == _independent_hash(record)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_float_is_rejected(value):
    """The chain holds strict JSON only: NaN and infinities raise AuditError."""
    with pytest.raises(AuditError, match="strict JSON"):
        seal({"score": value}, GENESIS_HASH)


@pytest.mark.parametrize("key", ["prev_hash", "hash"])
def test_record_may_not_preset_chain_fields(key):
    """A record that already carries prev_hash or hash is refused, not overwritten."""
    with pytest.raises(AuditError, match=key):
        seal({key: "x"}, GENESIS_HASH)


def test_line_without_hashes_is_not_a_record():
    """parse_line accepts only JSON objects carrying string prev_hash and hash."""
    assert parse_line(b'{"event":"x"}\n') is None
    assert parse_line(b'{"prev_hash":"a","hash":NaN}') is None
    assert parse_line(b"[1]") is None
