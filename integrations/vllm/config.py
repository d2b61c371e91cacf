"""What the frontend and the worker processes agree on, carried without pickling.

The adapter's settings travel to vLLM's workers in `additional_config` (a JSON-able dict every
process gets); per-request choices travel in `SamplingParams.extra_args` (`vllm_xargs` over
HTTP). This module only names those keys and checks their values: it imports no vLLM.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from featureguard.errors import GuardError

CONFIG_KEY = "featureguard"
"""The key of the adapter's settings in vLLM's `additional_config`."""
REQUEST_ID_ARG = "featureguard_request_id"
"""`extra_args` key: the request id the audit records carry (default: vLLM's own id)."""
POLICIES_ARG = "featureguard_policies"
"""`extra_args` key: the names of the policies to apply, comma-separated (default: all)."""
WITHHELD_MESSAGE = "This reply was withheld by the safety guard."
"""The content of a blocked reply; the audit log names the policy that blocked it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AdapterConfig:
    """The adapter's engine-wide settings, as every vLLM process sees them."""

    policies: str
    """Path of the policy file (its SAEs and audit path are read in the worker)."""
    sentinel: int
    """The token id a blocked request is ended with: listed in every guarded request's
    `stop_token_ids`, forced on a blocked row, and masked on every other row."""

    def to_additional(self) -> dict[str, Any]:
        """As vLLM's `additional_config`."""
        return {CONFIG_KEY: asdict(self)}

    @classmethod
    def from_additional(cls, additional: Mapping[str, Any] | None) -> AdapterConfig:
        """Read back from vLLM's `additional_config`; GuardError when it is absent or malformed."""
        raw = (additional or {}).get(CONFIG_KEY)
        if not isinstance(raw, Mapping):
            raise GuardError(
                f"vLLM's additional_config has no '{CONFIG_KEY}' settings: build the engine with "
                "featureguard.integrations.vllm.frontend.engine_kwargs(...)"
            )
        policies, sentinel = raw.get("policies"), raw.get("sentinel")
        if not isinstance(policies, str) or not isinstance(sentinel, int) or sentinel < 0:
            raise GuardError(
                f"additional_config['{CONFIG_KEY}'] needs 'policies' (a path) and 'sentinel' "
                f"(a token id), got {dict(raw)!r}"
            )
        return cls(policies=policies, sentinel=sentinel)


def selected_policies(extra_args: Mapping[str, Any] | None) -> tuple[str, ...] | None:
    """The policy names a request selects (None: all of them), from its `extra_args`."""
    value = (extra_args or {}).get(POLICIES_ARG)
    if value is None:
        return None
    names = value.split(",") if isinstance(value, str) else list(value)
    return tuple(sorted({str(n).strip() for n in names if str(n).strip()}))
