"""Resolve a hook-point name to a module of a transformers model; hook it without side effects.

Names come in two dialects, and both resolve to a :class:`HookPoint`:

- TransformerLens: ``blocks.L.hook_resid_pre`` / ``hook_resid_post`` / ``hook_mlp_out`` /
  ``hook_attn_out`` / ``attn.hook_z``, mapped to the module whose output (or input) holds the same
  activation; in sandwich-norm layers (Gemma 2/3, OLMo 2) attn_out and mlp_out are the post-norms.
- Hugging Face module paths, from the model root or from ``model.base_model`` (as sparsify writes
  them), with an optional ``.output`` / ``.input`` suffix (as Gemma Scope 2 writes them).

Decoder layers return a tuple in transformers 4.x and a bare tensor in 5.x; the hook wrappers read
and rebuild both, and return ``None`` when nothing changes so untouched outputs stay bit-identical.
"""

from __future__ import annotations

import difflib
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from featureguard.errors import HookError, PairingError, PairingWarning

__all__ = [
    "Edit",
    "HookPoint",
    "Site",
    "check_model_name",
    "hook_names",
    "read_activation",
    "replace_activation",
    "resolve_hook",
]

Site = Literal["output", "input"]
"""Where a hook reads: a forward hook's output, or a forward-pre-hook's first input."""

Edit = Callable[[torch.Tensor], torch.Tensor | None]
"""A per-forward function: the activation in, a replacement (or ``None`` for unchanged) out."""

_TL_KINDS = ("hook_resid_pre", "hook_resid_post", "hook_mlp_out", "hook_attn_out", "attn.hook_z")
_TL_NAME = re.compile(r"blocks\.(\d+)\.(" + "|".join(map(re.escape, _TL_KINDS)) + ")")
# Child names, in the order tried, that transformers uses for a layer's attention, MLP and the
# attention's output projection (whose input is TransformerLens' hook_z, flattened over heads).
_ATTN_NAMES = ("self_attn", "attn", "attention", "self_attention")
_MLP_NAMES = ("mlp",)
_OUT_PROJ_NAMES = ("o_proj", "c_proj", "dense", "out_proj")
_SUFFIXES: dict[str, Site] = {".output": "output", ".input": "input"}


def read_activation(value: Any) -> torch.Tensor:
    """The activation in a hook's value: the tensor itself, or element 0 of a 4.x-style tuple."""
    if isinstance(value, tuple) and value:
        value = value[0]
    if not isinstance(value, torch.Tensor):
        raise HookError(
            f"expected a tensor or a tuple starting with one, got {type(value).__name__}"
        )
    return value


def replace_activation(value: Any, new: torch.Tensor) -> Any:
    """``new`` in the form of ``value``: a tensor, or a new tuple with element 0 replaced.

    The tuple is rebuilt, never edited, so other hooks and callers keep the original.
    """
    if isinstance(value, tuple):
        return (new, *value[1:])
    return new


@dataclass(frozen=True, slots=True)
class HookPoint:
    """A resolved hook point: the module, and whether its output or its input is the activation."""

    name: str
    """The name as the user gave it (TransformerLens name or module path)."""
    module_path: str
    """Dotted path of the module from the model passed to :func:`resolve_hook`."""
    module: nn.Module
    """The module that is hooked."""
    site: Site
    """``output``: forward-hook output; ``input``: ``args[0]`` or ``kwargs['hidden_states']``."""
    width: int | None
    """Last dimension of the activation, from the module or the config; ``None`` if unknown."""

    def attach(self, fn: Edit) -> RemovableHandle:
        """Call ``fn`` on the activation [batch, seq, width] each forward; the caller removes it.

        When ``fn`` returns ``None`` the hook returns ``None`` too, so the model's own objects pass
        through untouched; otherwise the output (or the call's arguments) are rebuilt around it.
        """
        if self.site == "output":

            def forward_hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
                new = fn(read_activation(output))
                return None if new is None else replace_activation(output, new)

            return self.module.register_forward_hook(forward_hook)

        where = f"hook '{self.name}' ({self.module_path} input)"

        def pre_hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            # 5.x decoder layers take hidden_states positionally, attention modules by keyword.
            if args:
                new = fn(read_activation(args[0]))
                return None if new is None else ((new, *args[1:]), kwargs)
            if "hidden_states" not in kwargs:
                raise HookError(
                    f"{where}: the module was called without a positional input or "
                    "a 'hidden_states' keyword"
                )
            new = fn(read_activation(kwargs["hidden_states"]))
            return None if new is None else (args, {**kwargs, "hidden_states": new})

        return self.module.register_forward_pre_hook(pre_hook, with_kwargs=True)

    def check_width(self, d_in: int, what: str) -> None:
        """Raise :class:`PairingError` if ``what`` expects ``d_in`` but the hook's width differs."""
        if self.width is not None and d_in != self.width:
            raise PairingError(
                f"{what} expects d_in={d_in}, but hook '{self.name}' ({self.module_path} "
                f"{self.site}) has width {self.width}; attach it to a hook of width {d_in}"
            )


def resolve_hook(model: nn.Module, name: str) -> HookPoint:
    """Resolve a TransformerLens name or module path on ``model`` (see the module docstring)."""
    layers_path, layers = _decoder_layers(model)
    match = _TL_NAME.fullmatch(name)
    if match:
        index = int(match[1])
        if index >= len(layers):
            raise _name_error(model, name, len(layers), f"layer {index} is out of range")
        path, site = _tl_target(layers_path, layers[index], index, match[2])
    else:
        path, site = _path_target(model, name, layers_path, len(layers))
    module = model.get_submodule(path)
    return HookPoint(name, path, module, site, _width(model, path, module, site, layers_path))


def hook_names(model: nn.Module) -> list[str]:
    """Every canonical name: TL names the model supports, then every module path from the root.

    Aliases (``.output``/``.input`` suffixes, paths relative to the base model) resolve as well but
    are not listed, so that suggestions stay short.
    """
    layers_path, layers = _decoder_layers(model)
    names = []
    for kind in _TL_KINDS:
        try:
            _tl_target(layers_path, layers[0], 0, kind)
        except HookError:
            continue
        names += [f"blocks.{index}.{kind}" for index in range(len(layers))]
    return names + [path for path, _ in model.named_modules(remove_duplicate=False) if path]


def check_model_name(model: nn.Module, sae_model_name: str | None, what: str) -> None:
    """Warn with :class:`PairingWarning` when ``what`` was trained on a clearly different model.

    Names compare by basename, lowercased, split into tokens on ``-``, ``_`` and ``.``; one token
    run containing the other counts as the same model (``gpt2`` vs ``gpt2-small``,
    ``Llama-3.1-8B`` vs ``Meta-Llama-3.1-8B``), since the warning is for mistakes, not spelling.
    """
    host = getattr(getattr(model, "config", None), "name_or_path", None)
    if not sae_model_name or not host:
        return
    sae_tokens, host_tokens = _name_tokens(sae_model_name), _name_tokens(host)
    if _contains(sae_tokens, host_tokens) or _contains(host_tokens, sae_tokens):
        return
    warnings.warn(
        f"{what} was trained on '{sae_model_name}', but the model is '{host}'; "
        "its features may not mean the same thing here",
        PairingWarning,
        stacklevel=2,
    )


def _name_tokens(name: str) -> list[str]:
    basename = name.rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1]
    return [token for token in re.split(r"[-_.]", basename.lower()) if token]


def _contains(outer: list[str], inner: list[str]) -> bool:
    """Whether ``inner`` occurs as a contiguous run of ``outer``."""
    return any(outer[i : i + len(inner)] == inner for i in range(len(outer) - len(inner) + 1))


def _decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The decoder-layer list: the shallowest ``ModuleList`` as long as the config's layer count.

    Found by shape rather than by model class, so new architectures work without a table.
    """
    count = getattr(_text_config(model), "num_hidden_layers", None)
    if not isinstance(count, int):
        raise HookError(
            f"{type(model).__name__} has no config.num_hidden_layers; featureguard "
            "hooks need a transformers decoder model"
        )
    found = [
        (path, module)
        for path, module in model.named_modules()
        if isinstance(module, nn.ModuleList) and len(module) == count
    ]
    depth = min((path.count(".") for path, _ in found), default=None)
    shallowest = [(path, module) for path, module in found if path.count(".") == depth]
    if len(shallowest) != 1:
        paths = ", ".join(path for path, _ in shallowest) or "none"
        raise HookError(
            f"cannot find the decoder layers of {type(model).__name__}: expected one "
            f"ModuleList of {count} layers at the shallowest depth, found: {paths}"
        )
    return shallowest[0]


def _tl_target(layers_path: str, layer: nn.Module, index: int, kind: str) -> tuple[str, Site]:
    """Module path and site for a TransformerLens hook kind on layer ``index``."""
    layer_path = f"{layers_path}.{index}"
    if kind in ("hook_resid_pre", "hook_resid_post"):
        return layer_path, "input" if kind == "hook_resid_pre" else "output"
    # Sandwich-norm layers (Gemma 2/3, OLMo 2) add the post-norm's output to the residual, and
    # TransformerLens' attn_out/mlp_out is what is added, so the post-norms are the hook points.
    sandwich = hasattr(layer, "post_feedforward_layernorm") and hasattr(
        layer, "post_attention_layernorm"
    )
    if kind == "hook_mlp_out":
        if sandwich:
            return f"{layer_path}.post_feedforward_layernorm", "output"
        return f"{layer_path}.{_child(layer, _MLP_NAMES, index, 'MLP')}", "output"
    if kind == "hook_attn_out" and sandwich:
        return f"{layer_path}.post_attention_layernorm", "output"
    attn = _child(layer, _ATTN_NAMES, index, "attention")
    if kind == "hook_attn_out":
        return f"{layer_path}.{attn}", "output"
    proj = _child(layer.get_submodule(attn), _OUT_PROJ_NAMES, index, "attention output projection")
    return f"{layer_path}.{attn}.{proj}", "input"


def _child(module: nn.Module, names: tuple[str, ...], index: int, what: str) -> str:
    for name in names:
        if isinstance(getattr(module, name, None), nn.Module):
            return name
    raise HookError(
        f"layer {index} ({type(module).__name__}) has no {what} module named any of "
        f"{', '.join(names)}; hook its module path instead"
    )


def _path_target(model: nn.Module, name: str, layers_path: str, count: int) -> tuple[str, Site]:
    """Module path and site for a module path, trying it from the root and from the base model."""
    modules = dict(model.named_modules(remove_duplicate=False))
    prefix = getattr(model, "base_model_prefix", "")
    candidates = [name]
    if prefix and getattr(model, "base_model", model) is not model:
        candidates.append(f"{prefix}.{name}")  # relative to the base model, as sparsify writes
    elif prefix and name.startswith(f"{prefix}."):
        candidates.append(name[len(prefix) + 1 :])  # a bare base model given a top-model path
    layer = re.compile(rf"{re.escape(layers_path)}\.(\d+)(?:\.|$)")
    for path in candidates:
        if path and path in modules:
            return path, "output"
        for suffix, site in _SUFFIXES.items():
            if path.endswith(suffix) and path[: -len(suffix)] in modules:
                return path[: -len(suffix)], site
        match = layer.match(path)
        if match and int(match[1]) >= count:
            raise _name_error(model, name, count, f"layer {match[1]} is out of range")
    raise _name_error(model, name, count, "no such hook or module")


def _name_error(model: nn.Module, name: str, count: int, reason: str) -> HookError:
    nearest = difflib.get_close_matches(name, hook_names(model), n=5, cutoff=0.5)
    hint = f"nearest valid names: {', '.join(nearest)}" if nearest else "see hook_names(model)"
    return HookError(
        f"hook '{name}': {reason}; {type(model).__name__} has {count} layers "
        f"(0-{count - 1}); {hint}"
    )


def _text_config(model: nn.Module) -> Any:
    """The config that describes the decoder (the text config of a multimodal model)."""
    config = getattr(model, "config", None)
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def _width(
    model: nn.Module, path: str, module: nn.Module, site: Site, layers_path: str
) -> int | None:
    """The activation's last dimension at a hook, read from the module or the config, or None."""
    parent, _, child = path.rpartition(".")
    is_layer = re.compile(rf"{re.escape(layers_path)}\.\d+").fullmatch
    # A layer, and its attention and MLP, read and write the residual stream's width.
    if is_layer(path) or (is_layer(parent) and child in _ATTN_NAMES + _MLP_NAMES):
        return getattr(_text_config(model), "hidden_size", None)
    if isinstance(module, nn.Linear):
        return module.in_features if site == "input" else module.out_features
    if isinstance(getattr(module, "nx", None), int):  # transformers' GPT-2 Conv1D: weight [nx, nf]
        return module.nx if site == "input" else module.nf
    if isinstance(module, nn.Embedding):
        return module.embedding_dim if site == "output" else None
    weight = getattr(module, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.ndim == 1:  # norms map width to width
        return weight.shape[0]
    return None
