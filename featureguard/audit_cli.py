"""`featureguard audit summary | show | tail | replay | report`: reading audit logs and traces.

`cli.py` builds the `audit` subparser (and `audit verify`) and calls `add_audit_commands`.
Exit codes as in cli.py: 0 done, 1 when `show` finds no such request, 2 on a usage or reading
error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import deque
from dataclasses import asdict
from typing import Any

from featureguard.errors import AuditError

__all__ = ["add_audit_commands", "use_color"]


def use_color(choice: str, stream: Any = None) -> bool:
    """`always`, `never`, or `auto`: colour when ``stream`` (stdout) is a TTY and NO_COLOR is
    not set."""
    if choice != "auto":
        return choice == "always"
    stream = stream or sys.stdout
    return bool(getattr(stream, "isatty", lambda: False)()) and not os.environ.get("NO_COLOR")


def _when(text: str) -> str:
    from featureguard.audit.summary import parse_time

    try:
        return parse_time(text)
    except AuditError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _summary(args: argparse.Namespace) -> int:
    from featureguard.audit.summary import Filters, format_summary, summarise

    filters = Filters(policies=frozenset(args.policy or ()),
                      severities=frozenset(args.severity or ()), since=args.since,
                      until=args.until, request=args.request)  # fmt: skip
    result = summarise(args.logs, filters, top=args.top)
    print(json.dumps(result, indent=2) if args.json else format_summary(result), end="\n")
    return 0


def _show(args: argparse.Namespace) -> int:
    from featureguard.audit.read import read
    from featureguard.audit.render import render_request
    from featureguard.audit.requests import RequestGrouper

    grouper = RequestGrouper(keep=lambda rec: rec.request_id == args.request)
    views = [v for rec in read(args.log) if (v := grouper.add(rec)) is not None]
    views += grouper.unfinished()
    if not views:
        print(f"{args.log}: no request {args.request!r}", file=sys.stderr)
        return 1
    color = use_color(args.color)
    print("\n".join(render_request(v, color=color) for v in views), end="")
    return 0


def _tail(args: argparse.Namespace) -> int:
    from featureguard.audit.render import render_request
    from featureguard.audit.requests import Follower, RequestGrouper

    color, follower, grouper = use_color(args.color), Follower(args.log), RequestGrouper()
    last = deque((v for rec in follower.poll() if (v := grouper.add(rec))), maxlen=args.lines)
    for view in last:
        print(render_request(view, color=color), flush=True)
    if not args.follow:
        return 0
    try:
        for rec in follower.follow(interval=args.interval):
            view = grouper.add(rec)
            if view is not None:
                print(render_request(view, color=color), flush=True)
    except KeyboardInterrupt:
        pass
    return 0


def _replay(args: argparse.Namespace) -> int:
    if args.ray:  # the shards replayed by Ray Data actors (extra `ray`)
        from featureguard.integrations.ray.data import replay as replay_on_ray

        report = replay_on_ray(args.trace, args.policies, workers=args.workers,
                               address=args.ray_address)  # fmt: skip
    else:
        from featureguard.replay import replay

        report = replay(args.trace, args.policies)
    if args.json:
        doc = {"requests": report.requests, "rows": report.rows, "tokens": report.tokens,
               "policies": [asdict(p) for p in report.policies],
               "added": [asdict(t) for t in report.added],
               "removed": [asdict(t) for t in report.removed],
               "approximate": list(report.approximate), "notes": list(report.notes)}  # fmt: skip
        print(json.dumps(doc, indent=2))
        return 0
    print(f"replayed {report.requests:,} request(s), {report.rows:,} row(s), "
          f"{report.tokens:,} scored token(s) of {args.trace} against {args.policies}")  # fmt: skip
    head = ("policy", "did", "would", "added", "removed", "blocked rows did", "would")
    rows = [head] + [(p.policy, p.did, p.would, p.added, p.removed, p.blocked_rows_did,
                      p.blocked_rows_would) for p in report.policies]  # fmt: skip
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(head))]
    for r in rows:
        print("  ".join(str(c).rjust(w) if i else str(c).ljust(w)
                        for i, (c, w) in enumerate(zip(r, widths, strict=True))))  # fmt: skip
    changes = [("+", t) for t in report.added] + [("-", t) for t in report.removed]
    for sign, t in changes[: args.examples]:
        where = "prompt" if t.in_prompt else "reply"
        print(f"  {sign} {t.request_id} row {t.sequence} {where} token {t.token_index} "
              f"(id {t.token_id}): {t.policy} score {t.score:.3f} "
              f"vs {t.threshold:.3f}")  # fmt: skip
    if len(changes) > args.examples:
        print(f"  ... {len(changes) - args.examples} more change(s) (--examples N, or --json)")
    for name in report.approximate:
        print(f"approximate: {name} read from top-k lists (0 where not among a token's top k)")
    for note in report.notes:
        print(f"note: {note}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from featureguard.audit.report import write_report

    count = write_report(args.logs, args.output, trace=args.trace, page_size=args.page_size)
    print(f"{args.output}: {count:,} request(s)")
    return 0


def _color_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--color",
        choices=("auto", "always", "never"),
        default="auto",
        help="mark tokens with ANSI colour (auto: when stdout is a terminal)",
    )


def add_audit_commands(audit: argparse._SubParsersAction) -> None:
    """Add summary, show, tail, replay and report to the `audit` subparsers."""
    p = audit.add_parser("summary", help="counts per policy, action, severity, feature, hour")
    p.add_argument("logs", nargs="+")
    p.add_argument("--policy", action="append", help="only this policy (repeatable)")
    p.add_argument("--severity", action="append", choices=("low", "medium", "high"))
    p.add_argument("--since", type=_when, help="records at or after this ISO time (UTC)")
    p.add_argument("--until", type=_when, help="records before this ISO time (UTC)")
    p.add_argument("--request", help="only this request id")
    p.add_argument("--top", type=int, default=10, help="contexts listed (default 10)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_summary)

    p = audit.add_parser("show", help="one request's replies with triggering tokens marked")
    p.add_argument("log")
    p.add_argument("--request", required=True, help="the request id")
    _color_flag(p)
    p.set_defaults(func=_show)

    p = audit.add_parser("tail", help="print requests as they complete (like tail -f)")
    p.add_argument("log")
    p.add_argument("-n", "--lines", type=int, default=10, help="requests shown first")
    p.add_argument("--no-follow", dest="follow", action="store_false",
                   help="print the last requests and exit")  # fmt: skip
    p.add_argument("--interval", type=float, default=0.5, help="seconds between polls")
    _color_flag(p)
    p.set_defaults(func=_tail)

    p = audit.add_parser("replay", help="re-score a trace with other policies; compare")
    p.add_argument("trace", help="a trace folder (audit.trace.path)")
    p.add_argument("--policies", required=True, help="the policy file to replay")
    p.add_argument("--examples", type=int, default=20, help="changed triggers listed")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--ray", action="store_true",
                   help="replay the trace shards on Ray Data actors (extra `ray`)")  # fmt: skip
    p.add_argument("--workers", type=int, default=1, help="with --ray: actors (default 1)")
    p.add_argument("--ray-address", help="with --ray: a Ray cluster (default: $RAY_ADDRESS, "
                   "else local)")  # fmt: skip
    p.set_defaults(func=_replay)

    p = audit.add_parser("report", help="a self-contained HTML report")
    p.add_argument("logs", nargs="+")
    p.add_argument("--trace", help="the trace folder: colour every token by score")
    p.add_argument("-o", "--output", required=True, help="the HTML file to write")
    p.add_argument("--page-size", type=int, default=50, help="requests per page")
    p.set_defaults(func=_report)
