"""Property: any input either loads or raises PolicyError with located problems, nothing else.

Every test here is marked `fuzz` through `@fuzz(n)` (tests/support/fuzzing.py): n cases under
the default profile, 20 n under `make fuzz`, each bounded in time. The classes of input: random
documents and mutations of a valid one (wrong types, NaN, infinities, huge integers, unknown
keys), YAML text edited or made of YAML's own syntax, scalars spelled every way YAML spells
them, duplicated and reindented lines, deep nesting, very long strings, and raw bytes in a file.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from fuzzing import fuzz
from hypothesis import given
from hypothesis import strategies as st

from featureguard.errors import PolicyError
from featureguard.policy import PolicySet, load_policies, load_policies_text
from featureguard.policy.yaml_positions import MAX_CHARS

VALID: dict[str, Any] = {
    "version": 1,
    "fail_mode": "open",
    "saes": {"res6": {"path": "saes/res6", "hook": "blocks.6.hook_resid_post"}},
    "policies": [
        {
            "name": "unsafe-code",
            "sae": "res6",
            "features": [{"index": 1234, "label": "tls", "weight": 1.0, "max": 7.5}],
            "threshold": 3.0,
            "action": "suppress",
            "suppress": {"method": "clamp", "times_max": -0.5, "mode": "always"},
            "window": 2,
        },
        {
            "name": "calm",
            "sae": "res6",
            "features": [{"index": 5}],
            "threshold": 1,
            "action": "log",
        },
    ],
    "audit": {"path": "audit.jsonl", "include_text": False},
}
TEXT = yaml.safe_dump(VALID, sort_keys=False)
LINES = TEXT.splitlines()
# Lines `key: scalar` of TEXT (list items included): where a value can be swapped for another.
SLOTS = [i for i, line in enumerate(LINES) if re.fullmatch(r"\s*(- )?\w+: \S.*", line)]
KEYS = sorted({"version", "saes", "policies", "audit", "path", "index", "max", "value", "mode"})
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(),  # NaN and infinities included
    st.text(max_size=20),
    st.sampled_from(["log", "block", "steer", "suppress", "clamp", "ablate", "hf://o/r", "res6"]),
)
YAML_CHARS = "{}[]:,-?#&*!|>'\"%@`\n\t .0123456789abcvx~<="
DOCS = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(
            st.one_of(st.sampled_from(KEYS), st.text(max_size=8), st.integers(0, 2)),
            inner,
            max_size=4,
        ),
    ),
    max_leaves=20,
)
# Scalars as YAML writes them: every spelling of numbers, nulls, booleans and dates PyYAML
# resolves (YAML 1.1: sexagesimal, octal, binary), explicit tags, and collections in their place.
SPELLINGS = [
    ".nan", ".NaN", "-.inf", "+.Inf", "1e999", "-1e999", "1e-999", "1.0e+308", "0x1F", "0o17",
    "017", "0b101", "1_000", "1:30", "190:20:30.15", "-0", "+1", "1.", ".5", "~", "null", "NULL",
    "", "true", "yes", "No", "on", "OFF", "y", "2001-12-14", "2001-12-14t21:59:43.10-05:00",
    "2001-02-30", "!!binary aGVsbG8=", "!!binary ???", "!!float abc", "!!int 1.5", "!!int",
    "!!str 1", "!!bool maybe", "!!null x", "!!timestamp 2001-13-45", "!!set {a, b}",
    "!!omap [a: 1]", "!!pairs [a: 1]", "!!python/object/apply:os.system ['true']", "!foo bar",
    "!<tag:x,2000:y> 1", "[]", "{}", "[1, 2]", "{a: 1}", "'1'", '"\\x00"', '"\\uD800"', "&a 1",
    "*a", "&a [*a]", "{<<: {value: 1}}", "|\n  text", ">-\n  folded", "? a", "- 1", "'", '"',
]  # fmt: skip
SPELLED = st.one_of(
    st.sampled_from(SPELLINGS),
    st.tuples(
        st.sampled_from(["", "-", "+", "0x", "0o", "0b"]), st.text("0123456789", min_size=1)
    ).map("".join),
    # huge integers: around Python's limit of 4300 digits for int(str), and far past it
    st.tuples(st.sampled_from(["", "-"]), st.integers(1, 9000)).map(lambda t: t[0] + "9" * t[1]),
    st.floats().map(repr),  # nan, inf: plain strings in YAML, not numbers
    st.text("0123456789_:.eE+-xob", min_size=1, max_size=40),
    st.text(max_size=40).map(lambda s: yaml.safe_dump(s, default_style='"').strip()),
)
# Pieces of YAML syntax for texts that are almost, but not quite, YAML.
TOKENS = [
    "- ", "? ", ": ", ":", ", ", "[", "]", "{", "}", "&a ", "*a", "&b ", "*b", "!!str ", "!!map ",
    "!!seq ", "!!python/name:os.system ", "!t ", "<<: ", "<<: *a", "---", "...", "%YAML 1.1",
    "%TAG ! tag:x,2000:", "|", "|-", ">+", "'", "''", '"', '\\"', '"\\u', "# c", "\n", "\n  ",
    "\n    ", "\t", " ", "\ufeff", "\x00", "\x85", "\u2028", "\ud800", "version", "saes",
    "policies", "features", "index", "threshold", "action", "1", "-1", ".nan", "1e999", "x",
]  # fmt: skip


def _check(load: Callable[[], object], file: str, lines: bool) -> None:
    """`load()` returns a PolicySet, or raises PolicyError whose every problem is located.

    With `lines`, each problem has a line too, unless it is about the whole file (too big).
    """
    try:
        result = load()
    except PolicyError as exc:
        assert exc.problems
        for problem in exc.problems:
            assert problem.file == file and isinstance(problem.key, str) and problem.message
            whole_file = problem.message.startswith("expected a policy file of at most")
            assert not lines or whole_file or (problem.line or 0) >= 1, problem
    else:
        assert isinstance(result, PolicySet)


def _check_text(text: str) -> None:
    _check(lambda: load_policies_text(text, file="f.yaml"), "f.yaml", True)


def _mutate(doc: Any, data: st.DataObject) -> Any:
    """`doc` with one value somewhere in it replaced, removed, or given a sibling key."""
    if isinstance(doc, dict) and doc and data.draw(st.booleans()):
        key = data.draw(st.sampled_from(sorted(doc)))
        action = data.draw(st.sampled_from(["recurse", "replace", "delete", "add"]))
        out = dict(doc)
        if action == "recurse":
            out[key] = _mutate(doc[key], data)
        elif action == "replace":
            out[key] = data.draw(DOCS)
        elif action == "delete":
            del out[key]
        else:  # an unknown key, or a known one where it does not belong
            out[data.draw(st.one_of(st.sampled_from(KEYS), st.text(max_size=12)))] = data.draw(DOCS)
        return out
    if isinstance(doc, list) and doc and data.draw(st.booleans()):
        i = data.draw(st.integers(0, len(doc) - 1))
        return [*doc[:i], _mutate(doc[i], data), *doc[i + 1 :]]
    return data.draw(DOCS)


def _with_value(data: st.DataObject, value: str) -> str:
    """TEXT with the value of one of its `key: scalar` lines replaced by `value`."""
    i = data.draw(st.sampled_from(SLOTS))
    key = LINES[i].split(": ", 1)[0]
    return "\n".join([*LINES[:i], f"{key}: {value}", *LINES[i + 1 :]]) + "\n"


@fuzz(1000)
@given(doc=DOCS)
def test_arbitrary_documents(doc: Any) -> None:
    """Random nested dicts, lists and scalars, as a dict and as YAML, never crash the loader."""
    _check(
        lambda: load_policies(doc if isinstance(doc, dict) else {"policies": doc}), "<dict>", False
    )
    _check_text(yaml.safe_dump(doc))


@fuzz(1500)
@given(data=st.data())
def test_mutations_of_a_valid_file(data: st.DataObject) -> None:
    """A valid document with one random change (wrong type, NaN, huge number, unknown key...)
    loads or gives located problems."""
    doc = _mutate(VALID, data)
    doc = {"version": doc} if isinstance(doc, str) else doc  # a str source would name a file
    _check(lambda: load_policies(doc), "<dict>", False)
    _check_text(yaml.safe_dump(doc, sort_keys=False))


@fuzz(1000)
@given(data=st.data())
def test_text_edits_of_a_valid_file(data: st.DataObject) -> None:
    """The valid file's YAML text with a random slice replaced by random characters."""
    start = data.draw(st.integers(0, len(TEXT)))
    end = data.draw(st.integers(start, min(len(TEXT), start + 20)))
    _check_text(TEXT[:start] + data.draw(st.text(max_size=10)) + TEXT[end:])


@fuzz(1000)
@given(text=st.one_of(st.text(max_size=200), st.text(alphabet=YAML_CHARS, max_size=200)))
def test_random_text(text: str) -> None:
    """Random text, also made of YAML's punctuation, loads or gives problems with a line."""
    _check_text(text)


@fuzz(1000)
@given(pieces=st.lists(st.sampled_from(TOKENS), max_size=60))
def test_yaml_syntax_soup(pieces: list[str]) -> None:
    """Texts made of YAML's own syntax (anchors, aliases, tags, merge keys, directives, block
    scalars, BOM, forbidden characters): malformed YAML gives a located problem."""
    _check_text("".join(pieces))


@fuzz(1000)
@given(data=st.data(), value=SPELLED)
def test_scalar_spellings_at_every_value(data: st.DataObject, value: str) -> None:
    """Each value of the valid file spelled as NaN, infinity, a 6000-digit integer, a date, a
    tag, a collection...: the loader keeps it or names the line and key it rejects."""
    _check_text(_with_value(data, value))


@fuzz(600)
@given(data=st.data())
def test_line_edits_of_a_valid_file(data: st.DataObject) -> None:
    """Lines of the valid file duplicated (duplicate keys), deleted, moved or reindented."""
    lines = list(LINES)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(lines) - 1))
        action = data.draw(st.sampled_from(["duplicate", "delete", "move", "indent", "dedent"]))
        if action == "duplicate":
            lines.insert(i, lines[i])
        elif action == "delete" and len(lines) > 1:
            del lines[i]
        elif action == "move":
            lines.insert(data.draw(st.integers(0, len(lines) - 1)), lines.pop(i))
        elif action == "indent":
            lines[i] = " " * data.draw(st.integers(1, 4)) + lines[i]
        else:
            lines[i] = lines[i].lstrip()
    _check_text("\n".join(lines) + "\n")


def _nested(depth: int, style: str) -> str:
    """A YAML value nested `depth` levels deep, in flow or block style."""
    if style == "flow-list":
        return "[" * depth + "]" * depth
    if style == "flow-map":
        return "{a: " * depth + "1" + "}" * depth
    if style == "flow-mixed":
        return "[{a: " * (depth // 2) + "x" + "}]" * (depth // 2)
    if style == "block-list":
        return "- " * depth + "x"
    return "".join(" " * i + "a:\n" for i in range(depth)) + " " * depth + "x"


@fuzz(300)
@given(
    depth=st.one_of(st.integers(0, 64), st.integers(0, 3000)),
    style=st.sampled_from(["flow-list", "flow-map", "flow-mixed", "block-list", "block-map"]),
    data=st.data(),
)
def test_deep_nesting(depth: int, style: str, data: st.DataObject) -> None:
    """Nesting up to thousands of levels, as the whole file or as one value, gives a located
    problem (never RecursionError); so does a parsed document nested as deep."""
    nested = _nested(depth, style)
    _check_text(nested)
    if style.startswith("flow"):
        _check_text(_with_value(data, nested))
    value: Any = "x"
    for level in range(depth):
        value = [value] if style.endswith("list") or level % 2 else {"index": value}
    doc = _mutate(VALID, data)  # the deep value replaces one of the document's values
    if isinstance(doc, dict) and doc:
        doc = {**doc, data.draw(st.sampled_from(list(doc))): value}
    else:
        doc = {"version": 1, "policies": value}
    _check(lambda: load_policies(doc), "<dict>", False)


@fuzz(100)
@given(
    pattern=st.one_of(st.text(min_size=1, max_size=8), st.text("ab:1_0.e-#'\" ", min_size=1)),
    size=st.one_of(
        st.integers(0, 50_000),
        st.sampled_from([4095, 4096, 4097, MAX_CHARS - 600, MAX_CHARS, MAX_CHARS + 1]),
        st.integers(0, 3 * MAX_CHARS),
    ),
    place=st.sampled_from(["plain", "single", "double", "block", "key", "comment", "file"]),
    data=st.data(),
)
def test_long_strings(pattern: str, size: int, place: str, data: st.DataObject) -> None:
    """Strings of up to megabytes (a label, a key, a comment, a block scalar, the whole file,
    also past the 1 MiB cap) give a located problem, quickly."""
    s = (pattern * (size // len(pattern) + 1))[:size]
    if place == "plain":
        text = _with_value(data, s)
    elif place == "single":
        text = _with_value(data, "'" + s.replace("'", "''") + "'")
    elif place == "double":
        text = _with_value(data, json.dumps(s))  # a YAML double-quoted scalar, escapes and all
    elif place == "block":
        text = _with_value(data, "|\n  " + s.replace("\n", "\n  "))
    elif place == "key":
        text = TEXT + s + ": 1\n"
    elif place == "comment":
        text = TEXT + "# " + s + "\n"
    else:
        text = s
    _check_text(text)


@pytest.fixture(scope="module")
def policy_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the byte-level test writes each case (module-scoped: Hypothesis reuses it)."""
    return tmp_path_factory.mktemp("fuzz") / "policy.yaml"


@fuzz(600)
@given(data=st.data())
def test_bytes_of_a_policy_file(policy_file: Path, data: st.DataObject) -> None:
    """A file of the valid text with random bytes written in (not UTF-8, NUL, BOM, truncated)
    or of random bytes only: loads, or a problem at a line of the file."""
    raw = bytearray(TEXT.encode())
    if data.draw(st.booleans()):
        raw = bytearray(data.draw(st.binary(max_size=300)))
    for _ in range(data.draw(st.integers(0, 4))):
        at = data.draw(st.integers(0, len(raw)))
        raw[at : at + data.draw(st.integers(0, 3))] = data.draw(
            st.one_of(st.binary(max_size=4), st.sampled_from([b"\xef\xbb\xbf", b"\x00", b"\r"]))
        )
    policy_file.write_bytes(bytes(raw))
    _check(lambda: load_policies(policy_file), str(policy_file), True)


def test_unmutated_file_loads() -> None:
    """The document the mutations start from is itself valid."""
    assert isinstance(load_policies(VALID), PolicySet)
