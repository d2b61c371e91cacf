"""featureguard.probe: AUROC with ties, and the L1 logistic probe with its refit."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from featureguard.errors import FeatureguardError
from featureguard.probe import auroc, auroc_columns, fit_max_probe, fit_sparse_probe

PLANTED = {3: 2.0, 17: -1.5, 40: 1.0}


def _pairwise(scores: list[float], labels: list[bool]) -> float:
    """AUROC by counting every (positive, negative) pair, ties half."""
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    neg = [s for s, y in zip(scores, labels, strict=True) if not y]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def _planted(n: int = 2000, p: int = 50, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of shifted, scaled normals; labels drawn from a logistic model on PLANTED."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, p, generator=g, dtype=torch.float64) * 2 + 1
    true = torch.zeros(p, dtype=torch.float64)
    for column, weight in PLANTED.items():
        true[column] = weight
    logits = (x - 1) @ true - 0.5
    y = torch.rand(n, generator=g, dtype=torch.float64) < torch.sigmoid(logits)
    return x, y


@settings(max_examples=60, deadline=None)
@given(
    data=st.lists(st.tuples(st.integers(-3, 3), st.booleans()), min_size=2, max_size=40).filter(
        lambda d: 0 < sum(y for _, y in d) < len(d)
    )
)
def test_auroc_equals_pairwise_count_with_ties(data: list[tuple[int, bool]]) -> None:
    """The rank-based AUROC equals a brute-force count over pairs, ties counting half."""
    scores, labels = [float(s) for s, _ in data], [y for _, y in data]
    assert auroc(scores, labels) == pytest.approx(_pairwise(scores, labels), abs=1e-12)


def test_auroc_columns_match_one_column_at_a_time() -> None:
    """Each column of a matrix gets the AUROC it gets alone."""
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 4, (30, 5), generator=g).double()
    y = torch.arange(30) % 3 == 0
    expected = [auroc(x[:, j], y) for j in range(5)]
    assert auroc_columns(x, y).tolist() == pytest.approx(expected)


def test_auroc_needs_both_classes() -> None:
    """One class only is an error, not a NaN."""
    with pytest.raises(FeatureguardError, match="both classes"):
        auroc([1.0, 2.0], [True, True])


def test_probe_recovers_planted_features_and_signs() -> None:
    """With k equal to the planted support, the probe finds those columns with their signs."""
    x, y = _planted()
    probe = fit_sparse_probe(x, y, k=3)
    assert set(probe.columns) == set(PLANTED)
    signs = {c: w > 0 for c, w in zip(probe.columns, probe.weights, strict=True)}
    assert signs == {c: w > 0 for c, w in PLANTED.items()}
    assert probe.columns[0] == 3  # the largest standardised weight comes first


@pytest.mark.parametrize("k", [1, 2, 5, 8])
def test_probe_has_at_most_k_features(k: int) -> None:
    """The probe never uses more than k columns, and uses planted ones first."""
    x, y = _planted(n=1000)
    probe = fit_sparse_probe(x, y, k=k)
    assert 1 <= len(probe.columns) <= k
    assert probe.columns[0] in PLANTED
    assert all(nonzero <= k for _, nonzero in probe.path[:-1])


def test_probe_weights_are_on_raw_inputs() -> None:
    """decision() on raw rows equals the refit logistic model: high AUROC, bias as threshold."""
    x, y = _planted(seed=2)
    probe = fit_sparse_probe(x, y, k=3)
    direct = x[:, list(probe.columns)] @ torch.tensor(probe.weights, dtype=torch.float64)
    assert torch.allclose(probe.decision(x), direct + probe.bias)
    assert auroc(probe.decision(x), y) > 0.9


def test_probe_is_finite_on_separable_data() -> None:
    """A column that separates the classes perfectly gets a finite weight and a threshold
    between the classes."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(100, 4, generator=g, dtype=torch.float64)
    y = torch.arange(100) < 30
    x[:, 2] = torch.where(y, 3.0, 0.0)
    probe = fit_sparse_probe(x, y, k=2)
    assert probe.columns[0] == 2
    threshold = -probe.bias / probe.weights[0]
    assert 0.0 < threshold < 3.0


def test_probe_is_deterministic() -> None:
    """The same data gives the same probe, bit for bit."""
    x, y = _planted(n=500)
    assert fit_sparse_probe(x, y, k=4) == fit_sparse_probe(x, y, k=4)


def test_probe_without_signal_is_an_error() -> None:
    """Constant columns cannot make a probe."""
    with pytest.raises(FeatureguardError, match="no column"):
        fit_sparse_probe(torch.ones(10, 3), torch.arange(10) < 5, k=2)


# ---- fit_max_probe: the text score is the maximum over its tokens --------------------------------
def _bags(n: int = 120, p: int = 12, seed: int = 0) -> tuple[list[torch.Tensor], list[bool]]:
    """Texts of 5-30 tokens with sparse non-negative columns; in a positive text one token
    (anywhere) has column 4 and column 9 raised together; column 2 is raised on random tokens
    of every text, positive or not (a distractor the maximum must ignore)."""
    g = torch.Generator().manual_seed(seed)
    texts, labels = [], []
    for i in range(n):
        t = int(torch.randint(5, 31, (1,), generator=g))
        x = torch.relu(torch.randn(t, p, generator=g, dtype=torch.float64) - 1.0)
        x[torch.randint(0, t, (1,), generator=g), 2] += 3.0
        if i % 2:
            row = int(torch.randint(0, t, (1,), generator=g))
            x[row, 4] += 2.5
            x[row, 9] += 2.5
        texts.append(x)
        labels.append(bool(i % 2))
    return texts, labels


def _text_scores(probe, texts: list[torch.Tensor]) -> list[float]:
    return [float(probe.decision(t).max()) for t in texts]


def test_max_probe_finds_the_planted_token_and_separates_texts() -> None:
    """The planted columns enter with positive weights, the distractor does not matter, and the
    probe's max-over-tokens score separates held-out texts."""
    texts, labels = _bags()
    probe = fit_max_probe(texts, labels, k=2)
    assert sorted(probe.columns) == [4, 9] and all(w > 0 for w in probe.weights)
    held, held_labels = _bags(seed=1)
    assert auroc(_text_scores(probe, held), held_labels) > 0.99


def test_max_probe_bias_is_the_boundary_of_the_hard_maximum() -> None:
    """The bias is refitted for the hard maximum: most positive texts score above −bias and
    most negative ones below it."""
    texts, labels = _bags(n=200)
    probe = fit_max_probe(texts, labels, k=2)
    said = [s > 0 for s in _text_scores(probe, texts)]
    accuracy = sum(a == b for a, b in zip(said, labels, strict=True)) / len(labels)
    assert accuracy > 0.95


def test_max_probe_keeps_at_most_k_columns_and_is_deterministic() -> None:
    """At most k columns, and the same data gives the same probe, bit for bit."""
    texts, labels = _bags()
    probe = fit_max_probe(texts, labels, k=1)
    assert len(probe.columns) == 1 and probe.columns[0] in (4, 9)
    assert fit_max_probe(texts, labels, k=3) == fit_max_probe(texts, labels, k=3)


@pytest.mark.parametrize(
    ("texts", "labels", "message"),
    [
        ([], [], "non-empty"),
        ([torch.zeros(0, 3), torch.ones(2, 3)], [True, False], "non-empty"),
        ([torch.ones(2, 3), torch.ones(2, 3)], [True, True], "both classes"),
        ([torch.ones(2, 3), torch.ones(3, 3)], [True, False], "no column"),
        ([torch.full((2, 3), float("nan")), torch.ones(2, 3)], [True, False], "finite"),
    ],
    ids=["no texts", "empty text", "one class", "no signal", "nan"],
)
def test_max_probe_bad_input_is_a_clear_error(texts, labels, message: str) -> None:
    """Bad input is a FeatureguardError naming what was expected."""
    with pytest.raises(FeatureguardError, match=message):
        fit_max_probe(texts, labels, k=2)
