"""SAELens folder: cfg.json + sae_weights.safetensors (+ sparsity.safetensors).

Configs of every generation are read: v6 (nested `metadata`), v5 (flat) and pre-3.x
(`hook_point`), the way SAELens v6 upgrades old ones (`handle_pre_6_0_config`), including
the fix that keeps old TopK SAEs (activation_fn "topk" with activation_fn_kwargs.k) from
being run as ReLU (SAELens#553).
"""

from __future__ import annotations

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

NAME = "saelens"
CONFIG, WEIGHTS, SPARSITY = "cfg.json", "sae_weights.safetensors", "sparsity.safetensors"

_ARCHITECTURES = {"standard": "relu", "relu": "relu", "jumprelu": "jumprelu",
                  "topk": "topk", "gated": "gated"}  # fmt: skip
_NORMS = {
    "none": "none",
    # A runtime no-op in SAELens too: the scale is folded into the weights when known.
    "expected_average_only_in": "none",
    "constant_norm_rescale": "l2_rescale",
    "layer_norm": "layer_norm",
}


def detect(path: Path) -> bool:
    return path.is_dir() and (path / CONFIG).is_file() and (path / WEIGHTS).is_file()


def _config(raw: dict, where: Path, source: str) -> SAEConfig:
    meta = raw.get("metadata") if isinstance(raw.get("metadata"), dict) else {}

    def get(key: str, default: object = None) -> object:
        return meta.get(key, raw.get(key, default))

    arch = str(raw.get("architecture") or "standard")
    k = raw.get("k")
    act_fn = raw.get("activation_fn_str", raw.get("activation_fn"))
    act_kwargs = raw.get("activation_fn_kwargs") or {}
    if act_fn == "topk" and isinstance(act_kwargs, dict) and act_kwargs.get("k"):
        arch, k = "topk", act_kwargs["k"]
    if arch not in _ARCHITECTURES:
        raise SAEFormatError(
            f"{where}: architecture {arch!r} is not supported (known: {sorted(_ARCHITECTURES)}; "
            "transcoders are not SAEs of one activation)"
        )
    norm_raw = raw.get("normalize_activations")
    norm_key = (
        {True: "expected_average_only_in", False: "none", None: "none"}.get(norm_raw, norm_raw)
        if isinstance(norm_raw, bool | None)
        else norm_raw
    )
    if not isinstance(norm_key, str) or norm_key not in _NORMS:
        raise SAEFormatError(
            f"{where}: normalize_activations {norm_raw!r} is not one of {sorted(_NORMS)}"
        )
    tl_kwargs = get("model_from_pretrained_kwargs") or {}
    center = bool(isinstance(tl_kwargs, dict) and tl_kwargs.get("center_writing_weights"))
    try:
        d_in, d_sae = int(raw["d_in"]), int(raw["d_sae"])
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise SAEFormatError(f"{where}: cfg.json needs integer d_in and d_sae") from exc
    whole = (isinstance(k, int) and not isinstance(k, bool)) or (
        isinstance(k, float) and k.is_integer()
    )
    if arch == "topk" and k is not None and not whole:
        raise SAEFormatError(f"{where}: topk needs an integer k, got {k!r}")
    return SAEConfig(
        format=NAME,
        architecture=_ARCHITECTURES[arch],
        d_in=d_in,
        d_sae=d_sae,
        k=int(k) if arch == "topk" and k is not None else None,
        subtract_b_dec=bool(raw.get("apply_b_dec_to_input", True)),
        normalization=Normalization(kind=_NORMS[norm_key], center=center),
        hook=get("hook_name") or get("hook_point"),
        model_name=get("model_name"),
        source=source,
    )


def load(path: Path, opts: LoadOptions) -> SAE:
    raw = read_json(path / CONFIG)
    cfg = _config(raw, path / CONFIG, opts.source or str(path))
    d, S = cfg.d_in, cfg.d_sae
    check_features(opts, S)
    tf = open_safetensors(path / WEIGHTS)
    hint = "transposed? SAELens stores W_enc as [d_in, d_sae]"
    expect_shape(tf, "W_enc", (d, S), hint)
    expect_shape(tf, "W_dec", (S, d), "transposed? SAELens stores W_dec as [d_sae, d_in]")
    expect_shape(tf, "b_dec", (d,))
    t: dict[str, torch.Tensor | None] = {
        "W_enc": read_features(tf, "W_enc", opts, dim=1),
        "W_dec": read_features(tf, "W_dec", opts, dim=0),
        "b_dec": read_whole(tf, "b_dec", opts),
    }

    def per_feature(name: str) -> torch.Tensor:  # checked whole: a partial read cannot tell
        expect_shape(tf, name, (S,))
        return read_features(tf, name, opts, dim=0)

    t["b_enc"] = per_feature("b_gate" if cfg.architecture == "gated" else "b_enc")
    if cfg.architecture == "gated":
        t["b_mag"], t["r_mag"] = per_feature("b_mag"), per_feature("r_mag")
    if cfg.architecture == "jumprelu":
        if "threshold" in tf:
            t["threshold"] = per_feature("threshold")
        else:  # training checkpoints keep log_threshold
            t["threshold"] = torch.exp(per_feature("log_threshold"))
    if "scaling_factor" in tf:  # legacy finetuning factor: decode uses (f * s) @ W_dec
        t["W_dec"] = t["W_dec"] * per_feature("scaling_factor")[:, None]
    if cfg.architecture == "topk" and raw.get("rescale_acts_by_decoder_norm"):
        _fold_decoder_norm(t)
    if (path / SPARSITY).is_file():
        sp = open_safetensors(path / SPARSITY)
        if "sparsity" in sp and sp.shape("sparsity") == (S,):
            t["log_sparsity"] = read_features(sp, "sparsity", opts, dim=0)
    return SAE(cfg, features=opts.features, **t)


def _fold_decoder_norm(t: dict[str, torch.Tensor | None]) -> None:
    """`h * ||W_dec[i]||` before top-k and `f / ||W_dec[i]||` at decode, folded exactly."""
    n = t["W_dec"].norm(dim=1)  # [k]
    t["W_enc"] = t["W_enc"] * n
    t["b_enc"] = t["b_enc"] * n
    t["W_dec"] = t["W_dec"] / n[:, None]
