"""What guarding costs: guarded vs unwrapped generation speed, measured in one process.

    .venv/bin/python bench/overhead.py [--runs 5] [--batches 1 8] [--write-docs]

A randomly initialised Llama of realistic width (hidden 2048, intermediate 5632, 8 layers, 16
heads, vocabulary 32000) and an SAELens JumpReLU SAE with 65,536 features on
`blocks.4.hook_resid_post`; three policies of 8 features each. Each mode is timed right after an
unwrapped run (interleaved, `--runs` pairs), greedy, 128 prompt tokens and 64 new ones; prefill
(the first forward pass) and decode (the other 63) are timed apart by a logits processor that
notes when each step's logits arrive. The table gives medians of the per-pair ratios
guarded/unwrapped, and beside them the ratio the FLOP counts predict.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from benchlib import REPO, machine, write_section
from load_memory import cached, write_saelens
from transformers import LlamaConfig, LlamaForCausalLM, LogitsProcessor, LogitsProcessorList

import featureguard as fg

SECTION = "## Guarding overhead (bench/overhead.py)"
HIDDEN, INTER, LAYERS, HEADS, VOCAB = 2048, 5632, 8, 16, 32000
D_SAE, HOOK, PROMPT, NEW = 65_536, "blocks.4.hook_resid_post", 128, 64
FEATURES = [[1000 + 7919 * (8 * p + i) % 60_000 for i in range(8)] for p in range(3)]
PREFILL_PAIRS = 2  # extra prefill-only pairs per run: prefill is short, so noisier
NEVER, ALWAYS = 1e9, -1.0  # thresholds: no token ever triggers / every token triggers
MODES = {  # name: (action, the first policy triggers on every token, encode every feature)
    "log": ("log", False, False),
    "suppress": ("suppress", False, False),
    "suppress, 1 policy on every token": ("suppress", True, False),
    "block": ("block", False, False),
    "full audit (top-k)": ("log", False, True),
}


class Clock(LogitsProcessor):
    """Notes when each step's logits arrive: the first after prefill, then one per token."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self.times.append(time.perf_counter())
        return scores


def build_model() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=HIDDEN, intermediate_size=INTER, num_hidden_layers=LAYERS,
                      num_attention_heads=HEADS, num_key_value_heads=HEADS, vocab_size=VOCAB,
                      max_position_embeddings=1024, bos_token_id=1, eos_token_id=2,
                      pad_token_id=0)  # fmt: skip
    model = LlamaForCausalLM(cfg).eval()
    model.generation_config.pad_token_id = 0
    return model


def policy_doc(mode: str, sae_dir: Path, trace_dir: Path) -> dict:
    action, trigger_first, full = MODES[mode]
    policies = []
    for p, features in enumerate(FEATURES):
        body = {
            "name": f"policy-{p}",
            "sae": "big",
            "features": [{"index": f, "max": 1.0} for f in features],
            "threshold": ALWAYS if trigger_first and p == 0 else NEVER,
            "action": action,
            "scope": "both",
        }
        if action == "suppress":
            body["suppress"] = {"method": "clamp", "times_max": -0.5, "mode": "conditional"}
        policies.append(body)
    audit: dict = {"path": str(trace_dir / "audit.jsonl")}
    if full:
        audit["trace"] = {"features": "topk", "k": 32, "path": str(trace_dir / "trace")}
    return {"version": 1, "saes": {"big": {"path": str(sae_dir), "hook": HOOK}},
            "policies": policies, "audit": audit}  # fmt: skip


def timed(model: torch.nn.Module, ids: torch.Tensor, new: int = NEW) -> tuple[float, float]:
    """(prefill tokens/s, decode tokens/s) of one greedy generation of `new` tokens."""
    clock = Clock()
    start = time.perf_counter()
    with torch.no_grad():
        model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                       min_new_tokens=new, do_sample=False,
                       logits_processor=LogitsProcessorList([clock]))  # fmt: skip
    if new == 1:
        return ids.numel() / (clock.times[0] - start), float("nan")
    b = ids.shape[0]
    prefill = clock.times[0] - start
    decode = clock.times[-1] - clock.times[0]
    return b * ids.shape[1] / prefill, b * (len(clock.times) - 1) / decode


def model_flops(context: int) -> float:
    """Forward FLOPs of one token at `context` tokens of attention (2 per multiply-add)."""
    per_layer = 2 * (4 * HIDDEN * HIDDEN + 3 * HIDDEN * INTER) + 2 * 2 * context * HIDDEN
    return LAYERS * per_layer + 2 * HIDDEN * VOCAB


def guard_flops(mode: str) -> float:
    """What the guard adds per token at the hooked layer."""
    named = sum(len(f) for f in FEATURES)
    flops = 2 * HIDDEN * named  # encode the named features
    _, trigger_first, full = MODES[mode]
    if trigger_first:
        flops += 2 * HIDDEN * len(FEATURES[0])  # the clamp's decode of one policy's features
    if full:
        flops += 2 * HIDDEN * D_SAE + D_SAE  # encode every feature, then top-k
    return flops


def rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / 2**20


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="interleaved pairs per mode")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sae-dir", type=Path, default=REPO / "bench" / "out" / "sae-65k")
    parser.add_argument(
        "--modes",
        nargs="+",
        choices=list(MODES),
        default=list(MODES),
        help="modes to time (all by default; --write-docs needs all)",
    )
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()
    if args.write_docs and args.modes != list(MODES):
        parser.error("--write-docs writes the whole table: leave out --modes")
    torch.set_num_threads(args.threads)
    if not cached(args.sae_dir, HIDDEN, D_SAE, seed=0):
        write_saelens(args.sae_dir, HIDDEN, D_SAE, seed=0)
    model = build_model()
    tmp = Path(tempfile.mkdtemp(prefix="fg-overhead-"))
    lines = []

    # Memory and time of wrapping: 24 named features (partial load) vs every feature.
    for mode in ("log", "full audit (top-k)"):  # the policies' 24 features; all 65,536
        before, t0 = rss_mib(), time.perf_counter()
        guard = fg.wrap(model, policy_doc(mode, args.sae_dir, tmp), audit=fg.MemorySink())
        took, grew = time.perf_counter() - t0, rss_mib() - before
        guard.detach()
        what = "24 named features" if mode == "log" else f"all {D_SAE:,} features (top-k trace)"
        lines.append(f"- wrapping with {what}: +{grew:.1f} MiB RSS, {took:.2f} s")
        print(lines[-1], flush=True)

    rows = []
    for b in args.batches:
        ids = torch.randint(3, VOCAB, (b, PROMPT), generator=torch.Generator().manual_seed(b))
        timed(model, ids)  # warm-up: first-use costs of every kernel
        for mode in args.modes:
            pre, dec, bare_pre, bare_dec = [], [], [], []
            for _ in range(args.runs):
                doc = policy_doc(mode, args.sae_dir, tmp)
                # Prefill is one short forward pass: time it PREFILL_PAIRS more times alone.
                for _ in range(PREFILL_PAIRS):
                    bare_pre.append(timed(model, ids, new=1)[0])
                    with fg.wrap(model, doc, audit=fg.MemorySink()):
                        pre.append(timed(model, ids, new=1)[0])
                p0, d0 = timed(model, ids)
                with fg.wrap(model, doc, audit=fg.MemorySink()):
                    p1, d1 = timed(model, ids)
                bare_pre.append(p0), bare_dec.append(d0), pre.append(p1), dec.append(d1)
            ratio_pre = statistics.median(g / u for g, u in zip(pre, bare_pre, strict=True))
            ratio_dec = statistics.median(g / u for g, u in zip(dec, bare_dec, strict=True))
            predicted_pre = model_flops(PROMPT // 2) / (
                model_flops(PROMPT // 2) + guard_flops(mode)
            )
            ctx = PROMPT + NEW // 2
            predicted_dec = model_flops(ctx) / (model_flops(ctx) + guard_flops(mode))
            row = (f"| {mode} | {b} | {statistics.median(bare_pre):.0f} | "
                   f"{statistics.median(pre):.0f} | **{ratio_pre:.3f}** ({predicted_pre:.3f}) | "
                   f"{statistics.median(bare_dec):.1f} | {statistics.median(dec):.1f} | "
                   f"**{ratio_dec:.3f}** ({predicted_dec:.3f}) |")  # fmt: skip
            rows.append(row)
            print(row, flush=True)

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    table = [
        "| mode | batch | prefill tok/s unwrapped | guarded | ratio (FLOP-predicted) "
        "| decode tok/s unwrapped | guarded | ratio (FLOP-predicted) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        *rows,
    ]
    command = " ".join([".venv/bin/python", "bench/overhead.py", *sys.argv[1:]])
    section = "\n".join([
        SECTION,
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine()}, no GPU; torch {torch.__version__}, {args.threads} threads.  ",
        f"Date: {time.strftime('%Y-%m-%d')}.",
        "",
        f"Llama, hidden {HIDDEN}, intermediate {INTER}, {LAYERS} layers, {HEADS} heads, vocabulary "
        f"{VOCAB}, fp32, random weights; SAELens JumpReLU SAE, {D_SAE:,} features, on `{HOOK}`; "
        f"three policies × 8 features; {PROMPT} prompt tokens, {NEW} new, greedy; {args.runs} "
        "runs per mode, each right after an unwrapped run (prefill: "
        f"{args.runs * (PREFILL_PAIRS + 1)} pairs); medians of the per-pair ratios. "
        "Thresholds keep every policy silent except in the row that says otherwise; "
        "\"full audit\" encodes every feature and keeps the top 32 per token for the trace.",
        "",
        *table,
        "",
        *lines,
        f"- peak RSS of the whole run: {peak:.0f} MiB",
        "",
    ])  # fmt: skip
    print(section)
    if args.write_docs:
        write_section(SECTION, section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
