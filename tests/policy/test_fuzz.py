"""Property: any input either loads or raises PolicyError with located problems, nothing else."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from featureguard.errors import PolicyError
from featureguard.policy import PolicySet, load_policies, load_policies_text

FUZZ = settings(max_examples=200, deadline=None)

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


def _check(load: Callable[[], object], file: str, lines: bool) -> None:
    """`load()` returns a PolicySet, or raises PolicyError whose every problem is located."""
    try:
        result = load()
    except PolicyError as exc:
        assert exc.problems
        for problem in exc.problems:
            assert problem.file == file and isinstance(problem.key, str) and problem.message
            assert not lines or (problem.line or 0) >= 1, problem
    else:
        assert isinstance(result, PolicySet)


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
        else:
            out[data.draw(st.sampled_from(KEYS))] = data.draw(DOCS)
        return out
    if isinstance(doc, list) and doc and data.draw(st.booleans()):
        i = data.draw(st.integers(0, len(doc) - 1))
        return [*doc[:i], _mutate(doc[i], data), *doc[i + 1 :]]
    return data.draw(DOCS)


@FUZZ
@given(doc=DOCS)
def test_arbitrary_documents(doc: Any) -> None:
    """Random nested dicts, lists and scalars, as a dict and as YAML, never crash the loader."""
    _check(
        lambda: load_policies(doc if isinstance(doc, dict) else {"policies": doc}), "<dict>", False
    )
    text = yaml.safe_dump(doc)
    _check(lambda: load_policies_text(text, file="f.yaml"), "f.yaml", True)


@FUZZ
@given(data=st.data())
def test_mutations_of_a_valid_file(data: st.DataObject) -> None:
    """A valid document with one random change loads or gives located problems."""
    doc = _mutate(VALID, data)
    doc = {"version": doc} if isinstance(doc, str) else doc  # a str source would name a file
    _check(lambda: load_policies(doc), "<dict>", False)
    text = yaml.safe_dump(doc, sort_keys=False)
    _check(lambda: load_policies_text(text, file="f.yaml"), "f.yaml", True)


@FUZZ
@given(data=st.data())
def test_text_edits_of_a_valid_file(data: st.DataObject) -> None:
    """The valid file's YAML text with a random slice replaced by random characters."""
    text = yaml.safe_dump(VALID, sort_keys=False)
    start = data.draw(st.integers(0, len(text)))
    end = data.draw(st.integers(start, min(len(text), start + 20)))
    edited = text[:start] + data.draw(st.text(max_size=10)) + text[end:]
    _check(lambda: load_policies_text(edited, file="f.yaml"), "f.yaml", True)


@FUZZ
@given(text=st.one_of(st.text(max_size=200), st.text(alphabet=YAML_CHARS, max_size=200)))
def test_random_text(text: str) -> None:
    """Random text, also made of YAML's punctuation, loads or gives problems with a line."""
    _check(lambda: load_policies_text(text, file="f.yaml"), "f.yaml", True)


def test_unmutated_file_loads() -> None:
    """The document the mutations start from is itself valid."""
    assert isinstance(load_policies(VALID), PolicySet)
