"""Llama Scope (OpenMOSS lm_saes): hyperparams.json + checkpoints/final.safetensors, JumpReLU.

Tensors are nn.Linear's, so both matrices are transposed here: encoder.weight
[d_sae, d_model], encoder.bias, decoder.weight [d_model, d_sae], decoder.bias (= b_dec).
The SAEs were trained on activations scaled to norm sqrt(d_model) on average
(`norm_activation: "dataset-wise"`). With s = sqrt(d_model) / dataset_average_activation_norm
(`in` for s_in, `out` for s_out) and θ the scalar `jump_relu_threshold`:

    pre = (s_in·x) @ W_enc + b_enc      f = pre·1[pre > θ·s_in]      x̂ = (f @ W_dec + b_dec) / s_out

that is Normalization(kind="constant", scale_in=s_in, scale_out=s_out) and a threshold θ·s_in
for every feature (the scaling SAELens#483 fixed). b_dec is subtracted from the scaled input
only if `apply_decoder_bias_to_pre_encoder` (false in the releases; lm_saes' default is true).

With `sparsity_include_decoder_norm` (lm_saes' default), lm_saes gates feature i on
pre_i·‖W_dec[i]‖ rather than pre_i. Folding the decoder norms into the encoder (lm_saes'
`transform_to_unit_decoder_norm`) runs exactly that gate through the plain JumpReLU: the
reconstruction is unchanged, and f_i is reported as pre_i·‖W_dec[i]‖ (unit-decoder units).
For unit-norm decoders this changes nothing. The hook is `hook_point_in`; transcoders (a
different `hook_point_out`) are refused.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from featureguard.errors import SAEFormatError
from featureguard.sae.formats.common import (
    LoadOptions,
    check_features,
    expect_shape,
    read_features,
    read_whole,
)
from featureguard.sae.model import SAE, Normalization, SAEConfig
from featureguard.sae.tensors import open_safetensors, read_json

NAME = "llama_scope"
CONFIG, WEIGHTS = "hyperparams.json", "checkpoints/final.safetensors"


def detect(path: Path) -> bool:
    return path.is_dir() and (path / CONFIG).is_file() and (path / WEIGHTS).is_file()


def _number(value: object, what: str, where: Path, *, positive: bool = False) -> float:
    try:
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    except OverflowError:  # an integer too large for a float
        ok = False
    if not ok or (positive and value <= 0):
        kind = "a positive number" if positive else "a number"
        raise SAEFormatError(f"{where}: {what} must be {kind}, got {value!r}")
    return float(value)


def _count(raw: dict, key: str, where: Path) -> int:
    value = raw.get(key)  # below 2**63 like any tensor dimension (and math.sqrt's reach)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 2**63:
        raise SAEFormatError(f"{where}: {key} must be a positive integer, got {value!r}")
    return value


def _config(raw: dict, where: Path, source: str) -> tuple[SAEConfig, float]:
    """The canonical config, and the threshold in the scaled space (θ·s_in)."""
    if raw.get("act_fn") != "jumprelu":
        raise SAEFormatError(f"{where}: act_fn {raw.get('act_fn')!r} is not supported (jumprelu)")
    hook_in = raw.get("hook_point_in")
    if raw.get("hook_point_out", hook_in) != hook_in:
        raise SAEFormatError(
            f"{where}: a transcoder ({hook_in} -> {raw['hook_point_out']}) is not supported"
        )
    if raw.get("use_glu_encoder"):
        raise SAEFormatError(f"{where}: use_glu_encoder is not supported")
    if raw.get("norm_activation") != "dataset-wise":
        raise SAEFormatError(
            f"{where}: norm_activation {raw.get('norm_activation')!r} is not supported "
            "(the Llama Scope releases use dataset-wise)"
        )
    d = _count(raw, "d_model", where)
    if "d_sae" in raw:
        d_sae = _count(raw, "d_sae", where)
    else:
        d_sae = d * _count(raw, "expansion_factor", where)
    norms = raw.get("dataset_average_activation_norm")
    if not isinstance(norms, dict):
        raise SAEFormatError(f"{where}: dataset_average_activation_norm must be {{in, out}}")
    key = "dataset_average_activation_norm"
    s_in = math.sqrt(d) / _number(norms.get("in"), f"{key}.in", where, positive=True)
    s_out = math.sqrt(d) / _number(norms.get("out"), f"{key}.out", where, positive=True)
    theta = _number(raw.get("jump_relu_threshold"), "jump_relu_threshold", where)
    cfg = SAEConfig(
        format=NAME,
        architecture="jumprelu",
        d_in=d,
        d_sae=d_sae,
        subtract_b_dec=bool(raw.get("apply_decoder_bias_to_pre_encoder", True)),
        normalization=Normalization(kind="constant", scale_in=s_in, scale_out=s_out),
        hook=hook_in if isinstance(hook_in, str) else None,
        source=source,
    )
    return cfg, theta * s_in


def _fold_decoder_norms(t: dict[str, torch.Tensor]) -> None:
    """Unit decoder rows; encoder columns and biases scaled by the norms (exactly lm_saes' gate).

    A feature whose decoder row is zero never fires in lm_saes; its encoder becomes zero too.
    """
    n = t["W_dec"].norm(dim=1)  # [k]
    t["W_enc"] = t["W_enc"] * n
    t["b_enc"] = t["b_enc"] * n
    t["W_dec"] = t["W_dec"] / torch.where(n > 0, n, torch.ones_like(n))[:, None]


def load(path: Path, opts: LoadOptions) -> SAE:
    raw = read_json(path / CONFIG)
    cfg, threshold = _config(raw, path / CONFIG, opts.source or str(path))
    d, S = cfg.d_in, cfg.d_sae
    check_features(opts, S)
    tf = open_safetensors(path / WEIGHTS)
    expect_shape(tf, "encoder.weight", (S, d), "nn.Linear stores the encoder as [d_sae, d_model]")
    expect_shape(tf, "encoder.bias", (S,))
    expect_shape(tf, "decoder.weight", (d, S), "nn.Linear stores the decoder as [d_model, d_sae]")
    expect_shape(tf, "decoder.bias", (d,))
    t = {
        "W_enc": read_features(tf, "encoder.weight", opts, dim=0, transpose=True),
        "b_enc": read_features(tf, "encoder.bias", opts, dim=0),
        "W_dec": read_features(tf, "decoder.weight", opts, dim=1, transpose=True),
        "b_dec": read_whole(tf, "decoder.bias", opts),
    }
    if raw.get("sparsity_include_decoder_norm", True):
        _fold_decoder_norms(t)
    if not abs(threshold) <= torch.finfo(t["b_enc"].dtype).max:  # full_like would overflow
        raise SAEFormatError(
            f"{path / CONFIG}: jump_relu_threshold times sqrt(d_model) / "
            f"dataset_average_activation_norm.in is {threshold:g}, beyond {t['b_enc'].dtype}"
        )
    theta = torch.full_like(t["b_enc"], threshold)
    return SAE(cfg, features=opts.features, threshold=theta, **t)
