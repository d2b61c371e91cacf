"""Hypothesis profiles for the whole suite; tests/support/fuzzing.py scales the fuzz tests by them.

ci     the default: Hypothesis' own settings (its derandomized ones on a CI server), under which
       each fuzz test runs the number of cases it names: over 10,000 in all, in well under two
       minutes on two cores (`pytest -m fuzz --hypothesis-show-statistics` counts them).
fuzz   the nightly run (`make fuzz`): 20 times the examples, and no health check for slow data.

Picked by HYPOTHESIS_PROFILE=<name>, by FEATUREGUARD_FUZZ=1 (fuzz), or by --hypothesis-profile.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_BASE = settings.default  # Hypothesis' `default`, or its `ci` when it detects a CI server
settings.register_profile("ci", _BASE, print_blob=True)
settings.register_profile(
    "fuzz",
    _BASE,
    max_examples=20 * _BASE.max_examples,
    print_blob=True,
    suppress_health_check=[*_BASE.suppress_health_check, HealthCheck.too_slow],
)
_FUZZ = os.environ.get("FEATUREGUARD_FUZZ") == "1"
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("fuzz" if _FUZZ else "ci"))
