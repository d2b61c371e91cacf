"""SAELens folders of every generation and architecture load into SAEs that compute what SAELens
computes; checked against a plain re-implementation of sae-formats.md §1.4 on the raw tensors."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from featureguard.errors import FeatureguardError, SAELoadError
from featureguard.sae import load_sae

D_IN, D_SAE, K = 12, 40, 5  # as in saelens_fixtures.py (checked by test_fixture_sizes_match)
ATOL = 1e-5
FEATURES = [31, 2, 17, 0, 39, 8]  # out of order on purpose


def _inputs(seed: int = 0, shape: tuple[int, ...] = (3, 7)) -> torch.Tensor:
    """Activations [*shape, D_IN] with a per-token offset and scale, so normalisations matter."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, D_IN, generator=g)
    return x * (1 + torch.rand(*shape, 1, generator=g)) + 0.3  # [*shape, D_IN]


# ---- SAELens v6 maths, written from the spec on the raw saved tensors (sae-formats.md §1.4) ----
def _raw(folder) -> dict[str, torch.Tensor]:
    return {n: t.float() for n, t in folder.tensors.items()}


def _norm_in(folder, x: torch.Tensor) -> torch.Tensor:
    v = folder.variant
    if v.center:  # TransformerLens center_writing_weights: the SAE saw mean-free activations
        x = x - x.mean(-1, keepdim=True)
    if v.normalize == "layer_norm":
        mu = x.mean(-1, keepdim=True)
        x = x - mu
        return x / (x.std(-1, keepdim=True) + 1e-5)
    if v.normalize == "constant_norm_rescale":
        return x * (math.sqrt(D_IN) / x.norm(dim=-1, keepdim=True))
    return x  # none, expected_average_only_in (a runtime no-op in SAELens)


def _norm_out(folder, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    v = folder.variant
    if v.center:
        x = x - x.mean(-1, keepdim=True)
    if v.normalize == "layer_norm":
        mu = x.mean(-1, keepdim=True)
        return y * (x - mu).std(-1, keepdim=True) + mu
    if v.normalize == "constant_norm_rescale":
        return y / (math.sqrt(D_IN) / x.norm(dim=-1, keepdim=True))
    return y


def ref_pre(folder, x: torch.Tensor) -> torch.Tensor:
    """SAELens's hidden_pre (for gated: the gate's pre-activation)."""
    t, v = _raw(folder), folder.variant
    xp = _norm_in(folder, x.float())
    if v.apply_b_dec_to_input:
        xp = xp - t["b_dec"]
    if v.architecture == "gated":
        return xp @ t["W_enc"] + t["b_gate"]
    h = xp @ t["W_enc"] + t["b_enc"]
    if v.architecture == "topk" and v.rescale:
        h = h * t["W_dec"].norm(dim=-1)
    return h


def ref_encode(folder, x: torch.Tensor) -> torch.Tensor:
    """SAELens's encode: feature activations [..., d_sae]."""
    t, v = _raw(folder), folder.variant
    h = ref_pre(folder, x)
    if v.architecture == "standard":
        return torch.relu(h)
    if v.architecture == "jumprelu":
        theta = t["threshold"] if "threshold" in t else torch.exp(t["log_threshold"])
        return torch.relu(h) * (h > theta)
    if v.architecture == "topk":
        top = torch.topk(h, K, dim=-1)
        return torch.zeros_like(h).scatter(-1, top.indices, torch.relu(top.values))
    xp = _norm_in(folder, x.float()) - t["b_dec"] * v.apply_b_dec_to_input
    mag = torch.relu(xp @ (t["W_enc"] * torch.exp(t["r_mag"])) + t["b_mag"])
    return (h > 0) * mag


def ref_decode(folder, f: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """SAELens's decode of activations `f` of the token(s) `x`."""
    t, v = _raw(folder), folder.variant
    if v.architecture == "topk" and v.rescale:
        f = f / t["W_dec"].norm(dim=-1)
    return _norm_out(folder, f @ t["W_dec"] + t["b_dec"], x.float())


def _close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, rtol=0, atol=ATOL)


# ---- every variant ------------------------------------------------------------------------------
def test_fixture_sizes_match(sae_fx) -> None:
    """The sizes this module assumes are the ones the fixtures write."""
    assert (sae_fx.D_IN, sae_fx.D_SAE, sae_fx.K) == (D_IN, D_SAE, K)


def test_fixture_activates_a_fair_share_of_features(saelens_folder) -> None:
    """Each fixture fires between 10% and 90% of its features, so the maths checks bite."""
    active = (ref_encode(saelens_folder, _inputs()) > 0).float().mean().item()
    assert 0.1 <= active <= 0.9


def test_encode_matches_saelens(saelens_folder) -> None:
    """encode(x) equals SAELens's formula on the raw tensors, for every variant."""
    x = _inputs()
    _close(load_sae(saelens_folder.path).encode(x), ref_encode(saelens_folder, x))


def test_decode_matches_saelens(saelens_folder) -> None:
    """decode(encode(x), x) equals SAELens's reconstruction, for every variant."""
    x = _inputs()
    sae = load_sae(saelens_folder.path)
    expected = ref_decode(saelens_folder, ref_encode(saelens_folder, x), x)
    _close(sae.decode(sae.encode(x), x), expected)


def test_config_facts_are_read(saelens_folder, sae_fx) -> None:
    """Hook point, model name and sizes come from the cfg of every layout."""
    cfg = load_sae(saelens_folder.path).cfg
    assert (cfg.format, cfg.hook, cfg.model_name) == ("saelens", sae_fx.HOOK, sae_fx.MODEL)
    assert (cfg.d_in, cfg.d_sae) == (D_IN, D_SAE)


def test_partial_load_holds_the_full_loads_rows_and_columns(saelens_folder) -> None:
    """features=[...] in any order holds exactly those columns of W_enc and rows of W_dec."""
    full = load_sae(saelens_folder.path)
    part = load_sae(saelens_folder.path, features=FEATURES)
    idx = torch.tensor(FEATURES)
    assert torch.equal(part.W_enc, full.W_enc[:, idx])
    assert torch.equal(part.W_dec, full.W_dec[idx])
    assert torch.equal(part.b_enc, full.b_enc[idx])
    assert torch.equal(part.b_dec, full.b_dec)
    for name in ("threshold", "b_mag", "r_mag", "log_sparsity"):
        whole = getattr(full, name)
        assert (getattr(part, name) is None) == (whole is None)
        if whole is not None:
            assert torch.equal(getattr(part, name), whole[idx])


def test_select_equals_partial_load(saelens_folder) -> None:
    """select(features) on a full load holds the same tensors as a partial load."""
    chosen = load_sae(saelens_folder.path).select(FEATURES)
    part = load_sae(saelens_folder.path, features=FEATURES)
    assert chosen.features == part.features == tuple(FEATURES)
    for name, t in part._tensors().items():
        other = chosen._tensors()[name]
        assert (t is None and other is None) or torch.equal(t, other), name


# ---- generations and architectures --------------------------------------------------------------
@pytest.mark.parametrize("name", ["v6-topk", "v5-topk-old", "v6-topk-rescale"])
def test_topk_is_read_with_its_k(tmp_path: Path, write_saelens, name: str) -> None:
    """TopK SAEs, including old ones (activation_fn_str "topk"), load as topk with k."""
    cfg = load_sae(write_saelens(tmp_path, name).path).cfg
    assert (cfg.architecture, cfg.k) == ("topk", K)


def test_batchtopk_runs_as_jumprelu(tmp_path: Path, write_saelens) -> None:
    """A BatchTopK SAE saved as jumprelu loads as jumprelu with its broadcast threshold."""
    sae = load_sae(write_saelens(tmp_path, "v6-batchtopk").path)
    assert sae.cfg.architecture == "jumprelu"
    assert torch.equal(sae.threshold, torch.full((D_SAE,), 0.3))


def test_log_threshold_is_exponentiated(tmp_path: Path, write_saelens) -> None:
    """A JumpReLU training checkpoint's log_threshold becomes threshold = exp(log_threshold)."""
    folder = write_saelens(tmp_path, "v6-jumprelu-log-threshold")
    threshold = load_sae(folder.path).threshold
    _close(threshold, torch.exp(folder.tensors["log_threshold"]))


def test_gated_keeps_b_gate_as_encoder_bias(tmp_path: Path, write_saelens) -> None:
    """A gated SAE (no b_enc in the file) uses b_gate for its gate."""
    folder = write_saelens(tmp_path, "v6-gated")
    assert "b_enc" not in folder.tensors
    assert torch.equal(load_sae(folder.path).b_enc, folder.tensors["b_gate"])


def test_sparsity_is_read_as_log_sparsity(tmp_path: Path, write_saelens) -> None:
    """sparsity.safetensors, when present, is kept as log_sparsity [d_sae]."""
    folder = write_saelens(tmp_path, "v6-standard")
    assert load_sae(folder.path).log_sparsity.shape == (D_SAE,)


def test_missing_sparsity_is_fine(tmp_path: Path, write_saelens) -> None:
    """Without sparsity.safetensors the SAE loads with log_sparsity None."""
    assert load_sae(write_saelens(tmp_path, "v6-jumprelu").path).log_sparsity is None


@pytest.mark.parametrize(("value", "kind"), [(True, "none"), (False, "none"), (None, "none")])
def test_boolean_normalize_activations_is_upgraded(
    tmp_path: Path, write_saelens, value: object, kind: str
) -> None:
    """Old boolean/None normalize_activations map like SAELens's upgrade (true is a no-op)."""

    def edit(cfg: dict) -> None:
        cfg["normalize_activations"] = value

    folder = write_saelens(tmp_path, "v5-jumprelu", cfg_edit=edit)
    assert load_sae(folder.path).cfg.normalization.kind == kind


def test_apply_b_dec_to_input_false_is_honoured(tmp_path: Path, write_saelens) -> None:
    """apply_b_dec_to_input=false loads as an SAE that does not subtract b_dec."""
    sae = load_sae(write_saelens(tmp_path, "v6-standard-no-b-dec-in").path)
    assert sae.cfg.subtract_b_dec is False


def test_old_config_defaults_to_subtracting_b_dec(tmp_path: Path, write_saelens) -> None:
    """A pre-3.x cfg without apply_b_dec_to_input subtracts b_dec, as SAELens defaults."""
    sae = load_sae(write_saelens(tmp_path, "old-standard-hook-point").path)
    assert sae.cfg.subtract_b_dec is True


def test_legacy_scaling_factor_scales_activations_at_decode(tmp_path: Path, write_saelens) -> None:
    """A legacy scaling_factor [d_sae] leaves encode alone and decodes (f * s) @ W_dec + b_dec."""
    scale = torch.linspace(0.5, 2.0, D_SAE)
    folder = write_saelens(
        tmp_path, "v5-jumprelu", tensors_edit=lambda t: t.update(scaling_factor=scale)
    )
    sae, x = load_sae(folder.path), _inputs()
    f = sae.encode(x)
    _close(f, ref_encode(folder, x))
    _close(sae.decode(f, x), (f * scale) @ folder.tensors["W_dec"] + folder.tensors["b_dec"])


# ---- steering identity --------------------------------------------------------------------------
STEERED = [
    "v6-standard", "v6-jumprelu", "v6-topk", "v6-topk-rescale", "v6-gated", "v6-batchtopk",
    "v6-standard-layer-norm", "v6-jumprelu-norm-rescale", "v6-topk-layer-norm",
    "v6-gated-norm-rescale", "v5-standard-centered",
]  # fmt: skip


@pytest.mark.parametrize("name", STEERED)
def test_decode_delta_is_the_error_term_edit(tmp_path: Path, write_saelens, name: str) -> None:
    """x + decode_delta(x, idx, c - f[idx]) == decode(f') + (x - decode(f, x))."""
    sae = load_sae(write_saelens(tmp_path, name).path)
    x = _inputs(seed=3)
    f = sae.encode(x)
    idx = [4, 19, 33]
    c = torch.tensor([2.5, 0.0, -1.0])
    f_new = f.clone()
    f_new[..., idx] = c
    lhs = x + sae.decode_delta(x, idx, c - f[..., idx])
    rhs = sae.decode(f_new, x) + (x - sae.decode(f, x))
    _close(lhs, rhs)


@pytest.mark.parametrize("name", STEERED)
def test_decode_delta_matches_saelens_error_term(tmp_path: Path, write_saelens, name: str) -> None:
    """The edit equals SAELens's own decode(f') + (x - decode(f)) on the raw tensors."""
    folder = write_saelens(tmp_path, name)
    sae = load_sae(folder.path)
    x = _inputs(seed=4)
    f = ref_encode(folder, x)
    f_new = f.clone()
    f_new[..., 7] = 3.0
    expected = ref_decode(folder, f_new, x) + (x - ref_decode(folder, f, x))
    _close(x + sae.decode_delta(x, [7], 3.0 - sae.encode(x)[..., [7]]), expected)


# ---- encode_subset -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory, sae_fx) -> dict:
    """One loaded SAE and its folder per variant name, shared by the property tests."""
    root = tmp_path_factory.mktemp("subset")
    out = {}
    for name in ("v6-standard", "v6-jumprelu", "v6-gated", "v6-gated-norm-rescale",
                 "v6-standard-layer-norm", "v6-topk", "v6-topk-rescale"):  # fmt: skip
        folder = sae_fx.write_saelens(root / name, name)
        out[name] = (folder, load_sae(folder.path))
    return out


_shapes = st.lists(st.integers(1, 4), min_size=0, max_size=3).map(tuple)
_indices = st.lists(st.integers(0, D_SAE - 1), min_size=1, max_size=D_SAE, unique=True)
_settings = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.mark.parametrize(
    "name", ["v6-standard", "v6-jumprelu", "v6-gated", "v6-gated-norm-rescale",
             "v6-standard-layer-norm"],
)  # fmt: skip
@_settings
@given(shape=_shapes, indices=_indices, seed=st.integers(0, 2**16))
def test_encode_subset_equals_encode_columns(loaded, name, shape, indices, seed) -> None:
    """encode_subset(x, idx) == encode(x)[..., idx] for relu, jumprelu and gated."""
    sae = loaded[name][1]
    x = _inputs(seed, shape)
    torch.testing.assert_close(sae.encode_subset(x, indices), sae.encode(x)[..., indices])


@pytest.mark.parametrize("name", ["v6-topk", "v6-topk-rescale"])
@_settings
@given(shape=_shapes, indices=_indices, seed=st.integers(0, 2**16))
def test_topk_encode_subset_is_relu_of_pre(loaded, name, shape, indices, seed) -> None:
    """For topk, encode_subset(x, idx) is ReLU(pre)[..., idx], as its docstring states."""
    folder, sae = loaded[name]
    x = _inputs(seed, shape)
    _close(sae.encode_subset(x, indices), torch.relu(ref_pre(folder, x))[..., indices])


@pytest.mark.parametrize("name", ["v6-topk", "v6-topk-rescale"])
@_settings
@given(shape=_shapes, indices=_indices, seed=st.integers(0, 2**16))
def test_topk_encode_subset_is_exact_inside_the_top_k(loaded, name, shape, indices, seed) -> None:
    """For topk, encode_subset equals encode's column wherever the feature is in the top k."""
    folder, sae = loaded[name]
    x = _inputs(seed, shape)
    top = torch.topk(ref_pre(folder, x), K, dim=-1).indices
    in_top = torch.zeros(*shape, D_SAE, dtype=torch.bool).scatter(-1, top, True)[..., indices]
    sub, full = sae.encode_subset(x, indices), sae.encode(x)[..., indices]
    _close(sub[in_top], full[in_top])


def test_encode_subset_of_a_partial_load(tmp_path: Path, write_saelens) -> None:
    """A partial load's encode_subset (global indices, any order) equals the full encode's."""
    folder = write_saelens(tmp_path, "v6-jumprelu")
    part = load_sae(folder.path, features=FEATURES)
    x = _inputs()
    _close(part.encode_subset(x, [8, 31]), load_sae(folder.path).encode(x)[..., [8, 31]])


# ---- partial loading -----------------------------------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(st.data())
def test_partial_load_any_subset(loaded, data) -> None:
    """Any subset of features, in any order, loads as the full load's columns, encoded alike."""
    name = data.draw(st.sampled_from(["v6-standard", "v6-jumprelu", "v6-gated"]))
    folder, full = loaded[name]
    features = data.draw(_indices)
    part = load_sae(folder.path, features=features)
    assert torch.equal(part.W_enc, full.W_enc[:, features])
    assert torch.equal(part.W_dec, full.W_dec[features])
    x = _inputs(data.draw(st.integers(0, 100)))
    _close(part.encode(x), full.encode(x)[..., features])


@pytest.mark.parametrize("features", [[D_SAE], [3, -1], [0, 10**6]])
def test_partial_load_out_of_range(tmp_path: Path, write_saelens, features) -> None:
    """A feature index outside [0, d_sae) is refused with a message naming it."""
    folder = write_saelens(tmp_path, "v6-standard")
    with pytest.raises(SAELoadError, match=r"out of range for d_sae=40"):
        load_sae(folder.path, features=features)


def test_partial_load_duplicate_features(tmp_path: Path, write_saelens) -> None:
    """Repeated feature indices are refused."""
    folder = write_saelens(tmp_path, "v6-standard")
    with pytest.raises(SAELoadError, match="distinct"):
        load_sae(folder.path, features=[3, 3])


def test_select_out_of_range(tmp_path: Path, write_saelens) -> None:
    """select() of a feature not held raises a FeatureguardError naming it."""
    part = load_sae(write_saelens(tmp_path, "v6-standard").path, features=[1, 2])
    with pytest.raises(FeatureguardError, match=r"\[5\]"):
        part.select([2, 5])


def test_partial_topk_encode_refuses(tmp_path: Path, write_saelens) -> None:
    """encode on a partially loaded TopK SAE refuses: top-k needs the whole dictionary."""
    part = load_sae(write_saelens(tmp_path, "v6-topk").path, features=FEATURES)
    with pytest.raises(FeatureguardError, match="TopK SAE loaded with features"):
        part.encode(_inputs())


# ---- dtype and device ----------------------------------------------------------------------------
def test_load_in_bfloat16(tmp_path: Path, write_saelens) -> None:
    """dtype=torch.bfloat16 casts every tensor as it is read."""
    sae = load_sae(write_saelens(tmp_path, "v6-gated").path, dtype=torch.bfloat16)
    assert sae.dtype == torch.bfloat16
    assert {t.dtype for t in sae._tensors().values() if t is not None} == {torch.bfloat16}


def test_partial_load_in_bfloat16(tmp_path: Path, write_saelens) -> None:
    """A partial load in bfloat16 holds the full fp32 load's columns, rounded to bfloat16."""
    folder = write_saelens(tmp_path, "v6-jumprelu")
    part = load_sae(folder.path, features=FEATURES, dtype=torch.bfloat16)
    full = load_sae(folder.path)
    assert torch.equal(part.W_enc, full.W_enc[:, FEATURES].to(torch.bfloat16))
    assert torch.equal(part.threshold, full.threshold[FEATURES].to(torch.bfloat16))


def test_encode_casts_input_to_sae_dtype(tmp_path: Path, write_saelens) -> None:
    """encode casts fp32 input to the SAE's bfloat16 and returns bfloat16."""
    folder = write_saelens(tmp_path, "v6-jumprelu")
    sae = load_sae(folder.path, dtype=torch.bfloat16)
    x = _inputs()
    assert sae.encode(x).dtype == torch.bfloat16
    assert torch.equal(sae.encode(x), sae.encode(x.to(torch.bfloat16)))


def test_encode_casts_float64_input_to_float32(tmp_path: Path, write_saelens) -> None:
    """A float64 activation is encoded by an fp32 SAE as its fp32 cast."""
    sae = load_sae(write_saelens(tmp_path, "v6-standard").path)
    x = _inputs().double()
    assert torch.equal(sae.encode(x), sae.encode(x.float()))


def test_bfloat16_file_keeps_its_dtype(tmp_path: Path, write_saelens) -> None:
    """A file stored in bfloat16 loads as bfloat16 without dtype=, with the file's values."""
    folder = write_saelens(tmp_path, "v6-standard", dtype=torch.bfloat16)
    sae = load_sae(folder.path)
    assert sae.dtype == torch.bfloat16
    assert torch.equal(sae.W_enc, folder.tensors["W_enc"])


def test_device_is_honoured(tmp_path: Path, write_saelens) -> None:
    """device= places every tensor there (cpu here; the tests never need a GPU)."""
    sae = load_sae(write_saelens(tmp_path, "v6-topk").path, device=torch.device("cpu"))
    assert {t.device.type for t in sae._tensors().values() if t is not None} == {"cpu"}
