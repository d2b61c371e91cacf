"""`featureguard calibrate`: set each policy's threshold so few benign replies would trigger.

A benign reply's score is the value its policy compares with the threshold: the maximum over its
in-scope tokens of Σ wᵢ fᵢ (over windows, for `window` > 1), computed as the guard computes it
(`featureguard.discovery.scores`); it triggers at threshold t iff its score is > t.

Threshold, with a finite-sample guarantee. Let S₁..Sₙ be the benign scores, i.i.d. draws of a
benign reply's score S, and p(t) = P(S > t) the benign trigger rate at t. For the count
K(t) = #{Sᵢ > t} ~ Binomial(n, p(t)), the one-sided Clopper-Pearson upper bound at confidence
1 − α is U(k, n) = the p solving P(Binomial(n, p) ≤ k) = α (U(n, n) = 1); U increases with k.
We take

    k* = max{k : U(k, n) ≤ target}  =  max{k : P(Binomial(n, target) ≤ k) ≤ α}
    t  = S₍ₖ*₊₁₎, the (k*+1)-th largest score,  so K(t) ≤ k*,  and report  bound = U(k*, n).

k* depends on n, target and α only, and for continuous S, p(t) = 1 − F(t) ~ Beta(k*+1, n−k*),
so P(p(t) > u) = P(Binomial(n, u) ≤ k*): at u = bound this is exactly α. Hence, over the draw of
the benign set, P(p(t) ≤ bound) ≥ 1 − α, and bound ≤ target; ties (an atom of S) only lower
p(t). (U(K(t), n) with the observed count would not be a valid bound for this data-chosen t.)
Such a k* exists iff (1 − target)ⁿ ≤ α, i.e. n ≥ ⌈ln α / ln(1 − target)⌉ (299 for 1% at 95%);
with fewer replies `calibrate` raises and names that minimum.

A held-out benign set of m replies measures p(t) with noise of its own, so its observed rate can
exceed `bound` even when p(t) ≤ bound. The n + m scores are exchangeable, so the number X of
held-out replies above t is beta-binomial whatever the distribution of S:
P(X = x) = C(m, x) B(x + k* + 1, m − x + n − k*) / B(k* + 1, n − k*).
`CalibrationResult.held_out_bound(m)` is the smallest x/m with P(X ≤ x) ≥ 1 − α: the rate that
a held-out set of m benign replies stays within with that probability.

The calibration set is identified by the SHA-256 of its JSON encoding (a list of strings, or of
[prompt, reply] pairs) and its size.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import math
import os
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from featureguard.discovery.activations import read_examples
from featureguard.discovery.scores import Reply, reply_scores
from featureguard.errors import FeatureguardError, FeatureguardWarning
from featureguard.policy import PolicySet, PolicySource, load_policies, load_policies_text
from featureguard.sae import load_sae

__all__ = [
    "CalibrationResult",
    "Choice",
    "add_parser",
    "allowed_exceedances",
    "calibrate",
    "choose_threshold",
    "held_out_count_bound",
    "min_set_size",
    "run",
    "set_sha256",
    "upper_bound",
    "write_calibration",
]


# ---- the maths -----------------------------------------------------------------------------------
def _log_cdf(k: int, n: int, p: float) -> torch.Tensor:
    """log P(Binomial(n, p) ≤ i) for i = 0..k: [k+1], float64."""
    i = torch.arange(k + 1, dtype=torch.float64)
    log_pmf = (
        math.lgamma(n + 1)
        - torch.lgamma(i + 1)
        - torch.lgamma(n - i + 1)
        + i * math.log(p)
        + (n - i) * math.log1p(-p)
    )
    return torch.logcumsumexp(log_pmf, dim=0)


def upper_bound(k: int, n: int, confidence: float) -> float:
    """One-sided Clopper-Pearson upper bound on p after k of n: P(Bin(n, p) ≤ k) = 1 − conf."""
    if not 0 <= k <= n or n < 1:
        raise FeatureguardError(f"expected 0 <= k <= n and n >= 1, got k={k}, n={n}")
    _check_rates(0.5, confidence)
    alpha = 1 - confidence
    if k == n:
        return 1.0
    if k == 0:
        return 1 - alpha ** (1 / n)
    lo, hi = 0.0, 1.0  # P(Bin(n, p) <= k) falls from 1 to 0 as p goes from 0 to 1
    for _ in range(200):
        mid = (lo + hi) / 2
        if mid in (lo, hi):
            break
        if float(_log_cdf(k, n, mid)[-1]) > math.log(alpha):
            lo = mid
        else:
            hi = mid
    return hi


def min_set_size(target_rate: float, confidence: float) -> int:
    """The fewest benign replies for which some threshold has bound ≤ target_rate."""
    n = max(1, math.ceil(math.log(1 - confidence) / math.log1p(-target_rate)))
    while n > 1 and upper_bound(0, n - 1, confidence) <= target_rate:
        n -= 1
    while upper_bound(0, n, confidence) > target_rate:
        n += 1
    return n


def allowed_exceedances(n: int, target_rate: float, confidence: float) -> int:
    """k*: the most benign scores that may exceed the threshold (module docstring)."""
    _check_rates(target_rate, confidence)
    if n < min_set_size(target_rate, confidence):
        raise FeatureguardError(
            f"calibration needs at least {min_set_size(target_rate, confidence)} benign replies "
            f"for target rate {target_rate:g} at confidence {confidence:g}, got {n}: add benign "
            "replies, raise the target rate or lower the confidence"
        )
    log_cdf = _log_cdf(n, n, target_rate)
    k = int((log_cdf <= math.log(1 - confidence)).sum()) - 1
    while k > 0 and upper_bound(k, n, confidence) > target_rate:  # rounding at the boundary
        k -= 1
    return max(k, 0)


def _check_rates(target_rate: float, confidence: float) -> None:
    for name, value in (("target rate", target_rate), ("confidence", confidence)):
        if not 0 < value < 1:
            raise FeatureguardError(f"expected the {name} in (0, 1), got {value}")


@dataclass(frozen=True, slots=True)
class Choice:
    """A threshold chosen from benign scores."""

    threshold: float
    """The (allowed+1)-th largest benign score."""
    bound: float
    """U(allowed, n): the upper confidence bound on the benign trigger rate at `threshold`."""
    allowed: int
    """k*: how many benign scores the rule lets exceed the threshold."""
    exceed: int
    """How many do (≤ allowed; fewer with ties)."""
    n: int
    """Number of benign scores."""


def choose_threshold(
    scores: Sequence[float] | torch.Tensor, target_rate: float = 0.01, confidence: float = 0.95
) -> Choice:
    """The smallest threshold whose bound is ≤ target_rate (module docstring)."""
    s = torch.as_tensor(scores, dtype=torch.float64).reshape(-1)
    if torch.isnan(s).any():
        raise FeatureguardError("benign scores hold NaN")
    k = allowed_exceedances(len(s), target_rate, confidence)
    t = float(torch.sort(s, descending=True).values[k])
    if not math.isfinite(t):
        raise FeatureguardError(
            f"the threshold would be {t}: too many benign replies have no scored token"
        )
    return Choice(t, upper_bound(k, len(s), confidence), k, int((s > t).sum()), len(s))


def held_out_count_bound(k: int, n: int, m: int, confidence: float) -> int:
    """The most of m new benign replies above the (k+1)-th largest of n benign scores, with
    probability ≥ confidence (beta-binomial; module docstring)."""
    if not 0 <= k < n or m < 1:
        raise FeatureguardError(f"expected 0 <= k < n and m >= 1, got k={k}, n={n}, m={m}")
    x = torch.arange(m + 1, dtype=torch.float64)
    a, b = k + 1, n - k
    log_pmf = (
        math.lgamma(m + 1) - torch.lgamma(x + 1) - torch.lgamma(m - x + 1)
        + torch.lgamma(x + a) + torch.lgamma(m - x + b) - math.lgamma(m + a + b)
        - (math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b))
    )  # fmt: skip
    cdf = torch.cumsum(torch.exp(log_pmf), dim=0)
    return min(m, int((cdf < confidence - 1e-12).sum()))


# ---- the calibration set ------------------------------------------------------------------------
def set_sha256(items: Sequence[Reply]) -> str:
    """SHA-256 of the JSON encoding of a set of replies (strings or [prompt, reply] pairs)."""
    plain = [item if isinstance(item, str) else list(item) for item in items]
    data = json.dumps(plain, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(data.encode("utf-8")).hexdigest()


# ---- calibrate -----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class CalibrationResult:
    """One policy's calibrated threshold and the evidence for it."""

    policy: str
    """The policy's name."""
    threshold: float
    """The new threshold."""
    previous_threshold: float
    """The threshold the policy had."""
    bound: float
    """Upper confidence bound on the benign trigger rate at `threshold` (≤ target_rate)."""
    target_rate: float
    """The benign trigger rate aimed at."""
    confidence: float
    """Probability, over the draw of the benign set, that the true rate is ≤ bound."""
    allowed: int
    """k*: benign replies the rule lets score above the threshold."""
    exceed: int
    """Benign replies of the set that do."""
    set_sha256: str
    """SHA-256 of the benign set (`set_sha256`)."""
    set_size: int
    """Benign replies."""
    recall: float | None
    """Fraction of the positives scoring above the threshold; None without positives."""
    positives: int
    """Number of positives."""
    date: str
    """When it ran (ISO 8601, UTC)."""

    def held_out_bound(self, m: int) -> float:
        """The benign trigger rate a held-out set of `m` benign replies stays within, with
        probability >= confidence (module docstring)."""
        return held_out_count_bound(self.allowed, self.set_size, m, self.confidence) / m

    def record(self) -> dict[str, Any]:
        """The policy's `calibration:` mapping."""
        record: dict[str, Any] = {
            "target_rate": self.target_rate,
            "bound": self.bound,
            "confidence": self.confidence,
            "set_sha256": self.set_sha256,
            "set_size": self.set_size,
        }
        if self.recall is not None:
            record["recall"] = self.recall
        record["date"] = self.date
        return record


def calibrate(
    policy_set_or_path: PolicySet | PolicySource,
    model: torch.nn.Module,
    tokenizer: Any,
    benign: Sequence[Reply],
    positives: Sequence[Reply] | None = None,
    *,
    target_rate: float = 0.01,
    confidence: float = 0.95,
    names: Sequence[str] | None = None,
    batch_size: int = 32,
) -> list[CalibrationResult]:
    """A threshold per policy (all, or those `names`) from benign replies (module docstring)."""
    policies = (
        policy_set_or_path
        if isinstance(policy_set_or_path, PolicySet)
        else load_policies(policy_set_or_path)
    )
    known = [p.name for p in policies.policies]
    missing = sorted(set(names or ()) - set(known))
    if missing:
        raise FeatureguardError(f"no policy named {missing} (the file has {known})")
    allowed_exceedances(len(benign), target_rate, confidence)  # fail early when n is too small
    benign_scores = reply_scores(policies, model, tokenizer, benign, batch_size=batch_size)
    pos_scores = (
        reply_scores(policies, model, tokenizer, positives, batch_size=batch_size)
        if positives
        else {}
    )
    digest = set_sha256(benign)
    date = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()
    results = []
    for p in policies.policies:
        if names is not None and p.name not in names:
            continue
        choice = choose_threshold(benign_scores[p.name], target_rate, confidence)
        pos = pos_scores.get(p.name)
        recall = None if pos is None else float((pos > choice.threshold).double().mean())
        results.append(
            CalibrationResult(
                policy=p.name,
                threshold=choice.threshold,
                previous_threshold=p.threshold,
                bound=choice.bound,
                target_rate=target_rate,
                confidence=confidence,
                allowed=choice.allowed,
                exceed=choice.exceed,
                set_sha256=digest,
                set_size=len(benign),
                recall=recall,
                positives=0 if pos is None else len(pos),
                date=date,
            )
        )
    return results


# ---- writing back --------------------------------------------------------------------------------
def _flow(value: Any) -> str:
    """`value` as one line of YAML flow text (floats keep every digit; strings quoted as needed)."""
    return (
        yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=1 << 20)
        .split("\n...")[0]
        .strip()
    )


def _block(record: dict[str, Any], indent: int) -> str:
    """`record` as the lines of a block mapping, each indented by `indent` spaces."""
    return "".join(f"{' ' * indent}{key}: {_flow(value)}\n" for key, value in record.items())


def _edits(text: str, results: dict[str, CalibrationResult]) -> list[tuple[int, int, str]]:
    """(start, end, replacement) text edits that set each policy's threshold and calibration:
    the threshold's value is replaced (its trailing comment kept in its column), and the
    record replaces the old one or goes right after the threshold, in the policy's style."""
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    policies = next(v for k, v in root.value if k.value == "policies")
    edits = []
    for item in policies.value:
        keys = {k.value: (k, v) for k, v in item.value}
        result = results.get(keys["name"][1].value)
        if result is None:
            continue
        key, value = keys["threshold"]
        start, end = value.start_mark.index, value.end_mark.index
        new = _flow(result.threshold)
        pad = len(text[end:]) - len(text[end:].lstrip(" "))
        if text[end + pad : end + pad + 1] == "#":  # keep the comment where it was
            end, new = end + pad, new + " " * max(1, pad - (len(new) - (end - start)))
        edits.append((start, end, new))
        record = result.record()
        if "calibration" in keys:
            old = keys["calibration"][1]
            body = text[old.start_mark.index : old.end_mark.index].rstrip()
            column = old.start_mark.column
            block = _block(record, column)[column:].rstrip("\n")
            edits.append((old.start_mark.index, old.start_mark.index + len(body),
                          _flow(record) if old.flow_style else block))  # fmt: skip
        elif item.flow_style:
            edits.append((value.end_mark.index, value.end_mark.index,
                          f", calibration: {_flow(record)}"))  # fmt: skip
        else:
            eol = text.find("\n", value.end_mark.index)
            at, lead = (len(text), "\n") if eol < 0 else (eol + 1, "")
            indent = " " * key.start_mark.column
            edits.append((at, at, f"{lead}{indent}calibration:\n{_block(record, len(indent) + 2)}"))
    return edits


def _written(text: str, file: str, results: dict[str, CalibrationResult]) -> bool:
    """Whether `text` loads with each calibrated policy's threshold and record as intended."""
    try:
        loaded = load_policies_text(text, file=file, base_dir=Path(file).parent)
    except FeatureguardError:
        return False
    by_name = {p.name: p for p in loaded.policies}
    return all(
        name in by_name
        and by_name[name].threshold == r.threshold
        and by_name[name].calibration is not None
        and {k: getattr(by_name[name].calibration, k) for k in r.record()} == r.record()
        for name, r in results.items()
    )


def write_calibration(path: str | os.PathLike, results: Sequence[CalibrationResult]) -> None:
    """Set each result's threshold and `calibration:` record in the policy file at `path`.

    The text is edited in place, so comments and layout survive; if the edit does not load back
    exactly, the file is rewritten from its parsed form instead, which loses its comments (a
    `FeatureguardWarning` says so). The file is replaced atomically.
    """
    file = os.fspath(path)
    text = Path(file).read_text(encoding="utf-8")
    by_name = {r.policy: r for r in results}
    names = [p.name for p in load_policies(file).policies]  # the file must be valid to begin with
    missing = sorted(set(by_name) - set(names))
    if missing:
        raise FeatureguardError(f"{file}: no policy named {missing} (the file has {names})")
    new = text
    try:
        for start, end, replacement in sorted(_edits(text, by_name), reverse=True):
            new = new[:start] + replacement + new[end:]
    except (yaml.YAMLError, StopIteration, KeyError, AttributeError):
        new = ""
    if not _written(new, file, by_name):
        doc = yaml.safe_load(text)
        for policy in doc["policies"]:
            if policy["name"] in by_name:
                policy["threshold"] = by_name[policy["name"]].threshold
                policy["calibration"] = by_name[policy["name"]].record()
        new = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
        warnings.warn(
            f"{file}: rewritten from its parsed form; its comments were lost",
            FeatureguardWarning,
            stacklevel=2,
        )
        if not _written(new, file, by_name):
            raise FeatureguardError(f"{file}: could not write the calibration back")
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(file)), suffix=".yaml")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as stream:
            stream.write(new)
        os.chmod(tmp, os.stat(file).st_mode & 0o7777)
        os.replace(tmp, file)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---- command line --------------------------------------------------------------------------------
def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `calibrate` on the `featureguard` subparsers."""
    p = subparsers.add_parser("calibrate", help="set thresholds from benign replies, with a bound")
    p.add_argument("policies", metavar="POLICY.yaml", help="the policy file")
    p.add_argument("--benign", required=True, help="benign replies (text or JSONL, prompt allowed)")
    p.add_argument("--positives", help="positive replies, to report recall")
    p.add_argument("--target-rate", type=float, default=0.01, help="benign trigger rate (0.01)")
    p.add_argument("--confidence", type=float, default=0.95, help="of the bound (0.95)")
    p.add_argument("--model", help="transformers model folder (default: the SAE config's model)")
    p.add_argument("--policy", action="append", help="calibrate only this policy (repeatable)")
    p.add_argument("--write", action="store_true", help="write thresholds back into the file")
    p.set_defaults(func=run)
    return p


def _replies(path: str) -> list[Reply]:
    return [e.text if e.prompt is None else (e.prompt, e.text) for e in read_examples(path)]


def run(args: argparse.Namespace) -> int:
    """Run `featureguard calibrate`; exit 0."""
    from featureguard.model_files import load_model

    policies = load_policies(args.policies)
    model_dir = args.model
    if model_dir is None:
        spec = next(iter(policies.saes.values()))
        model_dir = load_sae(spec.path, features=[]).cfg.model_name
        if not model_dir:
            raise FeatureguardError("the SAE's config names no model; pass --model")
    # The SAE's model name was not typed by the user: read it from disk only, never download.
    model, tokenizer = load_model(model_dir, download=args.model is not None)
    benign = _replies(args.benign)
    positives = _replies(args.positives) if args.positives else None
    results = calibrate(
        policies,
        model,
        tokenizer,
        benign,
        positives,
        target_rate=args.target_rate,
        confidence=args.confidence,
        names=args.policy,
    )
    for r in results:
        recall = "-" if r.recall is None else f"{r.recall:.3f} of {r.positives}"
        print(
            f"{r.policy}: threshold {r.previous_threshold:.4g} -> {r.threshold:.6g}; benign above "
            f"{r.exceed}/{r.set_size} (allowed {r.allowed}); rate <= {r.bound:.4f} at "
            f"{r.confidence:.0%} confidence (target {r.target_rate:g}); a held-out set of "
            f"{r.set_size} stays <= {r.held_out_bound(r.set_size):.4f}; recall {recall}"
        )
    if args.write:
        write_calibration(args.policies, results)
        print(f"written to {args.policies}")
    return 0
