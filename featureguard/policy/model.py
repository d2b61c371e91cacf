"""The validated form of a policy file: frozen dataclasses that remember where they came from.

`policy/load.py` builds them from YAML or a dict. Each object keeps a `Location`, so a later layer
can report a problem at the object's own line (the guard finding a feature index the SAE lacks).
Cross-field rules live in `__post_init__`, so objects built in code obey them too; each raises one
`PolicyError` listing every rule its object breaks.
"""

from __future__ import annotations

import difflib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, get_args

from featureguard.errors import PolicyError, Problem

Action = Literal["log", "block", "suppress", "steer"]
Scope = Literal["prompt", "response", "both"]
Severity = Literal["low", "medium", "high"]
FailMode = Literal["closed", "open"]
SuppressMethod = Literal["clamp", "ablate"]
SuppressMode = Literal["conditional", "latched", "always"]
TraceFeatures = Literal["policy", "topk"]
FsyncMode = Literal["request", "record", "never"]

# The tuples are read off the Literals so that the two can never disagree.
ACTIONS: tuple[str, ...] = get_args(Action)
SCOPES: tuple[str, ...] = get_args(Scope)
SEVERITIES: tuple[str, ...] = get_args(Severity)
FAIL_MODES: tuple[str, ...] = get_args(FailMode)
SUPPRESS_METHODS: tuple[str, ...] = get_args(SuppressMethod)
SUPPRESS_MODES: tuple[str, ...] = get_args(SuppressMode)
TRACE_FEATURES: tuple[str, ...] = get_args(TraceFeatures)
FSYNC_MODES: tuple[str, ...] = get_args(FsyncMode)

DEFAULT_MESSAGE = "This reply was withheld by policy '{name}'."
DEFAULT_AUDIT_PATH = "featureguard-audit.jsonl"


def join_key(path: str, key: str) -> str:
    """`path` extended by `key`: `a` + `b` gives `a.b`, `a` + `[0]` gives `a[0]`."""
    if not path or not key:
        return path or key
    return path + key if key.startswith("[") else f"{path}.{key}"


def did_you_mean(word: object, options: Collection[str]) -> str:
    """` (did you mean 'x'?)` for the option closest to `word`, or `""` when none is close."""
    names = [option for option in options if isinstance(option, str)]  # a dict may hold others
    close = difflib.get_close_matches(word, names, n=1) if isinstance(word, str) else []
    return f" (did you mean {close[0]!r}?)" if close else ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Location:
    """Where an object was written: file, position and key path."""

    file: str
    """The file as the user named it, or `<string>` / `<dict>` for other sources."""
    line: int | None
    """1-based line of the object's key or list item; None when the source has no lines."""
    column: int | None
    """1-based column of the same."""
    key: str
    """Key path from the document root, e.g. `policies[0].features[2]`; empty for the root."""
    key_marks: tuple[tuple[str, int, int], ...] = field(default=(), repr=False)
    """(key, line, column) of each key of the object's own mapping, so that a problem about
    one key points at that key's line."""

    def problem(self, message: str, key_suffix: str = "") -> Problem:
        """A located problem at this object, or at its key `key_suffix` (e.g. `index`)."""
        head = key_suffix.split(".", 1)[0].split("[", 1)[0]
        line, column = next(
            ((line, col) for key, line, col in self.key_marks if key == head),
            (self.line, self.column),
        )
        return Problem(self.file, line, column, join_key(self.key, key_suffix), message)


def _check(problems: list[Problem]) -> None:
    if problems:
        raise PolicyError(problems)


def _exactly_one(spec: SuppressSpec | SteerSpec, context: str) -> list[Problem]:
    given = [key for key in ("value", "times_max") if getattr(spec, key) is not None]
    if len(given) == 1:
        return []
    got = "both" if given else "neither"
    return [spec.where.problem(f"expected exactly one of value, times_max {context}, got {got}")]


@dataclass(frozen=True, slots=True, kw_only=True)
class FeatureSpec:
    """One SAE feature a policy scores."""

    index: int
    """Index of the feature in the SAE's dictionary (checked against `d_sae` by the guard)."""
    label: str | None = None
    """What the feature means, for people reading the policy and the audit log."""
    weight: float = 1.0
    """Factor on the feature's activation in the policy score."""
    max: float | None = None
    """Largest activation seen for the feature; needed by `times_max`."""
    where: Location = field(compare=False)
    """Where the feature was written."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SuppressSpec:
    """How the `suppress` action edits the policy's features."""

    method: SuppressMethod
    """clamp: set each feature to a value; ablate: remove the features (set them to 0)."""
    value: float | None = None
    """clamp only: the activation every feature is set to."""
    times_max: float | None = None
    """clamp only: set each feature to this multiple of its own `max`."""
    mode: SuppressMode = "conditional"
    """conditional: only on tokens where the policy triggers; latched: on every in-scope token
    of a sequence from the first one where it triggers (a trigger in the prompt: the whole
    prompt); always: on every in-scope token."""
    where: Location = field(compare=False)
    """Where the section was written."""

    def __post_init__(self) -> None:
        if self.method == "clamp":
            _check(_exactly_one(self, "for method 'clamp'"))
        else:
            _check(
                [
                    self.where.problem("forbidden for method 'ablate' (use method: clamp)", key)
                    for key in ("value", "times_max")
                    if getattr(self, key) is not None
                ]
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class SteerSpec:
    """How the `steer` action clamps the policy's features on every response token."""

    value: float | None = None
    """Activation each feature is clamped to."""
    times_max: float | None = None
    """Clamp each feature to this multiple of its own `max`."""
    where: Location = field(compare=False)
    """Where the section was written."""

    def __post_init__(self) -> None:
        _check(_exactly_one(self, "for steer"))


@dataclass(frozen=True, slots=True, kw_only=True)
class SAESpec:
    """An SAE the policies refer to by name."""

    name: str
    """The key under `saes`."""
    path: str
    """Absolute local path (written relative to the policy file), or an `hf://` reference as is."""
    hook: str | None = None
    """Hook point to attach to; None to use the one the SAE's own config names."""
    where: Location = field(compare=False)
    """Where the SAE was defined."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TraceSpec:
    """Per-token activations kept for `featureguard audit replay` and `audit report --trace`."""

    features: TraceFeatures = "policy"
    """policy: the activations of the features the policies name (no extra cost); topk: also
    the `k` largest features of every token (a full SAE encode per step)."""
    k: int = 32
    """How many features per token `topk` keeps (>= 1); unused with `policy`."""
    path: str
    """Folder of the trace (safetensors shards and an index), relative to the working directory."""
    where: Location = field(compare=False)
    """Where the section was written."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RotateSpec:
    """When the audit log moves on to a new file (`featureguard.audit.sink`); the numbered
    segments and the new file stay one hash chain."""

    max_bytes: int | None = None
    """Start a new file before one would grow past this many bytes (>= 1)."""
    max_seconds: float | None = None
    """Start a new file once the current one's first record is this many seconds old (> 0)."""
    where: Location = field(compare=False)
    """Where the section was written."""

    def __post_init__(self) -> None:
        if self.max_bytes is None and self.max_seconds is None:
            _check([self.where.problem("expected at least one of max_bytes, max_seconds")])


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditSpec:
    """Where and how decisions are logged."""

    path: str = DEFAULT_AUDIT_PATH
    """The JSONL log, relative to the working directory of the process."""
    include_text: bool = True
    """Whether records carry token text; False keeps only token ids."""
    fsync: FsyncMode = "request"
    """When the log is fsynced: request (after each request's last record), record (after
    every record) or never (left to the OS)."""
    rotate: RotateSpec | None = None
    """When to start a new file; None keeps one file."""
    trace: TraceSpec | None = None
    """Per-token activations to keep besides the log; None keeps none."""
    where: Location = field(compare=False)
    """Where the section was written (the document root when it is absent)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CalibrationSpec:
    """How `featureguard calibrate` chose the policy's threshold; written by it, read by people.

    The threshold is the (k+1)-th largest benign score, k the largest count whose one-sided
    Clopper-Pearson upper bound is at most `target_rate` (`featureguard/calibrate.py`).
    """

    target_rate: float
    """The benign trigger rate aimed at, in (0, 1)."""
    bound: float
    """Upper confidence bound on the benign trigger rate at the threshold, in [0, 1]."""
    confidence: float
    """Probability, over the draw of the benign set, that the true rate is within `bound`."""
    set_sha256: str
    """SHA-256 (64 hex digits) of the benign calibration set."""
    set_size: int
    """Number of benign examples in it (>= 1)."""
    recall: float | None = None
    """Fraction of positive examples above the threshold; None (key left out) without them."""
    date: str
    """When the calibration ran (ISO 8601)."""
    where: Location = field(compare=False)
    """Where the section was written."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Policy:
    """One rule: a weighted sum of SAE features, a threshold, and what to do when it is passed."""

    name: str
    """Unique name, used in messages and audit records."""
    description: str | None = None
    """Free text for people."""
    sae: str
    """Name of the SAE (a key of `PolicySet.saes`) whose features are scored."""
    features: tuple[FeatureSpec, ...]
    """The features scored, with distinct indices; never empty."""
    threshold: float
    """The policy triggers on a token when sum(weight * activation) > threshold."""
    action: Action
    """log: record only; block: withhold the reply; suppress: edit the features; steer: clamp
    the features up on every response token."""
    scope: Scope = "both"
    """Which tokens are scored: the prompt's, the response's, or both."""
    window: int = 1
    """How many tokens in a row must pass the threshold before the policy triggers (>= 1)."""
    suppress: SuppressSpec | None = None
    """Present exactly when action is suppress."""
    steer: SteerSpec | None = None
    """Present exactly when action is steer."""
    message: str
    """Text that replaces a withheld reply (the loader fills `DEFAULT_MESSAGE` in)."""
    severity: Severity = "medium"
    """Carried into audit records."""
    calibration: CalibrationSpec | None = None
    """How the threshold was calibrated, when `featureguard calibrate --write` set it."""
    where: Location = field(compare=False)
    """Where the policy was written."""

    def __post_init__(self) -> None:
        problems = []
        sections = {"suppress": self.suppress, "steer": self.steer}
        for section, spec in sections.items():
            if self.action == section and spec is None:
                message = f"missing section: required when action is {section!r}"
                problems.append(self.where.problem(message, section))
            elif self.action != section and spec is not None:
                hint = f"remove it, or use action: {section}"
                problems.append(
                    spec.where.problem(f"forbidden when action is {self.action!r} ({hint})")
                )
        first: dict[int, str] = {}
        for feature in self.features:
            if feature.index in first:
                also = first[feature.index]
                message = f"expected distinct indices, got {feature.index} again (also {also})"
                problems.append(feature.where.problem(message, "index"))
            first.setdefault(feature.index, feature.where.key)
        scaled = [k for k, spec in sections.items() if spec and spec.times_max is not None]
        for feature in self.features:
            if scaled and feature.max is None:
                message = f"missing: {scaled[0]}.times_max needs it (feature {feature.index})"
                problems.append(feature.where.problem(message, "max"))
        _check(problems)


def policy_set_problems(
    policies: Sequence[tuple[str, str, Location]], sae_names: Collection[str] | None
) -> list[Problem]:
    """Rules across policies, given as (name, sae, where): distinct names, and each sae among
    `sae_names` (unless None). Plain tuples let the loader check policies it could not build."""
    problems = []
    first: dict[str, Location] = {}
    for name, sae, where in policies:
        if name in first:
            seen = first[name]
            at = f" at line {seen.line}" if seen.line is not None else ""
            message = f"expected distinct policy names, got {name!r} again (also {seen.key}{at})"
            problems.append(where.problem(message, "name"))
        first.setdefault(name, where)
        if sae_names is not None and sae not in sae_names:
            known = ", ".join(map(repr, sae_names)) or "none"
            message = f"expected an SAE defined under saes ({known}), got {sae!r}"
            problems.append(where.problem(message + did_you_mean(sae, sae_names), "sae"))
    return problems


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicySet:
    """A whole policy file, validated."""

    version: Literal[1] = 1
    """Format version; only 1 exists."""
    fail_mode: FailMode = "closed"
    """What the guard does when scoring raises: closed withholds the reply, open lets it through."""
    saes: Mapping[str, SAESpec]
    """The SAEs by name (read-only)."""
    policies: tuple[Policy, ...]
    """The policies, in file order; never empty."""
    audit: AuditSpec
    """The audit log settings."""
    file: str | None = None
    """The YAML file `load_policies` read; None for text and dict sources."""
    where: Location = field(compare=False)
    """The document root."""

    def __post_init__(self) -> None:
        _check(policy_set_problems([(p.name, p.sae, p.where) for p in self.policies], self.saes))
