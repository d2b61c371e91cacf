"""featureguard audit report: one self-contained HTML file with the summary and every request."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from featureguard.audit.report import build_report, write_report
from featureguard.audit.trace import TraceWriter
from featureguard.cli import main
from featureguard.errors import AuditError


def data_of(page: str) -> dict:
    """The JSON block the page renders from."""
    blob = page.split('<script type="application/json" id="fg-data">', 1)[1].split("</script>")[0]
    return json.loads(blob)


def write_trace(folder: Path, sample: SimpleNamespace) -> Path:
    """A trace of request r1 of the sample log: policies on features 7, 1234 and 42 of res6,
    with the activations the log's triggers report on the triggering tokens."""
    pol = sample.policies
    layer = {"sae": "res6", "hook": "blocks.6.hook_resid_post", "features": [7, 42, 1234],
             "labels": {"7": "medical advice", "42": "insult", "1234": "disables TLS"},
             "policies": [{"name": n, "action": pol[n][0], "severity": pol[n][1],
                           "threshold": pol[n][5], "window": 1, "scope": "both",
                           "features": [[pol[n][3], 1.0]]}
                          for n in ("unsafe", "rude", "watch")]}  # fmt: skip
    acts = np.zeros((2, 6, 3), dtype=np.float32)  # rows left-padded to a prompt of 3 tokens
    acts[0, 1, 0], acts[0, 4, 2], acts[0, 5, 2] = 1.5, 4.0, 0.75
    trig = np.zeros((2, 6, 3), dtype=bool)
    trig[0, 1, 2], trig[0, 4, 0] = True, True
    row0 = [sample.tid(t) for t in ["def", " f", "():", " verify", "=False", " ok"]]
    ids = np.array([row0, [0, 0, sample.tid("hi"), sample.tid(" there"), 0, 0]], dtype=np.int32)
    valid = np.array([[True] * 6, [False, False, True, True, False, False]])
    arrays = {"ids": ids, "valid": valid, "L0.acts": acts, "L0.triggered": trig,
              "L0.seen": np.ones(6, dtype=bool)}  # fmt: skip
    TraceWriter(folder, mode="policy", k=None).write(
        "r1", arrays, {"prompt_len": 3, "pads": [0, 2], "layers": [layer]}
    )
    return folder


def test_page_is_self_contained(log: Path) -> None:
    """No URL, external resource or import of any kind: the file opens offline."""
    page = build_report([log])
    assert page.startswith("<!DOCTYPE html>")
    for banned in ("http:", "https:", "src=", "href=", "@import", "url(", "<link", "<iframe"):
        assert banned not in page, banned


def test_summary_table_and_count(log: Path) -> None:
    """The summary shows totals and one row per policy; the page says how many requests."""
    page = build_report([log])
    assert 'data-count="4">4 requests' in page
    policies = page.split("<table id=policies>", 1)[1].split("</table>")[0]
    assert re.findall(r"<tr><td>(\w+)</td><td>(\d+)</td>", policies) == [
        ("rude", "2"), ("unsafe", "2"), ("watch", "2"),
    ]  # fmt: skip
    assert "2 (40.0%)" in page and "disables TLS" in page


def test_requests_carry_tokens_marks_and_blocks(log: Path) -> None:
    """Each request has its rows' tokens, the triggers per token index and who blocked it."""
    reqs = data_of(build_report([log]))["requests"]
    assert [r["id"] for r in reqs] == ["r1", "r2", "r3", "r4"]
    row = reqs[0]["rows"][0]
    assert row["t"] == ["def", " f", "():", " verify", "=False", " ok"] and row["p"] == 3
    assert row["b"] == "unsafe"
    assert row["m"]["4"] == [["unsafe", "block", 4.0, 3.0, [[1234, "disables TLS", 4.0]]]]
    assert reqs[1]["rows"][0]["m"]["2"][0][1] == "suppress"
    assert reqs[2]["errors"] == ["boom"]


def test_token_text_cannot_break_out_of_the_page(tmp_path: Path, sample: SimpleNamespace) -> None:
    """Token text with markup stays data: no raw </script> or tag reaches the page."""
    evil = "</script><img src=x onerror=alert(1)>"
    req = sample.Req("x", "2025-01-01T00:00:00.000000Z", [([evil], ["&amp;"])],
                     [(0, 0, "watch", 2)])  # fmt: skip
    page = build_report([sample.write_log(tmp_path / "e.jsonl", [req])])
    assert evil not in page and "<img" not in page
    assert data_of(page)["requests"][0]["rows"][0]["t"] == [evil, "&amp;"]


def test_trace_adds_scores_and_features_per_token(log: Path, tmp_path: Path,
                                                  sample: SimpleNamespace) -> None:  # fmt: skip
    """With a trace, every scored token of a traced request gets each policy's score and each
    feature's activation; other requests are as without it."""
    trace = write_trace(tmp_path / "trace", sample)
    reqs = data_of(build_report([log], trace=trace))["requests"]
    r1 = reqs[0]
    assert [p["n"] for p in r1["tp"]] == ["unsafe", "rude", "watch"]
    assert r1["tf"][2] == ["res6", 1234, "disables TLS"]
    row0 = r1["rows"][0]
    assert row0["sc"][4] == [4.0, 0.0, 0.0] and row0["fa"][5] == [0.0, 0.0, 0.75]
    row1 = r1["rows"][1]
    assert row1["sc"] == [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]  # its tokens after the padding
    assert "sc" not in reqs[1]["rows"][0]


def test_page_size_must_be_positive(log: Path) -> None:
    """A page size below 1 is refused."""
    with pytest.raises(AuditError, match="page_size"):
        build_report([log], page_size=0)


def test_cli_report_writes_the_file(log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                    ) -> None:  # fmt: skip
    """`audit report LOG -o FILE` writes the page and says how many requests it holds."""
    out = tmp_path / "report.html"
    assert main(["audit", "report", str(log), "-o", str(out), "--page-size", "2"]) == 0
    assert capsys.readouterr().out.strip() == f"{out}: 4 request(s)"
    assert data_of(out.read_text(encoding="utf-8"))["page_size"] == 2
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_large_log_stays_compact(tmp_path: Path, sample: SimpleNamespace) -> None:
    """10,000 requests make one page of modest size (rendered a page at a time)."""
    hit = [(0, 2, "watch", 2.0)]
    reqs = [sample.Req(f"q{i}", "2025-01-02T00:00:00.000000Z", [(["a", " b"], [" c", " d"])],
                       hit if i % 7 == 0 else []) for i in range(10_000)]  # fmt: skip
    out = tmp_path / "big.html"
    assert write_report([sample.write_log(tmp_path / "big.jsonl", reqs)], out) == 10_000
    assert out.stat().st_size < 3_000_000
