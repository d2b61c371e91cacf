"""featureguard inside vLLM, end to end on a tiny random model, with nothing downloaded.

    pip install 'featureguard[vllm]'          # or: make test-vllm, which builds .venv-vllm
    VLLM_CPU_KVCACHE_SPACE=1 .venv-vllm/bin/python docs/examples/vllm_quickstart.py

1. a small Llama and tokenizer saved to a folder (vLLM loads from disk; CPU attention needs
   head_dim >= 32);
2. an SAE in SAELens format whose feature 0 points along the activation of one generated token;
3. a policy file that blocks that feature;
4. a batch through `GuardedLLM`: the reply holding that token stops just before it with
   `content_filter`, the other reply is untouched; the audit log names the request and token
   position, and its hash chain verifies.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast


def main() -> None:
    from vllm import SamplingParams

    from featureguard.audit import verify
    from featureguard.integrations.vllm.frontend import GuardedLLM

    work = Path(tempfile.mkdtemp())

    # 1. A model with a character-level tokenizer; its vocabulary's last id (63) is never a
    #    character, so it can serve as the sentinel that ends a blocked reply.
    chars = "abcdefghijklmnopqrstuvwxyz .,:=()'\n"
    vocab = {t: i for i, t in enumerate(["<pad>", "<bos>", "<eos>", *chars])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>"
    )
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=3, num_attention_heads=2, num_key_value_heads=1,
                         head_dim=32, bos_token_id=1, eos_token_id=2, pad_token_id=0)  # fmt: skip
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(work / "model")
    tok.save_pretrained(work / "model")

    # 2. An SAE at the output of layer 1 whose feature 0 is the direction of the activation
    #    of the 3rd generated token of the first prompt: a stand-in for a real feature.
    prompts = ["def connect(url):", "hello there"]
    ids = tok(prompts[0], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        reply = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6,
                               do_sample=False)  # fmt: skip
        seen = []
        handle = model.model.layers[1].register_forward_hook(lambda m, i, o: seen.append(o))
        model(reply)
        handle.remove()
    aimed = ids.shape[1] + 2
    x = seen[0][0, aimed]
    directions = torch.linalg.qr(torch.cat([x[:, None], torch.randn(64, 15)], dim=1))[0].T
    directions[0] *= torch.sign(directions[0] @ x)
    sae = work / "sae"
    sae.mkdir()
    save_file({"W_enc": directions.T.contiguous(), "b_enc": torch.zeros(16),
               "W_dec": directions.contiguous(), "b_dec": torch.zeros(64)},
              str(sae / "sae_weights.safetensors"))  # fmt: skip
    (sae / "cfg.json").write_text(json.dumps({
        "d_in": 64, "d_sae": 16, "architecture": "standard", "apply_b_dec_to_input": False,
        "normalize_activations": "none", "metadata": {"hook_name": "blocks.1.hook_resid_post"},
    }))  # fmt: skip

    # 3. A policy that blocks on that feature.
    policies = work / "policies.yaml"
    policies.write_text(f"""
version: 1
saes:
  demo: {{path: {sae}}}
policies:
  - name: watched-token
    sae: demo
    features: [{{index: 0, label: the token we aimed at}}]
    threshold: {0.99 * float(x.norm()):.6f}
    action: block
audit: {{path: {work / "audit.jsonl"}}}
""")

    # 4. Both prompts in one batch, each its own audited request.
    llm = GuardedLLM(work / "model", policies, dtype="float32", max_model_len=64)
    request_ids = ["connect", "hello"]
    outputs = llm.generate(prompts, SamplingParams(max_tokens=6, temperature=0),
                           request_ids=request_ids)  # fmt: skip
    for request_id, out in zip(request_ids, outputs, strict=True):
        c = out.outputs[0]
        print(f"[{request_id}] {c.finish_reason}: token ids {list(c.token_ids)}")
    for record in map(json.loads, (work / "audit.jsonl").read_text().splitlines()):
        if record["event"] == "policy_triggered":
            print(f"{record['policy']} fired on request {record['request_id']!r}, "
                  f"token {record['token_index']} (aimed at {aimed})")  # fmt: skip
    report = verify(work / "audit.jsonl")
    print(f"audit log {work / 'audit.jsonl'}: ok={report.ok}, {report.records} records")


if __name__ == "__main__":  # vLLM spawns worker processes, which import this file
    main()
