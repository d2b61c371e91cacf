"""Gemma Scope 2 (Gemma 3): <site>/layer_L_width_W_l0_X/ with config.json + params.safetensors.

The tensors are Gemma Scope 1's in lowercase (w_enc [d_in, d_sae], w_dec [d_sae, d_in],
b_enc, b_dec, threshold; the uppercase spelling is read too) and the maths is the same
JumpReLU without b_dec subtraction or normalisation. config.json names the Hugging Face
module the SAE reads, `hf_hook_point_in` (e.g. `model.layers.10.output`), which becomes the
hook, and `model_name`. Transcoders (`hf_hook_point_out` differing from the input, or an
`affine_skip_connection`) and cross-layer transcoders are refused.
"""

from __future__ import annotations

from pathlib import Path

from featureguard.errors import SAEFormatError
from featureguard.sae.formats.common import LoadOptions
from featureguard.sae.formats.gemma_scope import read_jumprelu, widths
from featureguard.sae.model import SAE, SAEConfig
from featureguard.sae.tensors import open_safetensors, read_json

NAME = "gemma_scope_2"
CONFIG, WEIGHTS = "config.json", "params.safetensors"
_ARCHITECTURES = ("jump_relu", "jumprelu")


def detect(path: Path) -> bool:
    return path.is_dir() and (path / CONFIG).is_file() and (path / WEIGHTS).is_file()


def _text(raw: dict, key: str, where: Path) -> str | None:
    value = raw.get(key)
    if value is not None and not isinstance(value, str):
        raise SAEFormatError(f"{where}: {key} must be a string, got {value!r}")
    return value


def load(path: Path, opts: LoadOptions) -> SAE:
    where = path / CONFIG
    raw = read_json(where)
    arch = raw.get("architecture", "jump_relu")
    if arch not in _ARCHITECTURES:
        raise SAEFormatError(f"{where}: architecture {arch!r} is not supported (only jump_relu)")
    hook_in = _text(raw, "hf_hook_point_in", where)
    hook_out = _text(raw, "hf_hook_point_out", where) or hook_in
    if hook_out != hook_in:
        raise SAEFormatError(
            f"{where}: a transcoder (reads {hook_in}, writes {hook_out}) is not supported; "
            "featureguard attaches SAEs that reconstruct the activation they read"
        )
    tf = open_safetensors(path / WEIGHTS)
    if "affine_skip_connection" in tf:
        raise SAEFormatError(f"{tf.path}: affine_skip_connection (a transcoder) is not supported")
    d, S = widths(tf)
    cfg = SAEConfig(
        format=NAME,
        architecture="jumprelu",
        d_in=d,
        d_sae=S,
        hook=hook_in,
        model_name=_text(raw, "model_name", where),
        source=opts.source or str(path),
    )
    return read_jumprelu(tf, cfg, opts)
