"""Llama Scope loader: nn.Linear layout, dataset-wise scaling, θ·s threshold, decoder norms."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import sae_format_fixtures as fx
import torch

from featureguard.errors import SAEFormatError
from featureguard.sae import load_sae


def reference(written: object, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """lm_saes' Llama Scope maths (sae-formats.md §5) in float64.

    pre = (s·x) @ encoder.weight.T + encoder.bias; feature i fires when pre_i·‖d_i‖ > θ·s
    (‖d_i‖ = 1 for unit decoders, the "correct math" of §5); x̂ = (f @ decoder.weight.T +
    decoder.bias) / s_out. Returns (f, x̂, pre).
    """
    a = {k: v.astype(np.float64) for k, v in written.arrays.items()}
    cfg = written.config
    d = cfg["d_model"]
    s_in = math.sqrt(d) / cfg["dataset_average_activation_norm"]["in"]
    s_out = math.sqrt(d) / cfg["dataset_average_activation_norm"]["out"]
    pre = (s_in * x) @ a["encoder.weight"].T + a["encoder.bias"]
    norms = np.linalg.norm(a["decoder.weight"], axis=0)
    f = pre * (pre * norms > cfg["jump_relu_threshold"] * s_in)
    return f, (f @ a["decoder.weight"].T + a["decoder.bias"]) / s_out, pre


def _x(written: object, seed: int = 12) -> np.ndarray:
    """Activations whose norm is about the dataset average the config names."""
    norm = written.config["dataset_average_activation_norm"]["in"]
    return np.random.default_rng(seed).standard_normal((3, 5, written.d_in)) * norm / 4.0


def _encode_decode(written: object, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sae = load_sae(written.path)
    xt = torch.tensor(x, dtype=torch.float32)
    f = sae.encode(xt)
    return f.numpy(), sae.decode(f, xt).numpy()


@pytest.mark.parametrize(("norm_in", "norm_out"), [(8.0, 8.0), (8.0, 10.0)])
def test_matches_reference(tmp_path: Path, norm_in: float, norm_out: float) -> None:
    """encode and decode equal §5's maths, with the threshold at θ·s_in and output / s_out."""
    written = fx.write_llama_scope(tmp_path, norm_in=norm_in, norm_out=norm_out)
    x = _x(written)
    f_ref, x_hat_ref, pre = reference(written, x)
    assert 0.1 < fx.fraction_active(f_ref) < 0.9
    s_in = math.sqrt(written.d_in) / norm_in
    theta = written.config["jump_relu_threshold"]
    assert ((pre > theta * s_in) != (pre > theta)).any()  # an unscaled θ would be caught
    f, x_hat = _encode_decode(written, x)
    np.testing.assert_allclose(f, f_ref, **fx.TOL)
    np.testing.assert_allclose(x_hat, x_hat_ref, **fx.TOL)


def test_config_facts(tmp_path: Path) -> None:
    """hook_point_in is the hook; the dataset-wise norm is a constant scale; b_dec is not
    subtracted when apply_decoder_bias_to_pre_encoder is false."""
    sae = load_sae(fx.write_llama_scope(tmp_path, layer=15).path)
    s = math.sqrt(16) / 8.0
    assert sae.cfg.hook == "blocks.15.hook_resid_post"
    assert (sae.cfg.normalization.kind, sae.cfg.normalization.scale_in) == ("constant", s)
    assert sae.cfg.subtract_b_dec is False
    torch.testing.assert_close(sae.threshold, torch.full((sae.d_sae,), 0.6 * s))


def test_decoder_bias_to_pre_encoder_is_subtracted(tmp_path: Path) -> None:
    """With apply_decoder_bias_to_pre_encoder, b_dec is subtracted from the scaled input."""
    written = fx.write_llama_scope(tmp_path, config={"apply_decoder_bias_to_pre_encoder": True})
    a = {k: v.astype(np.float64) for k, v in written.arrays.items()}
    x = _x(written)
    s = math.sqrt(written.d_in) / 8.0
    pre = (s * x - a["decoder.bias"]) @ a["encoder.weight"].T + a["encoder.bias"]
    f_ref = pre * (pre > 0.6 * s)
    np.testing.assert_allclose(_encode_decode(written, x)[0], f_ref, **fx.TOL)


def _uneven_norms(d_sae: int) -> np.ndarray:
    return np.random.default_rng(7).uniform(0.3, 3.0, d_sae).astype(np.float32)


def test_decoder_norms_fold_into_lm_saes_gate(tmp_path: Path) -> None:
    """With sparsity_include_decoder_norm and uneven decoder norms, the gate is lm_saes'
    pre·‖d‖ > θ·s, activations come in unit-decoder units (f·‖d‖), reconstructions agree."""
    written = fx.write_llama_scope(tmp_path, decoder_norms=_uneven_norms(128))
    x = _x(written)
    f_ref, x_hat_ref, pre = reference(written, x)
    norms = np.linalg.norm(written.arrays["decoder.weight"].astype(np.float64), axis=0)
    s_theta = 0.6 * math.sqrt(written.d_in) / 8.0
    assert ((pre * norms > s_theta) != (pre > s_theta)).any()  # the fold matters here
    f, x_hat = _encode_decode(written, x)
    np.testing.assert_allclose(f, f_ref * norms, **fx.TOL)
    np.testing.assert_allclose(x_hat, x_hat_ref, **fx.TOL)


def test_no_fold_without_sparsity_include_decoder_norm(tmp_path: Path) -> None:
    """Without the flag the gate is plain pre > θ·s and activations are lm_saes' own."""
    written = fx.write_llama_scope(
        tmp_path, decoder_norms=_uneven_norms(128),
        config={"sparsity_include_decoder_norm": False},
    )  # fmt: skip
    a = {k: v.astype(np.float64) for k, v in written.arrays.items()}
    x = _x(written)
    s = math.sqrt(written.d_in) / 8.0
    pre = (s * x) @ a["encoder.weight"].T + a["encoder.bias"]
    f_ref = pre * (pre > 0.6 * s)
    f, x_hat = _encode_decode(written, x)
    np.testing.assert_allclose(f, f_ref, **fx.TOL)
    x_hat_ref = (f_ref @ a["decoder.weight"].T + a["decoder.bias"]) / s
    np.testing.assert_allclose(x_hat, x_hat_ref, **fx.TOL)


@pytest.mark.parametrize("norms", [None, "uneven"])
def test_steering_identity(tmp_path: Path, norms: str | None) -> None:
    """Editing features by decode_delta equals decoding the edit plus the error term."""
    written = fx.write_llama_scope(tmp_path, decoder_norms=norms and _uneven_norms(128))
    x = torch.tensor(_x(written), dtype=torch.float32)
    fx.assert_steering_identity(load_sae(written.path), x)


@pytest.mark.parametrize("norms", [None, "uneven"])
def test_partial_load_matches_full(tmp_path: Path, norms: str | None) -> None:
    """A partial load computes the full load's values for its features (folding included)."""
    written = fx.write_llama_scope(tmp_path, decoder_norms=norms and _uneven_norms(128))
    x = torch.tensor(_x(written), dtype=torch.float32)
    fx.assert_partial_load_matches(written, [100, 4, 127, 64, 9], x)


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({"act_fn": "topk"}, "act_fn 'topk' is not supported"),
        ({"hook_point_out": "blocks.3.hook_mlp_out"}, "transcoder"),
        ({"norm_activation": "token-wise"}, "norm_activation 'token-wise' is not supported"),
        ({"dataset_average_activation_norm": {"in": 0, "out": 8.0}}, "positive number"),
        ({"dataset_average_activation_norm": None}, "dataset_average_activation_norm"),
        ({"jump_relu_threshold": "high"}, "jump_relu_threshold must be a number"),
        ({"d_model": 16.5}, "d_model must be a positive integer"),
    ],
)
def test_bad_or_unsupported_config_is_named(tmp_path: Path, config: dict, match: str) -> None:
    """Unsupported variants and bad values are SAEFormatErrors naming hyperparams.json."""
    written = fx.write_llama_scope(tmp_path, config=config)
    with pytest.raises(SAEFormatError, match=match) as info:
        load_sae(written.path)
    assert str(written.path / "hyperparams.json") in str(info.value)


@pytest.mark.parametrize("key", ["encoder.weight", "decoder.bias"])
def test_missing_tensor_is_named(tmp_path: Path, key: str) -> None:
    """A missing tensor is a SAEFormatError naming final.safetensors and the tensor."""
    written = fx.write_llama_scope(tmp_path, edit=lambda a: a.pop(key))
    with pytest.raises(SAEFormatError, match=key) as info:
        load_sae(written.path)
    assert str(written.path / "checkpoints" / "final.safetensors") in str(info.value)


@pytest.mark.parametrize("key", ["encoder.weight", "decoder.weight"])
def test_canonical_orientation_is_refused(tmp_path: Path, key: str) -> None:
    """A matrix stored as W_enc/W_dec (not nn.Linear) is refused before any read."""

    def transpose(a: dict[str, np.ndarray]) -> None:
        a[key] = np.ascontiguousarray(a[key].T)

    written = fx.write_llama_scope(tmp_path, edit=transpose)
    with pytest.raises(SAEFormatError, match=r"nn\.Linear") as info:
        load_sae(written.path)
    assert str(written.path / "checkpoints" / "final.safetensors") in str(info.value)


def test_nan_weights_are_refused(tmp_path: Path) -> None:
    """NaN in a weight is a SAEFormatError naming the source."""

    def poison(a: dict[str, np.ndarray]) -> None:
        a["encoder.bias"][11] = np.nan

    written = fx.write_llama_scope(tmp_path, edit=poison)
    with pytest.raises(SAEFormatError, match="NaN") as info:
        load_sae(written.path)
    assert str(written.path) in str(info.value)
