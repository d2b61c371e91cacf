"""Find features that steer a concept: pick them by their measured effect when suppressed.

The features that best detect a concept are often not the ones whose removal changes what the
model writes, so `intervene` measures. For each suppression method (e.g. clamp to −0.5 × max
where the features fire, or ablate their decoder directions there), greedy forward selection
adds, round by round, the candidate whose suppression — through a real guard running one
conditional `suppress` policy over the chosen features — lowers the rate of bad completions on
the selection prompts most, and stops when no candidate lowers it. Every condition generates
with the same seed (common random numbers), so the comparisons are paired. The best method's
set is then measured on held-out prompts against the unwrapped model.

With `widen` > 0 a second greedy pass adds features that are edited but not scored (weight 0):
which tokens the policy edits stays what the chosen set's score decides, and the edit grows to
cover more of what carries the concept where it is applied. A wider score would raise the
benign threshold with it; a wider edit only acts where the policy already triggers.

A completion is bad when the checker says "unsafe", or, weighted by `invalid_weight`,
"invalid": an edit that breaks the output must not look like one that makes it safe.

The policy measured is the policy written: each chosen feature with weight 1 (a widened one
with weight 0) and its `max` (the largest activation on the selection prompts and their
unwrapped completions, in the guard's units), threshold 0 by default (edit the tokens where
any chosen feature fires), scope both, mode conditional by default (`latched` edits every token
of a sequence from its first trigger on, the whole prompt if it triggers there). On an edited
token, clamp sets every feature to `times_max` × its max; ablate removes the span of their
decoder directions. For a TopK SAE the guard's units are ReLU(pre-activation) without the top-k
competition, so "fires" is broader than in the SAE.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch

from featureguard.audit import MemorySink
from featureguard.discovery.activations import token_activations
from featureguard.discovery.detect import rank_features
from featureguard.discovery.snippet import policy_snippet
from featureguard.errors import FeatureguardError
from featureguard.guard import encode_prompts, wrap

__all__ = [
    "InterveneResult",
    "MethodTrial",
    "Rate",
    "Round",
    "benign_threshold",
    "candidate_features",
    "generate_completions",
    "intervene",
]

Checker = Callable[[str, str], str]
VERDICTS = ("unsafe", "safe", "invalid")
# The suppress modes `intervene` measures: `always` edits every token, so there is no trigger to
# select features for.
MODES = ("conditional", "latched")


@dataclass(frozen=True, slots=True)
class Rate:
    """The checker's verdicts on a set of completions."""

    unsafe: int
    """Completions judged unsafe."""
    invalid: int
    """Completions judged invalid (broken output)."""
    total: int
    """All completions."""

    @property
    def positive(self) -> float:
        """Fraction judged unsafe."""
        return self.unsafe / self.total

    def objective(self, invalid_weight: float) -> float:
        """What selection minimises: (unsafe + invalid_weight · invalid) / total."""
        return (self.unsafe + invalid_weight * self.invalid) / self.total


@dataclass(frozen=True, slots=True)
class Round:
    """One step of greedy selection: the feature added and the rate with it."""

    feature: int
    """The feature added."""
    rate: Rate
    """The rate on the selection prompts with it and the ones before it suppressed."""


@dataclass(frozen=True, slots=True)
class MethodTrial:
    """Greedy selection under one suppression method."""

    method: str
    """clamp or ablate."""
    strength: float | None
    """clamp: the times_max the features are set to; None for ablate."""
    features: tuple[int, ...]
    """The features chosen, in the order they were added."""
    rounds: tuple[Round, ...]
    """Each accepted round."""
    rate: Rate
    """The rate on the selection prompts with all of `features` suppressed."""


@dataclass(frozen=True, slots=True)
class InterveneResult:
    """The features, method and strength that lowered the rate most, and what they did."""

    features: tuple[int, ...]
    """The chosen features (empty when no candidate lowered the rate)."""
    edit_only: tuple[int, ...]
    """Features added by `widen`: edited with the chosen ones, weight 0 in the score."""
    widen_rounds: tuple[Round, ...]
    """Each accepted round of `widen` (rates on the selection prompts)."""
    maxes: Mapping[int, float]
    """Largest activation of each candidate that fired (guard units), used by times_max."""
    method: str
    """clamp or ablate."""
    strength: float | None
    """clamp: times_max; None for ablate."""
    threshold: float
    """The policy's threshold: it triggers where Σ f over the chosen features exceeds it."""
    scope: str
    """The policy's scope."""
    mode: str
    """The suppress mode: conditional or latched."""
    baseline: Rate
    """Unwrapped model on the selection prompts."""
    selected: Rate
    """The chosen policy on the selection prompts."""
    held_out_baseline: Rate
    """Unwrapped model on the held-out prompts."""
    held_out: Rate
    """The chosen policy on the held-out prompts."""
    trials: tuple[MethodTrial, ...]
    """Greedy selection under every method tried."""
    skipped: tuple[int, ...]
    """Candidates that never fired on the selection prompts and their completions."""

    def policy(self, name: str = "intervene", sae_name: str = "sae") -> dict[str, Any]:
        """The suppress policy as a mapping (what was measured)."""
        return _policy(
            name,
            sae_name,
            self.features,
            self.edit_only,
            self.maxes,
            self.method,
            self.strength,
            self.threshold,
            self.scope,
            self.mode,
        )

    def snippet(self, name: str = "intervene", sae_name: str = "sae", **extra: Any) -> str:
        """The suppress policy as a YAML entry, with the measured rates as a comment."""
        if not self.features:
            raise FeatureguardError("no candidate lowered the rate: there is no policy to write")
        p = self.policy(name, sae_name)
        comment = (
            f"featureguard discover intervene: unsafe rate on held-out prompts "
            f"{self.held_out.positive:.3f} (unwrapped {self.held_out_baseline.positive:.3f}, "
            f"n={self.held_out.total}); invalid {self.held_out.invalid / self.held_out.total:.3f}"
        )
        return policy_snippet(
            p["name"],
            sae_name,
            p["features"],
            p["threshold"],
            "suppress",
            comment=comment,
            scope=p["scope"],
            suppress=p["suppress"],
            **extra,
        )


def _policy(
    name: str,
    sae_name: str,
    features: Sequence[int],
    edit_only: Sequence[int],
    maxes: Mapping[int, float],
    method: str,
    strength: float | None,
    threshold: float,
    scope: str,
    mode: str,
) -> dict[str, Any]:
    suppress: dict[str, Any] = {"method": method, "mode": mode}
    if method == "clamp":
        suppress["times_max"] = strength
    return {
        "name": name,
        "sae": sae_name,
        "features": [{"index": f, "weight": 1.0, "max": maxes[f]} for f in features]
        + [{"index": f, "weight": 0.0, "max": maxes[f]} for f in edit_only],
        "threshold": threshold,
        "action": "suppress",
        "scope": scope,
        "suppress": suppress,
    }


class _Runner:
    """Generates completions of prompts, unwrapped or under a policy, and judges them."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        checker: Checker,
        sae: dict,
        gen: dict[str, Any],
        samples: int,
        seed: int,
        batch_size: int,
    ) -> None:
        self.model, self.tokenizer, self.checker, self.sae = model, tokenizer, checker, sae
        self.gen, self.samples, self.seed, self.batch_size = gen, samples, seed, batch_size

    def completions(self, prompts: Sequence[str], policy: dict | None = None) -> list[str]:
        rows = [p for p in prompts for _ in range(self.samples)]
        device = next(self.model.parameters()).device
        devices = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.seed)
            if policy is None:
                return [
                    c
                    for i in range(0, len(rows), self.batch_size)
                    for c in self._bare(rows[i : i + self.batch_size])
                ]
            doc = {"version": 1, "saes": {"sae": self.sae}, "policies": [policy]}
            with wrap(self.model, doc, tokenizer=self.tokenizer, audit=MemorySink()) as guard:
                return [
                    c
                    for i in range(0, len(rows), self.batch_size)
                    for c in guard.generate(rows[i : i + self.batch_size], **self.gen)
                ]

    def _bare(self, prompts: list[str]) -> list[str]:
        """What `guard.generate` returns for an unwrapped model: one extra token is generated
        and dropped, so both draw the same random numbers."""
        tok = self.tokenizer
        enc = encode_prompts(tok, prompts, next(self.model.parameters()).device)
        n = self.gen["max_new_tokens"]
        with torch.no_grad():
            out = self.model.generate(**enc, **{**self.gen, "max_new_tokens": n + 1})
        width = enc["input_ids"].shape[1]
        return [
            tok.decode(row[width : width + n], skip_special_tokens=True) for row in out.tolist()
        ]

    def rate(self, prompts: Sequence[str], completions: Sequence[str]) -> Rate:
        rows = [p for p in prompts for _ in range(self.samples)]
        verdicts = [self.checker(p, c) for p, c in zip(rows, completions, strict=True)]
        bad = sorted({v for v in verdicts if v not in VERDICTS}, key=repr)
        if bad:
            raise FeatureguardError(f"the checker must return one of {VERDICTS}, got {bad[0]!r}")
        return Rate(verdicts.count("unsafe"), verdicts.count("invalid"), len(verdicts))

    def measure(self, prompts: Sequence[str], policy: dict | None = None) -> Rate:
        return self.rate(prompts, self.completions(prompts, policy))


def generate_completions(
    model: torch.nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    samples_per_prompt: int = 1,
    max_new_tokens: int = 48,
    temperature: float = 0.8,
    seed: int = 0,
    batch_size: int = 32,
) -> list[str]:
    """Completions of the unwrapped model, `samples_per_prompt` per prompt in a row, drawn as
    `intervene` draws them (same seed, same random numbers)."""
    run = _Runner(
        model,
        tokenizer,
        lambda p, c: "safe",
        {},
        _generation(max_new_tokens, temperature),
        samples_per_prompt,
        seed,
        batch_size,
    )
    return run.completions(prompts)


def _generation(max_new_tokens: int, temperature: float) -> dict[str, Any]:
    gen: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": temperature > 0}
    if temperature > 0:
        gen["temperature"] = temperature
    return gen


def candidate_features(
    model: torch.nn.Module,
    tokenizer: Any,
    sae: Any,
    hook: str | None,
    texts: Sequence[str],
    unsafe: Sequence[bool],
    n: int,
) -> list[int]:
    """The `n` features that best tell unsafe from safe texts (prompt + completion) by sequence
    AUROC; the `n` that fire most on average when one class is missing."""
    acts = token_activations(model, tokenizer, sae, hook, texts)
    pos = [a for a, u in zip(acts, unsafe, strict=True) if u]
    neg = [a for a, u in zip(acts, unsafe, strict=True) if not u]
    if pos and neg:
        return [s.index for s in rank_features(pos, neg)[:n]]
    mean = torch.cat([a.acts for a in acts]).mean(dim=0)
    return torch.argsort(-mean, stable=True)[:n].tolist()


def _maxes(
    model: torch.nn.Module,
    tokenizer: Any,
    sae_path: str | os.PathLike,
    hook: str | None,
    texts: Sequence[str],
    candidates: Sequence[int],
    batch_size: int,
) -> dict[int, float]:
    """The largest activation (guard units) of each candidate that fires on `texts`."""
    acts = token_activations(model, tokenizer, sae_path, hook, texts, features=list(candidates),
                             batch_size=batch_size)  # fmt: skip
    tops = {f: max([float(a.acts[:, j].max()) for a in acts if len(a.ids)], default=0.0)
            for j, f in enumerate(candidates)}  # fmt: skip
    return {f: v for f, v in tops.items() if v > 0}


def _benign_scores(
    model: torch.nn.Module,
    tokenizer: Any,
    sae_path: str | os.PathLike,
    hook: str | None,
    texts: Sequence[str],
    features: Sequence[int],
    batch_size: int,
) -> list[torch.Tensor]:
    """[tokens, features] per benign text: the features' activations (guard units)."""
    acts = token_activations(model, tokenizer, sae_path, hook, list(texts), features=list(features),
                             batch_size=batch_size)  # fmt: skip
    rows = [a.acts.double() for a in acts if len(a.ids)]
    if not rows:
        raise FeatureguardError("the benign texts have no scored token")
    return rows


def benign_threshold(rows: Sequence[torch.Tensor], quantile: float, floor: float = 0.0) -> float:
    """The `quantile` of the benign texts' peak scores, at least `floor`: `rows` holds one
    [tokens, features] tensor per text, a text's peak is its largest Σ f over tokens."""
    peaks = torch.stack([text.sum(dim=1).max() for text in rows])
    return max(floor, float(torch.quantile(peaks, quantile)))


def _measure_set(
    run: _Runner,
    prompts: Sequence[str],
    policy: Callable[[Sequence[int], str, float | None], dict],
    method: str,
    strength: float | None,
    features: Sequence[int],
) -> Rate:
    return run.measure(prompts, policy(features, method, strength))


def _greedy(
    measure: Callable[[Sequence[int]], Rate],
    pool: Sequence[int],
    baseline: Rate,
    max_features: int,
    invalid_weight: float,
) -> tuple[tuple[int, ...], tuple[Round, ...]]:
    """Forward selection: add the feature whose set measures lowest, while that improves."""
    chosen: list[int] = []
    rounds: list[Round] = []
    best = baseline.objective(invalid_weight)
    while len(chosen) < max_features and len(chosen) < len(pool):
        tried = [(measure([*chosen, f]), f) for f in pool if f not in chosen]
        rate, feature = min(tried, key=lambda t: t[0].objective(invalid_weight))  # first of ties
        if rate.objective(invalid_weight) >= best:
            break
        chosen.append(feature)
        rounds.append(Round(feature, rate))
        best = rate.objective(invalid_weight)
    return tuple(chosen), tuple(rounds)


def intervene(
    model: torch.nn.Module,
    tokenizer: Any,
    sae_path: str | os.PathLike,
    hook: str | None,
    prompts: Sequence[str],
    checker: Checker,
    candidates: Sequence[int],
    *,
    held_out: Sequence[str],
    max_features: int = 5,
    widen: int = 0,
    methods: Sequence[tuple[str, float | None]] = (("clamp", -0.5), ("ablate", None)),
    samples_per_prompt: int = 1,
    max_new_tokens: int = 48,
    temperature: float = 0.8,
    seed: int = 0,
    threshold: float = 0.0,
    scope: str = "both",
    mode: str = "conditional",
    invalid_weight: float = 1.0,
    batch_size: int = 32,
    benign: Sequence[str] | None = None,
    benign_quantile: float = 0.99,
) -> InterveneResult:
    """Greedy selection of suppressed features by measured effect (module docstring).

    With `benign` texts, each feature set's threshold is the larger of `threshold` and the
    `benign_quantile` of the set's score (Σ f) maximised over each benign text's tokens, so the
    edit fires anywhere in only about 1 − `benign_quantile` of benign texts. A per-token rule
    is not enough: one edited token changes the rest of a greedy reply, and a threshold that
    only 5% of benign tokens exceed still fires somewhere in most texts. In guard units a TopK
    SAE's features fire far more broadly than in the SAE: at threshold 0 a "conditional" edit
    touches most tokens of ordinary text.

    `mode` is the policy's suppress mode (conditional or latched); `widen` the most features
    the second greedy pass may add with weight 0 (module docstring)."""
    if widen < 0:
        raise FeatureguardError(f"widen must be >= 0, got {widen}")
    if not 0.0 < benign_quantile < 1.0:
        raise FeatureguardError(f"benign_quantile must be in (0, 1), got {benign_quantile}")
    if mode not in MODES:
        raise FeatureguardError(f"mode must be 'conditional' or 'latched', got {mode!r}")
    if not prompts or not held_out:
        raise FeatureguardError("intervene needs selection prompts and held-out prompts")
    if len(set(candidates)) != len(candidates) or not candidates:
        raise FeatureguardError(f"expected distinct candidate features, got {list(candidates)}")
    for method, strength in methods:
        if method not in ("clamp", "ablate") or (method == "clamp") != (strength is not None):
            raise FeatureguardError(
                f"expected ('clamp', times_max) or ('ablate', None), got {(method, strength)}"
            )
    gen = _generation(max_new_tokens, temperature)
    sae = {"path": os.fspath(sae_path), **({"hook": hook} if hook else {})}
    run = _Runner(model, tokenizer, checker, sae, gen, samples_per_prompt, seed, batch_size)
    completions = run.completions(prompts)
    baseline = run.rate(prompts, completions)
    rows = [p for p in prompts for _ in range(samples_per_prompt)]
    texts = [p + c for p, c in zip(rows, completions, strict=True)]
    maxes = _maxes(model, tokenizer, sae_path, hook, texts, candidates, batch_size)
    pool = [f for f in candidates if f in maxes]

    benign_scores = None
    if benign and pool:
        benign_scores = _benign_scores(model, tokenizer, sae_path, hook, benign, pool, batch_size)

    def threshold_of(features: Sequence[int]) -> float:
        if benign_scores is None or not features:
            return threshold
        cols = [pool.index(f) for f in features]
        return benign_threshold([text[:, cols] for text in benign_scores], benign_quantile,
                                threshold)  # fmt: skip

    def policy(features: Sequence[int], method: str, strength: float | None,
               edit_only: Sequence[int] = ()) -> dict:  # fmt: skip
        return _policy("intervene", "sae", features, edit_only, maxes, method, strength,
                       threshold_of(features), scope, mode)  # fmt: skip

    trials = []
    for method, strength in methods:
        measure = partial(_measure_set, run, prompts, policy, method, strength)
        chosen, rounds = _greedy(measure, pool, baseline, max_features, invalid_weight)
        rate = rounds[-1].rate if rounds else baseline
        trials.append(MethodTrial(method, strength, chosen, rounds, rate))
    order = {id(t): i for i, t in enumerate(trials)}
    winner = min(
        trials, key=lambda t: (t.rate.objective(invalid_weight), len(t.features), order[id(t)])
    )
    edit_only: tuple[int, ...] = ()
    widen_rounds: tuple[Round, ...] = ()
    if widen > 0 and winner.features:
        rest = [f for f in pool if f not in winner.features]

        def measure_wider(extra: Sequence[int]) -> Rate:
            doc = policy(winner.features, winner.method, winner.strength, extra)
            return run.measure(prompts, doc)

        edit_only, widen_rounds = _greedy(measure_wider, rest, winner.rate, widen, invalid_weight)
    held_base = run.measure(held_out)
    held = (
        run.measure(held_out, policy(winner.features, winner.method, winner.strength, edit_only))
        if winner.features
        else held_base
    )
    return InterveneResult(
        features=winner.features,
        edit_only=edit_only,
        widen_rounds=widen_rounds,
        maxes=maxes,
        method=winner.method,
        strength=winner.strength,
        threshold=threshold_of(winner.features),
        scope=scope,
        mode=mode,
        baseline=baseline,
        selected=widen_rounds[-1].rate if widen_rounds else winner.rate,
        held_out_baseline=held_base,
        held_out=held,
        trials=tuple(trials),
        skipped=tuple(f for f in candidates if f not in maxes),
    )
