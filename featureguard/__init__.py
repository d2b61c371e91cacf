"""featureguard: per-token safety policies on sparse-autoencoder features.

    import featureguard as fg
    guard = fg.wrap(model, policies="policies/x.yaml", tokenizer=tok)  # hooks attached in place
    model.generate(...)                                                # now guarded
    guard.last                                                         # what fired, per row
    guard.detach()                                                     # model exactly as before
"""

from featureguard.audit import MemorySink
from featureguard.errors import (
    AuditError,
    ChainBrokenError,
    FeatureguardError,
    FeatureguardWarning,
    GuardError,
    HookError,
    PairingError,
    PairingWarning,
    PolicyError,
    SAEFormatError,
    SAELoadError,
)
from featureguard.guard import Guard, wrap
from featureguard.outcomes import SequenceOutcome, Trigger
from featureguard.policy import PolicySet, load_policies
from featureguard.sae import SAE, load_sae

__version__ = "0.1.0"

__all__ = [
    "SAE",
    "AuditError",
    "ChainBrokenError",
    "FeatureguardError",
    "FeatureguardWarning",
    "Guard",
    "GuardError",
    "HookError",
    "MemorySink",
    "PairingError",
    "PairingWarning",
    "PolicyError",
    "PolicySet",
    "SAEFormatError",
    "SAELoadError",
    "SequenceOutcome",
    "Trigger",
    "load_policies",
    "load_sae",
    "wrap",
]
