"""Gemma Scope 1 (params.npz) and Gemma Scope 2 (config.json + params.safetensors) loaders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import sae_format_fixtures as fx
import torch

from featureguard.errors import SAEFormatError
from featureguard.sae import detect_format, load_sae


def reference(arrays: dict[str, np.ndarray], x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gemma Scope's JumpReLU (sae-formats.md §2.1) in float64: f = ReLU(pre)·1[pre > θ]."""
    a = {k.lower(): v.astype(np.float64) for k, v in arrays.items()}
    pre = x @ a["w_enc"] + a["b_enc"]
    f = np.maximum(pre, 0) * (pre > a["threshold"])
    return f, f @ a["w_dec"] + a["b_dec"]


def _x(d_in: int, seed: int = 10) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((3, 5, d_in))


def _check_reference(written: object) -> None:
    x = _x(written.d_in)
    sae = load_sae(written.path)
    f_ref, x_hat_ref = reference(written.arrays, x)
    assert 0.1 < fx.fraction_active(f_ref) < 0.9
    xt = torch.tensor(x, dtype=torch.float32)
    f = sae.encode(xt)
    np.testing.assert_allclose(f.numpy(), f_ref, **fx.TOL)
    np.testing.assert_allclose(sae.decode(f, xt).numpy(), x_hat_ref, **fx.TOL)


@pytest.mark.parametrize("lowercase", [False, True])
@pytest.mark.parametrize("compressed", [False, True])
def test_gemma_scope_matches_reference(tmp_path: Path, lowercase: bool, compressed: bool) -> None:
    """params.npz in either key casing, stored or compressed, encodes and decodes as §2.1."""
    _check_reference(fx.write_gemma_scope(tmp_path, lowercase=lowercase, compressed=compressed))


def test_gemma_scope2_matches_reference(tmp_path: Path) -> None:
    """A Gemma Scope 2 folder encodes and decodes as the same JumpReLU."""
    _check_reference(fx.write_gemma_scope2(tmp_path))


def test_gemma_scope_hook_from_residual_layout(tmp_path: Path) -> None:
    """`*-res/layer_7/width_16k/average_l0_71` gives blocks.7.hook_resid_post, also via the file."""
    written = fx.write_gemma_scope(tmp_path, layer=7)
    assert load_sae(written.path).cfg.hook == "blocks.7.hook_resid_post"
    assert load_sae(written.path / "params.npz").cfg.hook == "blocks.7.hook_resid_post"
    assert detect_format(written.path / "params.npz") == "gemma_scope"


def test_gemma_scope_hook_from_hub_cache_layout(tmp_path: Path) -> None:
    """The hub cache's `models--…-res/snapshots/<revision>/layer_L/...` gives the hook too."""
    repo = "models--google--gemma-scope-2b-pt-res/snapshots/9ff4e7b3"
    sae = load_sae(fx.write_gemma_scope(tmp_path, repo=repo, layer=20).path)
    assert sae.cfg.hook == "blocks.20.hook_resid_post"


@pytest.mark.parametrize("repo", ["gemma-scope-2b-pt-mlp", "my-saes", "gemma-scope-2b-pt-res/copy"])
def test_gemma_scope_hook_left_to_caller_elsewhere(tmp_path: Path, repo: str) -> None:
    """Outside a `*-res` layout the hook is not guessed."""
    sae = load_sae(fx.write_gemma_scope(tmp_path, repo=repo).path)
    assert sae.cfg.hook is None
    assert sae.cfg.format == "gemma_scope"


def test_gemma_scope2_hook_and_model_from_config(tmp_path: Path) -> None:
    """Gemma Scope 2's hook is hf_hook_point_in and its model is model_name."""
    sae = load_sae(fx.write_gemma_scope2(tmp_path, layer=5).path)
    assert sae.cfg.hook == "model.layers.5.output"
    assert sae.cfg.model_name == "google/gemma-3-1b-pt"
    assert (sae.cfg.architecture, sae.cfg.subtract_b_dec) == ("jumprelu", False)


@pytest.mark.parametrize("writer", ["write_gemma_scope", "write_gemma_scope2"])
def test_steering_identity(tmp_path: Path, writer: str) -> None:
    """Editing features by decode_delta equals decoding the edit plus the error term."""
    written = getattr(fx, writer)(tmp_path)
    sae = load_sae(written.path)
    fx.assert_steering_identity(sae, torch.tensor(_x(written.d_in), dtype=torch.float32))


@pytest.mark.parametrize(
    "write",
    [
        lambda p: fx.write_gemma_scope(p),
        lambda p: fx.write_gemma_scope(p, compressed=True, lowercase=True),
        lambda p: fx.write_gemma_scope2(p),
    ],
    ids=["npz", "npz-compressed-lowercase", "gemma-scope-2"],
)
def test_partial_load_matches_full(tmp_path: Path, write: object) -> None:
    """Loading some features gives the full load's columns for them, in the order asked."""
    written = write(tmp_path)
    x = torch.tensor(_x(written.d_in), dtype=torch.float32)
    fx.assert_partial_load_matches(written, [40, 3, 63, 17], x)


@pytest.mark.parametrize(
    ("writer", "edit", "file", "match"),
    [
        ("write_gemma_scope", lambda a: a.pop("threshold"), "params.npz", "threshold"),
        ("write_gemma_scope", lambda a: a.pop("W_enc"), "params.npz", "W_enc"),
        ("write_gemma_scope2", lambda a: a.pop("w_dec"), "params.safetensors", "W_dec"),
        ("write_gemma_scope2", lambda a: a.pop("b_enc"), "params.safetensors", "b_enc"),
    ],
)
def test_missing_tensor_is_named(
    tmp_path: Path, writer: str, edit: object, file: str, match: str
) -> None:
    """A missing tensor is a SAEFormatError naming the file and the tensor."""
    written = getattr(fx, writer)(tmp_path, edit=edit)
    with pytest.raises(SAEFormatError, match=match) as info:
        load_sae(written.path)
    assert str(written.path / file) in str(info.value)


@pytest.mark.parametrize(
    ("writer", "key", "file"),
    [
        ("write_gemma_scope", "W_enc", "params.npz"),
        ("write_gemma_scope2", "w_dec", "params.safetensors"),
    ],
)
def test_transposed_matrix_is_refused(tmp_path: Path, writer: str, key: str, file: str) -> None:
    """A matrix stored in nn.Linear orientation is refused before any read, naming the file."""

    def transpose(a: dict[str, np.ndarray]) -> None:
        a[key] = np.ascontiguousarray(a[key].T)

    written = getattr(fx, writer)(tmp_path, edit=transpose)
    with pytest.raises(SAEFormatError, match="transposed") as info:
        load_sae(written.path)
    assert str(written.path / file) in str(info.value)


@pytest.mark.parametrize(
    ("writer", "key"), [("write_gemma_scope", "W_dec"), ("write_gemma_scope2", "threshold")]
)
def test_nan_weights_are_refused(tmp_path: Path, writer: str, key: str) -> None:
    """NaN in a weight is a SAEFormatError naming the source."""

    def poison(a: dict[str, np.ndarray]) -> None:
        a[key.lower() if writer.endswith("2") else key].flat[3] = np.nan

    written = getattr(fx, writer)(tmp_path, edit=poison)
    with pytest.raises(SAEFormatError, match="NaN") as info:
        load_sae(written.path)
    assert str(written.path) in str(info.value)


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({"hf_hook_point_out": "model.layers.3.post_feedforward_layernorm.output"}, "transcoder"),
        ({"architecture": "topk"}, "not supported"),
    ],
)
def test_gemma_scope2_refuses_other_dictionaries(tmp_path: Path, config: dict, match: str) -> None:
    """Transcoders and other architectures are refused, naming config.json."""
    written = fx.write_gemma_scope2(tmp_path, config=config)
    with pytest.raises(SAEFormatError, match=match) as info:
        load_sae(written.path)
    assert str(written.path / "config.json") in str(info.value)


def test_gemma_scope2_refuses_affine_skip(tmp_path: Path) -> None:
    """An affine skip connection (an affine transcoder) is refused."""

    def add_skip(a: dict[str, np.ndarray]) -> None:
        a["affine_skip_connection"] = np.zeros((16, 16), dtype=np.float32)

    written = fx.write_gemma_scope2(tmp_path, edit=add_skip)
    with pytest.raises(SAEFormatError, match="affine_skip_connection"):
        load_sae(written.path)
