"""The canonical SAE's maths, on SAEs built directly from tensors (no files)."""

from __future__ import annotations

import math

import pytest
import torch

from featureguard.errors import FeatureguardError, SAEFormatError
from featureguard.sae import SAE, Normalization, SAEConfig

D, S = 6, 10
ATOL = 1e-5


def make_sae(
    architecture: str = "relu",
    *,
    norm: Normalization | None = None,
    subtract_b_dec: bool = True,
    k: int | None = None,
    seed: int = 0,
    **overrides: torch.Tensor | None,
) -> SAE:
    """A random SAE in canonical form; `overrides` replace single tensors."""
    g = torch.Generator().manual_seed(seed)
    t: dict[str, torch.Tensor | None] = {
        "W_enc": torch.randn(D, S, generator=g) / math.sqrt(D),
        "b_enc": 0.2 * torch.randn(S, generator=g),
        "W_dec": torch.randn(S, D, generator=g) / math.sqrt(D),
        "b_dec": 0.2 * torch.randn(D, generator=g),
    }
    if architecture == "jumprelu":
        t["threshold"] = 0.05 + 0.4 * torch.rand(S, generator=g)
    if architecture == "gated":
        t["b_mag"] = 0.2 * torch.randn(S, generator=g)
        t["r_mag"] = 0.3 * torch.randn(S, generator=g)
    t |= overrides
    cfg = SAEConfig(
        format="test", architecture=architecture, d_in=D, d_sae=S, k=k,
        subtract_b_dec=subtract_b_dec, normalization=norm or Normalization(), source="mem",
    )  # fmt: skip
    return SAE(cfg, **t)


def _x(seed: int = 1, shape: tuple[int, ...] = (4, 3)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, D, generator=g) * 2 + 0.5  # [*shape, D]


def _close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, rtol=0, atol=ATOL)


# ---- encode per architecture -------------------------------------------------------------------
def test_relu_encode() -> None:
    """relu: f = ReLU((x - b_dec) @ W_enc + b_enc)."""
    sae, x = make_sae(), _x()
    _close(sae.encode(x), torch.relu((x - sae.b_dec) @ sae.W_enc + sae.b_enc))


def test_subtract_b_dec_off() -> None:
    """subtract_b_dec=False encodes x itself."""
    sae, x = make_sae(subtract_b_dec=False), _x()
    _close(sae.encode(x), torch.relu(x @ sae.W_enc + sae.b_enc))


def test_jumprelu_encode() -> None:
    """jumprelu: f = pre · 1[pre > threshold]."""
    sae, x = make_sae("jumprelu"), _x()
    pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    _close(sae.encode(x), pre * (pre > sae.threshold))


def test_jumprelu_threshold_is_strict() -> None:
    """A pre-activation exactly at the threshold gives 0; just above it passes through."""
    threshold = torch.full((S,), 0.5)
    b_enc = torch.tensor([0.5, 0.5000001] * (S // 2))
    sae = make_sae("jumprelu", W_enc=torch.zeros(D, S), b_enc=b_enc, threshold=threshold)
    f = sae.encode(torch.zeros(D))
    assert torch.equal(f, torch.tensor([0.0, 0.5000001] * (S // 2)))


def test_topk_keeps_the_k_largest() -> None:
    """topk: the k largest pre-activations survive (through ReLU), the rest are 0."""
    b_enc = torch.tensor([3.0, -1.0, 2.0, 0.5, -4.0, 1.0, 0.0, -0.5, 2.5, -2.0])
    sae = make_sae("topk", k=3, W_enc=torch.zeros(D, S), b_enc=b_enc)
    expected = torch.tensor([3.0, 0, 2.0, 0, 0, 0, 0, 0, 2.5, 0])
    assert torch.equal(sae.encode(torch.zeros(2, D)), expected.expand(2, S))


def test_topk_relu_applies_after_selection() -> None:
    """topk: a negative value among the top k becomes 0; no smaller positive one replaces it."""
    b_enc = torch.tensor([1.0, -0.1, -0.2, -3.0, -3.0, -3.0, -3.0, -3.0, -3.0, -3.0])
    sae = make_sae("topk", k=3, W_enc=torch.zeros(D, S), b_enc=b_enc)
    f = sae.encode(torch.zeros(D))
    assert torch.equal(f, torch.tensor([1.0] + [0.0] * (S - 1)))


def test_gated_encode() -> None:
    """gated: f = 1[x'W + b_gate > 0] · ReLU(x'(W ⊙ exp(r_mag)) + b_mag), b_gate held as b_enc."""
    sae, x = make_sae("gated"), _x()
    xp = x - sae.b_dec
    gate = (xp @ sae.W_enc + sae.b_enc) > 0
    mag = torch.relu(xp @ (sae.W_enc * torch.exp(sae.r_mag)) + sae.b_mag)
    _close(sae.encode(x), gate * mag)


# ---- normalisations ----------------------------------------------------------------------------
def test_constant_normalisation() -> None:
    """constant: encode sees x · scale_in; decode divides the reconstruction by scale_out."""
    sae = make_sae(norm=Normalization(kind="constant", scale_in=2.0, scale_out=4.0))
    x = _x()
    f = sae.encode(x)
    _close(f, torch.relu((2.0 * x - sae.b_dec) @ sae.W_enc + sae.b_enc))
    _close(sae.decode(f), (f @ sae.W_dec + sae.b_dec) / 4.0)


def test_layer_norm_normalisation() -> None:
    """layer_norm: (x - mean) / (unbiased std + 1e-5) in; y · std + mean out."""
    sae, x = make_sae(norm=Normalization(kind="layer_norm")), _x()
    mu, sd = x.mean(-1, keepdim=True), x.std(-1, keepdim=True, unbiased=True)
    f = sae.encode(x)
    _close(f, torch.relu(((x - mu) / (sd + 1e-5) - sae.b_dec) @ sae.W_enc + sae.b_enc))
    _close(sae.decode(f, x), (f @ sae.W_dec + sae.b_dec) * sd + mu)


def test_l2_rescale_normalisation() -> None:
    """l2_rescale: x · sqrt(d)/||x|| in; y · ||x||/sqrt(d) out."""
    sae, x = make_sae(norm=Normalization(kind="l2_rescale")), _x()
    c = math.sqrt(D) / x.norm(dim=-1, keepdim=True)
    f = sae.encode(x)
    _close(f, torch.relu((x * c - sae.b_dec) @ sae.W_enc + sae.b_enc))
    _close(sae.decode(f, x), (f @ sae.W_dec + sae.b_dec) / c)


def test_center_is_not_undone() -> None:
    """center: the token mean is removed before encoding and not added back on decode."""
    sae, x = make_sae(norm=Normalization(center=True)), _x()
    f = sae.encode(x)
    _close(f, torch.relu((x - x.mean(-1, keepdim=True) - sae.b_dec) @ sae.W_enc + sae.b_enc))
    _close(sae.decode(f, x), f @ sae.W_dec + sae.b_dec)


@pytest.mark.parametrize("kind", ["layer_norm", "l2_rescale"])
def test_per_token_decode_needs_x(kind: str) -> None:
    """decode without x refuses for per-token normalisations, saying to pass x."""
    sae = make_sae(norm=Normalization(kind=kind))
    with pytest.raises(FeatureguardError, match=r"decode\(f, x\)"):
        sae.decode(sae.encode(_x()))


@pytest.mark.parametrize(
    ("norm", "expected"),
    [
        (Normalization(), lambda x: torch.ones(())),
        (Normalization(kind="constant", scale_out=4.0), lambda x: torch.tensor(0.25)),
        (Normalization(kind="layer_norm"), lambda x: x.std(-1, keepdim=True)),
        (Normalization(kind="l2_rescale"), lambda x: x.norm(dim=-1, keepdim=True) / math.sqrt(D)),
    ],
    ids=["none", "constant", "layer_norm", "l2_rescale"],
)
def test_output_scale(norm: Normalization, expected) -> None:
    """output_scale is the factor from SAE output space back to the model's space."""
    x = _x()
    _close(torch.as_tensor(make_sae(norm=norm).output_scale(x)), expected(x))


def test_direction_in_model_space() -> None:
    """direction(i) is W_dec[i] divided by a constant normalisation's scale_out."""
    sae = make_sae(norm=Normalization(kind="constant", scale_in=2.0, scale_out=4.0))
    _close(sae.direction(3), sae.W_dec[3] / 4.0)


# ---- steering identity ---------------------------------------------------------------------------
NORMS = {
    "none": Normalization(),
    "constant": Normalization(kind="constant", scale_in=0.5, scale_out=0.25),
    "layer_norm": Normalization(kind="layer_norm"),
    "l2_rescale": Normalization(kind="l2_rescale"),
    "center": Normalization(center=True),
    "center-layer_norm": Normalization(kind="layer_norm", center=True),
    "center-l2_rescale": Normalization(kind="l2_rescale", center=True),
}


@pytest.mark.parametrize("architecture", ["relu", "jumprelu", "topk", "gated"])
@pytest.mark.parametrize("norm", NORMS.values(), ids=list(NORMS))
def test_decode_delta_identity(architecture: str, norm: Normalization) -> None:
    """x + decode_delta(x, idx, c - f[idx]) == decode(f') + (x - decode(f, x))."""
    sae = make_sae(architecture, norm=norm, k=3 if architecture == "topk" else None)
    x = _x(seed=2)
    f = sae.encode(x)
    idx, c = [7, 1], torch.tensor([1.5, -0.5])
    f_new = f.clone()
    f_new[..., idx] = c
    expected = sae.decode(f_new, x) + (x - sae.decode(f, x))
    _close(x + sae.decode_delta(x, idx, c - f[..., idx]), expected)


def test_decode_delta_all_features() -> None:
    """decode_delta with indices=None takes a change of every held feature."""
    sae, x = make_sae(norm=Normalization(kind="layer_norm")), _x()
    delta = torch.randn(*x.shape[:-1], S, generator=torch.Generator().manual_seed(5))
    f = sae.encode(x)
    _close(x + sae.decode_delta(x, None, delta), sae.decode(f + delta, x) + x - sae.decode(f, x))


def test_decode_delta_after_select() -> None:
    """On a selected SAE, decode_delta with global indices uses those features' rows."""
    sae, x = make_sae("jumprelu", norm=Normalization(kind="l2_rescale")), _x()
    delta = torch.full((*x.shape[:-1], 2), 0.7)
    _close(sae.select([9, 2]).decode_delta(x, [2, 9], delta), sae.decode_delta(x, [2, 9], delta))


# ---- encode_subset, select, to -------------------------------------------------------------------
@pytest.mark.parametrize("architecture", ["relu", "jumprelu", "gated"])
def test_encode_subset_all_held(architecture: str) -> None:
    """encode_subset(x) without indices encodes every held feature, as encode does."""
    sae = make_sae(architecture).select([5, 0, 8])
    _close(sae.encode_subset(_x()), sae.encode(_x()))


def test_select_keeps_order_and_global_indices() -> None:
    """select(idx) holds those features in the given order, still named by global index."""
    sae = make_sae("gated")
    part = sae.select([8, 3, 5])
    assert part.features == (8, 3, 5)
    assert torch.equal(part.W_enc, sae.W_enc[:, [8, 3, 5]])
    assert torch.equal(part.r_mag, sae.r_mag[[8, 3, 5]])
    assert torch.equal(part.select([5, 8]).W_dec, sae.W_dec[[5, 8]])


@pytest.mark.parametrize("indices", [[S], [-1], [2, 99]])
def test_select_out_of_range(indices: list[int]) -> None:
    """select() of an index outside the dictionary raises a FeatureguardError naming it."""
    with pytest.raises(FeatureguardError, match="not in"):
        make_sae().select(indices)


def test_select_duplicates() -> None:
    """select() with a repeated index is refused."""
    with pytest.raises(FeatureguardError, match="distinct"):
        make_sae().select([1, 1])


def test_to_dtype_casts_every_tensor() -> None:
    """to(dtype=bfloat16) casts every tensor; to() with nothing to change returns self."""
    sae = make_sae("gated")
    assert sae.to() is sae
    half = sae.to(dtype=torch.bfloat16)
    assert {t.dtype for t in half._tensors().values() if t is not None} == {torch.bfloat16}
    assert half.encode(_x()).dtype == torch.bfloat16


def test_topk_partial_encode_refuses() -> None:
    """encode of a TopK SAE holding only some features refuses, naming encode_subset."""
    with pytest.raises(FeatureguardError, match="encode_subset"):
        make_sae("topk", k=2).select([1, 2, 3]).encode(_x())


# ---- construction checks -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "overrides",
    [{"W_enc": torch.zeros(S, D)}, {"W_dec": torch.zeros(D, S)}, {"b_enc": torch.zeros(S + 1)},
     {"b_dec": torch.zeros(1, D)}],
    ids=["W_enc", "W_dec", "b_enc", "b_dec"],
)  # fmt: skip
def test_wrong_shape_is_refused(overrides: dict) -> None:
    """A tensor of the wrong shape raises SAEFormatError naming it and the expected shape."""
    name = next(iter(overrides))
    with pytest.raises(SAEFormatError, match=rf"{name} has shape .* expected"):
        make_sae(**overrides)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_weight_is_refused(bad: float) -> None:
    """A NaN or infinite weight raises SAEFormatError."""
    W = torch.zeros(D, S)
    W[2, 3] = bad
    with pytest.raises(SAEFormatError, match="W_enc has 1 NaN or infinite"):
        make_sae(W_enc=W)


def test_jumprelu_needs_threshold() -> None:
    """A jumprelu SAE without a threshold is refused."""
    with pytest.raises(SAEFormatError, match="threshold"):
        make_sae("jumprelu", threshold=None)


def test_gated_needs_magnitude_tensors() -> None:
    """A gated SAE without b_mag/r_mag is refused."""
    with pytest.raises(SAEFormatError, match="b_mag and r_mag"):
        make_sae("gated", r_mag=None)


@pytest.mark.parametrize("k", [None, 0, S + 1])
def test_topk_needs_a_valid_k(k: int | None) -> None:
    """A topk SAE needs 0 < k <= d_sae."""
    with pytest.raises(SAEFormatError, match="topk needs"):
        make_sae("topk", k=k)
