"""`featureguard demo`: the shipped model, unwrapped and under log, block and suppress.

For a handful of held-out prompts it prints the reply of each setting one under the other, the
checker's verdict, which policy fired on which token, and where the audit log is; it ends with
a one-line summary of that log.
"""

from __future__ import annotations

import argparse
import textwrap
from collections import Counter
from pathlib import Path

import torch

from featureguard.audit import iter_records, verify
from featureguard.demo import assets
from featureguard.demo.checker import check_code
from featureguard.demo.corpus import lean_prompts
from featureguard.guard import wrap
from featureguard.policy import load_policies

SETTINGS = ("log", "block", "suppress")
WIDTH = 60


def _policy_for(setting: str, folder: Path) -> Path:
    """log and block use the detection policy with that action; suppress its own file."""
    if setting == "suppress":
        return folder / "unsafe-code-suppress.yaml"
    return folder / "unsafe-code.yaml"


def _override_action(path: Path, action: str) -> dict:
    """The detection policy file as a document, its action set to `action`."""
    import yaml

    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    for policy in doc["policies"]:
        policy["action"] = action
    for sae in doc["saes"].values():
        sae["path"] = str((path.parent / sae["path"]).resolve())
    return doc


def _show(label: str, text: str, verdict: str, fired: str) -> None:
    body = text.rstrip("\n") or "(empty)"
    first, *rest = body.splitlines() or [""]
    print(f"  {label:<10} │ {first}")
    for line in rest[:6]:
        print(f"  {'':<10} │ {line}")
    print(f"  {'':<10} └ checker: {verdict}{'; ' + fired if fired else ''}")


def run(args: argparse.Namespace) -> int:
    torch.manual_seed(0)
    model, tok = assets.load_model(args.model)
    folder = Path(args.policies)
    audit = Path(args.audit)
    audit.unlink(missing_ok=True)
    prompts = lean_prompts("test", "unsafe", args.prompts, seed=7)
    gen = {"max_new_tokens": args.max_new_tokens, "do_sample": False}
    print(f"model {args.model} · policies {folder} · {len(prompts)} unsafe-leaning prompts\n")
    for i, prompt in enumerate(prompts, 1):
        tail = "\n".join(prompt.text.splitlines()[-3:])
        print(f"[{i}] …{textwrap.indent(tail, '    ')[4:]}")
        enc = tok(prompt.text, return_tensors="pt")
        with torch.no_grad():
            bare = model.generate(**enc, **gen)
        reply = tok.decode(bare[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        _show("unwrapped", reply, check_code(prompt, reply), "")
        for setting in SETTINGS:
            path = _policy_for(setting, folder)
            source = (
                load_policies(path) if setting == "suppress" else _override_action(path, setting)
            )
            with wrap(model, source, tokenizer=tok, audit=audit) as guard:
                [text] = guard.generate(prompt.text, **gen)
                outcome = guard.last[0]
            fired = ", ".join(
                f"{t.policy} on token {t.token_index} {t.token!r}" for t in outcome.triggers[:2]
            )
            verdict = "withheld" if outcome.blocked else check_code(prompt, text)
            _show(setting, text, verdict, f"fired: {fired}" if fired else "nothing fired")
        print()
    _summary(audit)
    return 0


def _summary(audit: Path) -> None:
    """One line: records, what fired how often, blocks, and whether the chain verifies."""
    counts: Counter[str] = Counter()
    blocked = requests = 0
    for record in iter_records(audit):
        if record["event"] == "policy_triggered":
            counts[f"{record['policy']}/{record['action']}"] += 1
        elif record["event"] == "request_completed":
            requests += 1
            blocked += len(record.get("blocked", []))
    report = verify(audit)
    fired = ", ".join(f"{k} ×{v}" for k, v in counts.most_common())
    chain = "chain ok" if report.ok else f"chain BROKEN at line {report.first_bad_line}"
    fired = fired or "nothing fired"
    print(f"audit {audit}: {requests} requests, {report.records} records, {fired}, "
          f"{blocked} blocked, {chain}")  # fmt: skip


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help="the bundled demo model under log, block and suppress")
    p.add_argument("--model", default=str(assets.MODEL_DIR), help="demo model folder")
    p.add_argument("--policies", default=str(assets.POLICY_DIR), help="demo policies folder")
    p.add_argument("--audit", default="featureguard-demo-audit.jsonl", help="audit log to write")
    p.add_argument("--prompts", type=int, default=4, help="how many prompts")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.set_defaults(func=run)
