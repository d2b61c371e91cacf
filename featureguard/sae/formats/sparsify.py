"""sparsify (EleutherAI): <hookpoint>/cfg.json + sae.safetensors, or a run folder of several.

A run folder holds one sub-folder per hookpoint (`layers.6`, `layers.6.mlp`, `h.0`...); the
caller picks one with `hookpoint=` or `path::layers.6`. Tensors: `encoder.weight`
[d_sae, d_in] (nn.Linear, transposed here), `encoder.bias`, and `W_dec` [d_sae, d_in] used
as stored (sparsify initialises it as a copy of the encoder; SAELens' converter wrongly
transposes it), `b_dec`. As in sparsify's own code, b_dec is always subtracted from the
input (not only when `normalize_decoder` is false), and the activation is ReLU then top-k.
The hook is the hookpoint folder's name: a module path relative to the model's base model,
read at the module's output. Legacy `signed: false` configs load; `signed: true`, `groupmax`,
`transcode` and `skip_connection` are refused.
"""

from __future__ import annotations

from pathlib import Path

from featureguard.errors import SAEFormatError, SAELoadError
from featureguard.sae.formats.common import (
    LoadOptions,
    check_features,
    expect_shape,
    read_features,
    read_whole,
)
from featureguard.sae.model import SAE, SAEConfig
from featureguard.sae.tensors import open_safetensors, read_json

NAME = "sparsify"
HOLDS_SEVERAL = True  # a run folder: `hookpoint=` picks one SAE
CONFIG, WEIGHTS, RUN_CONFIG = "cfg.json", "sae.safetensors", "config.json"
_DEFAULT_EXPANSION = 32  # sparsify's SparseCoderConfig default, for configs that omit it


def _is_hookpoint(path: Path) -> bool:
    return path.is_dir() and (path / CONFIG).is_file() and (path / WEIGHTS).is_file()


def _hookpoints(run: Path) -> list[str]:
    """Names of the hookpoint folders directly inside `run`."""
    if not run.is_dir():
        return []
    try:
        return sorted(p.name for p in run.iterdir() if _is_hookpoint(p))
    except OSError as exc:
        raise SAELoadError(f"{run}: cannot list the folder: {exc.strerror or exc}") from exc


def detect(path: Path) -> bool:
    return _is_hookpoint(path) or bool(_hookpoints(path))


def _pick(path: Path, opts: LoadOptions) -> Path:
    """The hookpoint folder: `path` itself, or the one `opts.hookpoint` names inside it."""
    if _is_hookpoint(path):
        if opts.hookpoint not in (None, path.name):
            raise SAELoadError(
                f"{path}: this is hookpoint {path.name!r}, not the {opts.hookpoint!r} asked for"
            )
        return path
    available = _hookpoints(path)
    if opts.hookpoint is None and len(available) == 1:
        return path / available[0]
    if opts.hookpoint not in available:
        asked = f"no hookpoint {opts.hookpoint!r}" if opts.hookpoint else "no hookpoint given"
        raise SAELoadError(
            f"{path}: a sparsify run with {len(available)} hookpoints and {asked}; pick one "
            f"with hookpoint=... or '{path}::<hookpoint>'. Available: {', '.join(available)}"
        )
    return path / opts.hookpoint


def _int(raw: dict, key: str, where: Path, default: int | None = None) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise SAEFormatError(f"{where}: {key} must be a non-negative integer, got {value!r}")
    return value


def _config(raw: dict, where: Path, hook: str, model_name: str | None, source: str) -> SAEConfig:
    for key, what in (("transcode", "transcoders"), ("skip_connection", "skip connections"),
                      ("signed", "signed (absolute-value) top-k")):  # fmt: skip
        if raw.get(key):
            raise SAEFormatError(f"{where}: {key}: true is not supported ({what})")
    activation = raw.get("activation", "topk")
    if activation != "topk":
        raise SAEFormatError(f"{where}: activation {activation!r} is not supported (only topk)")
    d_in = _int(raw, "d_in", where)
    expansion = _int(raw, "expansion_factor", where, _DEFAULT_EXPANSION)
    return SAEConfig(
        format=NAME,
        architecture="topk",
        d_in=d_in,
        d_sae=_int(raw, "num_latents", where, 0) or d_in * expansion,
        k=_int(raw, "k", where),
        subtract_b_dec=True,
        hook=hook,
        model_name=model_name,
        source=source,
    )


def _model_name(run: Path) -> str | None:
    """The model named by the run's config.json (sparsify's RunConfig `model`), if any."""
    if not (run / RUN_CONFIG).is_file():
        return None
    model = read_json(run / RUN_CONFIG).get("model")
    return model if isinstance(model, str) else None


def load(path: Path, opts: LoadOptions) -> SAE:
    folder = _pick(path, opts)
    source = opts.source or str(path)
    cfg = _config(read_json(folder / CONFIG), folder / CONFIG, folder.name,
                  _model_name(folder.parent), source)  # fmt: skip
    d, S = cfg.d_in, cfg.d_sae
    check_features(opts, S)
    tf = open_safetensors(folder / WEIGHTS)
    if "W_skip" in tf:
        raise SAEFormatError(f"{tf.path}: W_skip (a skip connection) is not supported")
    linear = "sparsify stores encoder.weight as [num_latents, d_in] (nn.Linear)"
    expect_shape(tf, "encoder.weight", (S, d), linear)
    expect_shape(tf, "encoder.bias", (S,))
    expect_shape(tf, "W_dec", (S, d), "sparsify stores W_dec as [num_latents, d_in]")
    expect_shape(tf, "b_dec", (d,))
    return SAE(
        cfg,
        features=opts.features,
        W_enc=read_features(tf, "encoder.weight", opts, dim=0, transpose=True),
        b_enc=read_features(tf, "encoder.bias", opts, dim=0),
        W_dec=read_features(tf, "W_dec", opts, dim=0),
        b_dec=read_whole(tf, "b_dec", opts),
    )
