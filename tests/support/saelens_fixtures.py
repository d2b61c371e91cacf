"""Writers for SAELens folders in the on-disk layout of real releases (sae-formats.md §1, §10).

Each variant is a tiny SAE (`D_IN` x `D_SAE`) with random weights chosen so that a fair share of
features fires on a unit-scale input: cfg.json in the v6, v5 or pre-3.x layout, and
sae_weights.safetensors with SAELens's tensor names and orientations ([d_in, d_sae] encoder,
[d_sae, d_in] decoder). The returned `SAELensFolder` keeps the raw saved tensors so that tests
can check the loader against a plain re-implementation of SAELens's maths.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import save_file

D_IN, D_SAE, K = 12, 40, 5
HOOK, HOOK_LAYER, MODEL = "blocks.1.hook_resid_pre", 1, "gpt2-small"
WEIGHTS, CONFIG, SPARSITY = "sae_weights.safetensors", "cfg.json", "sparsity.safetensors"

Layout = Literal["v6", "v5", "old"]


@dataclass(frozen=True, slots=True, kw_only=True)
class SAELensVariant:
    """One kind of SAELens folder, and the facts its reference maths needs."""

    name: str
    """Id used in test parametrisation."""
    layout: Layout
    """cfg.json generation: v6 (nested metadata), v5 (flat), old (pre-3.x `hook_point`)."""
    architecture: Literal["standard", "jumprelu", "topk", "gated"]
    """What the SAE computes (an old TopK is written as standard + activation_fn_str topk)."""
    normalize: str = "none"
    """`normalize_activations` as SAELens names it."""
    rescale: bool = False
    """topk: `rescale_acts_by_decoder_norm`."""
    log_threshold: bool = False
    """jumprelu: a training checkpoint that stores `log_threshold` instead of `threshold`."""
    batchtopk: bool = False
    """jumprelu: a BatchTopK SAE saved for inference (one threshold broadcast to every feature)."""
    center: bool = False
    """`model_from_pretrained_kwargs.center_writing_weights` (TransformerLens-processed model)."""
    apply_b_dec_to_input: bool = True
    """Whether b_dec is subtracted from the input before encoding."""
    sparsity: bool = False
    """Also write sparsity.safetensors."""


VARIANTS: dict[str, SAELensVariant] = {
    v.name: v
    for v in (
        SAELensVariant(name="v6-standard", layout="v6", architecture="standard", sparsity=True),
        SAELensVariant(
            name="v6-standard-no-b-dec-in", layout="v6", architecture="standard",
            apply_b_dec_to_input=False,
        ),
        SAELensVariant(name="v6-jumprelu", layout="v6", architecture="jumprelu"),
        SAELensVariant(
            name="v6-jumprelu-log-threshold", layout="v6", architecture="jumprelu",
            log_threshold=True,
        ),
        SAELensVariant(name="v6-batchtopk", layout="v6", architecture="jumprelu", batchtopk=True),
        SAELensVariant(name="v6-topk", layout="v6", architecture="topk"),
        SAELensVariant(name="v6-topk-rescale", layout="v6", architecture="topk", rescale=True),
        SAELensVariant(name="v6-gated", layout="v6", architecture="gated"),
        SAELensVariant(
            name="v6-standard-layer-norm", layout="v6", architecture="standard",
            normalize="layer_norm",
        ),
        SAELensVariant(
            name="v6-jumprelu-norm-rescale", layout="v6", architecture="jumprelu",
            normalize="constant_norm_rescale",
        ),
        SAELensVariant(
            name="v6-topk-layer-norm", layout="v6", architecture="topk", normalize="layer_norm"
        ),
        SAELensVariant(
            name="v6-gated-norm-rescale", layout="v6", architecture="gated",
            normalize="constant_norm_rescale",
        ),
        SAELensVariant(
            name="v5-standard-expected-average", layout="v5", architecture="standard",
            normalize="expected_average_only_in", sparsity=True,
        ),
        SAELensVariant(name="v5-jumprelu", layout="v5", architecture="jumprelu"),
        SAELensVariant(name="v5-gated", layout="v5", architecture="gated"),
        SAELensVariant(name="v5-topk-old", layout="v5", architecture="topk"),
        SAELensVariant(
            name="v5-standard-centered", layout="v5", architecture="standard", center=True
        ),
        SAELensVariant(name="old-standard-hook-point", layout="old", architecture="standard"),
    )
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class SAELensFolder:
    """A written SAELens folder and exactly what went into it."""

    path: Path
    """The folder (cfg.json, sae_weights.safetensors, maybe sparsity.safetensors)."""
    variant: SAELensVariant
    """What kind of SAE it is."""
    cfg: dict
    """cfg.json as written."""
    tensors: dict[str, torch.Tensor]
    """sae_weights.safetensors as written (names and dtypes as in the file)."""

    @property
    def weights(self) -> Path:
        """Path of sae_weights.safetensors."""
        return self.path / WEIGHTS

    @property
    def config(self) -> Path:
        """Path of cfg.json."""
        return self.path / CONFIG


def make_weights(variant: SAELensVariant, seed: int = 0) -> dict[str, torch.Tensor]:
    """SAELens tensors for `variant`, fp32, scaled so that pre-activations are about unit size."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g)

    d, s = D_IN, D_SAE
    # Decoder rows of uneven norm, so a wrongly applied decoder-norm rescale shows.
    row_norms = 0.5 + torch.rand(s, 1, generator=g)
    t = {
        "W_enc": randn(d, s) / math.sqrt(d),
        "W_dec": randn(s, d) / math.sqrt(d) * row_norms,
        "b_dec": 0.2 * randn(d),
    }
    if variant.architecture == "gated":
        t |= {"b_gate": 0.2 * randn(s), "b_mag": 0.2 * randn(s), "r_mag": 0.3 * randn(s)}
    else:
        t["b_enc"] = 0.2 * randn(s)
    if variant.architecture == "jumprelu":
        if variant.batchtopk:
            threshold = torch.ones(s) * 0.3
        else:
            threshold = 0.05 + 0.45 * torch.rand(s, generator=g)
        if variant.log_threshold:
            t["log_threshold"] = threshold.log()
        else:
            t["threshold"] = threshold
    return t


def make_cfg(variant: SAELensVariant) -> dict:
    """cfg.json for `variant`, with the keys real uploads of its generation carry."""
    arch = variant.architecture
    tl_kwargs = {"center_writing_weights": variant.center}
    if variant.layout == "v6":
        cfg: dict = {
            "d_in": D_IN, "d_sae": D_SAE, "dtype": "float32", "device": "cuda:0",
            "apply_b_dec_to_input": variant.apply_b_dec_to_input,
            "normalize_activations": variant.normalize, "reshape_activations": "none",
            "metadata": {
                "sae_lens_version": "6.36.2", "sae_lens_training_version": "6.36.2",
                "dataset_path": "monology/pile-uncopyrighted", "hook_name": HOOK,
                "model_name": MODEL, "model_class_name": "HookedTransformer",
                "hook_head_index": None, "context_size": 1024, "seqpos_slice": [None],
                "model_from_pretrained_kwargs": tl_kwargs, "prepend_bos": True,
                "exclude_special_tokens": False, "sequence_separator_token": "bos",
                "disable_concat_sequences": False,
            },
            "decoder_init_norm": 0.1, "l1_coefficient": 1.0, "architecture": arch,
        }  # fmt: skip
        if arch == "jumprelu":
            cfg |= {"jumprelu_init_threshold": 0.001, "jumprelu_bandwidth": 0.001}
        if arch == "topk":
            cfg |= {"k": K, "rescale_acts_by_decoder_norm": variant.rescale}
        return cfg
    if variant.layout == "v5":
        old_topk = arch == "topk"
        return {
            "architecture": "standard" if old_topk else arch, "d_in": D_IN, "d_sae": D_SAE,
            "dtype": "torch.float32", "device": "cpu", "model_name": MODEL, "hook_name": HOOK,
            "hook_layer": HOOK_LAYER, "hook_head_index": None,
            "activation_fn_str": "topk" if old_topk else "relu",
            "activation_fn_kwargs": {"k": K} if old_topk else {},
            "apply_b_dec_to_input": variant.apply_b_dec_to_input,
            "finetuning_scaling_factor": False, "sae_lens_training_version": "5.3.0",
            "prepend_bos": True, "dataset_path": "Skylion007/openwebtext",
            "dataset_trust_remote_code": True, "context_size": 128,
            "normalize_activations": variant.normalize, "neuronpedia_id": None,
            "model_from_pretrained_kwargs": tl_kwargs, "seqpos_slice": [None],
            "l1_coefficient": 5.0, "expansion_factor": D_SAE // D_IN,
        }  # fmt: skip
    if arch != "standard" or variant.normalize != "none" or not variant.apply_b_dec_to_input:
        raise ValueError(f"pre-3.x SAELens configs only describe plain ReLU SAEs: {variant}")
    return {  # jbloom/GPT2-Small-SAEs-Reformatted: no architecture, no apply_b_dec_to_input
        "model_name": MODEL, "hook_point": HOOK, "hook_point_layer": HOOK_LAYER,
        "hook_point_head_index": None, "dataset_path": "Skylion007/openwebtext",
        "is_dataset_tokenized": False, "context_size": 128, "use_cached_activations": False,
        "d_in": D_IN, "n_batches_in_buffer": 128, "total_training_tokens": 300_000_000,
        "store_batch_size": 32, "device": "mps", "seed": 42, "dtype": "torch.float32",
        "b_dec_init_method": "geometric_median", "expansion_factor": D_SAE // D_IN,
        "from_pretrained_path": None, "l1_coefficient": 8e-05, "lr": 0.0004,
        "train_batch_size": 4096, "use_ghost_grads": False, "d_sae": D_SAE,
        "run_name": f"{D_SAE}-L1-8e-05-LR-0.0004-Tokens-3.000e+08",
    }  # fmt: skip


def write_saelens(
    folder: Path,
    variant: str | SAELensVariant,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    cfg_edit: Callable[[dict], object] | None = None,
    tensors_edit: Callable[[dict[str, torch.Tensor]], object] | None = None,
) -> SAELensFolder:
    """Write `variant` (a `VARIANTS` name or a variant) into `folder`, created if needed.

    `dtype` is the dtype stored in the file. `cfg_edit` and `tensors_edit` mutate the cfg dict
    and the tensor dict in place before writing (for bad-input tests).
    """
    v = VARIANTS[variant] if isinstance(variant, str) else variant
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = make_cfg(v)
    tensors = {n: t.to(dtype).contiguous() for n, t in make_weights(v, seed).items()}
    if cfg_edit is not None:
        cfg_edit(cfg)
    if tensors_edit is not None:
        tensors_edit(tensors)
    (folder / CONFIG).write_text(json.dumps(cfg, indent=2), encoding="utf-8")
    save_file(tensors, str(folder / WEIGHTS))
    if v.sparsity:
        g = torch.Generator().manual_seed(seed + 1)
        freq = torch.rand(D_SAE, generator=g) * 0.1
        save_file({"sparsity": torch.log10(freq + 1e-10)}, str(folder / SPARSITY))
    return SAELensFolder(folder, v, cfg, tensors)


def write_hub_cache(
    cache: Path, repo_id: str, sub: str, variant: str, *, commit: str = "a" * 40
) -> SAELensFolder:
    """Place a SAELens folder in a Hugging Face hub cache exactly as `hf download` leaves it.

    `models--{org}--{repo}/refs/main` holds the commit; each file is stored once as
    `blobs/{sha256}` and linked from `snapshots/{commit}/{sub}/{name}` by a relative symlink.
    """
    repo_dir = cache / ("models--" + repo_id.replace("/", "--"))
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / "main").write_text(commit, encoding="utf-8")
    (repo_dir / "blobs").mkdir(exist_ok=True)
    written = write_saelens(repo_dir / "snapshots" / commit / sub, variant)
    for file in sorted(written.path.iterdir()):
        blob = repo_dir / "blobs" / hashlib.sha256(file.read_bytes()).hexdigest()
        file.replace(blob)
        file.symlink_to(os.path.relpath(blob, file.parent))
    return written
