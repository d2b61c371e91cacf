"""Tiny random models, a character tokenizer and SAEs built to fire on a chosen token.

The SAEs have orthonormal decoder rows and `W_enc = W_decᵀ` (relu, no biases), so every
feature is exactly recoverable: `pre_i = q_i · x`. Feature `TARGET` points along the hooked
activation of one chosen token, with a threshold between that token's score and the next
highest, so a policy on it triggers on exactly that token of a greedy generation.

`aim` builds such an SAE for any token (a prompt token, padding, BOS, another layer);
`world_fixture` shares one world per architecture across a session; `around_guard` records
the hooked activation before and after the guard's edit in every forward pass.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from featureguard.hooks import read_activation, resolve_hook

CHARS = "abcdefghijklmnopqrstuvwxyz .,:=()'\"_0123456789\n"
SPECIALS = ["<pad>", "<bos>", "<eos>"]
D_SAE = 12
TARGET = 3  # the feature aimed at the chosen token
ARCHS = ("llama", "gpt2", "qwen2")
PROMPTS = ["import os\ndef f(x):", "hello there", "a = 1", "the quick brown fox jumps"]


def char_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {t: i for i, t in enumerate(SPECIALS + list(CHARS))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>"
    )
    fast.padding_side = "left"
    return fast


def tiny_model(arch: str, vocab: int) -> torch.nn.Module:
    torch.manual_seed(0)
    common = dict(vocab_size=vocab, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if arch == "gpt2":
        cfg = GPT2Config(n_embd=32, n_layer=3, n_head=4, n_positions=256, **common)
        model = GPT2LMHeadModel(cfg)
    elif arch == "llama":
        cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                          num_attention_heads=4, num_key_value_heads=2, **common)  # fmt: skip
        model = LlamaForCausalLM(cfg)
    else:
        cfg = Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                          num_attention_heads=4, num_key_value_heads=2, **common)  # fmt: skip
        model = Qwen2ForCausalLM(cfg)
    model.generation_config.pad_token_id = 0
    return model.eval()


@dataclass
class World:
    """A model, its tokenizer, and an SAE folder whose TARGET feature fires on one token."""

    arch: str
    model: torch.nn.Module
    tokenizer: PreTrainedTokenizerFast
    hook: str
    sae_dir: Path
    basis: torch.Tensor  # [D_SAE, d] orthonormal rows (W_dec)
    row: int  # the batch row whose generation holds the chosen token
    position: int  # index of the chosen token in the padded sequence
    threshold: float
    bare: torch.Tensor  # the unwrapped model's greedy output ids for PROMPTS
    max_new_tokens: int = 8
    score: float = 0.0  # the chosen token's TARGET activation (in a plain forward pass)

    @property
    def prompt_mask(self) -> torch.Tensor:
        """[4, prompt_len] attention mask of the left-padded PROMPTS."""
        return encode(self.tokenizer, PROMPTS)["attention_mask"]

    @property
    def prompt_len(self) -> int:
        """Length of the left-padded prompts (where generated tokens start)."""
        return self.prompt_mask.shape[1]

    def pads(self, row: int) -> int:
        """Left padding of a row of PROMPTS."""
        return self.prompt_len - int(self.prompt_mask[row].sum())

    @property
    def token_index(self) -> int:
        """Index of the chosen token in its row, prompt included, padding excluded."""
        return self.position - self.pads(self.row)

    def single(self, row: int) -> torch.Tensor:
        """The unwrapped model's greedy output ids [1, T] for PROMPTS[row] alone (cached)."""
        cache = self.__dict__.setdefault("_single", {})
        if row not in cache:
            assert "generate" not in vars(self.model), "call single() before wrapping the model"
            cache[row] = generate(self.model, self.tokenizer, [PROMPTS[row]], self.max_new_tokens)
        return cache[row]

    def prompt_tokens(self) -> list[tuple[int, int]]:
        """(row, position) of every real prompt token of the padded batch."""
        mask = self.prompt_mask
        return [(r, p) for r in range(mask.shape[0]) for p in range(mask.shape[1]) if mask[r, p]]

    def reply_tokens(self) -> list[tuple[int, int]]:
        """(row, position) of every real generated token of `bare`."""
        real = real_tokens(self.bare)
        return [(r, p) for r in range(real.shape[0]) for p in range(self.prompt_len, real.shape[1])
                if real[r, p]]  # fmt: skip

    def aim(self, folder: Path, candidates: list[tuple[int, int]], *, hook: str | None = None,
            **kw: object) -> Aim:  # fmt: skip
        """`aim` over this world's bare generation (`hook` defaults to the world's)."""
        mask = generation_mask(self.prompt_mask, self.bare.shape[1])
        return aim(self.model, hook or self.hook, self.bare, mask, candidates, folder, **kw)


def encode(tok: PreTrainedTokenizerFast, prompts: list[str]) -> dict[str, torch.Tensor]:
    enc = tok(prompts, return_tensors="pt", padding=True)
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def encode_with_bos(tok: PreTrainedTokenizerFast, prompts: list[str]) -> dict[str, torch.Tensor]:
    """Like `encode`, with BOS (id 1) before each prompt, after its left padding."""
    rows = [[1, *tok(p)["input_ids"]] for p in prompts]
    width = max(map(len, rows))
    ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return {"input_ids": ids, "attention_mask": mask}


def generate(model: torch.nn.Module, tok: PreTrainedTokenizerFast, prompts: list[str],
             n: int, **kw: object) -> torch.Tensor:  # fmt: skip
    with torch.no_grad():
        return model.generate(**encode(tok, prompts), max_new_tokens=n, do_sample=False, **kw)


def generation_mask(prompt_mask: torch.Tensor, total: int) -> torch.Tensor:
    """The attention mask generate uses for a sequence of `total` tokens: ones after the prompt."""
    b, n = prompt_mask.shape
    return torch.cat([prompt_mask, torch.ones(b, total - n, dtype=prompt_mask.dtype)], dim=1)


def activations(model: torch.nn.Module, hook: str, ids: torch.Tensor,
                mask: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """The hooked activation of every position of `ids` in one plain forward pass.

    With `mask` the position ids are those generate uses for left-padded rows.
    """
    seen: list[torch.Tensor] = []
    handle = resolve_hook(model, hook).attach(lambda x: seen.append(x.detach()) or None)
    kw: dict[str, torch.Tensor] = {}
    if mask is None:
        mask = (ids != 0).long()
    else:
        kw["position_ids"] = (mask.long().cumsum(-1) - 1).clamp(min=0)
    try:
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask, **kw)
    finally:
        handle.remove()
    return seen[0]


def real_tokens(ids: torch.Tensor) -> torch.Tensor:
    """[b, T] bool: tokens a guard scores (not padding, BOS or EOS)."""
    return (ids != 0) & (ids != 1) & (ids != 2)


@dataclass
class Aim:
    """An SAE folder whose TARGET feature points along the activation of one token."""

    sae_dir: Path
    hook: str
    basis: torch.Tensor  # [D_SAE, d] orthonormal rows; basis[TARGET] is the aimed direction
    row: int
    position: int
    score: float  # the aimed token's TARGET activation (its activation's norm)
    second: float  # the highest TARGET score among the other compared tokens
    threshold: float  # halfway between the two


def aim(
    model: torch.nn.Module,
    hook: str,
    ids: torch.Tensor,
    mask: torch.Tensor,
    candidates: list[tuple[int, int]],
    folder: Path,
    *,
    compare: torch.Tensor | None = None,
    strict: bool = True,
) -> Aim:
    """Aim TARGET at whichever (row, position) of `candidates` stands out most.

    `ids` and `mask` are whole generated sequences and generate's attention mask for them. A
    candidate's margin is its score (its activation's norm) minus the highest score of any
    other token of `compare` ([b, T] bool, default: the real tokens); with `strict` the best
    margin must be clearly positive.
    """
    acts = activations(model, hook, ids, mask)  # [b, T, d]
    compare = real_tokens(ids) if compare is None else compare
    best = None
    for row, position in candidates:
        x = acts[row, position]
        q = x / x.norm()
        proj = (acts @ q).masked_fill(~compare, float("-inf"))
        proj[row, position] = float("-inf")
        gap = float(x.norm() - proj.max())
        if best is None or gap > best[0]:
            best = (gap, row, position, q, float(x.norm()), float(proj.max()))
    gap, row, position, q, top, second = best
    assert gap > 1e-3 or not strict, "no token stands out; change the seed"
    basis = orthonormal_with(q)
    write_saelens(folder, basis, hook)
    return Aim(folder, hook, basis, row, position, top, second, (top + second) / 2)


def orthonormal_with(q: torch.Tensor) -> torch.Tensor:
    """[D_SAE, d] orthonormal rows (fixed seed) whose row TARGET is the unit vector `q`."""
    rest = torch.randn(D_SAE, q.shape[0], generator=torch.Generator().manual_seed(1))
    rest[TARGET] = q
    order = [TARGET] + [i for i in range(D_SAE) if i != TARGET]
    qr, _ = torch.linalg.qr(rest[order].T)  # keeps the first column's direction (up to sign)
    basis = torch.empty(D_SAE, q.shape[0])
    basis[order] = qr.T
    if basis[TARGET] @ q < 0:
        basis[TARGET] = -basis[TARGET]
    return basis


def build_world(tmp_path: Path, arch: str, gen_offset: int = 3) -> World:
    """Aim TARGET at the `gen_offset`-th generated token of the row where it stands out most."""
    tok = char_tokenizer()
    model = tiny_model(arch, len(tok))
    hook = "blocks.1.hook_resid_post"
    bare = generate(model, tok, PROMPTS, 8)
    prompt_mask = encode(tok, PROMPTS)["attention_mask"]
    position = prompt_mask.shape[1] + gen_offset
    target = aim(
        model, hook, bare, generation_mask(prompt_mask, bare.shape[1]),
        [(row, position) for row in range(bare.shape[0])], tmp_path / f"sae-{arch}",
    )  # fmt: skip
    return World(arch, model, tok, hook, target.sae_dir, target.basis, target.row,
                 target.position, target.threshold, bare, score=target.score)  # fmt: skip


def write_saelens(folder: Path, basis: torch.Tensor, hook: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    d_sae, d = basis.shape
    save_file({"W_enc": basis.T.contiguous(), "b_enc": torch.zeros(d_sae),
               "W_dec": basis.contiguous(), "b_dec": torch.zeros(d)},
              str(folder / "sae_weights.safetensors"))  # fmt: skip
    cfg = {"d_in": d, "d_sae": d_sae, "architecture": "standard", "apply_b_dec_to_input": False,
           "normalize_activations": "none", "dtype": "float32",
           "metadata": {"hook_name": hook, "model_name": None}}  # fmt: skip
    (folder / "cfg.json").write_text(json.dumps(cfg))


def policy_doc(world: World, tmp_path: Path, **policy: object) -> dict:
    """The document `write_policy` writes: SAE `s` and one policy `watch` on TARGET."""
    body = {
        "name": "watch",
        "sae": "s",
        "features": [{"index": TARGET, "label": "chosen token", "max": world.threshold * 2}],
        "threshold": world.threshold,
        "action": "log",
    }
    body.update(policy)
    return {
        "version": 1,
        "saes": {"s": {"path": str(world.sae_dir), "hook": world.hook}},
        "policies": [body],
        "audit": {"path": str(tmp_path / "audit.jsonl")},
    }


def write_yaml(doc: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def write_policy(world: World, tmp_path: Path, *, name: str = "p.yaml", **policy: object) -> Path:
    """A policy file with one policy on TARGET; keyword arguments override its keys."""
    return write_yaml(policy_doc(world, tmp_path, **policy), tmp_path / name)


# ---- fixtures and probes ---------------------------------------------------------------------
_WORLDS: dict[str, World] = {}


def world_fixture() -> Callable[..., Iterator[World]]:
    """A `world` fixture over ARCHS; each world is built once per session and shared.

    After each test it checks that the test left the model as it found it (no hooks, no guard):
    a leak fails that test's teardown and is cleaned up, so it never spills into the next test.
    """

    @pytest.fixture(params=ARCHS)
    def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[World]:  # fmt: skip
        arch = request.param
        # The models are tiny: extra threads only add contention on a busy machine (5x slower).
        torch.set_num_threads(1)
        if arch not in _WORLDS:
            _WORLDS[arch] = build_world(tmp_path_factory.mktemp(f"world-{arch}"), arch)
        w = _WORLDS[arch]
        yield w
        leaks = hooked_modules(w.model) + (["generate"] if "generate" in vars(w.model) else [])
        if leaks:
            for module in w.model.modules():
                for name in _HOOK_DICTS:
                    getattr(module, name).clear()
            vars(w.model).pop("generate", None)
            pytest.fail(f"the test left hooks or a guard on the model: {leaks}")

    return world


_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_forward_hooks_with_kwargs",
               "_forward_pre_hooks_with_kwargs", "_forward_hooks_always_called")  # fmt: skip


def hooked_modules(model: torch.nn.Module) -> list[str]:
    """Names of the modules that carry any forward hook or forward pre-hook."""
    return [
        name or "<root>"
        for name, module in model.named_modules()
        if any(getattr(module, d) for d in _HOOK_DICTS)
    ]


@dataclass
class Pass:
    """One forward pass at a hook: the activation before and after the guard edited it."""

    before: torch.Tensor  # [b, s, d]
    after: torch.Tensor  # [b, s, d]


@contextmanager
def around_guard(model: torch.nn.Module, hook: str) -> Iterator[list[Pass]]:
    """Record every forward pass at `hook` before and after the guard's own hook (call it after
    `wrap`): one forward hook is put first, one last, on the hooked module."""
    point = resolve_hook(model, hook)
    assert point.site == "output", "around_guard reads a module's output"
    passes: list[Pass] = []
    seen: list[torch.Tensor] = []

    def first(_m: torch.nn.Module, _a: tuple, out: object) -> None:
        seen.append(read_activation(out).detach().clone())

    def last(_m: torch.nn.Module, _a: tuple, out: object) -> None:
        passes.append(Pass(seen.pop(), read_activation(out).detach().clone()))

    handles = [point.module.register_forward_hook(first, prepend=True),
               point.module.register_forward_hook(last)]  # fmt: skip
    try:
        yield passes
    finally:
        for handle in handles:
            handle.remove()
