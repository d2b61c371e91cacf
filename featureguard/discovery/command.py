"""`featureguard discover detect|intervene`: the command line over `detect` and `intervene`.

`add_parser(subparsers)` registers the verb on the main parser; `run(args)` is its handler
(set as `func`), returning the exit status: 0 on success, 1 when intervene found nothing.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

import torch

from featureguard.discovery.activations import read_examples
from featureguard.discovery.detect import PROBES, SCREEN, detect
from featureguard.discovery.intervene import (
    MODES,
    candidate_features,
    generate_completions,
    intervene,
)
from featureguard.errors import FeatureguardError

__all__ = ["add_parser", "load_checker", "run"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `discover` with its two verbs on the `featureguard` subparsers."""
    parser = subparsers.add_parser("discover", help="find features that detect or steer a concept")
    verbs = parser.add_subparsers(dest="discover_command", required=True)

    d = verbs.add_parser("detect", help="rank features on labelled texts; fit a sparse probe")
    _common(d)
    d.add_argument("--positive", required=True, help="examples of the concept (text or JSONL)")
    d.add_argument("--negative", required=True, help="examples without it (text or JSONL)")
    d.add_argument("--k", type=int, default=20, help="most features in the probe (default 20)")
    d.add_argument(
        "--probe",
        default="max",
        choices=PROBES,
        help="fit on the policy's max-over-tokens score (max, default), on span tokens "
        "(tokens: needs spans) or on per-feature maxima (pooled)",
    )
    d.add_argument(
        "--screen",
        type=int,
        default=SCREEN,
        help=f"features the probe starts from, half by recall, half by AUROC (default {SCREEN})",
    )
    d.add_argument("--top", type=int, default=10, help="ranked features to show (default 10)")
    d.add_argument("--validation", type=float, default=0.25, help="fraction held out (0.25)")
    d.add_argument("--action", default="log", choices=("log", "block"), help="snippet action")
    d.add_argument("--policy-name", default="detected", help="name of the policy written")

    i = verbs.add_parser("intervene", help="pick features by their effect when suppressed")
    _common(i)
    i.add_argument("--prompts", required=True, help="prompts that lead toward the concept")
    i.add_argument(
        "--checker",
        required=True,
        help="module:function or file.py:function, (prompt, completion) -> "
        "'unsafe' | 'safe' | 'invalid'",
    )
    i.add_argument(
        "--candidates",
        type=int,
        default=20,
        help="candidates: the N features that best tell unsafe from safe completions",
    )
    i.add_argument("--features", help="comma-separated candidate features instead")
    i.add_argument(
        "--contrast",
        help="prompts leaning away from the concept (text or JSONL): their completions join "
        "the ranking of candidates, so that both classes are there to tell apart",
    )
    i.add_argument(
        "--benign",
        help="benign texts (text or JSONL): each feature set's threshold becomes the "
        "--benign-quantile of its score's maximum over each text",
    )
    i.add_argument(
        "--benign-quantile", type=float, default=0.99, help="see --benign (default 0.99)"
    )
    i.add_argument(
        "--mode",
        default="conditional",
        choices=MODES,
        help="edit the triggering tokens only, or every token from a sequence's first trigger "
        "on (the whole prompt if it triggers there); default conditional",
    )
    i.add_argument("--max-features", type=int, default=5, help="most features chosen (5)")
    i.add_argument(
        "--widen",
        type=int,
        default=0,
        help="then add up to N features that are edited but not scored (weight 0), chosen "
        "the same way (default 0)",
    )
    i.add_argument("--held-out", type=float, default=0.3, help="fraction of prompts held out")
    i.add_argument("--samples", type=int, default=1, help="completions per prompt (1)")
    i.add_argument("--max-new-tokens", type=int, default=48)
    i.add_argument("--temperature", type=float, default=0.8, help="0 for greedy (0.8)")
    i.add_argument("--policy-name", default="intervene", help="name of the policy written")
    parser.set_defaults(func=run)
    return parser


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="a transformers model folder")
    p.add_argument("--sae", required=True, help="the SAE (folder, file or hf:// reference)")
    p.add_argument("--hook", help="hook point (default: the one the SAE's config names)")
    p.add_argument("--sae-name", default="sae", help="the SAE's name under saes: in the snippet")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="write the policy snippet here (default: print it)")


def run(args: argparse.Namespace) -> int:
    """Run `discover detect` or `discover intervene`."""
    from featureguard.model_files import load_model

    model, tokenizer = load_model(args.model)
    if args.discover_command == "detect":
        return _detect(args, model, tokenizer)
    return _intervene(args, model, tokenizer)


def _emit(text: str, out: str | None) -> None:
    if out:
        Path(out).write_text(text, encoding="utf-8")
        print(f"policy snippet written to {out}")
    else:
        print(text, end="")


def _detect(args: argparse.Namespace, model: Any, tokenizer: Any) -> int:
    pos, neg = read_examples(args.positive), read_examples(args.negative)
    spans = [e.spans or () for e in pos] if any(e.spans is not None for e in pos) else None
    result = detect(
        model,
        tokenizer,
        args.sae,
        args.hook,
        [e.text for e in pos],
        [e.text for e in neg],
        pos_spans=spans,
        probe=args.probe,
        k=args.k,
        top=args.top,
        validation=args.validation,
        screen=args.screen,
        seed=args.seed,
    )
    print(
        f"{'feature':>8} {'AUROC seq':>9} {'AUROC tok':>9} {'recall':>6} {'mean diff':>9} "
        f"{'max':>8} {'fires':>6}"
    )
    for s in result.ranking:
        tok = "-" if s.auroc_token is None else f"{s.auroc_token:.3f}"
        print(
            f"{s.index:>8} {s.auroc_seq:>9.3f} {tok:>9} {s.recall_seq:>6.1%} {s.mean_diff:>9.3g} "
            f"{s.max_activation:>8.3g} {s.firing_rate:>6.1%}"
        )
        for line in result.contexts[s.index]:
            print(f"{'':>10}{line}")
    val = "-" if result.auroc_validation is None else f"{result.auroc_validation:.3f}"
    print(
        f"probe: {len(result.features)} features, threshold {result.threshold:.4g}, "
        f"AUROC train {result.auroc_train:.3f}, validation {val}"
    )
    if result.forms is not None:
        print(f"forms: {result.forms.advice()}")
    _emit(result.snippet(args.policy_name, args.sae_name, action=args.action), args.out)
    return 0


def load_checker(spec: str) -> Any:
    """The function named by `module:function` or `path/to/file.py:function`."""
    where, sep, name = spec.rpartition(":")
    if not sep or not where or not name:
        raise FeatureguardError(f"expected --checker module:function, got {spec!r}")
    try:
        if where.endswith(".py"):
            loaded = importlib.util.spec_from_file_location("featureguard_checker", where)
            if loaded is None or loaded.loader is None:
                raise ImportError(where)
            module = importlib.util.module_from_spec(loaded)
            loaded.loader.exec_module(module)
        else:
            if os.getcwd() not in sys.path:
                sys.path.insert(0, os.getcwd())
            module = importlib.import_module(where)
    except (ImportError, OSError) as exc:
        raise FeatureguardError(f"cannot import the checker {spec!r}: {exc}") from exc
    function = getattr(module, name, None)
    if not callable(function):
        raise FeatureguardError(f"{where} has no function {name!r}")
    return function


def _candidates(
    args: argparse.Namespace, model: Any, tokenizer: Any, checker: Any, selection: list[str]
) -> list[int]:
    """`--features`, or the `--candidates` features that best tell the unwrapped model's unsafe
    completions of the selection prompts (and of the `--contrast` prompts) from its safe ones."""
    if args.features:
        try:
            return [int(x) for x in args.features.split(",") if x.strip()]
        except ValueError:
            raise FeatureguardError(f"expected --features 1,2,3, got {args.features!r}") from None
    if args.contrast:  # prompts leaning the other way: both classes to tell apart
        selection = selection + [e.text for e in read_examples(args.contrast)]
    completions = generate_completions(
        model,
        tokenizer,
        selection,
        samples_per_prompt=args.samples,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        seed=args.seed,
    )
    rows = [p for p in selection for _ in range(args.samples)]
    unsafe = [checker(p, c) == "unsafe" for p, c in zip(rows, completions, strict=True)]
    texts = [p + c for p, c in zip(rows, completions, strict=True)]
    found = candidate_features(
        model, tokenizer, args.sae, args.hook, texts, unsafe, args.candidates
    )
    print(f"candidates ({sum(unsafe)} of {len(unsafe)} completions unsafe): {found}")
    return found


def _intervene(args: argparse.Namespace, model: Any, tokenizer: Any) -> int:
    checker = load_checker(args.checker)
    prompts = [e.text for e in read_examples(args.prompts)]
    if len(prompts) < 2:
        raise FeatureguardError("intervene needs at least two prompts (selection and held out)")
    order = torch.randperm(len(prompts), generator=torch.Generator().manual_seed(args.seed))
    held = min(len(prompts) - 1, max(1, round(len(prompts) * args.held_out)))
    held_out = [prompts[i] for i in sorted(order[:held].tolist())]
    selection = [prompts[i] for i in sorted(order[held:].tolist())]
    candidates = _candidates(args, model, tokenizer, checker, selection)
    result = intervene(
        model,
        tokenizer,
        args.sae,
        args.hook,
        selection,
        checker,
        candidates,
        held_out=held_out,
        benign=None if args.benign is None else [e.text for e in read_examples(args.benign)],
        benign_quantile=args.benign_quantile,
        mode=args.mode,
        max_features=args.max_features,
        widen=args.widen,
        samples_per_prompt=args.samples,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        seed=args.seed,
    )
    for t in result.trials:
        steps = ", ".join(f"+{r.feature}: {r.rate.positive:.3f}" for r in t.rounds) or "none"
        print(f"{t.method} {'' if t.strength is None else t.strength}: {steps}")
    if result.widen_rounds:
        steps = ", ".join(f"+{r.feature}: {r.rate.positive:.3f}" for r in result.widen_rounds)
        print(f"widened (edited, weight 0): {steps}")
    print(f"baseline {result.baseline.positive:.3f} on {result.baseline.total} selection samples")
    if not result.features:
        print("no candidate lowered the unsafe rate; no policy written")
        return 1
    print(
        f"chosen {list(result.features)} ({result.method}"
        f"{f', also edited {list(result.edit_only)}' if result.edit_only else ''}); held out: "
        f"{result.held_out.positive:.3f} vs unwrapped {result.held_out_baseline.positive:.3f}"
    )
    _emit(result.snippet(args.policy_name, args.sae_name), args.out)
    return 0
