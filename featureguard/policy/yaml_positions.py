"""YAML text into plain Python values, with the line and column of every key path.

`parse` reads the single document of a text with PyYAML's safe loader, and rejects what PyYAML
would let through silently (duplicate keys, merge keys, unknown tags) or could not survive (a
huge text, nesting deep enough to exhaust Python's recursion limit, aliases that expand
exponentially), each as one located problem. A rejected value becomes `REPORTED` once its
problem is recorded, so a later pass skips it without a second report.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml
from yaml.composer import ComposerError

from featureguard.errors import Problem
from featureguard.policy.model import join_key

__all__ = ["MAX_CHARS", "REPORTED", "describe", "parse", "too_big"]

# Policy files are a few KiB. These caps turn hostile or accidental input (a huge file, nesting
# deep enough to exhaust Python's recursion limit, aliases that expand exponentially) into one
# clean problem instead of a hang or a RecursionError.
MAX_CHARS = 1 << 20
_MAX_DEPTH = 32
_MAX_VALUES = 100_000

_MAP, _SEQ, _MERGE = (f"tag:yaml.org,2002:{tag}" for tag in ("map", "seq", "merge"))
REPORTED = object()  # a YAML value the walker rejected: readers skip it without a second report
_TOO_MANY = f"expected at most {_MAX_VALUES} values, got more (aliases expand to copies)"
_KINDS = {bool: "boolean", int: "integer", float: "number", str: "string"}


def describe(value: object) -> str:
    """A value as a message shows it: its YAML kind, and the value itself when short."""
    if value is None or isinstance(value, Mapping | list | tuple):
        return "null" if value is None else "a mapping" if isinstance(value, Mapping) else "a list"
    kind = _KINDS.get(type(value), type(value).__name__)
    if isinstance(value, int) and value.bit_length() > 64:
        return f"{kind} of {value.bit_length()} bits"  # its repr may pass Python's digit limit
    text = str(value).lower() if isinstance(value, bool) else repr(value)
    return f"{kind} {text if len(text) <= 40 else text[:37] + '...'}"


def too_big(size: int) -> str:
    """The message for a policy file over `MAX_CHARS`."""
    return f"expected a policy file of at most {MAX_CHARS} characters, got {size} or more"


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses deep nesting before its recursive composer hits Python's limit."""

    depth = 0

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node:
        if self.depth >= _MAX_DEPTH:
            problem = f"expected at most {_MAX_DEPTH} levels of nesting, got more"
            raise ComposerError(problem=problem, problem_mark=self.peek_event().start_mark)
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


class _Walker:
    """Turns a YAML node graph into plain values, recording where each key path is written."""

    def __init__(self, loader: _Loader, file: str) -> None:
        self.loader, self.file, self.budget = loader, file, _MAX_VALUES
        self.marks: dict[str, tuple[int, int]] = {}
        self.problems: list[Problem] = []

    def fail(self, node: yaml.Node, path: str, message: str) -> object:
        line, column = _position(node)
        self.problems.append(Problem(self.file, line, column, path, message))
        return REPORTED

    def value(self, node: yaml.Node, path: str, depth: int) -> Any:
        self.budget -= 1
        if self.budget < 0:  # aliases can make a short text expand to billions of values
            return REPORTED if self.budget < -1 else self.fail(node, path, _TOO_MANY)
        if depth > _MAX_DEPTH:  # only a recursive alias gets here: the loader caps plain nesting
            return self.fail(node, path, f"expected at most {_MAX_DEPTH} levels of nesting")
        if isinstance(node, yaml.ScalarNode):
            return self.scalar(node, path)
        if node.tag not in (_MAP, _SEQ):
            return self.fail(node, path, f"expected a plain mapping or list, got tag {node.tag!r}")
        if isinstance(node, yaml.SequenceNode):
            items = []
            for i, item in enumerate(node.value):
                self.marks[f"{path}[{i}]"] = _position(item)
                items.append(self.value(item, f"{path}[{i}]", depth + 1))
            return items
        return self.mapping(node, path, depth)

    def mapping(self, node: yaml.MappingNode, path: str, depth: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = self.scalar(key_node, path) if isinstance(key_node, yaml.ScalarNode) else None
            child = join_key(path, key) if isinstance(key, str) else path
            if key is REPORTED:
                continue
            if not isinstance(key, str):
                got = describe(key) if isinstance(key_node, yaml.ScalarNode) else key_node.id
                self.fail(key_node, path, f"expected a string key, got {got} (quote it)")
            elif key in out:  # PyYAML would keep the last value without a word
                first = self.marks[child][0]
                self.fail(
                    key_node, child, f"expected each key once, got it again (first at line {first})"
                )
            else:
                self.marks[child] = _position(key_node)
                out[key] = self.value(value_node, child, depth + 1)
        return out

    def scalar(self, node: yaml.ScalarNode, path: str) -> Any:
        if node.tag == _MERGE:
            return self.fail(node, path, "expected plain keys, got a merge key '<<'")
        try:
            return self.loader.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError, ArithmeticError) as exc:
            reason = exc.problem if isinstance(exc, yaml.MarkedYAMLError) else str(exc)
        except (LookupError, AttributeError):  # PyYAML's own slips: `!!int` with no digits,
            reason = f"got {describe(node.value)}"  # `!!bool maybe`, `!!timestamp x`
        tag = node.tag.replace("tag:yaml.org,2002:", "!!")
        return self.fail(node, path, f"expected a value readable as {tag} ({reason})")


def _position(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


def _yaml_problem(exc: yaml.YAMLError, text: str, file: str) -> Problem:
    """A YAML syntax error as one located problem, without PyYAML's multi-line rendering."""
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (None, None)
        context = f" ({exc.context})" if exc.context and exc.problem else ""
        return Problem(
            file, line, column, "", f"invalid YAML: {exc.problem or exc.context}{context}"
        )
    # A ReaderError (a forbidden character) carries an offset into the text, not a mark.
    at = getattr(exc, "position", 0)
    line, column = text.count("\n", 0, at) + 1, at - text.rfind("\n", 0, at)
    return Problem(file, line, column, "", f"invalid YAML: {str(exc).splitlines()[0]}")


def parse(text: str, file: str) -> tuple[Any, dict[str, tuple[int, int]], list[Problem]]:
    """The single document in `text` as plain values, the position of each key path, problems.

    The document is `REPORTED` when the text is too big or not YAML at all; otherwise the values
    rejected inside it are, each with its problem listed.
    """
    if len(text) > MAX_CHARS:
        return REPORTED, {}, [Problem(file, None, None, "", too_big(len(text)))]
    try:
        loader = _Loader(text)
        try:
            root = loader.get_single_node()
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        return REPORTED, {}, [_yaml_problem(exc, text, file)]
    walker = _Walker(loader, file)
    walker.marks[""] = _position(root) if root is not None else (1, 1)
    doc = walker.value(root, "", 0) if root is not None else None
    return doc, walker.marks, walker.problems
