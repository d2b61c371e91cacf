"""Statistics the quality benchmarks share: rates with Wilson intervals, detection metrics with
bootstrap intervals, and the teacher-forced cost of a guard on benign text."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial

import torch

from featureguard.probe import auroc

Metric = Callable[[torch.Tensor, torch.Tensor], float]


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a rate k/n (95% for z = 1.96)."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def rate(k: int, n: int) -> str:
    """`p [lo, hi]`: the share k/n and its Wilson 95% interval."""
    lo, hi = wilson(k, n)
    return f"{k / n:.3f} [{lo:.3f}, {hi:.3f}]"


def share(k: int, n: int) -> str:
    """`k/n (p [lo, hi])`: a count, its share and the share's Wilson 95% interval."""
    return f"{k}/{n} ({rate(k, n)})"


def rate_ratio(a: int, n1: int, b: int, n2: int, z: float = 1.96) -> tuple[float, float, float]:
    """(a/n1) / (b/n2) and its 95% interval (Katz's log method; 0.5 added to empty cells)."""
    a_, b_ = max(a, 0.5), max(b, 0.5)
    ratio = (a_ / n1) / (b_ / n2)
    half = z * math.sqrt(1 / a_ - 1 / n1 + 1 / b_ - 1 / n2)
    return ratio, ratio * math.exp(-half), ratio * math.exp(half)


def tpr_at_fpr(scores: torch.Tensor, labels: torch.Tensor, fpr: float = 0.01) -> float:
    """Share of positives above the threshold that at most `fpr` of the negatives exceed."""
    neg = scores[~labels].sort(descending=True).values
    allowed = math.floor(fpr * len(neg))
    # Strictly above the (allowed+1)-th highest negative: ties with it count as negatives' too.
    threshold = neg[allowed] if allowed < len(neg) else -math.inf
    return float((scores[labels] > threshold).double().mean())


def auprc_at_prevalence(scores: torch.Tensor, labels: torch.Tensor, prevalence: float) -> float:
    """Average precision had positives been `prevalence` of the population: the negatives are
    reweighted (AxBench's imbalanced mode without discarding data)."""
    order = torch.argsort(scores, descending=True, stable=True)
    s, y = scores[order], labels[order].double()
    weight_neg = (1 - prevalence) / prevalence * y.sum() / max(float((1 - y).sum()), 1.0)
    tp, fp = torch.cumsum(y, 0), torch.cumsum((1 - y) * weight_neg, 0)
    # One point per distinct score: tied scores enter together.
    last = torch.ones_like(s, dtype=torch.bool)
    last[:-1] = s[1:] != s[:-1]
    tp, fp = tp[last], fp[last]
    precision = tp / (tp + fp)
    recall = tp / y.sum()
    gained = torch.diff(recall, prepend=torch.zeros(1, dtype=recall.dtype))
    return float((precision * gained).sum())


def _interval(values: list[float]) -> tuple[float, float]:
    """The 2.5th and 97.5th percentiles."""
    q = torch.tensor([0.025, 0.975], dtype=torch.float64)
    lo, hi = torch.quantile(torch.tensor(values, dtype=torch.float64), q)
    return float(lo), float(hi)


def bootstrap(
    metric: Metric,
    scores: torch.Tensor,
    labels: torch.Tensor,
    reps: int,
    seed: int = 0,
) -> tuple[float, float, float]:
    """`metric` and its 95% percentile interval over `reps` resamples that keep the number of
    positives and negatives (stratified bootstrap)."""
    gen = torch.Generator().manual_seed(seed)
    pos, neg = torch.nonzero(labels).flatten(), torch.nonzero(~labels).flatten()
    values = []
    for _ in range(reps):
        idx = torch.cat(
            [
                pos[torch.randint(len(pos), (len(pos),), generator=gen)],
                neg[torch.randint(len(neg), (len(neg),), generator=gen)],
            ]
        )
        values.append(metric(scores[idx], labels[idx]))
    return (metric(scores, labels), *_interval(values))


def token_bootstrap(
    scores: Sequence[torch.Tensor], labels: Sequence[torch.Tensor], reps: int, seed: int = 0
) -> tuple[float, float, float]:
    """Token-level AUROC and its 95% interval, resampling whole texts (tokens of one text are
    not independent)."""
    gen = torch.Generator().manual_seed(seed)
    n = len(scores)

    def value(rows: Sequence[int]) -> float:
        return auroc(torch.cat([scores[i] for i in rows]), torch.cat([labels[i] for i in rows]))

    values = [value(torch.randint(n, (n,), generator=gen).tolist()) for _ in range(reps)]
    return (value(range(n)), *_interval(values))


def teacher_forced(
    model, tok, texts: Sequence[str], guard=None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per text: summed nats of the next tokens, summed next-token KL(bare ‖ guarded) and the
    number of tokens (special tokens left out of the targets); without `guard` the KL is 0."""
    nats, kls, counts = [], [], []
    special = torch.tensor(tok.all_special_ids)
    for text in texts:
        ids = tok(text, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            bare = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), -1)
            logits = None if guard is None else guard.forward(ids)[0, :-1].double()
        logp = bare if logits is None else torch.log_softmax(logits, -1)
        target = ids[0, 1:]
        keep = ~torch.isin(target, special)
        nats.append(float(-logp[torch.arange(len(target)), target][keep].sum()))
        kls.append(float((bare.exp() * (bare - logp)).sum(-1)[keep].sum()))
        counts.append(int(keep.sum()))
    as_tensor = partial(torch.tensor, dtype=torch.float64)
    return as_tensor(nats), as_tensor(kls), as_tensor(counts)


def per_token(
    sums: torch.Tensor, counts: torch.Tensor, reps: int, seed: int = 0
) -> tuple[float, float, float]:
    """Σ sums / Σ counts (a per-token mean over texts) and its 95% interval, resampling texts."""
    gen = torch.Generator().manual_seed(seed)
    n = len(sums)
    values = []
    for _ in range(reps):
        idx = torch.randint(n, (n,), generator=gen)
        values.append(float(sums[idx].sum() / counts[idx].sum()))
    return (float(sums.sum() / counts.sum()), *_interval(values))
