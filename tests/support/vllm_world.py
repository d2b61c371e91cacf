"""The vLLM tests' world: a tiny Llama vLLM can run on CPU, saved with its tokenizer, and an SAE
aimed at one token that vLLM itself generates.

vLLM's CPU attention needs head_dim >= 32, so the model is wider than tiny_world's. Its
vocabulary has 14 ids beyond the tokenizer's: the last is the sentinel (never a real token).
"""

from __future__ import annotations

import gc
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tiny_world as tw
import torch
from transformers import LlamaConfig, LlamaForCausalLM

NO_VLLM = "vLLM is not installed: `make test-vllm` runs these tests in their own venv"
"""Why every vLLM test module skips (`pytest.importorskip("vllm", reason=NO_VLLM)`)."""
HOOK = "blocks.1.hook_resid_post"
VOCAB = 64
SENTINEL = VOCAB - 1
MAX_TOKENS = 8
# Mixed lengths, so that a small token budget splits the long prompts' prefill into chunks.
PROMPTS = ["import os\ndef f(x):", "hello there", "a = 1", "the quick brown fox jumps over it"]
ENGINE = {"dtype": "float32", "max_num_batched_tokens": 8, "max_num_seqs": 4,
          "max_model_len": 96, "seed": 0}  # fmt: skip
"""Engine settings of every test engine: 8 tokens a step splits every longer prompt's prefill
into chunks."""


def tiny_llama(tokenizer_size: int) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128,
                      num_hidden_layers=3, num_attention_heads=2, num_key_value_heads=1,
                      head_dim=32, max_position_embeddings=256, bos_token_id=1,
                      eos_token_id=2, pad_token_id=0)  # fmt: skip
    assert tokenizer_size < SENTINEL
    return LlamaForCausalLM(cfg).eval()


def save_model(folder: Path) -> tuple[LlamaForCausalLM, Any]:
    """The tiny Llama and the character tokenizer, saved to `folder` (what vLLM loads)."""
    tok = tw.char_tokenizer()
    model = tiny_llama(len(tok))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return model, tok


def prompt_ids(tok: Any) -> list[list[int]]:
    return [tok(p)["input_ids"] for p in PROMPTS]


@dataclass
class Aimed:
    """An SAE whose TARGET feature fires on exactly one generated token of one prompt."""

    sae_dir: Path
    row: int  # the prompt
    position: int  # the token's position in that prompt's sequence (prompt included)
    threshold: float


def aim_generated(model: LlamaForCausalLM, sequences: list[list[int]], prompt_lens: list[int],
                  folder: Path) -> Aimed:  # fmt: skip
    """Aim TARGET at the generated token that stands out most among every token of every
    sequence (HF activations of vLLM's own outputs), leaving tokens before and after it."""
    width = max(map(len, sequences))
    ids = torch.tensor([[0] * (width - len(s)) + s for s in sequences])  # left padded
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in sequences])
    candidates = [(r, width - len(s) + p) for r, (s, n) in
                  enumerate(zip(sequences, prompt_lens, strict=True))
                  for p in range(n + 1, len(s) - 2)]  # fmt: skip
    aimed = tw.aim(model, HOOK, ids, mask, candidates, folder)
    pads = width - len(sequences[aimed.row])
    return Aimed(folder, aimed.row, aimed.position - pads, aimed.threshold)


def policy_file(aimed: Aimed, tmp: Path, name: str, **policy: object) -> Path:
    """One policy `watch` on TARGET (keyword arguments override its keys), audit to
    `tmp/<name>.jsonl`."""
    body: dict[str, object] = {
        "name": "watch", "sae": "s", "threshold": aimed.threshold, "action": "log",
        "features": [{"index": tw.TARGET, "label": "chosen token", "max": aimed.threshold * 2}],
    }  # fmt: skip
    body.update(policy)
    doc = {
        "version": 1,
        "saes": {"s": {"path": str(aimed.sae_dir), "hook": HOOK}},
        "policies": [body],
        "audit": {"path": str(tmp / f"{name}.jsonl")},
    }
    return tw.write_yaml(doc, tmp / f"{name}.yaml")


@dataclass
class VWorld:
    """The model on disk, vLLM's own unguarded outputs, and an SAE aimed at one of them."""

    model: LlamaForCausalLM  # the transformers model vLLM loads
    tokenizer: Any
    folder: Path  # model and tokenizer on disk
    prompts: list[list[int]]  # token ids of PROMPTS
    plain: list[list[int]]  # unguarded vLLM's greedy output ids for each prompt
    aimed: Aimed
    tmp: Path


def build(tmp: Path) -> VWorld:
    """Save the model, run it through a plain (unguarded) vLLM engine, aim the SAE."""
    from vllm import LLM

    model, tok = save_model(tmp / "model")
    prompts = prompt_ids(tok)
    llm = LLM(str(tmp / "model"), enforce_eager=True, enable_prefix_caching=False, **ENGINE)
    try:
        outs = llm.generate(token_prompts(prompts), greedy())
    finally:
        shutdown(llm)
    plain = [list(o.outputs[0].token_ids) for o in outs]
    assert all(SENTINEL not in p for p in plain), "the sentinel must never be a real token"
    sequences = [p + o for p, o in zip(prompts, plain, strict=True)]
    aimed = aim_generated(model, sequences, [len(p) for p in prompts], tmp / "sae")
    return VWorld(model, tok, tmp / "model", prompts, plain, aimed, tmp)


def shutdown(llm: Any) -> None:
    """Stop an in-process engine before the next one starts."""
    llm.llm_engine.engine_core.shutdown()
    del llm
    gc.collect()


def greedy(max_tokens: int = MAX_TOKENS) -> Any:
    from vllm import SamplingParams

    return SamplingParams(max_tokens=max_tokens, temperature=0)


def token_prompts(ids: list[list[int]]) -> list[Any]:
    from vllm.inputs import TokensPrompt

    return [TokensPrompt(prompt_token_ids=i) for i in ids]


def other_row(world: VWorld) -> int:
    """A prompt other than the aimed one that generates more than one token."""
    return next(r for r in range(len(PROMPTS)) if r != world.aimed.row and len(world.plain[r]) > 1)


def check_openai_block(client: Any, world: VWorld, audit: Path, model_id: str, request_id: str,
                       withheld: str) -> None:  # fmt: skip
    """Through an OpenAI-compatible endpoint: the aimed prompt ends with `content_filter` and
    the `withheld` message, another prompt is untouched, and the audit names the client's
    request id and the trigger's position."""
    a = world.aimed
    blocked = client.completions.create(
        model=model_id,
        prompt=PROMPTS[a.row],
        max_tokens=MAX_TOKENS,
        temperature=0,
        extra_headers={"X-Request-ID": request_id},
    )
    assert blocked.choices[0].finish_reason == "content_filter"
    assert blocked.choices[0].text == withheld
    other = other_row(world)
    fine = client.completions.create(
        model=model_id, prompt=PROMPTS[other], max_tokens=MAX_TOKENS, temperature=0
    )
    assert fine.choices[0].finish_reason == "length"
    want = world.tokenizer.decode(world.plain[other])
    assert fine.choices[0].text.replace(" ", "") == want.replace(" ", "")
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    mine = [r for r in records if r.get("request_id") == request_id]
    assert [(r["event"], r.get("token_index")) for r in mine] == [
        ("policy_triggered", a.position),
        ("request_completed", None),
    ]


def stream_aimed(
    client: Any, world: VWorld, model_id: str
) -> tuple[list[tuple[str, Any]], list[int]]:
    """The aimed prompt streamed through an OpenAI-compatible endpoint: (text, finish_reason)
    of every chunk, and the reply tokens the unguarded run makes before the trigger."""
    a = world.aimed
    chunks = client.completions.create(
        model=model_id, prompt=PROMPTS[a.row], max_tokens=MAX_TOKENS, temperature=0, stream=True
    )
    texts = [(c.choices[0].text, c.choices[0].finish_reason) for c in chunks if c.choices]
    return texts, world.plain[a.row][: a.position - len(world.prompts[a.row])]
