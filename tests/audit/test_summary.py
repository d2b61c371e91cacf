"""featureguard audit summary: counts, block rate, contexts, filters, JSON, text."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

import featureguard.audit.summary as summary
from featureguard.audit import JsonlSink, iter_records
from featureguard.audit.summary import Filters, format_summary, parse_time, summarise
from featureguard.cli import main
from featureguard.errors import AuditError


def test_totals_and_block_rate(log: Path, sample: SimpleNamespace) -> None:
    """Requests, rows, triggers, guard errors, blocked rows and the block rate are counted."""
    s = summarise([log])
    facts = sample.facts
    assert {k: s[k] for k in ("requests", "rows", "triggers", "guard_errors", "blocked_rows")} == {
        k: facts[k] for k in ("requests", "rows", "triggers", "guard_errors", "blocked_rows")
    }
    assert s["block_rate"] == pytest.approx(facts["block_rate"])
    assert s["blocked_requests"] == 2 and s["records"] == 12


def test_counts_per_policy_action_severity(log: Path) -> None:
    """Triggers are counted per policy (with requests and blocked rows), action and severity."""
    s = summarise([log])
    assert s["policies"] == {
        "rude": {"triggers": 2, "requests": 1, "blocked_rows": 0},
        "unsafe": {"triggers": 2, "requests": 2, "blocked_rows": 2},
        "watch": {"triggers": 2, "requests": 2, "blocked_rows": 0},
    }
    assert s["actions"] == {"block": 2, "log": 2, "suppress": 2}
    assert s["severities"] == {"high": 2, "low": 2, "medium": 2}


def test_counts_per_feature_and_hour(log: Path, sample: SimpleNamespace) -> None:
    """Features carry their label, trigger count, mean and max activation; hours their counts."""
    s = summarise([log])
    assert s["features"]["res6:1234"] == {
        "label": "disables TLS", "triggers": 2, "mean_activation": 4.5, "max_activation": 5.0,
    }  # fmt: skip
    assert set(s["features"]) == {"res6:1234", "res6:42", "res6:7"}
    hours = {h: (v["requests"], v["triggers"]) for h, v in s["hours"].items()}
    assert hours == sample.facts["hours"]


def test_top_contexts_show_the_token_in_its_text(log: Path) -> None:
    """A context is the triggering token in brackets with the tokens around it."""
    top = {(c["policy"], c["context"]): c["triggers"] for c in summarise([log])["top_contexts"]}
    assert top == {
        ("watch", "def [f](): verify"): 1,
        ("unsafe", "def f(): verify[=False] ok"): 1,
        ("rude", "you are [dumb] dumb"): 1,
        ("rude", "you are dumb [dumb]"): 1,
        ("unsafe", "x = 1 verify[=False]"): 1,
        ("watch", "x = 1 verify[=False]"): 1,
    }


def test_repeated_contexts_are_counted(tmp_path: Path, sample: SimpleNamespace) -> None:
    """The same context in several requests is one entry with their count."""
    reqs = [sample.Req(f"q{i}", "2025-01-02T00:00:00.000000Z", [(["a"], [" b", " c"])],
                       [(0, 1, "watch", 2.0)]) for i in range(5)]  # fmt: skip
    s = summarise([sample.write_log(tmp_path / "x.jsonl", reqs)], top=1)
    assert s["top_contexts"] == [{"policy": "watch", "context": "a [b] c", "triggers": 5}]


def test_contexts_without_text_use_ids(tmp_path: Path, sample: SimpleNamespace) -> None:
    """A log kept without text gives contexts of token ids."""
    path = sample.write_log(tmp_path / "x.jsonl", sample.requests[1:2], include_text=False)
    contexts = [c["context"] for c in summarise([path])["top_contexts"]]
    ids = [sample.tid(t) for t in ["you", " are", " dumb"]]
    assert f"#{ids[0]} #{ids[1]} [#{ids[2]}] #{ids[2]}" in contexts


def test_filter_by_policy_and_severity(log: Path) -> None:
    """--policy and --severity narrow the triggers and the blocks they caused, not the totals."""
    s = summarise([log], Filters(policies=frozenset({"watch"})))
    assert s["triggers"] == 2 and set(s["policies"]) == {"watch"}
    assert s["blocked_rows"] == 0 and s["requests"] == 4 and s["rows"] == 5
    s = summarise([log], Filters(severities=frozenset({"high"})))
    assert set(s["policies"]) == {"unsafe"} and s["blocked_rows"] == 2


def test_filter_by_time(log: Path) -> None:
    """--since is inclusive and --until exclusive, in UTC."""
    s = summarise([log], Filters(since=parse_time("2025-01-01T10:40:00Z"),
                                 until=parse_time("2025-01-01T11:20")))  # fmt: skip
    assert s["requests"] == 2 and s["triggers"] == 2 and s["guard_errors"] == 1
    assert set(s["policies"]) == {"rude"}


def test_filter_by_request(log: Path) -> None:
    """--request keeps one request's records."""
    s = summarise([log], Filters(request="r4"))
    assert (s["requests"], s["triggers"], s["blocked_rows"]) == (1, 2, 1)


def test_parse_time_normalises_zones() -> None:
    """Times with an offset are converted to UTC; dates mean midnight UTC; garbage is refused."""
    assert parse_time("2025-01-01T12:00:00+02:00") == "2025-01-01T10:00:00.000000Z"
    assert parse_time("2025-01-01") == "2025-01-01T00:00:00.000000Z"
    with pytest.raises(AuditError, match="ISO 8601"):
        parse_time("yesterday")


def test_several_logs_add_up(log: Path, tmp_path: Path, sample: SimpleNamespace) -> None:
    """Several logs are summarised as one."""
    other = sample.write_log(tmp_path / "b.jsonl")
    assert summarise([log, other])["triggers"] == 12


def test_unfinished_request_still_counts_its_triggers(tmp_path: Path, sample: SimpleNamespace
                                                      ) -> None:  # fmt: skip
    """Triggers of a request whose completion is missing (a crash) are counted."""
    recs = sample.records(sample.requests[:1])[:-1]
    path = tmp_path / "cut.jsonl"
    with JsonlSink(path) as sink:
        for rec in recs:
            sink.write(rec)
    s = summarise([path])
    assert s["triggers"] == 2 and s["requests"] == 0
    assert {c["context"] for c in s["top_contexts"]} == {"[f]", "[=False]"}


def test_text_output_lists_every_table(log: Path) -> None:
    """The text form has the totals, the block rate and one table per breakdown."""
    text = format_summary(summarise([log]))
    assert "4 requests (5 rows), 6 triggers, 1 guard errors" in text
    assert "blocked: 2 of 5 rows (40.0%)" in text
    for head in ("policy", "action", "severity", "feature", "hour (UTC)", "context"):
        assert any(line.startswith(head) or f"  {head}" in line for line in text.splitlines())
    assert "2025-01-01 10:00" in text and "disables TLS" in text


def test_cli_summary_json(log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`featureguard audit summary --json` prints the summary as one JSON object."""
    assert main(["audit", "summary", str(log), "--json", "--policy", "unsafe"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["triggers"] == 2 and doc["block_rate"] == pytest.approx(0.4)


def test_cli_summary_text_and_bad_time(log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The text form prints; a malformed --since is a usage error (exit 2)."""
    assert main(["audit", "summary", str(log), "--since", "2025-01-01T11:00"]) == 0
    assert "2 requests" in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:
        main(["audit", "summary", str(log), "--since", "tuesday"])
    assert info.value.code == 2


def test_cli_summary_missing_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A missing log is a one-line error, exit 2."""
    assert main(["audit", "summary", str(tmp_path / "none.jsonl")]) == 2
    assert "cannot read audit log" in capsys.readouterr().err


def test_contexts_stay_bounded(tmp_path: Path, sample: SimpleNamespace) -> None:
    """Many distinct contexts do not grow the counter past its cap (bounded memory)."""
    reqs = [sample.Req(f"q{i}", "2025-01-02T00:00:00.000000Z", [([f"t{i}"], [" b"])],
                       [(0, 0, "watch", 2.0)]) for i in range(60)]  # fmt: skip
    tally = summary._Tally(Filters(), 10, context_cap=20)
    for rec in iter_records(sample.write_log(tmp_path / "many.jsonl", reqs)):
        tally.add(rec)
        assert len(tally.contexts) <= 20
    assert tally.result()["triggers"] == 60
