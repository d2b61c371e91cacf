"""OpenAI sparse_autoencoder loader: pickled state dicts, TopK with LayerNorm, ReLU."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import sae_format_fixtures as fx
import torch

from featureguard.errors import SAEFormatError, SAELoadError
from featureguard.sae import detect_format, load_sae


def reference(written: object, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """OpenAI's Autoencoder (sae-formats.md §4) in float64; LayerNorm only for TopK."""
    a = {k: v.astype(np.float64) for k, v in written.arrays.items()}
    topk = written.config["activation"] == "TopK"
    mu, sd = np.zeros((*x.shape[:-1], 1)), np.ones((*x.shape[:-1], 1))
    if topk:
        mu, sd = x.mean(-1, keepdims=True), x.std(-1, ddof=1, keepdims=True)
        x = (x - mu) / (sd + 1e-5)
    pre = (x - a["pre_bias"]) @ a["encoder.weight"].T + a["latent_bias"]
    if topk:
        k = written.config["activation_state_dict"]["k"]
        top = np.argsort(-pre, axis=-1)[..., :k]
        f = np.zeros_like(pre)
        np.put_along_axis(f, top, np.maximum(np.take_along_axis(pre, top, axis=-1), 0), axis=-1)
    else:
        f = np.maximum(pre, 0)
    x_hat = f @ a["decoder.weight"].T + a["pre_bias"]
    return f, x_hat * sd + mu


def _x(d_in: int, seed: int = 13) -> np.ndarray:
    """Activations with an offset and a scale, so that LayerNorm changes them."""
    return np.random.default_rng(seed).standard_normal((3, 5, d_in)) * 3.0 + 1.5


@pytest.mark.parametrize("activation", ["TopK", "ReLU"])
def test_matches_reference(tmp_path: Path, activation: str) -> None:
    """encode and decode equal OpenAI's maths for v5 TopK (LayerNorm) and v1/v4 ReLU SAEs."""
    written = fx.write_openai(tmp_path, activation=activation)
    sae = load_sae(written.path, allow_pickle=True)
    x = _x(written.d_in)
    f_ref, x_hat_ref = reference(written, x)
    assert 0.05 < fx.fraction_active(f_ref) < 0.9
    xt = torch.tensor(x, dtype=torch.float32)
    f = sae.encode(xt)
    np.testing.assert_allclose(f.numpy(), f_ref, **fx.TOL)
    np.testing.assert_allclose(sae.decode(f, xt).numpy(), x_hat_ref, **fx.TOL)


def test_config_facts(tmp_path: Path) -> None:
    """TopK gives topk(k) with layer_norm and b_dec = pre_bias subtracted; no hook is named."""
    sae = load_sae(fx.write_openai(tmp_path, k=6).path, allow_pickle=True)
    assert (sae.cfg.architecture, sae.cfg.k, sae.cfg.normalization.kind) == (
        "topk",
        6,
        "layer_norm",
    )
    assert sae.cfg.subtract_b_dec is True
    assert (sae.cfg.hook, sae.cfg.model_name) == (None, None)


def test_detected_without_opt_in_but_not_loaded(tmp_path: Path) -> None:
    """Detection needs no opt-in; loading without allow_pickle=True says how to opt in."""
    written = fx.write_openai(tmp_path)
    assert detect_format(written.path) == "openai"
    with pytest.raises(SAELoadError, match="allow_pickle=True") as info:
        load_sae(written.path)
    assert str(written.path) in str(info.value)


class _Trap:
    """Unpickling this creates `marker`: proof that a file was unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))


def test_detection_never_unpickles(tmp_path: Path) -> None:
    """A torch-style zip with OpenAI's keys and a code-running pickle is detected, not run;
    loading it with the opt-in still refuses the code (weights-only)."""
    marker = tmp_path / "ran"
    path = tmp_path / "3.pt"
    state = {key: _Trap(marker) for key in ("pre_bias", "latent_bias", "encoder.weight")}
    state["decoder.weight"] = 0
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("3/data.pkl", pickle.dumps(state, protocol=2))
        zf.writestr("3/version", "3\n")
    assert detect_format(path) == "openai"
    with pytest.raises(SAEFormatError, match="weights-only"):
        load_sae(path, allow_pickle=True)
    assert not marker.exists()


def test_legacy_torch_file_loads_when_named(tmp_path: Path) -> None:
    """A pre-zip torch file is not detected, but loads with format="openai" and the opt-in."""
    written = fx.write_openai(tmp_path, zip_format=False)
    with pytest.raises(SAEFormatError, match="not an SAE of a known format"):
        detect_format(written.path)
    sae = load_sae(written.path, allow_pickle=True, format="openai")
    assert sae.d_sae == written.d_sae


def test_steering_identity(tmp_path: Path) -> None:
    """Editing features by decode_delta equals decoding the edit plus the error term,
    with the per-token LayerNorm scale."""
    written = fx.write_openai(tmp_path)
    x = torch.tensor(_x(written.d_in), dtype=torch.float32)
    fx.assert_steering_identity(load_sae(written.path, allow_pickle=True), x)


@pytest.mark.parametrize("activation", ["TopK", "ReLU"])
def test_partial_load_matches_full(tmp_path: Path, activation: str) -> None:
    """A partial load computes the full load's values for its features."""
    written = fx.write_openai(tmp_path, activation=activation)
    x = torch.tensor(_x(written.d_in), dtype=torch.float32)
    fx.assert_partial_load_matches(written, [90, 1, 45, 12], x)


@pytest.mark.parametrize(
    ("extras", "match"),
    [
        ({"activation": "Identity"}, "activation 'Identity' is not supported"),
        ({"activation_state_dict": {"postact_fn": "ReLU"}}, "k must be an integer"),
        ({"activation_state_dict": {"k": 8, "postact_fn": "Identity"}}, "postact_fn"),
    ],
)
def test_unsupported_activation_is_refused(tmp_path: Path, extras: dict, match: str) -> None:
    """Activations other than TopK(ReLU) and ReLU are refused, naming the file."""
    written = fx.write_openai(tmp_path, extras=extras)
    with pytest.raises(SAEFormatError, match=match) as info:
        load_sae(written.path, allow_pickle=True)
    assert str(written.path) in str(info.value)


@pytest.mark.parametrize("key", ["latent_bias", "decoder.weight"])
def test_missing_tensor_is_named(tmp_path: Path, key: str) -> None:
    """A state dict without a required tensor is a SAEFormatError naming file and tensor."""
    written = fx.write_openai(tmp_path, edit=lambda a: a.pop(key))
    with pytest.raises(SAEFormatError, match=key) as info:
        load_sae(written.path, allow_pickle=True, format="openai")
    assert str(written.path) in str(info.value)


def test_transposed_decoder_is_refused(tmp_path: Path) -> None:
    """decoder.weight stored as [d_sae, d_in] is refused before any read."""

    def transpose(a: dict[str, np.ndarray]) -> None:
        a["decoder.weight"] = np.ascontiguousarray(a["decoder.weight"].T)

    written = fx.write_openai(tmp_path, edit=transpose)
    with pytest.raises(SAEFormatError, match=r"decoder\.weight has shape \[96, 32\]"):
        load_sae(written.path, allow_pickle=True)


def test_nan_weights_are_refused(tmp_path: Path) -> None:
    """NaN in a weight is a SAEFormatError naming the file."""

    def poison(a: dict[str, np.ndarray]) -> None:
        a["pre_bias"][0] = np.nan

    written = fx.write_openai(tmp_path, edit=poison)
    with pytest.raises(SAEFormatError, match="NaN") as info:
        load_sae(written.path, allow_pickle=True)
    assert str(written.path) in str(info.value)
