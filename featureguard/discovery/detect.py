"""Find features that detect a concept: rank them on labelled texts, then fit a sparse probe.

A policy scores a token as Σᵢ wᵢ fᵢ and a text as the maximum over its tokens, so:

- `rank_features` pools each feature by its maximum over a text (sequence level) and also
  compares tokens (token level, against character spans of the positive content);
- `detect` screens the features on a training split, half by their recall at a low
  false-positive rate (`recall_seq`), half by sequence AUROC; fits an L1 logistic probe over
  at most `k` of them (`featureguard.probe`) and reports the policy's own score (max over
  tokens of Σ w f) on the training and validation splits. The threshold is the
  probe's decision boundary, −bias. Three probes (`probe=`):
  - "max" (default): fitted on the policy's own text score, max over tokens of Σ w f, from
    text labels alone (`fit_max_probe`): which tokens carry the concept is learnt;
  - "tokens": one row per token, span tokens positive, every other token negative (needs
    spans): a token classifier, whose maximum over a text is not what it was fitted for;
  - "pooled": one row per text, each feature's maximum over it: a sequence classifier over
    per-feature maxima, which the policy's max of a weighted sum only approximates.
  On the demo's out-of-distribution code twins (docs/demo.md) "max" separated best.

Why screen by recall as well as by AUROC: a concept made of several kinds (TLS checks off, shell
injection, pickle...) has one feature per kind, each firing in only the positives of its kind.
Such a feature's sequence AUROC is barely above ½, so an AUROC screen drops it in favour of broad
features that fire a little more in every positive; but it is exactly what a max-over-tokens
policy needs, and its recall above the negatives' 99th percentile shows it. Half the screen
goes to each criterion. On the demo's code twins, fitted on 400 training pairs, the probe's
out-of-distribution AUROC was 0.899 / 0.908 with the AUROC screen and 0.925 / 0.920 with half
by recall; recall alone gave 0.894-0.925, and on the manipulation twins (whose held-out
templates are new kinds, not new surface forms) it fell from 0.82 to 0.64.

On the validation split `detect` also measures the other forms a policy could take and the
strongest simple baseline (`Forms`): the single best feature, and a dense "max" probe on the
raw activation at the same hook (every dimension, no SAE). Published work finds single SAE
features weaker detectors than dense probes on the same labels (AxBench, SAEGuardBench), so
the result says which form to use and warns when the dense probe is clearly better.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from featureguard.discovery.activations import (
    Span,
    TokenActs,
    hook_activations,
    resolve_sae,
    token_activations,
)
from featureguard.discovery.activations import token_labels as _token_labels
from featureguard.discovery.snippet import policy_snippet
from featureguard.errors import FeatureguardError
from featureguard.probe import SparseProbe, auroc, auroc_columns, fit_max_probe, fit_sparse_probe
from featureguard.sae import SAE

__all__ = [
    "DetectResult",
    "FeatureStat",
    "Forms",
    "ProbeFeature",
    "detect",
    "pooled",
    "rank_features",
    "sequence_scores",
    "top_contexts",
]

_BLOCK = 256  # feature columns per pass in rank_features
PROBES = ("max", "tokens", "pooled")
RECALL_QUANTILE = 0.99
"""`FeatureStat.recall_seq` counts the positive texts above this quantile of the negatives'
per-text maxima: the recall of the feature alone at about 1% false positives."""
SCREEN = 128
"""Features the probe starts from by default (`detect`'s `screen`)."""
MAX_PROBE_RIDGE = 0.3
"""Ridge on the standardised weights of the "max" probe's refit: with little of it the probe
fits the training surface forms (validation AUROC up, out-of-distribution down)."""
DENSE_MARGIN = 0.03
"""How far below the dense probe (validation AUROC) a policy form may fall before `Forms`
warns: the quality scorecard's criterion (docs/benchmarks.md)."""


@dataclass(frozen=True, slots=True)
class FeatureStat:
    """How well one feature separates positive from negative texts."""

    index: int
    """The feature's index in the SAE."""
    auroc_seq: float
    """AUROC of the feature's maximum over each text."""
    auroc_token: float | None
    """AUROC over tokens, span tokens against all others; None without spans."""
    mean_diff: float
    """Mean activation on positive tokens (span tokens with spans) minus on the others."""
    mean_diff_seq: float
    """Mean of the per-text maximum, positive texts minus negative texts."""
    recall_seq: float
    """Share of positive texts whose maximum exceeds the `RECALL_QUANTILE` quantile of the
    negative texts' maxima (and 0): what `detect` screens by."""
    max_activation: float
    """Largest activation over all tokens given."""
    firing_rate: float
    """Fraction of all tokens where the feature is above 0."""


def pooled(acts: Sequence[TokenActs]) -> torch.Tensor:
    """[n_texts, n_feat]: each feature's maximum over each text (0 for a text with no token)."""
    width = acts[0].acts.shape[1]
    return torch.stack(
        [a.acts.max(dim=0).values if len(a.ids) else torch.zeros(width) for a in acts]
    )


def sequence_scores(
    acts: Sequence[TokenActs], features: Sequence[int], weights: Sequence[float]
) -> torch.Tensor:
    """[n_texts] policy score of each text: max over its tokens of Σ w f (−inf with no token)."""
    w = torch.tensor(list(weights), dtype=torch.float64)
    out = torch.full((len(acts),), float("-inf"), dtype=torch.float64)
    for i, a in enumerate(acts):
        if len(a.ids):
            cols = [a.column(f) for f in features]
            out[i] = (a.acts[:, cols].to(torch.float64) @ w).max()
    return out


def rank_features(
    pos: Sequence[TokenActs],
    neg: Sequence[TokenActs],
    *,
    pos_spans: Sequence[Sequence[Span]] | None = None,
) -> list[FeatureStat]:
    """Every feature's separation of `pos` from `neg` texts, best sequence AUROC first."""
    if not pos or not neg:
        raise FeatureguardError(
            f"ranking needs positive and negative texts, got {len(pos)}/{len(neg)}"
        )
    if pos_spans is not None and len(pos_spans) != len(pos):
        raise FeatureguardError(
            f"expected spans for each of {len(pos)} positives, got {len(pos_spans)}"
        )
    every = list(pos) + list(neg)
    seq = pooled(every).double()  # [n, F]
    seq_labels = torch.arange(len(every)) < len(pos)
    if pos_spans is None:
        labels = torch.cat([torch.full((len(a.ids),), i < len(pos)) for i, a in enumerate(every)])
    else:
        spans = list(pos_spans) + [()] * len(neg)
        labels = torch.cat([_token_labels(a, s) for a, s in zip(every, spans, strict=True)])
    if not labels.any() or labels.all():
        raise FeatureguardError("token labels hold one class only (check the spans)")
    seq_auc = auroc_columns(seq, seq_labels)
    seq_diff = seq[seq_labels].mean(0) - seq[~seq_labels].mean(0)
    bar = torch.quantile(seq[~seq_labels], RECALL_QUANTILE, dim=0).clamp_min(0.0)
    recall = (seq[seq_labels] > bar).double().mean(0)
    names = every[0].features or range(seq.shape[1])
    stats = []
    for start in range(0, seq.shape[1], _BLOCK):  # a block of columns at a time: [N, block]
        tokens = torch.cat([a.acts[:, start : start + _BLOCK] for a in every]).double()
        tok_auc = auroc_columns(tokens, labels) if pos_spans is not None else None
        mean_diff = tokens[labels].mean(0) - tokens[~labels].mean(0)
        top, firing = tokens.max(dim=0).values, (tokens > 0).double().mean(0)
        for c in range(tokens.shape[1]):
            j = start + c
            stats.append(
                FeatureStat(
                    index=int(names[j]),
                    auroc_seq=float(seq_auc[j]),
                    auroc_token=None if tok_auc is None else float(tok_auc[c]),
                    mean_diff=float(mean_diff[c]),
                    mean_diff_seq=float(seq_diff[j]),
                    recall_seq=float(recall[j]),
                    max_activation=float(top[c]),
                    firing_rate=float(firing[c]),
                )
            )
    return sorted(stats, key=lambda s: (-s.auroc_seq, -s.mean_diff, s.index))


def _strongest(acts: Sequence[TokenActs], feature: int) -> list[tuple[float, int, int]]:
    """(activation, text, token) of the feature's strongest token in each text where it fires,
    strongest first."""
    best = []
    for i, a in enumerate(acts):
        if len(a.ids):
            column = a.acts[:, a.column(feature)]
            t = int(column.argmax())
            if column[t] > 0:
                best.append((float(column[t]), i, t))
    return sorted(best, key=lambda b: (-b[0], b[1]))


def top_contexts(
    acts: Sequence[TokenActs],
    tokenizer: Any,
    texts: Sequence[str],
    feature: int,
    n: int = 5,
    width: int = 20,
) -> list[str]:
    """The `n` texts where `feature` fires most, as `value: …left[[token]]right…` (one per text)."""
    return [
        f"{v:.3g}: "
        + "".join(_printable(x) for x in _context(acts[i], tokenizer, texts[i], t, width))
        for v, i, t in _strongest(acts, feature)[:n]
    ]


def _context(a: TokenActs, tokenizer: Any, text: str, t: int, width: int) -> tuple[str, ...]:
    """(left, "[[", token, "]]", right): `width` characters of context either side."""
    if a.offsets is not None:
        s, e = (int(v) for v in a.offsets[t])
        left, mid, right = text[max(0, s - width) : s], text[s:e], text[e : e + width]
    else:  # no offsets: decode a few tokens either side
        w = max(1, width // 4)
        ids = a.ids.tolist()
        left, mid = tokenizer.decode(ids[max(0, t - w) : t]), tokenizer.decode(ids[t : t + 1])
        right = tokenizer.decode(ids[t + 1 : t + 1 + w])
    return left, "[[", mid, "]]", right


def _printable(text: str) -> str:
    return text.replace("\n", "⏎").replace("\t", "⇥")


@dataclass(frozen=True, slots=True)
class ProbeFeature:
    """One feature of a fitted probe, as a policy names it."""

    index: int
    """The feature's index in the SAE."""
    weight: float
    """Its weight in the policy score Σ w f (the probe's weight on raw activations)."""
    max: float | None
    """Largest activation seen (guard units), or None if it never fired."""
    label: str
    """A suggested label: its sequence AUROC and the tokens it fires most on."""


@dataclass(frozen=True, slots=True)
class Forms:
    """Validation AUROC (policy score: max over tokens) of the forms a policy could take,
    beside a dense probe on the raw activation, and which form to use."""

    probe: float
    """The fitted sparse probe."""
    single_feature: float
    """The single best feature on the training split, alone (weight 1)."""
    single_index: int
    """Which feature that is."""
    dense: float
    """A "max" probe over every dimension of the raw activation at the hook (no SAE)."""

    @property
    def best(self) -> str:
        """Which policy form is better, "probe" or "single feature" (the probe on ties)."""
        return "probe" if self.probe >= self.single_feature else "single feature"

    @property
    def dense_gap(self) -> float:
        """Dense probe minus the better policy form (positive: the dense probe is better)."""
        return self.dense - max(self.probe, self.single_feature)

    def advice(self) -> str:
        """One line: which form to use, and whether the dense probe is clearly better."""
        form = "the sparse probe"
        if self.best != "probe":
            form = f"the single feature {self.single_index}"
        line = (
            f"validation AUROC: sparse probe {self.probe:.3f}, single feature {self.single_index} "
            f"{self.single_feature:.3f}, dense probe on the raw activation {self.dense:.3f}; "
            f"use {form}"
        )
        if self.dense_gap > DENSE_MARGIN:
            line += (
                f". The dense probe is {self.dense_gap:.3f} better, more than {DENSE_MARGIN}: "
                "these SAE features miss part of the concept; add varied positives, raise k, or "
                "try another layer's SAE"
            )
        return line


@dataclass(frozen=True, slots=True)
class DetectResult:
    """A sparse probe turned into a policy's features and threshold, with its evidence."""

    features: tuple[ProbeFeature, ...]
    """The probe's features, by decreasing |standardised weight|."""
    threshold: float
    """−bias of the probe: the policy triggers on a token when Σ w f > threshold."""
    auroc_train: float
    """Sequence AUROC of the policy score (max over tokens of Σ w f) on the training split."""
    auroc_validation: float | None
    """The same on the validation split; None without one."""
    ranking: tuple[FeatureStat, ...]
    """The `top` features by sequence AUROC on the training split."""
    contexts: Mapping[int, tuple[str, ...]]
    """The strongest contexts of each ranked feature, in the training texts."""
    n_train: tuple[int, int]
    """(positive, negative) texts fitted on."""
    n_validation: tuple[int, int]
    """(positive, negative) texts held out."""
    forms: Forms | None = None
    """The policy forms beside a dense probe, on the validation split; None without one."""

    def snippet(self, name: str, sae_name: str, action: str = "log", **extra: Any) -> str:
        """A policy entry on these features at this threshold (see `policy_snippet`)."""
        comment = f"featureguard discover detect: sequence AUROC {self.auroc_train:.3f} train" + (
            "" if self.auroc_validation is None else f", {self.auroc_validation:.3f} validation"
        )
        return policy_snippet(
            name, sae_name, self.features, self.threshold, action, comment=comment, **extra
        )


def _split(n: int, fraction: float, gen: torch.Generator) -> tuple[list[int], list[int]]:
    """(train, validation) indices of n items, a seeded shuffle; each keeps one item or more."""
    order = torch.randperm(n, generator=gen).tolist()
    held = min(n - 1, max(1, round(n * fraction))) if fraction > 0 and n >= 2 else 0
    return sorted(order[held:]), sorted(order[:held])


def detect(
    model: torch.nn.Module,
    tokenizer: Any,
    sae: SAE | str | os.PathLike,
    hook: str | None,
    positives: Sequence[str],
    negatives: Sequence[str],
    *,
    pos_spans: Sequence[Sequence[Span]] | None = None,
    probe: str = "max",
    k: int = 20,
    top: int = 10,
    validation: float = 0.25,
    screen: int = SCREEN,
    seed: int = 0,
    batch_size: int = 32,
) -> DetectResult:
    """Rank features on a training split, fit a ≤ k-feature `probe` on the `screen` best (half
    by `recall_seq`, the rest by |AUROC − ½|), and measure the policy score on both splits
    (module docstring)."""
    if probe not in PROBES:
        raise FeatureguardError(f"probe must be one of {', '.join(PROBES)}, got {probe!r}")
    if probe == "tokens" and pos_spans is None:
        raise FeatureguardError('probe "tokens" needs the spans of the positive content')
    sae = resolve_sae(sae)
    gen = torch.Generator().manual_seed(seed)
    p_tr, p_va = _split(len(positives), validation, gen)
    n_tr, n_va = _split(len(negatives), validation, gen)
    texts = list(positives) + list(negatives)
    full = token_activations(model, tokenizer, sae, hook, texts, batch_size=batch_size)
    pos, neg = full[: len(positives)], full[len(positives) :]
    spans_tr = None if pos_spans is None else [pos_spans[i] for i in p_tr]
    stats = rank_features([pos[i] for i in p_tr], [neg[i] for i in n_tr], pos_spans=spans_tr)
    by_recall = sorted(stats, key=lambda s: (-s.recall_seq, s.index))
    by_separation = sorted(stats, key=lambda s: (-abs(s.auroc_seq - 0.5), s.index))
    halves = [s.index for s in by_recall[: screen // 2]] + [s.index for s in by_separation]
    screened = list(dict.fromkeys(halves))[:screen]
    if sae.cfg.architecture == "topk":  # the guard's units (encode_subset) differ from encode
        sub = token_activations(model, tokenizer, sae, hook, texts, batch_size=batch_size,
                                features=screened)  # fmt: skip
    else:
        sub = [TokenActs(a.ids, a.offsets, a.acts[:, screened], tuple(screened)) for a in full]
    s_pos, s_neg = sub[: len(positives)], sub[len(positives) :]
    fitted = _fit(probe, [s_pos[i] for i in p_tr], [s_neg[i] for i in n_tr], spans_tr, k)
    chosen = [screened[c] for c in fitted.columns]

    def score(p: list[int], n: list[int]) -> float | None:
        if not p or not n:
            return None
        texts_ = [s_pos[i] for i in p] + [s_neg[i] for i in n]
        return auroc(
            sequence_scores(texts_, chosen, fitted.weights), torch.arange(len(texts_)) < len(p)
        )

    ranked = {s.index: s for s in stats}
    train_full = [pos[i] for i in p_tr] + [neg[i] for i in n_tr]
    train_texts = [positives[i] for i in p_tr] + [negatives[i] for i in n_tr]
    features = tuple(
        ProbeFeature(
            index=f,
            weight=w,
            max=_max(sub, f),
            label=_label(ranked[f], train_full, tokenizer, train_texts),
        )
        for f, w in zip(chosen, fitted.weights, strict=True)
    )
    shown = stats[:top]
    forms = None
    if p_va and n_va:
        best = max(stats, key=lambda st: (st.auroc_seq, -st.index))
        valid = [positives[i] for i in p_va] + [negatives[i] for i in n_va]
        splits, at = (p_tr, n_tr, p_va, n_va), hook or sae.cfg.hook
        forms = Forms(
            probe=float(score(p_va, n_va)),
            single_feature=_single_auroc(model, tokenizer, sae, hook, valid, len(p_va), best.index),
            single_index=best.index,
            dense=_dense_auroc(model, tokenizer, at, (positives, negatives), splits),
        )
    return DetectResult(
        features=features,
        threshold=-fitted.bias,
        auroc_train=score(p_tr, n_tr),
        auroc_validation=score(p_va, n_va),
        ranking=tuple(shown),
        contexts={
            s.index: tuple(top_contexts(train_full, tokenizer, train_texts, s.index)) for s in shown
        },
        n_train=(len(p_tr), len(n_tr)),
        n_validation=(len(p_va), len(n_va)),
        forms=forms,
    )


def _single_auroc(
    model: torch.nn.Module, tokenizer: Any, sae: SAE, hook: str | None, texts: list[str],
    n_pos: int, feature: int,
) -> float:  # fmt: skip
    """AUROC of one feature's maximum over each text (the first `n_pos` positive), in the
    guard's units."""
    acts = token_activations(model, tokenizer, sae, hook, texts, features=[feature])
    return auroc(sequence_scores(acts, [feature], [1.0]), torch.arange(len(texts)) < n_pos)


def _dense_auroc(
    model: torch.nn.Module,
    tokenizer: Any,
    hook: str,
    texts: tuple[Sequence[str], Sequence[str]],
    splits: tuple[list[int], list[int], list[int], list[int]],
) -> float:
    """Validation AUROC of a "max" probe over every dimension of the raw activation, fitted
    on the training split of (positives, negatives)."""
    p_tr, n_tr, p_va, n_va = splits
    positives, negatives = texts

    def pick(p: list[int], n: list[int]) -> list[TokenActs]:
        chosen = [positives[i] for i in p] + [negatives[i] for i in n]
        return hook_activations(model, tokenizer, hook, chosen)

    train, valid = pick(p_tr, n_tr), pick(p_va, n_va)
    kept = [(a.acts.double(), i < len(p_tr)) for i, a in enumerate(train) if len(a.ids)]
    probe = fit_max_probe([x for x, _ in kept], [y for _, y in kept], k=train[0].acts.shape[1],
                          ridge=MAX_PROBE_RIDGE)  # fmt: skip
    scores = [float(probe.decision(a.acts).max()) if len(a.ids) else probe.bias for a in valid]
    return auroc(scores, torch.arange(len(valid)) < len(p_va))


def _fit(
    probe: str,
    pos: list[TokenActs],
    neg: list[TokenActs],
    spans: list[Sequence[Span]] | None,
    k: int,
) -> SparseProbe:
    """The `probe` (module docstring) on the training texts' screened features."""
    texts = [a for a in pos + neg if len(a.ids)]
    labels = [i < len(pos) for i, a in enumerate(pos + neg) if len(a.ids)]
    if probe == "max":
        return fit_max_probe([a.acts for a in texts], labels, k=k, ridge=MAX_PROBE_RIDGE)
    if probe == "pooled":
        return fit_sparse_probe(pooled(pos + neg), torch.arange(len(pos) + len(neg)) < len(pos),
                                k=k)  # fmt: skip
    tokens = [
        _token_labels(a, s) for a, s in zip(pos + neg, [*spans, *[()] * len(neg)], strict=True)
    ]
    return fit_sparse_probe(torch.cat([a.acts for a in pos + neg]), torch.cat(tokens), k=k)


def _max(acts: Sequence[TokenActs], feature: int) -> float | None:
    values = [float(a.acts[:, a.column(feature)].max()) for a in acts if len(a.ids)]
    top = max(values, default=0.0)
    return top if top > 0 else None


def _label(
    stat: FeatureStat, acts: Sequence[TokenActs], tokenizer: Any, texts: Sequence[str]
) -> str:
    """`sequence AUROC 0.93; fires most on 'x', 'y'`: the tokens of its three strongest texts."""
    tokens: list[str] = []
    for _, i, t in _strongest(acts, stat.index)[:3]:
        token = _printable(_context(acts[i], tokenizer, texts[i], t, 0)[2])
        if token not in tokens:
            tokens.append(token)
    fires = ", ".join(map(repr, tokens)) or "nothing"
    return f"sequence AUROC {stat.auroc_seq:.2f}; fires most on {fires}"
