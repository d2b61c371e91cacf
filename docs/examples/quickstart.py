"""featureguard end to end on a tiny random model, with nothing downloaded.

    python docs/examples/quickstart.py

1. a small model and tokenizer (random weights: stand-ins for yours);
2. an SAE in SAELens format whose feature 0 points along one token's activation;
3. a policy file that logs that feature, and one that blocks it;
4. guarded generation, what fired, and the audit log's hash chain verified.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

import featureguard as fg
from featureguard.audit import verify

work = Path(tempfile.mkdtemp())

# 1. A model and a character-level tokenizer.
chars = "abcdefghijklmnopqrstuvwxyz .,:=()'\n"
vocab = {t: i for i, t in enumerate(["<pad>", "<bos>", "<eos>", *chars])}
backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
backend.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
tok = PreTrainedTokenizerFast(
    tokenizer_object=backend, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>"
)
torch.manual_seed(0)
config = LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64,
                     num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                     bos_token_id=1, eos_token_id=2, pad_token_id=0)  # fmt: skip
model = LlamaForCausalLM(config).eval()

# 2. An SAE (SAELens layout) at the output of layer 1. Feature 0 is the direction of the
#    activation of the 3rd generated token, so it fires there: a stand-in for a real feature.
prompt = "def connect(url):"
ids = tok(prompt, return_tensors="pt")
reply = model.generate(**ids, max_new_tokens=6, do_sample=False)
seen = []
handle = model.model.layers[1].register_forward_hook(lambda m, i, o: seen.append(o))
with torch.no_grad():
    model(reply)
handle.remove()
x = seen[0][0, ids["input_ids"].shape[1] + 2]  # the activation of that token
directions = torch.linalg.qr(torch.cat([x[:, None], torch.randn(32, 15)], dim=1))[0].T
directions[0] *= torch.sign(directions[0] @ x)  # point feature 0 along x
sae_dir = work / "sae"
sae_dir.mkdir()
save_file(
    {"W_enc": directions.T.contiguous(), "b_enc": torch.zeros(16),
     "W_dec": directions.contiguous(), "b_dec": torch.zeros(32)},
    str(sae_dir / "sae_weights.safetensors"),
)  # fmt: skip
(sae_dir / "cfg.json").write_text(json.dumps({
    "d_in": 32, "d_sae": 16, "architecture": "standard", "apply_b_dec_to_input": False,
    "normalize_activations": "none", "metadata": {"hook_name": "blocks.1.hook_resid_post"},
}))  # fmt: skip
print(fg.load_sae(sae_dir))

# 3. Policies: the same feature, logged, then blocked.
policy = f"""
version: 1
saes:
  demo: {{path: {sae_dir}}}
policies:
  - name: watched-token
    sae: demo
    features: [{{index: 0, label: the token we aimed at}}]
    threshold: {0.99 * float(x.norm()):.6f}
    action: ACTION
    scope: response
    message: "This reply was withheld."
audit: {{path: {work / "audit.jsonl"}}}
"""
for action in ("log", "block"):
    path = work / f"{action}.yaml"
    path.write_text(policy.replace("ACTION", action))

    # 4. Guarded generation.
    with fg.wrap(model, policies=path, tokenizer=tok) as guard:
        [text] = guard.generate(prompt, max_new_tokens=6, do_sample=False)
        outcome = guard.last[0]
        print(f"\n[{action}] reply: {text!r}  blocked: {outcome.blocked}")
        for t in outcome.triggers:
            print(f"  {t.policy} fired on token {t.token_index} {t.token!r}, score {t.score:.3f}")

report = verify(work / "audit.jsonl")
print(f"\naudit log {work / 'audit.jsonl'}: ok={report.ok}, {report.records} records")
