"""Goodfire loader: a pickled OrderedDict of encoder_linear/decoder_linear, plain ReLU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import sae_format_fixtures as fx
import torch

from featureguard.errors import SAEFormatError, SAELoadError
from featureguard.sae import detect_format, load_sae


def reference(arrays: dict[str, np.ndarray], x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Goodfire's SAE (sae-formats.md §6) in float64: no b_dec subtraction, no normalisation."""
    a = {k: v.astype(np.float64) for k, v in arrays.items()}
    f = np.maximum(x @ a["encoder_linear.weight"].T + a["encoder_linear.bias"], 0)
    return f, f @ a["decoder_linear.weight"].T + a["decoder_linear.bias"]


def _x(d_in: int, seed: int = 14) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((2, 7, d_in))


@pytest.mark.parametrize("suffix", [".pth", ".pt"])
def test_matches_reference(tmp_path: Path, suffix: str) -> None:
    """A .pth or .pt file is detected and encodes and decodes as Goodfire's ReLU SAE."""
    written = fx.write_goodfire(tmp_path, suffix=suffix)
    assert detect_format(written.path) == "goodfire"
    sae = load_sae(written.path, allow_pickle=True)
    assert (sae.cfg.architecture, sae.cfg.subtract_b_dec, sae.cfg.hook) == ("relu", False, None)
    x = _x(written.d_in)
    f_ref, x_hat_ref = reference(written.arrays, x)
    assert 0.1 < fx.fraction_active(f_ref) < 0.9
    xt = torch.tensor(x, dtype=torch.float32)
    f = sae.encode(xt)
    np.testing.assert_allclose(f.numpy(), f_ref, **fx.TOL)
    np.testing.assert_allclose(sae.decode(f, xt).numpy(), x_hat_ref, **fx.TOL)


def test_pickle_needs_opt_in(tmp_path: Path) -> None:
    """Loading without allow_pickle=True is an SAELoadError that says how to opt in."""
    written = fx.write_goodfire(tmp_path)
    with pytest.raises(SAELoadError, match="allow_pickle=True") as info:
        load_sae(written.path)
    assert str(written.path) in str(info.value)


def test_steering_identity(tmp_path: Path) -> None:
    """Editing features by decode_delta equals decoding the edit plus the error term."""
    written = fx.write_goodfire(tmp_path)
    x = torch.tensor(_x(written.d_in), dtype=torch.float32)
    fx.assert_steering_identity(load_sae(written.path, allow_pickle=True), x)


def test_partial_load_matches_full(tmp_path: Path) -> None:
    """A partial load computes the full load's values for its features."""
    written = fx.write_goodfire(tmp_path)
    x = torch.tensor(_x(written.d_in), dtype=torch.float32)
    fx.assert_partial_load_matches(written, [127, 0, 64, 31], x)


def test_missing_tensor_is_named(tmp_path: Path) -> None:
    """A state dict without a required tensor is a SAEFormatError naming file and tensor."""
    written = fx.write_goodfire(tmp_path, edit=lambda a: a.pop("encoder_linear.bias"))
    with pytest.raises(SAEFormatError, match=r"encoder_linear\.bias") as info:
        load_sae(written.path, allow_pickle=True, format="goodfire")
    assert str(written.path) in str(info.value)


def test_transposed_encoder_is_refused(tmp_path: Path) -> None:
    """encoder_linear.weight stored as [d_in, d_sae] is refused before any read."""

    def transpose(a: dict[str, np.ndarray]) -> None:
        a["encoder_linear.weight"] = np.ascontiguousarray(a["encoder_linear.weight"].T)

    written = fx.write_goodfire(tmp_path, edit=transpose)
    with pytest.raises(SAEFormatError, match=r"encoder_linear\.weight has shape \[32, 128\]"):
        load_sae(written.path, allow_pickle=True)


def test_nan_weights_are_refused(tmp_path: Path) -> None:
    """NaN in a weight is a SAEFormatError naming the file."""

    def poison(a: dict[str, np.ndarray]) -> None:
        a["decoder_linear.weight"][3, 9] = np.nan

    written = fx.write_goodfire(tmp_path, edit=poison)
    with pytest.raises(SAEFormatError, match="NaN") as info:
        load_sae(written.path, allow_pickle=True)
    assert str(written.path) in str(info.value)
