"""`featureguard discover`: find the SAE features for a policy, for two different jobs.

- detect (`detect.py`): rank features on positive and negative texts, fit a sparse probe;
- intervene (`intervene.py`): pick features by their measured effect on outputs when
  suppressed, since those that detect a concept are often not those that steer it.

Both record each feature's `max` activation and write a policy snippet (`snippet.py`).
`reply_scores` (`scores.py`) scores whole texts under a policy set as the guard would, for
calibration and for measuring trigger rates offline.
`add_parser` and `run` (`command.py`) are the command line.
"""

from featureguard.discovery.activations import (
    Example,
    TokenActs,
    hook_activations,
    read_examples,
    token_activations,
)
from featureguard.discovery.command import add_parser, run
from featureguard.discovery.detect import (
    SCREEN,
    DetectResult,
    FeatureStat,
    ProbeFeature,
    detect,
    rank_features,
    sequence_scores,
    top_contexts,
)
from featureguard.discovery.intervene import (
    InterveneResult,
    MethodTrial,
    Rate,
    Round,
    benign_threshold,
    candidate_features,
    generate_completions,
    intervene,
)
from featureguard.discovery.scores import Reply, reply_scores
from featureguard.discovery.snippet import policy_snippet

__all__ = [
    "SCREEN",
    "DetectResult",
    "Example",
    "FeatureStat",
    "InterveneResult",
    "MethodTrial",
    "ProbeFeature",
    "Rate",
    "Reply",
    "Round",
    "TokenActs",
    "add_parser",
    "benign_threshold",
    "candidate_features",
    "detect",
    "generate_completions",
    "hook_activations",
    "intervene",
    "policy_snippet",
    "rank_features",
    "read_examples",
    "reply_scores",
    "run",
    "sequence_scores",
    "token_activations",
    "top_contexts",
]
