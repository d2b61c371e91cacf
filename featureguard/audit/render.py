"""One request as terminal text: prompt and reply per row, triggering tokens marked.

With colour (ANSI; for a TTY), a triggering token gets its action's background: block red,
suppress yellow, steer magenta, log cyan. Without, it is wrapped in brackets, ``[tok]``. Either
way a numbered list of the triggers follows each row. Logs kept without text show token ids.
"""

from __future__ import annotations

from collections.abc import Sequence

from featureguard.audit.read import PolicyTriggered, Row
from featureguard.audit.requests import RequestView

__all__ = ["ACTION_ORDER", "render_request"]

ACTION_ORDER = ("block", "suppress", "steer", "log")
"""Which action marks a token that several policies triggered on: the first in this order."""
_ANSI = {"block": "\x1b[1;97;41m", "suppress": "\x1b[1;30;43m", "steer": "\x1b[1;97;45m",
         "log": "\x1b[1;30;46m"}  # fmt: skip
_DIM, _BOLD, _RESET = "\x1b[2m", "\x1b[1m", "\x1b[0m"


def _text(token: str) -> str:
    return token.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")


def _marked(tokens: Sequence[str], hits: dict[int, list[PolicyTriggered]], start: int,
            color: bool) -> str:  # fmt: skip
    out = []
    for i, tok in enumerate(tokens, start):
        if i not in hits:
            out.append(tok)
            continue
        action = min((t.action for t in hits[i]), key=_rank)
        out.append(f"{_ANSI.get(action, _BOLD)}{tok}{_RESET}" if color else f"[{tok}]")
    return "".join(out)


def _rank(action: str) -> int:
    return ACTION_ORDER.index(action) if action in ACTION_ORDER else len(ACTION_ORDER)


def _tokens(row: Row) -> list[str]:
    if row.tokens is not None and len(row.tokens) == len(row.ids):
        return [_text(t) for t in row.tokens]
    return [f"#{i} " for i in row.ids]


def _trigger_line(n: int, t: PolicyTriggered, color: bool) -> str:
    where = "prompt" if t.scope == "prompt" else "reply"
    tok = repr(t.token) if t.token is not None else f"id {t.token_id}"
    feats = ", ".join(f"{f.index}" + (f" ({f.label})" if f.label else "") + f" = {f.activation:.3f}"
                      for f in t.features)  # fmt: skip
    name = f"{_BOLD}{t.policy}{_RESET}" if color else t.policy
    return (f"  {n}. {where} token {t.token_index} {tok}: {name} ({t.action}, {t.severity}) "
            f"score {t.score:.3f} > {t.threshold:.3f}; features {feats}")  # fmt: skip


def _row(index: int, row: Row | None, triggers: list[PolicyTriggered], color: bool) -> list[str]:
    blocked = f" (blocked by {row.blocked_by})" if row is not None and row.blocked_by else ""
    rule = f"-- row {index}{blocked} "
    out = [(f"{_DIM}{rule}{_RESET}" if color else rule) + "-" * max(0, 60 - len(rule))]
    hits: dict[int, list[PolicyTriggered]] = {}
    for t in triggers:
        hits.setdefault(t.token_index, []).append(t)
    if row is not None:
        tokens, n_prompt = _tokens(row), len(row.prompt_ids)
        out.append("prompt: " + _marked(tokens[:n_prompt], hits, 0, color))
        reply = _marked(tokens[n_prompt:], hits, n_prompt, color)
        out.append("reply:  " + reply + (" [withheld from the user]" if blocked else ""))
    out += [_trigger_line(n, t, color) for n, t in enumerate(triggers, 1)]
    return out


def render_request(view: RequestView, *, color: bool = False) -> str:
    """The request's rows with their triggering tokens marked, and its triggers listed."""
    done = view.completed
    when = done.timestamp if done else view.triggers[0].timestamp if view.triggers else ""
    n_rows = done.sequences if done else 1 + max((t.sequence for t in view.triggers), default=0)
    head = (f"request {view.request_id}  {when}  {n_rows} row(s), "
            f"{len(view.triggers)} trigger(s)")  # fmt: skip
    if done is None:
        head += "  (no request_completed record: tokens unknown)"
    out = [f"{_BOLD}{head}{_RESET}" if color else head]
    out += [f"  guard error: {e.error}" for e in view.errors]
    rows = done.rows if done else ()
    for r in range(n_rows):
        mine = sorted((t for t in view.triggers if t.sequence == r), key=lambda t: t.token_index)
        if r < len(rows) or mine:
            out += _row(r, rows[r] if r < len(rows) else None, mine, color)
    return "\n".join(out) + "\n"
