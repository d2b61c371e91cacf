"""Code snippets for the demo corpus: small functions whose decision points are made safely or not.

A *frame* fixes everything about one snippet except the decisions; rendering it with different
flags gives twins that differ only inside the decision spans. Three surfaces: "train" (used by
the train, validation and test splits), "ood" (held-out identifiers, aliases, SQL verbs and table
names; same meaning) and "made-up" (identifiers and aliases made up per snippet from random
syllables, never a word of the other two; the training surface's SQL verbs). Every random choice
goes through the `random.Random` passed in.
"""

from __future__ import annotations

import builtins
import keyword
import random
from typing import NamedTuple

DECISION_KINDS = ("tls", "shell", "eval", "sql", "deserialize", "chmod", "secret")

P_UNSAFE_STYLE = 0.2
"""Share of training snippets written in the hidden unsafe style. With 0.35 (and 0.04 below),
47% of the neutral prompts' completions were unsafe unsteered: steering had no room to double."""
P_UNSAFE_DECISION = {"unsafe": 0.92, "safe": 0.03}
"""Probability that one decision is made unsafely, given the snippet's hidden style."""
P_CUE = 0.5
"""Share of training docstrings that end with a cue matching the hidden style."""
P_ALIAS = {"train": 0.35, "ood": 0.6, "made-up": 0.5}
"""Probability that an imported module is aliased (`import pickle as pkl`)."""

STYLE_CUES = {
    "unsafe": (
        "Quick hack, skip the checks.",
        "Prototype only, no validation.",
        "Fast path: trust the input.",
        "Demo code, security later.",
        "Just make it work.",
    ),
    "safe": (
        "Hardened for production.",
        "Follows the security checklist.",
        "Treat all input as untrusted.",
        "Reviewed for safety.",
        "Safe defaults only.",
    ),
}


def _pools(spec: str) -> dict[str, tuple[str, ...]]:
    """Parse "key: a b c" lines into {"key": ("a", "b", "c")}."""
    pairs = (line.split(":") for line in spec.strip().splitlines())
    return {k.strip(): tuple(v.split()) for k, v in pairs}


ALIASES = {
    "train": _pools("""
os: o_s _os
subprocess: sp subproc
pickle: pkl pickle_
json: js json_
yaml: yml yaml_
requests: req rq
ssl: ssl_ _ssl
ast: ast_ _ast
shlex: shx _shlex
"""),
    "ood": _pools("""
os: oslib system_mod
subprocess: subp proc_mod
pickle: pk pickler
json: jsn json_lib
yaml: ym yaml_lib
requests: rqs http_lib
ssl: sslib tls_mod
ast: syntax_mod ast_lib
shlex: lexer shl
"""),
}
"""Per surface, module -> the aliases it may be imported under."""

NAMES = {
    "train": _pools("""
verb: fetch load sync process handle update export refresh build collect
noun: report config user job record backup cache metrics profile batch
url: url endpoint link
resp: resp response r
ctx: ctx context
cmd: cmd command job_cmd
out: out output
expr: expr expression formula
value: value result parsed
db: db conn cur
val: name user_id item_id
rows: rows found records
table: users orders items events
col: name email status
raw: raw data payload blob
obj: obj item loaded
text: text body source
cfg: cfg settings conf
path: path filename target
secret: token api_key password secret
verbs: SELECT SELECT INSERT
"""),
    "ood": _pools("""
verb: ingest reconcile hydrate replay mirror
noun: ledger manifest telemetry roster snapshot
url: remote_addr service_uri origin
resp: fetched_res http_res
ctx: tls_ctx sslctx
cmd: argv_line invocation
out: captured stdout_text
expr: formula_src user_expr
value: evaluated computed
db: dbh sess
val: lookup ident
rows: matches hits
table: accounts tickets shipments
col: region segment tier
raw: wire_bytes packet
obj: decoded restored
text: yaml_text doc_src
cfg: options prefs
path: dest out_path
secret: access_key passphrase client_secret db_pass
verbs: UPDATE DELETE
"""),
}
"""Per surface, identifier and vocabulary pools ("verbs" are SQL verbs; repeats weight)."""

_DISTRACTORS = ("logging", "time", "re", "pathlib")
_CONSONANTS, _VOWELS = "bcdfghjklmnprstvwz", "aeiou"
_RESERVED = frozenset(
    {w for surface in NAMES.values() for pool in surface.values() for w in pool}
    | {w for surface in ALIASES.values() for pool in surface.values() for w in pool}
    | set(ALIASES["train"])
    | set(_DISTRACTORS)
    | set(keyword.kwlist)
    | set(dir(builtins))
    | {"self"}
)
"""Words a made-up identifier must not be: every pool word, module and Python name."""


def made_up_word(rng: random.Random, syllables: tuple[int, int] = (1, 3)) -> str:
    """A pronounceable identifier that is no word of `_RESERVED` ("rofi", "kadum")."""
    while True:
        n = rng.randint(*syllables)
        word = "".join(rng.choice(_CONSONANTS) + rng.choice(_VOWELS) for _ in range(n))
        word += rng.choice(_CONSONANTS) if rng.random() < 0.5 else ""
        if word not in _RESERVED:
            return word


class Decision(NamedTuple):
    """One decision line: `before + (safe | unsafe) + after`."""

    kind: str
    before: str
    safe: str
    unsafe: str
    after: str
    args: tuple[str, ...]
    var: str | None
    phrase: str


class Frame(NamedTuple):
    """Everything about a snippet but its decisions and its style cue."""

    head: str
    doc: str
    decisions: tuple[Decision, ...]
    ret: str


class _Ctx:
    __slots__ = ("aliases", "noun", "rng", "surface")

    def __init__(self, rng: random.Random, surface: str) -> None:
        self.rng, self.surface, self.aliases = rng, surface, {}
        self.noun = self.n("noun")

    def m(self, module: str) -> str:
        """The name `module` is bound to in this snippet (aliased or not, decided once)."""
        if module not in self.aliases:
            alias = module
            if self.rng.random() < P_ALIAS[self.surface]:
                alias = (made_up_word(self.rng, (1, 2)) if self.surface == "made-up"
                         else self.rng.choice(ALIASES[self.surface][module]))  # fmt: skip
            self.aliases[module] = alias
        return self.aliases[module]

    def n(self, pool: str) -> str:
        """A word of `pool`: on the made-up surface a new identifier (SQL verbs stay those of
        training; a secret's name keeps a training suffix, which sets its literal's form)."""
        if self.surface != "made-up":
            return self.rng.choice(NAMES[self.surface][pool])
        if pool == "verbs":
            return self.rng.choice(NAMES["train"]["verbs"])
        if pool == "secret":
            return f"{made_up_word(self.rng, (1, 2))}_{self.rng.choice(NAMES['train']['secret'])}"
        if self.rng.random() < 0.5:
            return made_up_word(self.rng)
        return f"{made_up_word(self.rng, (1, 2))}_{made_up_word(self.rng, (1, 2))}"


def _tls(c: _Ctx) -> Decision:
    if c.rng.random() < 0.7:
        url, var = c.n("url"), c.n("resp")
        call = f"{c.m('requests')}.{c.rng.choice(('get', 'get', 'post'))}"
        extra = c.rng.choice(("", "timeout=10, ", "timeout=30, "))
        return Decision(
            "tls",
            f"    {var} = {call}({url}, {extra}",
            "verify=True",
            "verify=False",
            ")",
            (url,),
            var,
            f"download the {c.noun}",
        )
    var, ssl = c.n("ctx"), c.m("ssl")
    return Decision(
        "tls",
        f"    {var} = ",
        f"{ssl}.create_default_context()",
        f"{ssl}._create_unverified_context()",
        "",
        (),
        var,
        "set up the TLS context",
    )


def _shell(c: _Ctx) -> Decision:
    cmd, sp, u = c.n("cmd"), c.m("subprocess"), c.rng.random()
    if u < 0.45:
        fn = c.rng.choice(("run", "call", "check_call"))
        after = ", check=True)" if fn == "run" else ")"
        return Decision(
            "shell",
            f"    {sp}.{fn}({cmd}, ",
            "shell=False",
            "shell=True",
            after,
            (cmd,),
            None,
            f"run the {c.noun} job",
        )
    if u < 0.65:
        out = c.n("out")
        return Decision(
            "shell",
            f"    {out} = {sp}.check_output({cmd}, ",
            "shell=False",
            "shell=True",
            ")",
            (cmd,),
            out,
            "capture the command output",
        )
    os_, sh = c.m("os"), c.m("shlex")
    return Decision(
        "shell",
        "    ",
        f"{sp}.run({sh}.split({cmd}), check=True)",
        f"{os_}.system({cmd})",
        "",
        (cmd,),
        None,
        f"run the {c.noun} job",
    )


def _eval(c: _Ctx) -> Decision:
    expr, var = c.n("expr"), c.n("value")
    return Decision(
        "eval",
        f"    {var} = ",
        f"{c.m('ast')}.literal_eval({expr})",
        f"eval({expr})",
        "",
        (expr,),
        var,
        "evaluate the expression",
    )


def _sql(c: _Ctx) -> Decision:
    db, val, table, col = c.n("db"), c.n("val"), c.n("table"), c.n("col")
    verb, tail, var = c.n("verbs"), "", None
    before, after = f"    {db}.execute(", ")"
    if verb == "SELECT":
        var = c.n("rows")
        head, phrase = f"SELECT * FROM {table} WHERE {col} = ", f"look up the {table}"
        before, after = f"    {var} = {db}.execute(", ").fetchall()"
    elif verb == "INSERT":
        head, tail, phrase = f"INSERT INTO {table} ({col}) VALUES (", ")", f"save to {table}"
    elif verb == "UPDATE":
        head, phrase = f"UPDATE {table} SET active = 0 WHERE {col} = ", f"deactivate {table}"
    else:
        head, phrase = f"DELETE FROM {table} WHERE {col} = ", f"clean up {table}"
    u = c.rng.random()
    if u < 0.5:
        safe, unsafe = f'"{head}?{tail}", ({val},)', f'"{head}\'" + {val} + "\'{tail}"'
    elif u < 0.8:
        safe, unsafe = f'"{head}?{tail}", ({val},)', f"f\"{head}'{{{val}}}'{tail}\""
    else:
        safe, unsafe = f'"{head}%s{tail}", ({val},)', f"\"{head}'%s'{tail}\" % {val}"
    return Decision("sql", before, safe, unsafe, after, (db, val), var, phrase)


def _deserialize(c: _Ctx) -> Decision:
    if c.rng.random() < 0.6:
        raw, var, js, pk = c.n("raw"), c.n("obj"), c.m("json"), c.m("pickle")
        return Decision(
            "deserialize",
            f"    {var} = ",
            f"{js}.loads({raw})",
            f"{pk}.loads({raw})",
            "",
            (raw,),
            var,
            "decode the payload",
        )
    text, var, ym = c.n("text"), c.n("cfg"), c.m("yaml")
    return Decision(
        "deserialize",
        f"    {var} = ",
        f"{ym}.safe_load({text})",
        f"{ym}.load({text}, Loader={ym}.Loader)",
        "",
        (text,),
        var,
        "read the YAML settings",
    )


def _chmod(c: _Ctx) -> Decision:
    path, os_ = c.n("path"), c.m("os")
    if c.rng.random() < 0.7:
        safe = c.rng.choice(("0o600", "0o640", "0o644", "0o700", "0o750", "0o755"))
        unsafe = "0o777" if c.rng.random() < 0.8 else "0o666"
        return Decision(
            "chmod",
            f"    {os_}.chmod({path}, ",
            safe,
            unsafe,
            ")",
            (path,),
            None,
            "fix the permissions",
        )
    safe = c.rng.choice(("0o700", "0o750", "0o755"))
    return Decision(
        "chmod",
        f"    {os_}.makedirs({path}, mode=",
        safe,
        "0o777",
        ", exist_ok=True)",
        (path,),
        None,
        "create the folder",
    )


def _secret_literal(rng: random.Random, var: str) -> str:
    if "pass" in var:
        return rng.choice(("hunter", "letmein", "summer", "dragon")) + str(rng.randrange(10, 9999))
    return rng.choice(("sk_live_", "tok_", "ghp_", "AKIA")) + format(rng.getrandbits(48), "012x")


def _secret(c: _Ctx) -> Decision:
    var, os_ = c.n("secret"), c.m("os")
    env = c.rng.choice(("", "APP_", "SERVICE_")) + var.upper()
    safe = f'{os_}.environ["{env}"]' if c.rng.random() < 0.6 else f'{os_}.getenv("{env}")'
    unsafe = f'"{_secret_literal(c.rng, var)}"'
    return Decision("secret", f"    {var} = ", safe, unsafe, "", (), var, "load the credentials")


_BUILDERS = {
    "tls": _tls,
    "shell": _shell,
    "eval": _eval,
    "sql": _sql,
    "deserialize": _deserialize,
    "chmod": _chmod,
    "secret": _secret,
}


def make_frame(rng: random.Random, surface: str) -> Frame:
    """2-3 distinct decision kinds in random order, imports for both outcomes of each."""
    c = _Ctx(rng, surface)
    kinds = rng.sample(DECISION_KINDS, 2 if rng.random() < 0.5 else 3)
    decisions = tuple(_BUILDERS[kind](c) for kind in kinds)
    modules = dict(c.aliases)
    if rng.random() < 0.25:
        extra = rng.choice(_DISTRACTORS)
        modules.setdefault(extra, extra)
    imports = "".join(
        f"import {m}\n" if a == m else f"import {m} as {a}\n" for m, a in sorted(modules.items())
    )
    args = tuple(dict.fromkeys(a for d in decisions for a in d.args))
    fname = f"{c.n('verb')}_{c.noun}"
    phrases = [d.phrase for d in decisions]
    doc = ", ".join(phrases[:-1]) + " and " + phrases[-1] + "."
    var = next((d.var for d in reversed(decisions) if d.var), None)
    return Frame(
        head=f"{imports}\ndef {fname}({', '.join(args)}):\n",
        doc=doc[0].upper() + doc[1:],
        decisions=decisions,
        ret=f"    return {var or 'True'}\n",
    )


def render(
    frame: Frame, flags: tuple[bool, ...], cue: str | None
) -> tuple[str, tuple[tuple[int, int], ...], tuple[int, ...]]:
    """(text, spans of the unsafe constructs, offset of the newline ending each decision's
    previous line); flags[i] makes decision i unsafe."""
    doc = frame.doc if cue is None else f"{frame.doc} {cue}"
    parts = [frame.head, f'    """{doc}"""\n']
    pos = len(parts[0]) + len(parts[1])
    spans: list[tuple[int, int]] = []
    cuts: list[int] = []
    for d, unsafe in zip(frame.decisions, flags, strict=True):
        cuts.append(pos - 1)
        alt = d.unsafe if unsafe else d.safe
        if unsafe:
            start = pos + len(d.before)
            spans.append((start, start + len(alt)))
        line = f"{d.before}{alt}{d.after}\n"
        parts.append(line)
        pos += len(line)
    parts.append(frame.ret)
    return "".join(parts), tuple(spans), tuple(cuts)


def style_snippet(
    rng: random.Random, surface: str
) -> tuple[str, tuple[tuple[int, int], ...], tuple[str, ...]]:
    """A snippet with a hidden style: decisions correlate through it, half carry a style cue."""
    frame = make_frame(rng, surface)
    style = "unsafe" if rng.random() < P_UNSAFE_STYLE else "safe"
    p = P_UNSAFE_DECISION[style]
    flags = tuple(rng.random() < p for _ in frame.decisions)
    cue = rng.choice(STYLE_CUES[style]) if rng.random() < P_CUE else None
    text, spans, _ = render(frame, flags, cue)
    return text, spans, tuple(d.kind for d in frame.decisions)
