"""Policy scores of whole texts, as the guard would compute them while reading each text.

A reply's score is what decides whether a policy triggers on it: the maximum over its in-scope
tokens of Σ wᵢ fᵢ, or with `window` w > 1 the maximum over runs of w consecutive tokens of the
run's minimum (the policy triggers at threshold t iff this is > t). Activations come from
`token_activations` with the policy's features (`SAE.encode_subset`, the guard's units),
teacher-forced on the text. Special tokens are left out as the guard leaves them out; a window
run across one is counted here although the guard would restart it (a rare, slightly
conservative difference).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from featureguard.discovery.activations import TokenActs, token_activations
from featureguard.errors import FeatureguardError
from featureguard.policy import Policy, PolicySet
from featureguard.sae import load_sae

__all__ = ["Reply", "reply_scores"]

Reply = str | tuple[str, str]
"""A reply scored whole, or (prompt, reply): the prompt is context, scored only by policies
whose scope takes prompt tokens."""


def _windowed_max(scores: torch.Tensor, window: int) -> float:
    """max over runs of `window` consecutive tokens of the run's minimum score (−inf if none)."""
    if scores.numel() < window:
        return float("-inf")
    return float(scores.unfold(0, window, 1).min(dim=1).values.max())


def reply_scores(
    policies: PolicySet,
    model: torch.nn.Module,
    tokenizer: Any,
    replies: Sequence[Reply],
    *,
    batch_size: int = 32,
) -> dict[str, torch.Tensor]:
    """Each policy's score of each reply: {policy name: [n] float64} (module docstring).

    A string is scored whole. Of a (prompt, reply) pair, a policy scores the tokens its scope
    takes: a token belongs to the reply when it starts at or after the prompt's end.
    """
    pairs = [(None, r) if isinstance(r, str) else (r[0], r[1]) for r in replies]
    texts = [(prompt or "") + reply for prompt, reply in pairs]
    out: dict[str, torch.Tensor] = {}
    for sae_name, spec in policies.saes.items():
        group = [p for p in policies.policies if p.sae == sae_name]
        if not group:
            continue
        features = sorted({f.index for p in group for f in p.features})
        sae = load_sae(spec.path, features=features)
        acts = token_activations(
            model, tokenizer, sae, spec.hook, texts, features=features, batch_size=batch_size
        )
        for p in group:
            w = torch.tensor([f.weight for f in p.features], dtype=torch.float64)
            cols = [features.index(f.index) for f in p.features]
            scores = []
            for a, (prompt, _) in zip(acts, pairs, strict=True):
                token_scores = a.acts[:, cols].double() @ w  # [T]
                scores.append(_windowed_max(token_scores[_in_scope(a, prompt, p)], p.window))
            out[p.name] = torch.tensor(scores, dtype=torch.float64)
    return out


def _in_scope(acts: TokenActs, prompt: str | None, policy: Policy) -> torch.Tensor:
    """[T] bool: the tokens `policy` scores (all of them for a reply without a prompt)."""
    if prompt is None or policy.scope == "both":
        return torch.ones(len(acts.ids), dtype=torch.bool)
    if acts.offsets is None:
        raise FeatureguardError("(prompt, reply) pairs need a fast tokenizer (character offsets)")
    in_reply = acts.offsets[:, 0] >= len(prompt)
    return in_reply if policy.scope == "response" else ~in_reply
