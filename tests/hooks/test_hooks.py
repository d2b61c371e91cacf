"""Tests for featureguard.hooks on tiny random models of every architecture it supports."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from featureguard.errors import HookError, PairingError, PairingWarning
from featureguard.hooks import (
    Edit,
    HookPoint,
    check_model_name,
    hook_names,
    read_activation,
    replace_activation,
    resolve_hook,
)

N_LAYERS = 3
MIDDLE = 1
TL_KINDS = ["hook_resid_pre", "hook_resid_post", "hook_mlp_out", "hook_attn_out", "attn.hook_z"]
IDS = torch.tensor([[5, 17, 42, 8, 99, 3], [1, 2, 3, 4, 5, 6]])  # [batch=2, seq=6]

_IDS = dict(vocab_size=100, pad_token_id=0, bos_token_id=1, eos_token_id=2)
_DECODER = dict(
    _IDS,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=N_LAYERS,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
)
_GPT = dict(_IDS, n_embd=32, n_layer=N_LAYERS, n_head=4, n_positions=64)
# head_dim 16 with 4 heads makes hook_z 64 wide on a 32-wide residual, so widths cannot be confused.
_WIDE_HEADS = dict(_DECODER, head_dim=16)
_GEMMA2 = dict(_WIDE_HEADS, query_pre_attn_scalar=16, sliding_window=4)
_MHA = {k: v for k, v in _DECODER.items() if k != "num_key_value_heads"}  # no GQA in the config

# model_type -> (config keyword arguments, path of the decoder-layer list from the top model)
ARCHS: dict[str, tuple[dict, str]] = {
    "gpt2": (_GPT, "transformer.h"),
    "llama": (_DECODER, "model.layers"),
    "mistral": (_DECODER, "model.layers"),
    "qwen2": (_DECODER, "model.layers"),
    "qwen3": (_WIDE_HEADS, "model.layers"),
    "gemma": (_WIDE_HEADS, "model.layers"),
    "gemma2": (_GEMMA2, "model.layers"),
    "gemma3_text": (_GEMMA2, "model.layers"),
    "gpt_neox": (_MHA, "gpt_neox.layers"),
    "phi3": (_DECODER, "model.layers"),
    "phi": (_DECODER, "model.layers"),
    "olmo": (_DECODER, "model.layers"),
    "olmo2": (_DECODER, "model.layers"),
    "stablelm": (_DECODER, "model.layers"),
    "granite": (_DECODER, "model.layers"),
    "cohere": (_DECODER, "model.layers"),
    "starcoder2": (_DECODER, "model.layers"),
    "gptj": (dict(_GPT, rotary_dim=4), "transformer.h"),
    "falcon": (_MHA, "transformer.h"),
}


def _build(arch: str, *, base: bool = False) -> nn.Module:
    torch.manual_seed(0)
    config = AutoConfig.for_model(arch, **ARCHS[arch][0])
    auto = AutoModel if base else AutoModelForCausalLM
    return auto.from_config(config, attn_implementation="eager").eval()


@pytest.fixture(scope="module", params=list(ARCHS))
def arch(request: pytest.FixtureRequest) -> tuple[str, nn.Module, str]:
    """(model_type, tiny random causal LM, decoder-layer list path), built once per module."""
    return request.param, _build(request.param), ARCHS[request.param][1]


@contextmanager
def _attached(model: nn.Module, name: str, fn: Edit) -> Iterator[HookPoint]:
    hook = resolve_hook(model, name)
    handle = hook.attach(fn)
    try:
        yield hook
    finally:
        handle.remove()


def _logits(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits


def _read(model: nn.Module, name: str, **kwargs: bool) -> tuple[torch.Tensor, object]:
    """The activation at ``name`` and the model's output, from one forward."""
    seen: list[torch.Tensor] = []
    with _attached(model, name, lambda x: seen.append(x.clone())), torch.no_grad():
        output = model(IDS, **kwargs)
    (activation,) = seen
    return activation, output


def test_resid_post_matches_hidden_states(arch: tuple[str, nn.Module, str]) -> None:
    """resid_post of a middle layer is the next entry of output_hidden_states."""
    _, model, _ = arch
    post, output = _read(model, f"blocks.{MIDDLE}.hook_resid_post", output_hidden_states=True)
    assert torch.equal(post, output.hidden_states[MIDDLE + 1])


@pytest.mark.parametrize("layer", range(N_LAYERS))
def test_resid_pre_matches_hidden_states(arch: tuple[str, nn.Module, str], layer: int) -> None:
    """resid_pre L is hidden_states[L], the embeddings (scaled, for Gemma) at L=0."""
    _, model, _ = arch
    pre, output = _read(model, f"blocks.{layer}.hook_resid_pre", output_hidden_states=True)
    assert torch.equal(pre, output.hidden_states[layer])


def test_last_resid_post_is_last_layer_output(arch: tuple[str, nn.Module, str]) -> None:
    """resid_post of the last layer is that layer's raw output (hidden_states[-1] is post-norm)."""
    _, model, layers_path = arch
    raw: list[torch.Tensor] = []
    last = model.get_submodule(f"{layers_path}.{N_LAYERS - 1}")
    handle = last.register_forward_hook(lambda m, a, out: raw.append(read_activation(out)))
    try:
        post, _ = _read(model, f"blocks.{N_LAYERS - 1}.hook_resid_post")
    finally:
        handle.remove()
    assert torch.equal(post, raw[0])


def test_attn_and_mlp_out_sum_to_residual_update(arch: tuple[str, nn.Module, str]) -> None:
    """resid_post = resid_pre + attn_out + mlp_out, for sequential and parallel blocks alike."""
    _, model, _ = arch
    parts = {kind: _read(model, f"blocks.{MIDDLE}.{kind}")[0] for kind in TL_KINDS[:4]}
    total = parts["hook_resid_pre"] + parts["hook_attn_out"] + parts["hook_mlp_out"]
    torch.testing.assert_close(total, parts["hook_resid_post"])


@pytest.mark.parametrize("kind", TL_KINDS)
def test_static_width_matches_activation(arch: tuple[str, nn.Module, str], kind: str) -> None:
    """The width found without running the model is the activation's last dimension."""
    _, model, _ = arch
    activation, _ = _read(model, f"blocks.{MIDDLE}.{kind}")
    assert resolve_hook(model, f"blocks.{MIDDLE}.{kind}").width == activation.shape[-1]


@pytest.mark.parametrize("kind", TL_KINDS)
def test_identity_replacement_keeps_logits(arch: tuple[str, nn.Module, str], kind: str) -> None:
    """Replacing an activation with a copy of itself leaves every logit equal."""
    _, model, _ = arch
    before = _logits(model)
    with _attached(model, f"blocks.{MIDDLE}.{kind}", lambda x: x.clone()):
        assert torch.equal(_logits(model), before)


@pytest.mark.parametrize("kind", TL_KINDS)
def test_returning_none_keeps_logits(arch: tuple[str, nn.Module, str], kind: str) -> None:
    """A function that returns None leaves the logits bit-identical."""
    _, model, _ = arch
    before = _logits(model)
    with _attached(model, f"blocks.{MIDDLE}.{kind}", lambda x: None):
        assert torch.equal(_logits(model), before)


@pytest.mark.parametrize("kind", ["hook_resid_pre", "hook_resid_post", "attn.hook_z"])
def test_added_vector_changes_logits(arch: tuple[str, nn.Module, str], kind: str) -> None:
    """Adding a fixed non-uniform vector changes the logits (a uniform one, LayerNorm erases)."""
    _, model, _ = arch
    before = _logits(model)
    hook = resolve_hook(model, f"blocks.{MIDDLE}.{kind}")
    shift = torch.linspace(-1.0, 1.0, hook.width)  # [width]
    with _attached(model, hook.name, lambda x: x + shift):
        assert not torch.allclose(_logits(model), before)


def test_remove_leaves_no_hooks(arch: tuple[str, nn.Module, str]) -> None:
    """After remove(), every module has exactly the hooks it had before attach()."""
    _, model, _ = arch

    def hooks() -> list[tuple[list[int], list[int]]]:
        return [(list(m._forward_hooks), list(m._forward_pre_hooks)) for m in model.modules()]

    before = hooks()
    for kind in TL_KINDS:
        with _attached(model, f"blocks.{MIDDLE}.{kind}", lambda x: None):
            assert hooks() != before
    assert hooks() == before


def test_layer_paths_match_tl_residual_names(arch: tuple[str, nn.Module, str]) -> None:
    """A layer's path is resid_post and its '.input' is resid_pre, with either spelling."""
    _, model, layers_path = arch
    for path, tl_name in [
        (f"{layers_path}.{MIDDLE}", f"blocks.{MIDDLE}.hook_resid_post"),
        (f"{layers_path}.{MIDDLE}.output", f"blocks.{MIDDLE}.hook_resid_post"),
        (f"{layers_path}.{MIDDLE}.input", f"blocks.{MIDDLE}.hook_resid_pre"),
    ]:
        by_path, by_tl = resolve_hook(model, path), resolve_hook(model, tl_name)
        assert (by_path.module, by_path.site) == (by_tl.module, by_tl.site)


@pytest.mark.parametrize(
    ("arch_name", "path", "kind"),
    [
        ("llama", "model.layers.1.mlp", "hook_mlp_out"),
        ("llama", "model.layers.1.self_attn", "hook_attn_out"),
        ("llama", "model.layers.1.self_attn.o_proj.input", "attn.hook_z"),
        ("gpt2", "transformer.h.1.attn.c_proj.input", "attn.hook_z"),
        ("gpt_neox", "gpt_neox.layers.1.attention.dense.input", "attn.hook_z"),
        ("gemma2", "model.layers.1.post_feedforward_layernorm.output", "hook_mlp_out"),
        ("gemma3_text", "model.layers.1.post_attention_layernorm", "hook_attn_out"),
    ],
)
def test_submodule_paths_match_tl_names(arch_name: str, path: str, kind: str) -> None:
    """Submodule paths resolve to the same module and site as the equivalent TL name."""
    model = _build(arch_name)
    by_path, by_tl = resolve_hook(model, path), resolve_hook(model, f"blocks.1.{kind}")
    assert (by_path.module, by_path.site, by_path.module_path) == (
        by_tl.module,
        by_tl.site,
        by_tl.module_path,
    )


@pytest.mark.parametrize(
    ("arch_name", "name", "module_path"),
    [
        ("llama", "layers.1", "model.layers.1"),
        ("gpt2", "h.0", "transformer.h.0"),
        ("gpt_neox", "layers.2.mlp", "gpt_neox.layers.2.mlp"),
    ],
)
def test_path_relative_to_base_model(arch_name: str, name: str, module_path: str) -> None:
    """Paths relative to model.base_model, as sparsify writes them, resolve on the top model."""
    assert resolve_hook(_build(arch_name), name).module_path == module_path


@pytest.mark.parametrize("name", ["model.layers.1", "layers.1", "blocks.1.hook_resid_post"])
def test_bare_base_model_resolves(name: str) -> None:
    """A bare LlamaModel resolves top-model paths, its own paths and TL names alike."""
    model = _build("llama", base=True)
    hook = resolve_hook(model, name)
    assert (hook.module_path, hook.module) == ("layers.1", model.layers[1])


def test_hook_names_all_resolve(arch: tuple[str, nn.Module, str]) -> None:
    """Every listed name resolves, and the list includes each TL kind for each layer."""
    _, model, _ = arch
    names = hook_names(model)
    assert {f"blocks.{i}.{k}" for i in range(N_LAYERS) for k in TL_KINDS} <= set(names)
    for name in names:
        resolve_hook(model, name)


@pytest.mark.parametrize(
    ("name", "near"),
    [("model.layer.1.mlp", "model.layers.1.mlp"), ("blocks.1.hook_resid_mid", "blocks.1.hook_")],
)
def test_unknown_name_lists_nearest_names(name: str, near: str) -> None:
    """An unknown name raises HookError naming the layer count and near valid names."""
    with pytest.raises(HookError, match=rf"has {N_LAYERS} layers") as info:
        resolve_hook(_build("llama"), name)
    assert f"nearest valid names: {near}" in str(info.value)


@pytest.mark.parametrize("name", ["blocks.7.hook_resid_post", "model.layers.7", "layers.3.mlp"])
def test_layer_out_of_range(name: str) -> None:
    """A layer index past the end raises HookError with the layer count."""
    with pytest.raises(HookError, match=rf"out of range; LlamaForCausalLM has {N_LAYERS} layers"):
        resolve_hook(_build("llama"), name)


def test_model_without_layer_count() -> None:
    """A module that is not a transformers decoder model raises HookError, not AttributeError."""
    with pytest.raises(HookError, match="num_hidden_layers"):
        resolve_hook(nn.Linear(4, 4), "blocks.0.hook_resid_post")


def test_check_width_mismatch_names_both_sides() -> None:
    """A d_in that differs from the hook's width raises PairingError naming both and the SAE."""
    hook = resolve_hook(_build("gemma2"), "blocks.1.attn.hook_z")  # 4 heads x 16 = 64
    with pytest.raises(PairingError) as info:
        hook.check_width(32, "SAE 'res1' (/saes/res1)")
    message = str(info.value)
    for part in ["d_in=32", "width 64", "SAE 'res1' (/saes/res1)", "blocks.1.attn.hook_z"]:
        assert part in message


def test_check_width_match_and_unknown_pass() -> None:
    """A matching d_in, or a hook of unknown width, passes silently."""
    resolve_hook(_build("gemma2"), "blocks.1.hook_resid_post").check_width(32, "SAE 'res1'")
    HookPoint("x", "x", nn.Identity(), "output", None).check_width(7, "SAE 'x'")


@pytest.mark.parametrize("sae_name", ["gpt2-small", "gemma-2-27b", "meta-llama/Llama-3.1-8B"])
def test_check_model_name_mismatch_warns(sae_name: str) -> None:
    """An SAE trained on a clearly different model gives a PairingWarning."""
    model = _build("llama")
    model.config.name_or_path = "google/gemma-2-2b"
    with pytest.warns(PairingWarning, match=r"gemma-2-2b"):
        check_model_name(model, sae_name, "SAE 'res6'")


@pytest.mark.parametrize(
    ("sae_name", "host"),
    [
        ("gemma-2-2b", "google/gemma-2-2b"),
        ("gpt2-small", "openai-community/gpt2"),
        ("Llama-3.1-8B", "/models/Meta-Llama-3.1-8B/"),
        (None, "gpt2"),
        ("gpt2", ""),
    ],
)
def test_check_model_name_match_is_silent(sae_name: str | None, host: str) -> None:
    """Same basename (or a sub-run of its tokens), or a missing name, gives no warning."""
    model = _build("llama")
    model.config.name_or_path = host
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_model_name(model, sae_name, "SAE 'res6'")


def test_read_activation_tensor_and_tuple() -> None:
    """read_activation returns a 5.x tensor itself and element 0 of a 4.x tuple."""
    x = torch.ones(1, 2, 3)
    assert read_activation(x) is x
    assert read_activation((x, None)) is x


def test_read_activation_rejects_other_values() -> None:
    """A value with no tensor first raises HookError."""
    with pytest.raises(HookError, match="got NoneType"):
        read_activation((None, torch.ones(1)))


def test_replace_activation_keeps_form() -> None:
    """replace_activation returns a tensor for a tensor and a new tuple for a tuple."""
    x, new, extra = torch.zeros(1, 2, 3), torch.ones(1, 2, 3), object()
    original = (x, extra)
    assert replace_activation(x, new) is new
    replaced = replace_activation(original, new)
    assert replaced[0] is new and replaced[1] is extra and original[0] is x


class _TupleLayer(nn.Module):
    """A 4.x-style layer: returns one stored tuple (hidden, extra) and takes hidden by keyword."""

    def __init__(self) -> None:
        super().__init__()
        self.extra = object()

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, object]:
        self.last = (hidden_states * 2, self.extra)
        return self.last


def test_tuple_output_is_rebuilt() -> None:
    """An edit at a tuple-returning module changes element 0 of a new tuple and keeps the rest."""
    layer = _TupleLayer()
    handle = HookPoint("t", "t", layer, "output", 4).attach(lambda x: x + 1)
    out = layer(hidden_states=torch.ones(1, 1, 4))
    handle.remove()
    assert out is not layer.last and out[1] is layer.extra
    assert torch.equal(out[0], torch.full((1, 1, 4), 3.0))


def test_tuple_output_untouched_on_none() -> None:
    """When fn returns None, the module's own tuple object comes back."""
    layer = _TupleLayer()
    handle = HookPoint("t", "t", layer, "output", 4).attach(lambda x: None)
    out = layer(torch.ones(1, 1, 4))
    handle.remove()
    assert out is layer.last


def test_input_hook_edits_hidden_states_keyword() -> None:
    """An input hook on a module called with hidden_states= edits that keyword."""
    layer = _TupleLayer()
    handle = HookPoint("t", "t", layer, "input", 4).attach(lambda x: x + 1)
    out = layer(hidden_states=torch.ones(1, 1, 4))
    handle.remove()
    assert torch.equal(out[0], torch.full((1, 1, 4), 4.0))


@pytest.mark.parametrize("arch_name", ["gemma", "gemma2", "gemma3_text"])
def test_gemma_resid_pre_0_is_scaled_embedding(arch_name: str) -> None:
    """Gemma's resid_pre 0 is the embedding row times sqrt(hidden_size), as TL's hook_embed."""
    model = _build(arch_name)
    pre, _ = _read(model, "blocks.0.hook_resid_pre")
    rows = model.get_input_embeddings().weight[IDS]  # [batch, seq, hidden]
    torch.testing.assert_close(pre, rows * math.sqrt(model.config.hidden_size))


def test_attention_input_edit_reaches_the_model(arch: tuple[str, nn.Module, str]) -> None:
    """An '.input' hook on attention (often called with hidden_states=) sees and edits its input."""
    _, model, _ = arch
    z_path = resolve_hook(model, f"blocks.{MIDDLE}.attn.hook_z").module_path  # <attn>.o_proj
    attn_path = z_path.rpartition(".")[0]
    before = _logits(model)
    activation, _ = _read(model, f"{attn_path}.input")
    assert activation.shape[-1] == resolve_hook(model, f"{attn_path}.input").width
    with _attached(model, f"{attn_path}.input", lambda x: x * 0.5):
        assert not torch.allclose(_logits(model), before)
