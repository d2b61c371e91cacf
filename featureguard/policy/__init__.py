"""Policy files: YAML in, frozen and validated `PolicySet` out (no torch, no other layer)."""

from featureguard.policy.load import PolicySource, load_policies, load_policies_text, validate_files
from featureguard.policy.model import (
    ACTIONS,
    FAIL_MODES,
    SCOPES,
    SEVERITIES,
    AuditSpec,
    CalibrationSpec,
    FeatureSpec,
    Location,
    Policy,
    PolicySet,
    SAESpec,
    SteerSpec,
    SuppressSpec,
    TraceSpec,
)

__all__ = [
    "ACTIONS",
    "FAIL_MODES",
    "SCOPES",
    "SEVERITIES",
    "AuditSpec",
    "CalibrationSpec",
    "FeatureSpec",
    "Location",
    "Policy",
    "PolicySet",
    "PolicySource",
    "SAESpec",
    "SteerSpec",
    "SuppressSpec",
    "TraceSpec",
    "load_policies",
    "load_policies_text",
    "validate_files",
]
