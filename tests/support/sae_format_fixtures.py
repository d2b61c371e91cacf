"""Tiny SAE files in each format's real layout, and the checks every format must pass.

Each writer saves random float32 weights under the real folder and file names, with the real
tensor names, shapes, orientations and config keys (sae-formats.md §10), and returns a
`Written` holding the raw arrays as saved, so that tests can re-implement each format's
original maths from them. `edit` lets a test damage the arrays (drop, transpose, NaN) before
they are saved. Imported by path from the test modules (see `_fixtures` there), so it needs
no conftest.py or __init__.py.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import save_file

from featureguard.sae import SAE, load_sae

Arrays = dict[str, np.ndarray]
Edit = Callable[[Arrays], object] | None
TOL = {"rtol": 1e-5, "atol": 1e-5}


@dataclass(frozen=True)
class Written:
    """One SAE written to disk."""

    path: Path
    """What a user passes to `load_sae`."""
    arrays: Arrays
    """The tensors exactly as saved (stored names, orientation, after `edit`)."""
    config: dict
    """The config written beside them (empty when the format has none)."""
    hook: str | None
    """The hook the loaded SAE should name."""
    d_in: int
    d_sae: int
    load_kwargs: dict = field(default_factory=dict)
    """What `load_sae` needs besides the path (the pickle opt-in for torch files)."""


def gaussian(rng: np.random.Generator, *shape: int, scale: float = 1.0) -> np.ndarray:
    """float32 N(0, scale²) samples."""
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def _folder(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data), encoding="utf-8")


def _jumprelu_arrays(rng: np.random.Generator, d: int, S: int) -> Arrays:
    """Canonical-orientation JumpReLU weights whose thresholds let about a third fire."""
    return {
        "W_enc": gaussian(rng, d, S, scale=d**-0.5),
        "W_dec": gaussian(rng, S, d, scale=d**-0.5),
        "b_enc": gaussian(rng, S, scale=0.1),
        "b_dec": gaussian(rng, d, scale=0.1),
        "threshold": rng.uniform(0.05, 0.6, S).astype(np.float32),
    }


def _apply(arrays: Arrays, edit: Edit) -> Arrays:
    if edit is not None:
        edit(arrays)
    return arrays


def _torch_save(arrays: Arrays, extras: dict, path: Path, *, zip_format: bool = True) -> None:
    state = OrderedDict((k, torch.from_numpy(v.copy())) for k, v in arrays.items())
    state.update(extras)
    torch.save(state, path, _use_new_zipfile_serialization=zip_format)


def write_saelens(root: Path, *, d_in: int = 16, d_sae: int = 64, seed: int = 0) -> Written:
    """SAELens v6 jumprelu: blocks.3.hook_resid_post/{cfg.json, sae_weights.safetensors}."""
    hook = "blocks.3.hook_resid_post"
    folder = _folder(root / hook)
    arrays = _jumprelu_arrays(np.random.default_rng(seed), d_in, d_sae)
    config = {
        "d_in": d_in, "d_sae": d_sae, "dtype": "float32", "device": "cpu",
        "apply_b_dec_to_input": True, "normalize_activations": "none",
        "reshape_activations": "none", "architecture": "jumprelu",
        "metadata": {"sae_lens_version": "6.18.0", "model_name": "gemma-2-2b", "hook_name": hook},
    }  # fmt: skip
    _json(folder / "cfg.json", config)
    save_file(arrays, str(folder / "sae_weights.safetensors"))
    return Written(folder, arrays, config, hook, d_in, d_sae)


def write_gemma_scope(
    root: Path, *, layer: int = 3, repo: str = "gemma-scope-2b-pt-res", lowercase: bool = False,
    compressed: bool = False, d_in: int = 16, d_sae: int = 64, seed: int = 1, edit: Edit = None,
) -> Written:  # fmt: skip
    """Gemma Scope 1: <repo>/layer_L/width_16k/average_l0_71/params.npz, five arrays."""
    folder = _folder(root / repo / f"layer_{layer}" / "width_16k" / "average_l0_71")
    arrays = _jumprelu_arrays(np.random.default_rng(seed), d_in, d_sae)
    if lowercase:  # the transcoder releases' spelling
        arrays = {k.lower() if k.startswith("W_") else k: v for k, v in arrays.items()}
    _apply(arrays, edit)
    (np.savez_compressed if compressed else np.savez)(folder / "params.npz", **arrays)
    hook = f"blocks.{layer}.hook_resid_post" if repo.endswith("-res") else None
    return Written(folder, arrays, {}, hook, d_in, d_sae)


def write_gemma_scope2(
    root: Path, *, layer: int = 3, d_in: int = 16, d_sae: int = 64, seed: int = 2,
    edit: Edit = None, config: dict | None = None,
) -> Written:  # fmt: skip
    """Gemma Scope 2: resid_post/layer_L_width_16k_l0_medium/{config.json, params.safetensors}."""
    folder = _folder(root / "resid_post" / f"layer_{layer}_width_16k_l0_medium")
    arrays = _jumprelu_arrays(np.random.default_rng(seed), d_in, d_sae)
    arrays = _apply({k.lower(): v for k, v in arrays.items()}, edit)
    hook = f"model.layers.{layer}.output"
    cfg = {
        "architecture": "jump_relu", "model_name": "google/gemma-3-1b-pt",
        "hf_hook_point_in": hook, "hf_hook_point_out": hook, "width": d_sae, "l0": 20,
        "affine_connection": False, "type": "sae", **(config or {}),
    }  # fmt: skip
    _json(folder / "config.json", cfg)
    save_file(arrays, str(folder / "params.safetensors"))
    return Written(folder, arrays, cfg, hook, d_in, d_sae)


def write_sparsify(
    root: Path, *, hookpoints: Sequence[str] = ("layers.3",), legacy: bool = False,
    d_in: int = 16, expansion: int = 4, num_latents: int = 0, k: int = 8, seed: int = 3,
    edit: Edit = None, config: dict | None = None, model: str | None = "EleutherAI/pythia-70m",
) -> Written:  # fmt: skip
    """sparsify run: run/<hookpoint>/{cfg.json, sae.safetensors} (+ run/config.json).

    Returns the first hookpoint; every hookpoint gets its own weights.
    """
    run = _folder(root / "run")
    if model is not None:
        _json(run / "config.json", {"model": model, "batch_size": 8, "hookpoints": [*hookpoints]})
    d_sae = num_latents or d_in * expansion
    if legacy:
        cfg = {"expansion_factor": expansion, "normalize_decoder": True, "k": k,
               "signed": False, "d_in": d_in}  # fmt: skip
    else:
        cfg = {"activation": "topk", "expansion_factor": expansion, "normalize_decoder": True,
               "num_latents": num_latents, "k": k, "multi_topk": False,
               "skip_connection": False, "transcode": False, "d_in": d_in}  # fmt: skip
    cfg.update(config or {})
    written = []
    for i, hookpoint in enumerate(hookpoints):
        rng = np.random.default_rng(seed + i)
        enc = gaussian(rng, d_sae, d_in, scale=d_in**-0.5)
        dec = enc + gaussian(rng, d_sae, d_in, scale=0.1 * d_in**-0.5)
        arrays = _apply({
            "encoder.weight": enc, "encoder.bias": gaussian(rng, d_sae, scale=0.1),
            "W_dec": dec / np.linalg.norm(dec, axis=1, keepdims=True),
            "b_dec": gaussian(rng, d_in, scale=0.1),
        }, edit)  # fmt: skip
        folder = _folder(run / hookpoint)
        _json(folder / "cfg.json", cfg)
        save_file(arrays, str(folder / "sae.safetensors"))
        written.append(Written(folder, arrays, cfg, hookpoint, d_in, d_sae))
    return written[0]


def write_llama_scope(
    root: Path, *, layer: int = 3, d_in: int = 16, expansion: int = 8, theta: float = 0.6,
    norm_in: float = 8.0, norm_out: float = 8.0, decoder_norms: np.ndarray | None = None,
    seed: int = 4, edit: Edit = None, config: dict | None = None,
) -> Written:  # fmt: skip
    """Llama Scope: Llama3_1-8B-Base-L{L}R-8x/{hyperparams.json, checkpoints/final.safetensors}.

    Decoder columns have unit norm unless `decoder_norms` gives theirs. Activations of norm
    about `norm_in` (entries of std norm_in/sqrt(d_in)) put the pre-activations near N(b, 1).
    """
    folder = _folder(root / f"Llama3_1-8B-Base-L{layer}R-{expansion}x")
    d_sae = d_in * expansion
    rng = np.random.default_rng(seed)
    dec = gaussian(rng, d_in, d_sae)
    dec = dec / np.linalg.norm(dec, axis=0, keepdims=True)
    if decoder_norms is not None:
        dec = (dec * decoder_norms[None, :]).astype(np.float32)
    arrays = _apply({
        "encoder.weight": gaussian(rng, d_sae, d_in, scale=d_in**-0.5),
        "encoder.bias": gaussian(rng, d_sae, scale=0.1),
        "decoder.weight": dec, "decoder.bias": gaussian(rng, d_in, scale=0.5),
    }, edit)  # fmt: skip
    hook = f"blocks.{layer}.hook_resid_post"
    cfg = {
        "d_model": d_in, "d_sae": d_sae, "expansion_factor": expansion,
        "hook_point_in": hook, "hook_point_out": hook, "use_decoder_bias": True,
        "use_glu_encoder": False, "act_fn": "jumprelu", "jump_relu_threshold": theta,
        "apply_decoder_bias_to_pre_encoder": False, "norm_activation": "dataset-wise",
        "sparsity_include_decoder_norm": True, "top_k": 50,
        "dataset_average_activation_norm": {"in": norm_in, "out": norm_out},
        **(config or {}),
    }  # fmt: skip
    _json(folder / "hyperparams.json", cfg)
    save_file(arrays, str(_folder(folder / "checkpoints") / "final.safetensors"))
    return Written(folder, arrays, cfg, hook, d_in, d_sae)


def write_openai(
    root: Path, *, activation: str = "TopK", k: int = 8, d_in: int = 32, d_sae: int = 96,
    seed: int = 5, edit: Edit = None, extras: dict | None = None, zip_format: bool = True,
) -> Written:  # fmt: skip
    """OpenAI: gpt2-small/resid_post_mlp_v5_32k/autoencoders/3.pt, a torch.save'd state dict."""
    rng = np.random.default_rng(seed)
    arrays = _apply({
        "pre_bias": gaussian(rng, d_in, scale=0.1),
        "latent_bias": gaussian(rng, d_sae, scale=0.1),
        "encoder.weight": gaussian(rng, d_sae, d_in, scale=d_in**-0.5),
        "decoder.weight": gaussian(rng, d_in, d_sae, scale=d_in**-0.5),
        "stats_last_nonzero": np.zeros(d_sae, dtype=np.int64),
        "latents_activation_frequency": rng.uniform(0, 0.1, d_sae).astype(np.float32),
        "latents_mean_square": rng.uniform(0, 1, d_sae).astype(np.float32),
    }, edit)  # fmt: skip
    state = {"activation": activation, "activation_state_dict": (
        {"k": k, "postact_fn": "ReLU"} if activation == "TopK" else {})}  # fmt: skip
    state.update(extras or {})
    path = _folder(root / "gpt2-small" / "resid_post_mlp_v5_32k" / "autoencoders") / "3.pt"
    _torch_save(arrays, state, path, zip_format=zip_format)
    return Written(path, arrays, state, None, d_in, d_sae, {"allow_pickle": True})


def write_goodfire(
    root: Path, *, suffix: str = ".pth", d_in: int = 32, d_sae: int = 128, seed: int = 6,
    edit: Edit = None,
) -> Written:  # fmt: skip
    """Goodfire: Llama-3.1-8B-Instruct-SAE-l19.pth, a torch.save'd OrderedDict of 4 tensors."""
    rng = np.random.default_rng(seed)
    arrays = _apply({
        "encoder_linear.weight": gaussian(rng, d_sae, d_in, scale=d_in**-0.5),
        "encoder_linear.bias": gaussian(rng, d_sae, scale=0.1),
        "decoder_linear.weight": gaussian(rng, d_in, d_sae, scale=d_in**-0.5),
        "decoder_linear.bias": gaussian(rng, d_in, scale=0.1),
    }, edit)  # fmt: skip
    path = _folder(root) / f"Llama-3.1-8B-Instruct-SAE-l19{suffix}"
    _torch_save(arrays, {}, path)
    return Written(path, arrays, {}, None, d_in, d_sae, {"allow_pickle": True})


WRITERS: dict[str, Callable[[Path], Written]] = {
    "saelens": write_saelens,
    "gemma_scope": write_gemma_scope,
    "gemma_scope_2": write_gemma_scope2,
    "sparsify": write_sparsify,
    "llama_scope": write_llama_scope,
    "openai": write_openai,
    "goodfire": write_goodfire,
}
"""A default fixture per format name of `featureguard.sae.formats.FORMATS`."""


def fraction_active(f: np.ndarray) -> float:
    """Share of nonzero activations (tests keep it well inside (0, 1) to be meaningful)."""
    return float((f != 0).mean())


def assert_steering_identity(sae: SAE, x: torch.Tensor, seed: int = 0) -> None:
    """x + decode_delta(x, idx, c - f[idx]) == decode(f') + (x - decode(f)), f' = f[idx := c]."""
    rng = np.random.default_rng(seed)
    f = sae.encode(x)
    idx = [int(i) for i in rng.choice(sae.d_sae, size=5, replace=False)]
    c = torch.tensor(rng.uniform(0.0, 3.0, len(idx)), dtype=f.dtype)
    clamped = f.clone()
    clamped[..., idx] = c
    edited = x + sae.decode_delta(x, idx, c - f[..., idx])
    expected = sae.decode(clamped, x) + (x - sae.decode(f, x))
    torch.testing.assert_close(edited, expected, **TOL)


def assert_partial_load_matches(
    written: Written, features: Sequence[int], x: torch.Tensor, **load_kwargs: object
) -> None:
    """A load of only `features` computes what the full load computes for them."""
    kwargs = {**written.load_kwargs, **load_kwargs}
    full = load_sae(written.path, **kwargs)
    part = load_sae(written.path, features=features, **kwargs)
    assert part.features == tuple(features)
    assert part.W_enc.shape == (written.d_in, len(features))
    torch.testing.assert_close(part.encode_subset(x), full.encode_subset(x, features), **TOL)
    if full.cfg.architecture != "topk":  # topk's competition needs the whole dictionary
        torch.testing.assert_close(part.encode(x), full.encode(x)[..., list(features)], **TOL)
    delta = torch.randn(*x.shape[:-1], len(features))
    torch.testing.assert_close(
        part.decode_delta(x, features, delta), full.decode_delta(x, features, delta), **TOL
    )
