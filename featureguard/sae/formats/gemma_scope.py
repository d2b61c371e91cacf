"""Gemma Scope 1 (Gemma 2): layer_L/width_W/average_l0_N/params.npz, a JumpReLU SAE.

The npz holds five arrays, already in the canonical orientation: W_enc [d_in, d_sae],
W_dec [d_sae, d_in], b_enc [d_sae], b_dec [d_in] and a per-feature threshold [d_sae]. The
transcoder releases spell the matrices w_enc/w_dec; both casings are read. The maths has no
b_dec subtraction and no normalisation: f = pre·1[pre > threshold], pre = x @ W_enc + b_enc.

The hook is `blocks.L.hook_resid_post` only when the path shows the residual-stream layout
(`layer_L/width_W/average_l0_N` in a repo folder named `*-res`, as google/gemma-scope-*-res
are, also inside the hub cache); otherwise the caller names it. `read_jumprelu` is shared
with Gemma Scope 2.
"""

from __future__ import annotations

import re
from pathlib import Path

from featureguard.errors import SAEFormatError
from featureguard.sae.formats.common import (
    LoadOptions,
    check_features,
    expect_shape,
    read_features,
    read_whole,
)
from featureguard.sae.model import SAE, SAEConfig
from featureguard.sae.tensors import TensorFile, open_npz

NAME = "gemma_scope"
WEIGHTS = "params.npz"

_LAYER = re.compile(r"layer_(\d+)")
_WIDTH = re.compile(r"width_\w+")
_L0 = re.compile(r"average_l0_\d+")


def _file(path: Path) -> Path:
    return path / WEIGHTS if path.is_dir() else path


def detect(path: Path) -> bool:
    return _file(path).is_file() and _file(path).suffix == ".npz"


def stored_name(tf: TensorFile, name: str) -> str:
    """`name` as the file spells it: `W_enc`, or the lowercase `w_enc` of later releases."""
    for candidate in (name, name.lower()):
        if candidate in tf:
            return candidate
    raise SAEFormatError(
        f"{tf.path}: no tensor named {name!r} (nor {name.lower()!r}); it holds {sorted(tf.names)}"
    )


def widths(tf: TensorFile) -> tuple[int, int]:
    """(d_in, d_sae), read from the shapes of b_dec and b_enc."""
    sizes = []
    for bias in ("b_dec", "b_enc"):
        shape = tf.shape(bias)
        if len(shape) != 1:
            raise SAEFormatError(f"{tf.path}: {bias} has shape {list(shape)}, expected a vector")
        sizes.append(shape[0])
    return sizes[0], sizes[1]


def read_jumprelu(tf: TensorFile, cfg: SAEConfig, opts: LoadOptions) -> SAE:
    """The five Gemma Scope tensors (either casing) of the requested features, shapes checked."""
    d, S = cfg.d_in, cfg.d_sae
    check_features(opts, S)
    W_enc, W_dec = stored_name(tf, "W_enc"), stored_name(tf, "W_dec")
    expect_shape(tf, W_enc, (d, S), "transposed? Gemma Scope stores W_enc as [d_in, d_sae]")
    expect_shape(tf, W_dec, (S, d), "transposed? Gemma Scope stores W_dec as [d_sae, d_in]")
    expect_shape(tf, "threshold", (S,), "Gemma Scope has one threshold per feature")
    return SAE(
        cfg,
        features=opts.features,
        W_enc=read_features(tf, W_enc, opts, dim=1),
        b_enc=read_features(tf, "b_enc", opts, dim=0),
        W_dec=read_features(tf, W_dec, opts, dim=0),
        b_dec=read_whole(tf, "b_dec", opts),
        threshold=read_features(tf, "threshold", opts, dim=0),
    )


def _hook(folder: Path) -> str | None:
    """`blocks.L.hook_resid_post` when the path is `<*-res>/layer_L/width_W/average_l0_N`.

    The repo folder is the one just above layer_L, or in the hub cache the
    `models--google--gemma-scope-…-res` folder above `snapshots/<revision>`.
    """
    parts = folder.absolute().parts
    if len(parts) < 5 or not (_WIDTH.fullmatch(parts[-2]) and _L0.fullmatch(parts[-1])):
        return None
    layer, above = _LAYER.fullmatch(parts[-3]), parts[:-3]
    repo = above[-3] if len(above) >= 3 and above[-2] == "snapshots" else above[-1]
    if layer is None or not repo.endswith("-res"):
        return None
    return f"blocks.{int(layer.group(1))}.hook_resid_post"


def load(path: Path, opts: LoadOptions) -> SAE:
    file = _file(path)
    tf = open_npz(file)
    d, S = widths(tf)
    cfg = SAEConfig(
        format=NAME,
        architecture="jumprelu",
        d_in=d,
        d_sae=S,
        hook=_hook(file.parent),
        source=opts.source or str(path),
    )
    return read_jumprelu(tf, cfg, opts)
