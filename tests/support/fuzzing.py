"""What the fuzz tests share: `@fuzz(n)`, their marker, example count and time bounds.

`@fuzz(n)` on a `@given` test marks it `fuzz` (`pytest -m fuzz`, `make fuzz`) and runs n cases
under the default `ci` profile of tests/conftest.py, n times the loaded profile's share under
another (20 n under `fuzz`). Each case is bounded twice: Hypothesis' deadline fails a slow one
(after re-running it once to rule out noise), and a watchdog stops one still running after
`HANG_S` (a loop that never ends) and fails it with the example shrunk and printed.
"""

from __future__ import annotations

import contextlib
import functools
import signal
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, settings

DEADLINE = timedelta(seconds=2)  # a case takes milliseconds; seconds on a busy machine is slow
HANG_S = 20.0
T = TypeVar("T", bound=Callable[..., Any])


class Hang(BaseException):
    """Raised inside a case that outlives `HANG_S`: a BaseException, so that no `except
    Exception` in the code under test can swallow it."""


@contextlib.contextmanager
def time_bound(seconds: float | None = None) -> Iterator[None]:
    """Fail the block with AssertionError if it is still running after `seconds` (default
    `HANG_S`; POSIX only)."""
    seconds = HANG_S if seconds is None else seconds
    if not hasattr(signal, "setitimer"):
        yield
        return

    def alarm(signum: int, frame: object) -> None:
        raise Hang

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    except Hang:
        raise AssertionError(f"hang: the case was still running after {seconds} s") from None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def fuzz(examples: int, *, health: tuple[HealthCheck, ...] = ()) -> Callable[[T], T]:
    """Decorator for a `@given` test: marked `fuzz`, `examples` cases under the ci profile
    (scaled by the loaded profile's max_examples against Hypothesis' 100), each time-bounded."""

    def apply(test: T) -> T:
        inner = test.hypothesis.inner_test  # type: ignore[attr-defined]

        @functools.wraps(inner)
        def bounded(*args: Any, **kwargs: Any) -> Any:
            with time_bound():
                return inner(*args, **kwargs)

        test.hypothesis.inner_test = bounded  # type: ignore[attr-defined]
        share = settings.default.max_examples / 100
        checks = (*settings.default.suppress_health_check, *health)
        chosen = settings(
            max_examples=max(1, round(examples * share)),
            deadline=DEADLINE,
            suppress_health_check=checks,
        )
        return pytest.mark.fuzz(chosen(test))

    return apply
