"""Completeness of the FORMATS registry: every format has a fixture, is detected alone, loads."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import sae_format_fixtures as fx
import torch

from featureguard.errors import SAEFormatError
from featureguard.sae import detect_format, load_sae
from featureguard.sae.formats import FORMATS

VARIANTS: dict[str, tuple[str, Callable[[Path], Path]]] = {
    "gemma-scope-npz-file": ("gemma_scope", lambda p: fx.write_gemma_scope(p).path / "params.npz"),
    "gemma-scope-w-lowercase": (
        "gemma_scope", lambda p: fx.write_gemma_scope(p, lowercase=True).path
    ),
    "sparsify-run-folder": (
        "sparsify", lambda p: fx.write_sparsify(p, hookpoints=("layers.1", "layers.2")).path.parent
    ),
    "sparsify-legacy": ("sparsify", lambda p: fx.write_sparsify(p, legacy=True).path),
    "openai-relu": ("openai", lambda p: fx.write_openai(p, activation="ReLU").path),
    "goodfire-pt": ("goodfire", lambda p: fx.write_goodfire(p, suffix=".pt").path),
}  # fmt: skip
"""Other real layouts of the same formats, each of which must be detected alone too."""


def _detected_by(path: Path) -> list[str]:
    return [name for name, module in FORMATS.items() if module.detect(path)]


def test_every_format_has_a_fixture_writer() -> None:
    """The fixture writers cover exactly the registered formats."""
    assert set(fx.WRITERS) == set(FORMATS)


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_module_contract(name: str) -> None:
    """Each module has its NAME as key, detect and load, and a one-line first docstring line."""
    module = FORMATS[name]
    assert name == module.NAME
    assert callable(module.detect) and callable(module.load)
    first = module.__doc__.splitlines()[0]
    assert first.strip() and len(first) <= 100


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_fixture_is_detected_by_exactly_its_format(tmp_path: Path, name: str) -> None:
    """The default fixture of each format is detected by that format and no other."""
    path = fx.WRITERS[name](tmp_path).path
    assert _detected_by(path) == [name]
    assert detect_format(path) == name


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_layout_variant_is_detected_by_exactly_its_format(tmp_path: Path, variant: str) -> None:
    """Other real layouts (a file given directly, a run folder, legacy files) are unambiguous."""
    name, write = VARIANTS[variant]
    assert _detected_by(write(tmp_path)) == [name]


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_fixture_round_trips(tmp_path: Path, name: str) -> None:
    """Writing then loading gives this format's SAE with the written sizes and hook, the same
    tensors whether detected or named, and finite activations and reconstructions."""
    written = fx.WRITERS[name](tmp_path)
    sae = load_sae(written.path, **written.load_kwargs)
    assert sae.cfg.format == name
    assert (sae.d_in, sae.d_sae, sae.cfg.hook) == (written.d_in, written.d_sae, written.hook)
    named = load_sae(written.path, format=name, **written.load_kwargs)
    for tensor in ("W_enc", "b_enc", "W_dec", "b_dec"):
        torch.testing.assert_close(getattr(named, tensor), getattr(sae, tensor))
    x = torch.randn(2, 3, written.d_in)
    f = sae.encode(x)
    x_hat = sae.decode(f, x)
    assert f.shape == (2, 3, written.d_sae) and x_hat.shape == x.shape
    assert torch.isfinite(f).all() and torch.isfinite(x_hat).all()


def test_unknown_folder_lists_every_format(tmp_path: Path) -> None:
    """A folder of no known format is an error that describes every registered format."""
    (tmp_path / "weights.bin").write_bytes(b"\0" * 64)
    with pytest.raises(SAEFormatError, match="not an SAE of a known format") as info:
        detect_format(tmp_path)
    for module in FORMATS.values():
        assert module.__doc__.splitlines()[0] in str(info.value)


def _weights_file(path: Path) -> Path:
    """The largest file of a fixture: its weights."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return max(files, key=lambda p: p.stat().st_size)


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_truncated_weights_are_format_errors(tmp_path: Path, name: str) -> None:
    """A weights file cut in half is a SAEFormatError naming that file, in every format."""
    written = fx.WRITERS[name](tmp_path)
    weights = _weights_file(written.path)
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(SAEFormatError) as info:
        load_sae(written.path, format=name, **written.load_kwargs)
    assert str(weights) in str(info.value)
