"""Read a policy file (a path, YAML text or a parsed dict) into a validated `PolicySet`.

Two passes, each reporting every problem rather than the first. `yaml_positions.parse` turns
YAML text into plain values with the line and column of every key path (rejecting duplicate
keys, merge keys, unknown tags). `_Reader` checks the plain values against format version 1 and
builds the dataclasses of `policy/model.py`, whose `__post_init__` adds the cross-field rules. A
rejected value becomes None after its problem is recorded, so one broken key never hides the
problems of its neighbours.
"""

from __future__ import annotations

import math
import numbers
import os
import re
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from types import MappingProxyType
from typing import Any

import featureguard.policy.model as m
from featureguard.errors import PolicyError, Problem
from featureguard.policy.yaml_positions import MAX_CHARS, REPORTED, describe, parse, too_big

__all__ = ["PolicySource", "load_policies", "load_policies_text", "validate_files"]

PolicySource = str | os.PathLike[str] | Mapping[str, Any]
"""A path to a YAML policy file, or an already-parsed document (shown as `<dict>`)."""

_MAX_TEXT = 4096
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_HF_REF = re.compile(r"hf://[^/\s]+/[^/\s]+(/|$)")
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")


class _Reject(Exception):
    """A reader's verdict on a value: what was expected and what was found."""


_Read = Callable[["_Reader", Any, str], Any]
_Fields = Mapping[str, tuple[_Read, bool]]  # YAML key -> (reader, required)


class _Reader:
    """Checks plain values against the file format, collecting every problem with its position."""

    def __init__(self, file: str, marks: Mapping[str, tuple[int, int]], base_dir: Path) -> None:
        self.file, self.marks, self.base_dir = file, marks, base_dir
        self.problems: list[Problem] = []

    def where(self, path: str, value: object = None) -> m.Location:
        known = path
        while known and known not in self.marks:  # a missing key: point at its parent
            known = known[: max(known.rfind("."), known.rfind("["), 0)]
        line, column = self.marks.get(known, (None, None))
        keys = [(str(k), m.join_key(path, str(k))) for k in value or ()]
        marks = tuple((k, *self.marks[p]) for k, p in keys if p in self.marks)
        return m.Location(file=self.file, line=line, column=column, key=path, key_marks=marks)

    def read(self, reader: _Read, value: Any, path: str) -> Any:
        """What `reader` makes of `value`, or None once its problem is recorded."""
        try:
            return None if value is REPORTED else reader(self, value, path)
        except _Reject as exc:
            self.problems.append(self.where(path).problem(str(exc)))
            return None

    def fields(self, value: Any, path: str, fields: _Fields) -> dict[str, Any]:
        """Each key of a mapping read (None where rejected); unknown and missing keys reported."""
        if not isinstance(value, Mapping):
            raise _Reject(f"expected a mapping, got {describe(value)}")
        out = {}
        for key, item in value.items():
            child = m.join_key(path, str(key))
            if key in fields:
                out[key] = self.read(fields[key][0], item, child)
            else:
                hint = m.did_you_mean(key, fields) or f" (expected one of: {', '.join(fields)})"
                self.problems.append(self.where(child).problem("unknown key" + hint))
        for key, (_, required) in fields.items():
            if required and key not in value:
                self.problems.append(
                    self.where(m.join_key(path, key)).problem("missing required key")
                )
        return out

    def build(self, cls: type, value: Any, path: str, fields: _Fields, **defaults: Any) -> Any:
        """An instance of `cls` from a mapping, or None when any of its keys was rejected."""
        kwargs = self.fields(value, path, fields)
        if not _complete(kwargs, fields):
            return None
        return self.construct(cls, value, path, {**defaults, **kwargs})

    def construct(self, cls: type, value: Any, path: str, kwargs: dict[str, Any]) -> Any:
        """`cls(**kwargs)`, or None once the problems its `__post_init__` found are recorded."""
        try:
            return cls(where=self.where(path, value), **kwargs)
        except PolicyError as exc:
            self.problems += exc.problems
            return None


def _complete(kwargs: Mapping[str, Any], fields: _Fields) -> bool:
    """Whether every required key is there and nothing was rejected, in lists included."""
    required = all(key in kwargs for key, (_, needed) in fields.items() if needed)
    items = [v for x in kwargs.values() for v in (x if isinstance(x, tuple) else [x])]
    return required and all(item is not None for item in items)


def _string(r: _Reader, value: Any, path: str, *, blank: bool = False) -> str:
    if not isinstance(value, str):
        raise _Reject(f"expected a string, got {describe(value)}")
    if len(value) > _MAX_TEXT:
        raise _Reject(f"expected at most {_MAX_TEXT} characters, got {len(value)}")
    if not (blank or value.strip()):
        raise _Reject(f"expected a non-empty string, got {describe(value)}")
    return value


def _file_path(r: _Reader, value: Any, path: str) -> str:
    if "\0" in _string(r, value, path):
        raise _Reject("expected a path, got a string with a NUL character")
    return value


def _sae_path(r: _Reader, value: Any, path: str) -> str:
    if _HF_REF.match(_file_path(r, value, path)):
        return value
    if _SCHEME.match(value):
        raise _Reject(f"expected a local path or hf://org/repo[/path], got {describe(value)}")
    return os.path.abspath(os.path.join(r.base_dir, os.path.expanduser(value)))


def _number(r: _Reader, value: Any, path: str, *, positive: bool = False) -> float:
    # bool is an int in Python, but `threshold: true` is a mistake, not 1.0.
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _Reject(f"expected a number, got {describe(value)}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise _Reject(f"expected a finite number, got {describe(value)}")
    if positive and number <= 0:
        raise _Reject(f"expected a number > 0, got {describe(value)}")
    return number


def _fraction(r: _Reader, value: Any, path: str, *, open_ends: bool = False) -> float:
    """A number in [0, 1], or in (0, 1) with `open_ends`."""
    number = _number(r, value, path)
    inside = 0 < number < 1 if open_ends else 0 <= number <= 1
    if not inside:
        interval = "(0, 1)" if open_ends else "[0, 1]"
        raise _Reject(f"expected a number in {interval}, got {describe(value)}")
    return number


def _sha256(r: _Reader, value: Any, path: str) -> str:
    if not (isinstance(value, str) and _SHA256.fullmatch(value)):
        raise _Reject(f"expected a SHA-256 of 64 hex digits, got {describe(value)}")
    return value


def _integer(r: _Reader, value: Any, path: str, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise _Reject(f"expected an integer, got {describe(value)}")
    if value < minimum:
        raise _Reject(f"expected an integer >= {minimum}, got {describe(value)}")
    return int(value)


def _choice(r: _Reader, value: Any, path: str, *, options: Sequence[str]) -> str:
    if not (isinstance(value, str) and value in options):
        allowed = ", ".join(map(repr, options))
        raise _Reject(
            f"expected one of {allowed}, got {describe(value)}" + m.did_you_mean(value, options)
        )
    return value


def _boolean(r: _Reader, value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise _Reject(f"expected true or false, got {describe(value)}")
    return value


def _version(r: _Reader, value: Any, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value != 1:
        raise _Reject(f"expected 1, got {describe(value)} (this featureguard reads version 1)")
    return value


def _list(r: _Reader, value: Any, path: str, *, item: _Read, what: str) -> tuple[Any, ...]:
    """The items, with None in place of each rejected one (so `construct` sees them)."""
    if not isinstance(value, list | tuple):
        raise _Reject(f"expected a list of {what}, got {describe(value)}")
    if not value:
        raise _Reject(f"expected at least one of the {what}, got an empty list")
    return tuple(r.read(item, x, f"{path}[{i}]") for i, x in enumerate(value))


def _object(r: _Reader, value: Any, path: str, *, cls: type, fields: _Fields) -> Any:
    return r.build(cls, value, path, fields)


def _sae(r: _Reader, value: Any, path: str, *, name: str) -> m.SAESpec | None:
    return r.build(m.SAESpec, value, path, _SAE, name=name)


def _saes(r: _Reader, value: Any, path: str) -> Mapping[str, m.SAESpec] | None:
    if not isinstance(value, Mapping):
        raise _Reject(f"expected a mapping of SAE names to SAEs, got {describe(value)}")
    if not value:
        raise _Reject("expected at least one SAE, got an empty mapping")
    saes = {}
    for name, spec in value.items():
        child = m.join_key(path, str(name))
        if r.read(_string, name, child) is not None:
            saes[name] = r.read(partial(_sae, name=name), spec, child)
    complete = len(saes) == len(value) and all(sae is not None for sae in saes.values())
    return MappingProxyType(saes) if complete else None


def _policy(r: _Reader, value: Any, path: str) -> m.Policy | None:
    name = value.get("name") if isinstance(value, Mapping) else None
    return r.build(m.Policy, value, path, _POLICY, message=m.DEFAULT_MESSAGE.format(name=name))


def _policy_set(r: _Reader, doc: Any, path: str, *, origin: str | None) -> m.PolicySet | None:
    kwargs = r.fields(doc, path, _TOP)
    if _complete(kwargs, _TOP):
        defaults = {"audit": m.AuditSpec(where=r.where("audit")), "file": origin}
        return r.construct(m.PolicySet, doc, path, {**defaults, **kwargs})
    # Some section was rejected. Still check the policies against each other, broken ones too,
    # as far as their name and sae are readable.
    raw = doc.get("policies")
    refs = [
        (policy["name"], policy["sae"], r.where(f"policies[{i}]", policy))
        for i, policy in enumerate(raw if isinstance(raw, list | tuple) else ())
        if isinstance(policy, Mapping)
        and all(_is_name(r, policy.get(key)) for key in ("name", "sae"))
    ]
    saes = doc.get("saes")
    r.problems += m.policy_set_problems(refs, saes if isinstance(saes, Mapping) else None)
    return None


def _is_name(r: _Reader, value: Any) -> bool:
    try:
        return bool(_string(r, value, ""))
    except _Reject:
        return False


_SAE: _Fields = {"path": (_sae_path, True), "hook": (_string, False)}
_FEATURE: _Fields = {
    "index": (partial(_integer, minimum=0), True),
    "label": (partial(_string, blank=True), False),
    "weight": (_number, False),
    "max": (partial(_number, positive=True), False),
}
_SUPPRESS: _Fields = {
    "method": (partial(_choice, options=m.SUPPRESS_METHODS), True),
    "value": (_number, False),
    "times_max": (_number, False),
    "mode": (partial(_choice, options=m.SUPPRESS_MODES), False),
}
_STEER: _Fields = {"value": (_number, False), "times_max": (_number, False)}
_CALIBRATION: _Fields = {
    "target_rate": (partial(_fraction, open_ends=True), True),
    "bound": (_fraction, True),
    "confidence": (partial(_fraction, open_ends=True), True),
    "set_sha256": (_sha256, True),
    "set_size": (partial(_integer, minimum=1), True),
    "recall": (_fraction, False),
    "date": (_string, True),
}
_POLICY: _Fields = {
    "name": (_string, True),
    "description": (partial(_string, blank=True), False),
    "sae": (_string, True),
    "features": (
        partial(_list, item=partial(_object, cls=m.FeatureSpec, fields=_FEATURE), what="features"),
        True,
    ),
    "threshold": (_number, True),
    "action": (partial(_choice, options=m.ACTIONS), True),
    "scope": (partial(_choice, options=m.SCOPES), False),
    "window": (partial(_integer, minimum=1), False),
    "suppress": (partial(_object, cls=m.SuppressSpec, fields=_SUPPRESS), False),
    "steer": (partial(_object, cls=m.SteerSpec, fields=_STEER), False),
    "message": (_string, False),
    "severity": (partial(_choice, options=m.SEVERITIES), False),
    "calibration": (partial(_object, cls=m.CalibrationSpec, fields=_CALIBRATION), False),
}
_TRACE: _Fields = {
    "features": (partial(_choice, options=m.TRACE_FEATURES), False),
    "k": (partial(_integer, minimum=1), False),
    "path": (_file_path, True),
}
_ROTATE: _Fields = {
    "max_bytes": (partial(_integer, minimum=1), False),
    "max_seconds": (partial(_number, positive=True), False),
}
_AUDIT: _Fields = {
    "path": (_file_path, False),
    "include_text": (_boolean, False),
    "fsync": (partial(_choice, options=m.FSYNC_MODES), False),
    "rotate": (partial(_object, cls=m.RotateSpec, fields=_ROTATE), False),
    "trace": (partial(_object, cls=m.TraceSpec, fields=_TRACE), False),
}
_TOP: _Fields = {
    "version": (_version, True),
    "fail_mode": (partial(_choice, options=m.FAIL_MODES), False),
    "saes": (_saes, True),
    "policies": (partial(_list, item=_policy, what="policies"), True),
    "audit": (partial(_object, cls=m.AuditSpec, fields=_AUDIT), False),
}


def _check_document(
    doc: Any, file: str, marks: Mapping[str, tuple[int, int]], base_dir: Path, origin: str | None
) -> tuple[m.PolicySet | None, list[Problem]]:
    r = _Reader(file, marks, base_dir)
    policies = r.read(partial(_policy_set, origin=origin), doc, "")
    return (None if r.problems else policies), r.problems


def _check_text(
    text: str, file: str, base_dir: Path, origin: str | None = None
) -> tuple[m.PolicySet | None, list[Problem]]:
    doc, marks, problems = parse(text, file)
    if doc is REPORTED:
        return None, problems
    policies, more = _check_document(doc, file, marks, base_dir, origin)
    problems = sorted(problems + more, key=lambda p: (p.line or 0, p.column or 0))
    return (None if problems else policies), problems


def _check_file(path: str | os.PathLike[str]) -> tuple[m.PolicySet | None, list[Problem]]:
    file = os.fsdecode(path)
    try:
        with open(file, "rb") as stream:
            data = stream.read(MAX_CHARS + 1)
        if len(data) > MAX_CHARS:  # before decoding, which could split a character
            return None, [Problem(file, None, None, "", too_big(len(data)))]
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return None, [_not_utf8(file, exc)]
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        hint = " (to load YAML text, use load_policies_text)" if "\n" in file else ""
        reason = getattr(exc, "strerror", None) or str(exc)
        return None, [Problem(file, None, None, "", f"cannot read the policy file: {reason}{hint}")]
    return _check_text(text, file, Path(file).parent, origin=file)


def _not_utf8(file: str, exc: UnicodeDecodeError) -> Problem:
    """A file that is not UTF-8, located at its first bad byte (the line before it is text)."""
    data, at = exc.object, exc.start
    start = data.rfind(b"\n", 0, at) + 1
    line = data.count(b"\n", 0, at) + 1
    column = len(data[start:at].decode("utf-8", "replace")) + 1
    got = ", ".join(f"0x{b:02x}" for b in data[at : exc.end])
    message = f"cannot read the policy file: expected UTF-8 text, got byte {got} ({exc.reason})"
    return Problem(file, line, column, "", message)


def _result(policies: m.PolicySet | None, problems: list[Problem]) -> m.PolicySet:
    if policies is None:
        raise PolicyError(problems)
    return policies


def load_policies(source: PolicySource) -> m.PolicySet:
    """Validated policies from a YAML file path, or from an already-parsed document.

    Relative SAE paths are resolved against the file's folder (the working directory for a
    document). Raises `PolicyError` listing every problem found, each located.
    """
    if isinstance(source, str | os.PathLike):
        return _result(*_check_file(source))
    return _result(*_check_document(source, "<dict>", {}, Path(), origin=None))


def load_policies_text(
    text: str, file: str = "<string>", base_dir: Path | None = None
) -> m.PolicySet:
    """Validated policies from YAML text; `file` names it in messages, and relative SAE paths
    are resolved against `base_dir` (default: the working directory)."""
    return _result(*_check_text(text, file, base_dir or Path()))


def validate_files(paths: Sequence[str | os.PathLike[str]]) -> list[Problem]:
    """Every problem of the given policy files ([] when all are valid); never raises for content:
    a missing or unreadable file is a problem too."""
    return [problem for path in paths for problem in _check_file(path)[1]]
