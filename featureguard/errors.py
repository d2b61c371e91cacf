"""One exception tree for everything featureguard raises on purpose.

    FeatureguardError                 the root: catch this to catch any of ours
    ├── SAELoadError                  a file or reference that cannot be read (missing, offline)
    │   └── SAEFormatError            read, but not a valid SAE (keys, shapes, NaN)
    ├── HookError                     a hook name that does not resolve in this model
    │   └── PairingError              an SAE that does not fit the layer it is attached to
    ├── PolicyError                   a policy file that does not validate (every problem, located)
    ├── AuditError                    an audit log that cannot be written or read
    │   └── ChainBrokenError          an audit log whose hash chain does not verify
    └── GuardError                    misuse of a guard at run time (unsupported generation mode...)

    FeatureguardWarning               the root of our warnings
    └── PairingWarning                an SAE trained on another model than the host

Where natural, classes also derive from the builtin a caller would catch without knowing us.
Messages say where (file, line, key or hook), what was expected and what was found.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "AuditError",
    "ChainBrokenError",
    "FeatureguardError",
    "FeatureguardWarning",
    "GuardError",
    "HookError",
    "PairingError",
    "PairingWarning",
    "PolicyError",
    "Problem",
    "SAEFormatError",
    "SAELoadError",
]


class FeatureguardError(Exception):
    """Root of every error featureguard raises on purpose."""


class SAELoadError(FeatureguardError, OSError):
    """An SAE file or reference cannot be read."""


class SAEFormatError(SAELoadError, ValueError):
    """An SAE was read but is not valid for its format (keys, shapes, values)."""


class HookError(FeatureguardError, LookupError):
    """A hook-point name does not resolve to a module of the model."""


class PairingError(HookError, ValueError):
    """An SAE does not fit the activation at the hook it is attached to."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One located problem in a user's file: ``file:line:col: key: message``."""

    file: str
    """Path of the file as the user gave it (or ``<string>``)."""
    line: int | None
    """1-based line, when known."""
    column: int | None
    """1-based column, when known."""
    key: str
    """Dotted key path inside the document, e.g. ``policies[0].threshold``; empty for the root."""
    message: str
    """What was expected and what was found, with a hint when there is one."""

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        key = f" {self.key}:" if self.key else ""
        return f"{where}:{key} {self.message}"


class PolicyError(FeatureguardError, ValueError):
    """A policy file does not validate. ``problems`` lists every problem found, located."""

    def __init__(self, problems: list[Problem] | tuple[Problem, ...] | str) -> None:
        if isinstance(problems, str):
            problems = (Problem("<policy>", None, None, "", problems),)
        self.problems: tuple[Problem, ...] = tuple(problems)
        count = len(self.problems)
        head = f"{count} problem{'s' if count != 1 else ''} in policy file"
        super().__init__(head + ":\n" + "\n".join(f"  {p}" for p in self.problems))


class AuditError(FeatureguardError, OSError):
    """An audit log cannot be written or read."""


class ChainBrokenError(AuditError, ValueError):
    """An audit log's hash chain does not verify; ``line`` is the first bad line (1-based)."""

    def __init__(self, message: str, *, line: int | None = None) -> None:
        self.line = line
        super().__init__(message)


class GuardError(FeatureguardError, RuntimeError):
    """A guard is used in a way it does not support (the message says what to do instead)."""


class FeatureguardWarning(UserWarning):
    """Root of the warnings featureguard emits."""


class PairingWarning(FeatureguardWarning):
    """An SAE's config names another model than the one it is attached to."""
