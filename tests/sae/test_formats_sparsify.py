"""sparsify loader: hookpoint folders, run folders of several, and sparsify's own maths."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import sae_format_fixtures as fx
import torch

from featureguard.errors import FeatureguardError, SAEFormatError, SAELoadError
from featureguard.sae import detect_format, load_sae


def reference(arrays: dict[str, np.ndarray], k: int, x: np.ndarray) -> tuple[np.ndarray, ...]:
    """sparsify's SparseCoder (sae-formats.md §3.2) in float64: ReLU, then top-k, W_dec as is."""
    a = {name: v.astype(np.float64) for name, v in arrays.items()}
    pre = np.maximum((x - a["b_dec"]) @ a["encoder.weight"].T + a["encoder.bias"], 0)
    top = np.argsort(-pre, axis=-1)[..., :k]
    f = np.zeros_like(pre)
    np.put_along_axis(f, top, np.take_along_axis(pre, top, axis=-1), axis=-1)
    return f, f @ a["W_dec"] + a["b_dec"]


def _x(d_in: int, seed: int = 11) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((4, 6, d_in))


@pytest.mark.parametrize(
    "options",
    [{}, {"legacy": True}, {"num_latents": 80, "k": 5}],
    ids=["current", "legacy-signed-false", "num-latents"],
)
def test_matches_reference(tmp_path: Path, options: dict) -> None:
    """encode and decode equal sparsify's maths, for current and legacy configs."""
    written = fx.write_sparsify(tmp_path, **options)
    sae = load_sae(written.path)
    assert (sae.d_in, sae.d_sae, sae.cfg.k) == (written.d_in, written.d_sae, written.config["k"])
    x = _x(written.d_in)
    f_ref, x_hat_ref = reference(written.arrays, written.config["k"], x)
    assert (np.count_nonzero(f_ref, axis=-1) == written.config["k"]).all()
    xt = torch.tensor(x, dtype=torch.float32)
    f = sae.encode(xt)
    np.testing.assert_allclose(f.numpy(), f_ref, **fx.TOL)
    np.testing.assert_allclose(sae.decode(f, xt).numpy(), x_hat_ref, **fx.TOL)


def test_hook_and_model_from_the_files(tmp_path: Path) -> None:
    """The hook is the hookpoint folder's name; the model comes from the run's config.json."""
    sae = load_sae(fx.write_sparsify(tmp_path, hookpoints=("layers.6.mlp",)).path)
    assert sae.cfg.hook == "layers.6.mlp"
    assert sae.cfg.model_name == "EleutherAI/pythia-70m"
    assert (sae.cfg.architecture, sae.cfg.subtract_b_dec) == ("topk", True)


def test_run_folder_picks_the_named_hookpoint(tmp_path: Path) -> None:
    """`run::layers.6` and hookpoint="layers.6" load the same SAE as the folder itself."""
    written = fx.write_sparsify(tmp_path, hookpoints=("layers.3", "layers.6"))
    run = written.path.parent
    assert detect_format(run) == "sparsify"
    direct = load_sae(run / "layers.6")
    for sae in (load_sae(f"{run}::layers.6"), load_sae(run, hookpoint="layers.6")):
        assert sae.cfg.hook == "layers.6"
        torch.testing.assert_close(sae.W_enc, direct.W_enc)
        torch.testing.assert_close(sae.W_dec, direct.W_dec)


def test_run_folder_without_hookpoint_lists_them(tmp_path: Path) -> None:
    """A run of several hookpoints, loaded without one, is an error that lists them."""
    run = fx.write_sparsify(tmp_path, hookpoints=("layers.3", "layers.6")).path.parent
    with pytest.raises(SAELoadError, match=r"hookpoint=.*Available: layers\.3, layers\.6"):
        load_sae(run)


def test_unknown_hookpoint_lists_them(tmp_path: Path) -> None:
    """Asking for a hookpoint the run does not hold lists the ones it does."""
    run = fx.write_sparsify(tmp_path, hookpoints=("layers.3", "layers.6")).path.parent
    with pytest.raises(SAELoadError, match=r"'layers\.9'.*Available: layers\.3, layers\.6"):
        load_sae(f"{run}::layers.9")


def test_run_folder_of_one_hookpoint_needs_no_name(tmp_path: Path) -> None:
    """A run holding a single hookpoint loads it without being told which."""
    written = fx.write_sparsify(tmp_path, hookpoints=("h.0",))
    assert load_sae(written.path.parent).cfg.hook == "h.0"


def test_hookpoint_folder_refuses_another_name(tmp_path: Path) -> None:
    """Naming a different hookpoint than the folder given is an error, not silently ignored."""
    written = fx.write_sparsify(tmp_path)
    with pytest.raises(SAELoadError, match=r"layers\.9"):
        load_sae(written.path, hookpoint="layers.9")


@pytest.mark.parametrize(
    "config",
    [{"signed": True}, {"activation": "groupmax"}, {"transcode": True}, {"skip_connection": True}],
)
def test_unsupported_variants_are_refused(tmp_path: Path, config: dict) -> None:
    """signed, groupmax, transcoders and skip connections are refused, naming cfg.json."""
    written = fx.write_sparsify(tmp_path, config=config)
    with pytest.raises(SAEFormatError, match="not supported") as info:
        load_sae(written.path)
    assert str(written.path / "cfg.json") in str(info.value)


def test_steering_identity(tmp_path: Path) -> None:
    """Editing features by decode_delta equals decoding the edit plus the error term."""
    written = fx.write_sparsify(tmp_path)
    x = torch.tensor(_x(written.d_in), dtype=torch.float32)
    fx.assert_steering_identity(load_sae(written.path), x)


def test_partial_load_matches_full(tmp_path: Path) -> None:
    """A partial load's encode_subset and decode_delta equal the full load's."""
    written = fx.write_sparsify(tmp_path)
    x = torch.tensor(_x(written.d_in), dtype=torch.float32)
    fx.assert_partial_load_matches(written, [50, 0, 33, 7], x)


def test_partial_topk_refuses_encode(tmp_path: Path) -> None:
    """TopK's competition needs every feature: encode on a partial load is refused."""
    written = fx.write_sparsify(tmp_path)
    with pytest.raises(FeatureguardError, match="encode_subset"):
        load_sae(written.path, features=[1, 2]).encode(torch.zeros(written.d_in))


@pytest.mark.parametrize("key", ["W_dec", "encoder.bias", "b_dec"])
def test_missing_tensor_is_named(tmp_path: Path, key: str) -> None:
    """A missing tensor is a SAEFormatError naming sae.safetensors and the tensor."""
    written = fx.write_sparsify(tmp_path, edit=lambda a: a.pop(key))
    with pytest.raises(SAEFormatError, match=key) as info:
        load_sae(written.path)
    assert str(written.path / "sae.safetensors") in str(info.value)


@pytest.mark.parametrize("key", ["encoder.weight", "W_dec"])
def test_transposed_matrix_is_refused(tmp_path: Path, key: str) -> None:
    """A matrix in the other orientation is refused before any read, naming the file."""

    def transpose(a: dict[str, np.ndarray]) -> None:
        a[key] = np.ascontiguousarray(a[key].T)

    written = fx.write_sparsify(tmp_path, edit=transpose)
    with pytest.raises(SAEFormatError, match=rf"{key} has shape \[16, 64\]") as info:
        load_sae(written.path)
    assert str(written.path / "sae.safetensors") in str(info.value)


def test_nan_weights_are_refused(tmp_path: Path) -> None:
    """NaN in a weight is a SAEFormatError naming the source."""

    def poison(a: dict[str, np.ndarray]) -> None:
        a["encoder.weight"][5, 2] = np.nan

    written = fx.write_sparsify(tmp_path, edit=poison)
    with pytest.raises(SAEFormatError, match="NaN") as info:
        load_sae(written.path)
    assert str(written.path) in str(info.value)


def test_bad_config_value_is_named(tmp_path: Path) -> None:
    """A config value of the wrong type is a SAEFormatError naming cfg.json and the key."""
    written = fx.write_sparsify(tmp_path, config={"k": "eight"})
    with pytest.raises(SAEFormatError, match="k must be") as info:
        load_sae(written.path)
    assert str(written.path / "cfg.json") in str(info.value)
