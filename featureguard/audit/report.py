"""One self-contained HTML file for people: a summary table, then every request with its tokens
coloured by policy score, hover details (policies, features, labels, activations), and blocked
and suppressed tokens marked.

The page fetches nothing: CSS and script are inline and the data is one JSON block that the
script renders a page of requests at a time (``page_size``), so 10,000 requests stay readable
and light. Without a trace only triggering tokens are coloured (the log has scores only there);
with one (``trace=``) every token is, and hovering shows every traced feature.
"""

from __future__ import annotations

import html
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from featureguard.audit.read import read
from featureguard.audit.report_page import TEMPLATE
from featureguard.audit.requests import RequestGrouper, RequestView
from featureguard.audit.summary import summarise
from featureguard.audit.trace import TraceReader, TraceRequest
from featureguard.errors import AuditError

__all__ = ["build_report", "write_report"]

_DIGITS = 4


def _round(x: float) -> float:
    return round(float(x), _DIGITS)


def _trace_part(req: TraceRequest, row: int, n_tokens: int) -> dict[str, Any]:
    """Per token of the row: each traced policy's score, each traced feature's activation and,
    for topk traces, the 5 largest features."""
    pad = req.pads[row]
    span = slice(pad, min(pad + n_tokens, req.valid.shape[1]))
    scores, acts, tops = [], [], []
    for layer in req.layers:
        a = layer.acts[row, span].astype(np.float64)  # [n, n_feat]
        col = {f: i for i, f in enumerate(layer.features)}
        for p in layer.policies:
            w = np.zeros(len(layer.features))
            for f, weight in p.features:
                w[col[f]] = weight
            scores.append(a @ w)
        acts.append(a)
        if layer.top_values is not None:
            tops.append((layer.top_indices[row, span, :5], layer.top_values[row, span, :5]))
    n = span.stop - span.start if span.stop > span.start else 0
    valid = req.valid[row, span]
    out: dict[str, Any] = {
        "sc": [[_round(s[i]) for s in scores] if valid[i] else None for i in range(n)],
        "fa": [[_round(v) for a in acts for v in a[i]] if valid[i] else None for i in range(n)],
    }
    if tops:
        out["tk"] = [[[int(ix), _round(v)] for idx, val in tops for ix, v in zip(idx[i], val[i],
                                                                               strict=True)]
                     if valid[i] else None for i in range(n)]  # fmt: skip
    return out


def _trace_head(req: TraceRequest) -> dict[str, Any]:
    pols = [{"n": p.name, "a": p.action, "th": p.threshold} for L in req.layers for p in L.policies]
    feats = [[L.sae, f, L.labels.get(f)] for L in req.layers for f in L.features]
    return {"tp": pols, "tf": feats}


def _request_json(view: RequestView, traced: TraceRequest | None) -> dict[str, Any]:
    done = view.completed
    n_rows = done.sequences if done else 1 + max((t.sequence for t in view.triggers), default=0)
    rows = []
    for r in range(n_rows):
        row = done.rows[r] if done and r < len(done.rows) else None
        marks: dict[int, list[Any]] = {}
        for t in view.triggers:
            if t.sequence == r:
                feats = [[f.index, f.label, _round(f.activation)] for f in t.features]
                entry = [t.policy, t.action, _round(t.score), _round(t.threshold), feats]
                marks.setdefault(t.token_index, []).append(entry)
        if row is not None:
            ids = row.ids
            tokens = list(row.tokens) if row.tokens and len(row.tokens) == len(ids) else None
            item = {"t": tokens or [f"#{i}" for i in ids], "p": len(row.prompt_ids)}
        else:  # no completion record: only the triggering tokens are known
            known = sorted(marks)
            text = {t.token_index: t.token or f"#{t.token_id}" for t in view.triggers}
            item = {"t": [text[i] for i in known], "p": 0, "only": known}
        item |= {"m": marks, "b": row.blocked_by if row else None}
        if traced is not None and row is not None and r < len(traced.pads):
            item |= _trace_part(traced, r, len(row.ids))
        rows.append(item)
    out = {"id": view.request_id, "time": done.timestamp if done else "", "rows": rows,
           "errors": [e.error for e in view.errors]}  # fmt: skip
    if traced is not None:
        out |= _trace_head(traced)
    return out


def _requests(logs: Sequence[str | os.PathLike[str]]) -> list[RequestView]:
    grouper, views = RequestGrouper(), []
    for log in logs:
        for rec in read(log):
            view = grouper.add(rec)
            if view is not None:
                views.append(view)
    return views + grouper.unfinished()


def _summary_html(s: dict[str, Any]) -> str:
    e = html.escape
    facts = [("requests", f"{s['requests']:,}"), ("rows", f"{s['rows']:,}"),
             ("triggers", f"{s['triggers']:,}"),
             ("blocked rows", f"{s['blocked_rows']:,} ({100 * s['block_rate']:.1f}%)"),
             ("guard errors", f"{s['guard_errors']:,}")]  # fmt: skip
    top = "".join(f"<div class=fact><b>{v}</b><span>{k}</span></div>" for k, v in facts)
    body = "".join(
        f"<tr><td>{e(p)}</td><td>{v['triggers']:,}</td><td>{v['requests']:,}</td>"
        f"<td>{v['blocked_rows']:,}</td></tr>"
        for p, v in s["policies"].items()
    )
    feats = "".join(
        f"<tr><td>{e(k)}</td><td>{e(v['label'] or '')}</td><td>{v['triggers']:,}</td>"
        f"<td>{v['mean_activation']:.3f}</td><td>{v['max_activation']:.3f}</td></tr>"
        for k, v in s["features"].items()
    )
    return (
        f"<div class=facts>{top}</div><div class=tables>"
        "<table id=policies><thead><tr><th>policy</th><th>triggers</th><th>requests</th>"
        f"<th>blocked rows</th></tr></thead><tbody>{body}</tbody></table>"
        "<table id=features><thead><tr><th>feature</th><th>label</th><th>triggers</th>"
        f"<th>mean act</th><th>max act</th></tr></thead><tbody>{feats}</tbody></table></div>"
    )


def build_report(
    logs: Sequence[str | os.PathLike[str]],
    *,
    trace: str | os.PathLike[str] | None = None,
    page_size: int = 50,
    title: str | None = None,
) -> str:
    """The HTML report of the audit files ``logs`` (and, optionally, their trace folder)."""
    return _build(logs, trace, page_size, title)[0]


def _build(
    logs: Sequence[str | os.PathLike[str]],
    trace: str | os.PathLike[str] | None,
    page_size: int,
    title: str | None,
) -> tuple[str, int]:
    if page_size < 1:
        raise AuditError(f"page_size must be >= 1, got {page_size}")
    views = _requests(logs)
    shards: dict[str, str] = {}
    reader = TraceReader(trace) if trace is not None else None
    if reader is not None:
        shards = {e["request_id"]: e["shard"] for e in reader.entries}
    data = []
    for view in views:
        shard = shards.get(view.request_id)
        data.append(_request_json(view, reader.load(shard) if reader and shard else None))
    payload = {"page_size": page_size, "traced": reader is not None, "requests": data}
    blob = json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    blob = blob.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")
    name = title or "featureguard audit report: " + ", ".join(Path(p).name for p in logs)
    summary = _summary_html(summarise(logs))
    values = {"TITLE": html.escape(name), "SUMMARY": summary, "COUNT": str(len(data)),
              "DATA": blob}  # fmt: skip
    page = re.sub(r"\{\{(TITLE|SUMMARY|COUNT|DATA)\}\}", lambda m: values[m[1]], TEMPLATE)
    return page, len(data)


def write_report(
    logs: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    trace: str | os.PathLike[str] | None = None,
    page_size: int = 50,
) -> int:
    """Write :func:`build_report` to ``out`` (atomically); return the number of requests."""
    text, count = _build(logs, trace, page_size, None)
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, out)
    except OSError as exc:
        raise AuditError(f"cannot write report {out}: {exc.strerror or exc}") from exc
    return count
