"""`policy_snippet`: one policy entry as YAML text, checked by the policy loader before it is
returned, to paste under `policies:` of a policy file."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from featureguard.errors import FeatureguardError
from featureguard.policy import load_policies

__all__ = ["policy_snippet"]

_FEATURE_KEYS = ("index", "label", "weight", "max")


def _number(value: float) -> float:
    """Six significant digits: enough for a threshold, short enough to read."""
    return float(f"{float(value):.6g}")


def _feature(feature: Any) -> dict[str, Any]:
    """A feature as a policy's mapping, from an int, a mapping or an object with its fields."""
    if isinstance(feature, int):
        return {"index": feature}
    if isinstance(feature, Mapping):
        raw = {key: feature[key] for key in _FEATURE_KEYS if feature.get(key) is not None}
    else:
        raw = {
            key: getattr(feature, key)
            for key in _FEATURE_KEYS
            if getattr(feature, key, None) is not None
        }
    if "index" not in raw:
        raise FeatureguardError(f"a feature needs an index, got {feature!r}")
    out: dict[str, Any] = {"index": int(raw["index"])}
    if raw.get("label"):
        out["label"] = str(raw["label"])
    for key in ("weight", "max"):
        if key in raw:
            out[key] = _number(raw[key])
    return out


def policy_snippet(
    name: str,
    sae_name: str,
    features: Sequence[Any],
    threshold: float,
    action: str,
    *,
    comment: str | None = None,
    **extra: Any,
) -> str:
    """YAML for one policy entry (a one-item list), loadable under `policies:`.

    `features` are ints, mappings or objects with `index` (and optional `label`, `weight`,
    `max`); `extra` adds keys (`suppress={...}`, `scope=...`, `calibration={...}`). `comment`
    becomes `#` lines above the entry. Raises `PolicyError` if the entry would not load.
    """
    policy: dict[str, Any] = {
        "name": name,
        "sae": sae_name,
        "features": [_feature(f) for f in features],
        "threshold": _number(threshold),
        "action": action,
        **extra,
    }
    load_policies({"version": 1, "saes": {sae_name: {"path": "."}}, "policies": [policy]})
    text = yaml.safe_dump(
        [policy], sort_keys=False, default_flow_style=None, width=100, allow_unicode=True
    )
    head = "".join(f"# {line}\n" for line in (comment or "").splitlines())
    return head + text
