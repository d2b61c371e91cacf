"""What every format module shares: load options, feature-wise reads, dimension checks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from featureguard.errors import SAEFormatError, SAELoadError
from featureguard.sae.tensors import TensorFile


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadOptions:
    """What the caller of `load_sae` asked for, passed unchanged to a format's `load`."""

    features: tuple[int, ...] | None = None
    """Global indices of the features to read; None reads the whole dictionary."""
    dtype: torch.dtype | None = None
    """Cast each tensor to this as it is read; None keeps the file's dtype."""
    allow_pickle: bool = False
    """Opt-in for pickle-based torch files (read with weights_only=True even then)."""
    hookpoint: str | None = None
    """For folders holding several SAEs (sparsify runs): which one."""
    source: str = ""
    """How the user named the SAE, for messages."""


def check_features(opts: LoadOptions, d_sae: int) -> None:
    """Refuse feature indices outside the dictionary before any tensor is read."""
    if opts.features is None:
        return
    bad = [i for i in opts.features if not 0 <= i < d_sae]
    if bad:
        raise SAELoadError(f"{opts.source}: features {bad} are out of range for d_sae={d_sae}")


def expect_shape(tf: TensorFile, name: str, shape: Sequence[int], hint: str = "") -> None:
    """The stored shape of `name` must be `shape` (checked before any partial read)."""
    got = tf.shape(name)
    if got != tuple(shape):
        extra = f" ({hint})" if hint else ""
        raise SAEFormatError(
            f"{tf.path}: {name} has shape {list(got)}, expected {list(shape)}{extra}"
        )


def read_features(
    tf: TensorFile, name: str, opts: LoadOptions, *, dim: int, transpose: bool = False
) -> torch.Tensor:
    """Tensor `name` restricted to the requested features along `dim`, optionally transposed.

    `transpose` turns torch.nn.Linear's [out, in] layout into the canonical one.
    """
    _expect_floating(tf, name)
    t = tf.read(name, opts.features, dim, dtype=opts.dtype)
    return t.T.contiguous() if transpose else t


def read_whole(tf: TensorFile, name: str, opts: LoadOptions) -> torch.Tensor:
    """A tensor that does not depend on the features (e.g. b_dec), cast to the asked dtype."""
    _expect_floating(tf, name)
    return tf.read(name, dtype=opts.dtype)


def _expect_floating(tf: TensorFile, name: str) -> None:
    """SAE weights are floating point: integers, booleans or complex numbers mean a bad file."""
    dtype = tf.dtype(name)
    if not dtype.is_floating_point:
        raise SAEFormatError(
            f"{tf.path}: {name} has dtype {str(dtype).removeprefix('torch.')}, expected a "
            "floating-point dtype"
        )


def feature_dim_size(opts: LoadOptions, d_sae: int) -> int:
    """How many features the loaded SAE holds."""
    return d_sae if opts.features is None else len(opts.features)


def find_file(folder: Path, *names: str) -> Path | None:
    """The first of `names` that exists in `folder`."""
    for name in names:
        if (folder / name).is_file():
            return folder / name
    return None
