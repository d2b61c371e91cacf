"""The `featureguard` command: validate policies, inspect SAEs, run a guarded prompt, verify logs.

Every subcommand exits 0 on success, 1 when what it checked is bad (invalid policy, broken
chain) and 2 on a usage or loading error, with a one-line message instead of a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from featureguard.audit_cli import add_audit_commands
from featureguard.errors import FeatureguardError


def _validate(args: argparse.Namespace) -> int:
    from featureguard.policy import validate_files

    problems = validate_files(args.files)
    for problem in problems:
        print(problem)
    if not problems:
        print(f"ok: {len(args.files)} file(s) valid")
    return 1 if problems else 0


def _inspect(args: argparse.Namespace) -> int:
    from featureguard.sae import load_sae

    sae = load_sae(args.sae, features=[], allow_pickle=args.allow_pickle)
    cfg, norm = sae.cfg, sae.cfg.normalization
    target = Path(args.sae.partition("::")[0])
    files = [p for p in target.rglob("*") if p.is_file()] if target.is_dir() else [target]
    facts = {
        "format": cfg.format,
        "architecture": cfg.architecture + (f" (k={cfg.k})" if cfg.k else ""),
        "d_in": cfg.d_in,
        "d_sae": cfg.d_sae,
        "hook": cfg.hook,
        "model": cfg.model_name,
        "normalisation": norm.kind
        + (f" (in x{norm.scale_in:g}, out /{norm.scale_out:g})" if norm.kind == "constant" else "")
        + (", centred" if norm.center else ""),
        "subtract b_dec": cfg.subtract_b_dec,
        "dtype": str(sae.dtype).removeprefix("torch."),
        "file size": sum(p.stat().st_size for p in files if target.exists()),
    }
    if args.json:
        print(json.dumps(facts))
    else:
        for key, value in facts.items():
            print(f"{key:>15}: {value}")
    return 0


def _run(args: argparse.Namespace) -> int:
    from featureguard.guard import wrap
    from featureguard.model_files import load_model

    model, tokenizer = load_model(args.model)
    with wrap(model, args.policies, tokenizer=tokenizer, audit=args.audit) as guard:
        [reply] = guard.generate(args.prompt, max_new_tokens=args.max_new_tokens, do_sample=False)
        outcome = guard.last[0]
        print(reply)
        print("---")
        if outcome.blocked:
            print(f"blocked by {outcome.blocked_by}")
        for t in outcome.triggers:
            where = "prompt" if t.in_prompt else "reply"
            print(f"{t.policy} ({t.action}) on {where} token {t.token_index} {t.token!r}: "
                  f"score {t.score:.3f}")  # fmt: skip
        if not outcome.triggers:
            print("no policy triggered")
        print(f"audit log: {guard.audit.sink.path if hasattr(guard.audit.sink, 'path') else '-'}")
    return 0


def _audit_verify(args: argparse.Namespace) -> int:
    from featureguard.audit import verify
    from featureguard.audit.shards import sets_at

    bad = 0
    for path in args.logs:
        sets = sets_at(path)
        if Path(path).is_dir() and not sets:
            raise FeatureguardError(f"{path}: a folder without an anchor log (*.anchors.jsonl)")
        for name in sets:
            bad += _verify_set(name)
        if (sets and not Path(path).is_file()) or Path(path).name.endswith(".anchors.jsonl"):
            continue
        report = verify(path)
        if report.ok:
            print(f"{path}: ok, {report.records} records, chain head {report.last_hash[:16]}")
        else:
            kind = "truncated" if report.truncated_tail else "FAILED"
            print(f"{path}: {kind} at line {report.first_bad_line}: {report.reason}")
            bad += 1
    return 1 if bad else 0


def _verify_set(name: Path) -> int:
    """Print the check of one shard set (featureguard.audit.shards); 1 when it fails."""
    from featureguard.audit.shards import verify_set

    report = verify_set(name)
    records = sum(r.records for r in report.shards.values())
    after = sum(report.unanchored.values())
    state = "ok" if report.ok else "FAILED"
    print(f"{name} (shard set): {state}, {len(report.shards)} shard(s), {records} records, "
          f"{report.anchors.records} anchor(s), {after} record(s) after the last "
          "anchor")  # fmt: skip
    for shard, r in report.shards.items():
        print(f"  {shard}: {'ok' if r.ok else 'FAILED'}, {r.records} records, "
              f"{report.anchored.get(shard, 0)} anchored")  # fmt: skip
    for problem in report.problems:
        print(f"  problem: {problem}")
    return 0 if report.ok else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="featureguard", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("validate", help="check policy files; print every problem")
    p.add_argument("files", nargs="+")
    p.set_defaults(func=_validate)

    p = sub.add_parser("inspect", help="describe an SAE: format, shapes, hook, normalisation")
    p.add_argument("sae", help="a folder, file, path::hookpoint or hf://org/repo/sub/path")
    p.add_argument("--allow-pickle", action="store_true", help="allow .pt/.pth state dicts")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_inspect)

    p = sub.add_parser("run", help="generate once under the policies; print reply and triggers")
    p.add_argument("--model", required=True, help="a transformers model folder")
    p.add_argument("--policies", required=True, help="a policy YAML file")
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--audit", help="audit log path (default: the policy file's audit.path)")
    p.set_defaults(func=_run)

    from featureguard import calibrate, discovery
    from featureguard.demo import show
    from featureguard.integrations.ray.command import add_scan_parser
    from featureguard.integrations.server import command as serve

    discovery.add_parser(sub)
    calibrate.add_parser(sub)
    show.add_parser(sub)
    serve.add_parser(sub)
    add_scan_parser(sub)

    p = sub.add_parser("audit", help="read audit logs")
    audit = p.add_subparsers(dest="audit_command", required=True)
    v = audit.add_parser("verify", help="check the hash chain; name the first bad line")
    v.add_argument("logs", nargs="+", help="audit logs; a shard set (its name, its anchor log "
                   "or a folder) checks every shard and the anchors")  # fmt: skip
    v.set_defaults(func=_audit_verify)
    add_audit_commands(audit)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except FeatureguardError as exc:
        print(f"featureguard: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
