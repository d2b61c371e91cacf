"""Named regression tests for the classes of malformed policy input that tests/policy/test_fuzz.py
generates and the table of tests/support/policy_cases.py does not hold (huge integers, 1000-level
nesting, megabyte strings, oversized and non-UTF-8 files, forbidden characters, tags PyYAML
cannot construct). Each asserts a PolicyError whose message names the file, line and key.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from policy_cases import BASE, edit

from featureguard.errors import PolicyError
from featureguard.policy import load_policies
from featureguard.policy.yaml_positions import MAX_CHARS


def _error(tmp_path: Path, content: str | bytes) -> tuple[Path, PolicyError]:
    """The PolicyError of loading `content` saved as a file, and that file."""
    path = tmp_path / "policy.yaml"
    if isinstance(content, str):
        content = content.encode("utf-8")
    path.write_bytes(content)
    with pytest.raises(PolicyError) as info:
        load_policies(path)
    assert type(info.value) is PolicyError
    return path, info.value


def _assert_located(tmp_path: Path, content: str | bytes, line: int, key: str, fragment: str):
    """Loading `content` gives a problem at `line` and `key` whose message holds `fragment`."""
    path, err = _error(tmp_path, content)
    matching = [p for p in err.problems if (p.file, p.line, p.key) == (str(path), line, key)]
    assert any(fragment in p.message for p in matching), str(err)
    assert f"{path}:{line}:" in str(err) and (not key or f" {key}:" in str(err))


def test_huge_integer_past_python_digit_limit(tmp_path: Path) -> None:
    """An integer of 5000 digits (Python reads at most 4300) is a problem at its key."""
    text = edit(10, "- {index: " + "9" * 5000 + ", label: tls}")
    _assert_located(
        tmp_path, text, 10, "policies[0].features[0].index", "expected a value readable as !!int"
    )


@pytest.mark.parametrize(
    ("nested", "line"),
    [
        ("extra: " + "[" * 1000 + "]" * 1000 + "\n", 20),
        ("extra: " + "{a: " * 1000 + "1" + "}" * 1000 + "\n", 20),
        ("extra:\n" + "".join(" " * (i + 1) + "-\n" for i in range(1000)), 52),
        ("extra:\n" + "".join(" " * (i + 1) + "a:\n" for i in range(1000)), 51),
    ],
    ids=["flow-lists", "flow-maps", "block-lists", "block-maps"],
)
def test_nesting_1000_levels_deep(tmp_path: Path, nested: str, line: int) -> None:
    """Lists or maps nested 1000 levels deep give a located problem, never a RecursionError."""
    _assert_located(tmp_path, BASE + nested, line, "", "expected at most 32 levels of nesting")


def test_megabyte_string_value(tmp_path: Path) -> None:
    """A label of a million characters is refused at its key, with its length."""
    text = edit(10, "- {index: 1234, label: " + "x" * 1_000_000 + "}")
    fragment = "expected at most 4096 characters, got 1000000"
    _assert_located(tmp_path, text, 10, "policies[0].features[0].label", fragment)


def test_megabyte_key(tmp_path: Path) -> None:
    """A key of a million characters (YAML allows 1024 for a plain key) is invalid YAML."""
    _assert_located(tmp_path, BASE + "k" * 1_000_000 + ": 1\n", 20, "", "invalid YAML")


def test_file_over_the_size_cap(tmp_path: Path) -> None:
    """A file over 1 MiB is one problem about the whole file, naming it, before any parsing."""
    path, err = _error(tmp_path, BASE + "#" * MAX_CHARS)
    (problem,) = err.problems
    assert (problem.file, problem.line, problem.key) == (str(path), None, "")
    assert f"{path}: expected a policy file of at most {MAX_CHARS} characters" in str(err)


def test_not_utf8_is_located_at_the_bad_byte(tmp_path: Path) -> None:
    """A byte that is not UTF-8 is a problem at its line and column, not UnicodeDecodeError."""
    data = edit(12, "threshold: 3.0 # caf\xe9").encode("latin-1")
    _assert_located(tmp_path, data, 12, "", "expected UTF-8 text, got byte 0xe9")
    assert f":12:{len('    threshold: 3.0 # caf') + 1}:" in str(_error(tmp_path, data)[1])


def test_forbidden_control_character(tmp_path: Path) -> None:
    """A NUL character, which YAML forbids, is a problem at its line."""
    text = edit(12, "threshold: 3.0\x00")
    _assert_located(tmp_path, text, 12, "", "invalid YAML: unacceptable character #x0000")


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("!!int", "expected a value readable as !!int (got string '')"),
        ("!!int _", "expected a value readable as !!int (got string '_')"),
        ("!!float", "expected a value readable as !!float (got string '')"),
        ("!!bool maybe", "expected a value readable as !!bool (got string 'maybe')"),
        ("!!timestamp x", "expected a value readable as !!timestamp (got string 'x')"),
    ],
    ids=["int-empty", "int-underscore", "float-empty", "bool-word", "timestamp-word"],
)
def test_tagged_scalar_pyyaml_cannot_construct(tmp_path: Path, value: str, fragment: str) -> None:
    """Found by fuzzing: PyYAML raised IndexError, KeyError or AttributeError on these tagged
    scalars; they are now a problem at their key."""
    text = edit(12, f"threshold: {value}")
    _assert_located(tmp_path, text, 12, "policies[0].threshold", fragment)
