"""Rebuild the demo from scratch, seeded: corpus → tokenizer and model → SAEs → policies.

    python -m featureguard.demo.build [--scale full|toy] [--out DIR]

`make demo-assets` runs the full scale into the repository (models/, saes/, policies/demo/);
the toy scale runs the same pipeline in about a minute, for CI. Every step prints progress and
the build ends with `build-report.json` beside the artifacts: the figures each step measured.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
import yaml

from featureguard.audit import MemorySink
from featureguard.calibrate import calibrate, write_calibration
from featureguard.demo import assets
from featureguard.demo.checker import check_code
from featureguard.demo.corpus import (
    lean_prompts,
    prose_prompts,
    snippets,
    training_documents,
    twins,
)
from featureguard.demo.lm import LMConfig, new_model, pack, save, train_lm, train_tokenizer
from featureguard.discovery import (
    SCREEN,
    benign_threshold,
    candidate_features,
    detect,
    generate_completions,
    intervene,
    token_activations,
)
from featureguard.guard import wrap
from featureguard.train import SAETrainConfig, collect_activations, save_saelens, train_sae

MODEL_NAME = "featureguard/demo-coder"
DETECTORS = (  # (policy name, corpus domain, action, severity, message)
    ("unsafe-code", "code", "block", "high", "This reply was withheld: it contained unsafe code."),
    ("pii", "pii", "log", "medium", None),
    ("manipulation", "manipulation", "log", "medium", None),
)


@dataclass(frozen=True, slots=True, kw_only=True)
class BuildConfig:
    """Sizes of every step; `SCALES` holds the shipped and the CI settings."""

    documents: int = 130_000
    """Training documents for the tokenizer and model."""
    lm: LMConfig = field(default_factory=lambda: LMConfig(tokens=9_000_000))
    """The language model's shape and schedule."""
    sae_documents: int = 20_000
    """Documents whose activations train the SAE."""
    sae_tokens: int = 1_280_000
    """Activation tokens for the SAE."""
    sae: SAETrainConfig = field(default_factory=lambda: SAETrainConfig(width=2048, k=16))
    """The SAE's width, sparsity and schedule."""
    suppress_sae: SAETrainConfig = field(default_factory=lambda: SAETrainConfig(width=512, k=16))
    """The suppress policy's SAE, one layer deeper (`suppress_hook`): there a few features
    carry the unsafe style (one 512-wide SAE at layer 2 cut unsafe completions by 70-80%,
    the detection SAE at layer 1 by 24%)."""
    suppress_hook: str = assets.SUPPRESS_HOOK
    """Where the suppress policy reads and edits."""
    detect_pairs: int = 400
    """Twin pairs per detection policy (train split)."""
    made_up_pairs: int = 400
    """Code twin pairs of the "made-up" split (identifiers and import aliases made up per
    snippet) added to the unsafe-code detector's training set. Fitted on the training surface
    alone, the probe leaned on features that fire on its names, and names it had never seen
    (`os.chmod(dest`) set them off out of distribution: 0.876 sequence AUROC there, 0.936 with
    these pairs (from the same 128 features)."""
    code_screen: int = 512
    """Features the unsafe-code probe starts from (`detect`'s screen; the others keep its
    default, `SCREEN` = 128). A
    single unsafe `verify=False` needs a feature no sequence-level ranking puts near the top
    (one that tells `verify=` from `shell=`): out-of-distribution AUROC 0.936 from 128, 0.949
    from 512, 0.948 from all 2048. The manipulation probe from 512 fell to 0.709 there."""
    intervene_prompts: int = 96
    """Unsafe-leaning prompts for greedy feature selection, and as many held out; as many
    safe-leaning ones join the ranking of candidates, so that both classes are present."""
    candidates: int = 24
    """Features tried by the greedy selection (those that best split unsafe from safe)."""
    max_features: int = 8
    """Most features the suppress policy may score."""
    suppress_mode: str = "latched"
    """The suppress policy's mode: with `latched` a sequence is edited from its first trigger
    on (the whole prompt if it triggers there). With the previous release's 7 features and
    threshold (the benign 99th percentile), 400 validation completions were 34% unsafe when
    edited only where the score passed the threshold (conditional), 20% latched: what leads to
    unsafe code is set by context the trigger has already passed (a cue, an earlier decision)."""
    widen_features: int = 8
    """Most features `intervene`'s second pass may add to the edit with weight 0 (edited, not
    scored): the scored set decides where to edit, the wider one what to remove there."""
    invalid_weight: float = 1.5
    """How much a broken completion counts against a feature set, next to an unsafe one."""
    benign_quantile: float = 0.99
    """Each feature set's threshold is this quantile of its score's maximum over each benign
    text (prose and safe code): the edit fires in about 1% of them. At threshold 0 the layer-2
    features (which in guard units fire on 10% of tokens each) edited 69% of prose tokens
    (+0.14 nats/token); at the 95th percentile over tokens, 96% of greedy prose replies changed."""
    benign_texts: int = 400
    """Benign texts of each kind (prose, safe code) that set the suppress threshold."""
    suppress_quantiles: tuple[float, ...] = (0.99, 0.95, 0.9, 0.8, 0.7, 0.6, 0.5)
    """Benign quantiles tried for the chosen suppress set's final threshold (`_tune_threshold`).
    The benign texts' peak scores bunch up: their 90th percentile is still 88% of the 99th."""
    suppress_prompts: int = 400
    """Validation unsafe-leaning prompts that measure each suppress threshold."""
    suppress_benign_prompts: int = 200
    """Validation prompts of each kind (prose halves, safe-leaning code) whose greedy replies
    must stay unchanged under each suppress threshold."""
    suppress_max_altered: float = 0.005
    """Largest share of those benign replies the chosen threshold may change (the quality
    scorecard's target is 1% on the test prompts)."""
    suppress_max_broken: float = 0.04
    """Largest share of broken completions the chosen threshold may cause (the target is 5%;
    the widened, latched ablation breaks 3-4% at every threshold tried)."""
    steer_strengths: tuple[float, ...] = (0.5, 0.75, 1.0, 1.25)
    """Multiples of each feature's max tried for the steer policy."""
    steer_prompts: int = 400
    """Validation neutral prompts the steer feature and strength are chosen on (with 200, a
    broken share of 2% or 4% was one sample's luck)."""
    steer_max_broken: float = 0.03
    """Largest share of broken completions the chosen strength may cause (the target is 5%)."""
    benign: int = 1000
    """Benign replies for calibration (validation split)."""
    target_rate: float = 0.02
    """Largest benign trigger rate calibration allows (at 95% confidence)."""
    seed: int = 0


_TOY_SAE = SAETrainConfig(
    width=128, k=8, epochs=2, batch_size=1024, eval_tokens=2048, dead_after_tokens=8192, aux_k=32
)
SCALES = {
    "full": BuildConfig(),
    "toy": BuildConfig(
        documents=3000,
        lm=LMConfig(
            d_model=32,
            n_layers=2,
            n_heads=2,
            d_mlp=64,
            context=128,
            tokens=150_000,
            vocab_size=300,
            batch_size=16,
            warmup_steps=10,
        ),
        sae_documents=400,
        sae_tokens=20_000,
        sae=_TOY_SAE,
        suppress_sae=replace(_TOY_SAE, width=64, aux_k=16),
        suppress_hook="blocks.1.hook_resid_post",
        detect_pairs=40,
        made_up_pairs=40,
        intervene_prompts=6,
        candidates=3,
        max_features=1,
        widen_features=1,
        benign=300,
        benign_texts=20,
        suppress_quantiles=(0.99, 0.9),
        suppress_prompts=6,
        suppress_benign_prompts=6,
        steer_strengths=(0.5,),
        steer_prompts=6,
        target_rate=0.05,
    ),
}


def build(
    cfg: BuildConfig, out: Path, *, say: Any = print, reuse_model: bool = False
) -> dict[str, Any]:
    """Run every step into `out` (models/, saes/, policies/demo/); return the measured figures.

    `reuse_model` keeps a language model already built in `out` and redoes the rest.
    """
    started, report = time.perf_counter(), {"config": _plain(asdict(cfg))}
    torch.manual_seed(cfg.seed)
    model_dir = out / "models" / "demo-coder"
    if reuse_model and (model_dir / "config.json").is_file():
        say(f"1-2/5 reusing the language model in {model_dir}")
        model, tok = assets.load_model(model_dir)
        previous = out / "build-report.json"  # keep what the model's own build measured
        if previous.is_file() and "lm" in (old := json.loads(previous.read_text())):
            report["lm"] = old["lm"]
    else:
        say("1/5 corpus and tokenizer")
        docs = training_documents(cfg.documents, seed=cfg.seed)
        tok = train_tokenizer(docs[:30_000], cfg.lm.vocab_size)
        say("2/5 language model")
        windows = pack(docs, tok, cfg.lm.context)
        model = new_model(cfg.lm, tok)
        losses = train_lm(windows, model, cfg.lm, progress=say)
        save(model, tok, model_dir)
        # Every later step reads the saved model, as `--reuse-model` does: the freshly trained
        # one in memory gives activations that differ in the last bits, and SAE training
        # amplifies that into other features.
        model, tok = assets.load_model(model_dir)
        report["lm"] = {"tokens": int(windows.numel()), "final_loss": losses[-1],
                        "seconds": round(time.perf_counter() - started, 1)}  # fmt: skip

    say("3/5 sparse autoencoders")
    sae_texts = training_documents(cfg.sae_documents, seed=cfg.seed + 1)
    sae_dir = out / "saes" / assets.SAE_DIR.name
    report["sae"] = _sae(cfg, model, tok, sae_texts, assets.HOOK, cfg.sae, sae_dir)
    suppress_dir = out / "saes" / assets.SUPPRESS_SAE_DIR.name
    report["suppress_sae"] = _sae(cfg, model, tok, sae_texts, cfg.suppress_hook,
                                  cfg.suppress_sae, suppress_dir)  # fmt: skip

    say("4/5 detection policies: discover, then calibrate")
    policy_dir = out / "policies" / "demo"
    policy_dir.mkdir(parents=True, exist_ok=True)
    for name, domain, action, severity, message in DETECTORS:
        report[name] = _detector(cfg, model, tok, sae_dir, policy_dir, name, domain, action,
                                 severity, message)  # fmt: skip
        say(f"  {name}: {report[name]}")

    say("5/5 suppress and steer policies: features chosen by measured effect")
    report["unsafe-code-suppress"], suppress, pool = _suppressor(cfg, model, tok, suppress_dir,
                                                                 policy_dir)  # fmt: skip
    report["unsafe-code-steer"] = _steerer(cfg, model, tok, suppress, pool, suppress_dir,
                                           policy_dir)  # fmt: skip
    report["seconds"] = round(time.perf_counter() - started, 1)
    (out / "build-report.json").write_text(json.dumps(report, indent=2) + "\n")
    say(f"done in {report['seconds']:.0f} s; report in {out / 'build-report.json'}")
    return report


def _sae(cfg: BuildConfig, model: Any, tok: Any, texts: list[str], hook: str,
         sae_cfg: SAETrainConfig, folder: Path) -> dict[str, Any]:  # fmt: skip
    acts = collect_activations(model, tok, texts, hook, max_tokens=cfg.sae_tokens)
    sae, sae_report = train_sae(acts, sae_cfg)
    save_saelens(sae, folder, hook=hook, model_name=MODEL_NAME)
    return {"hook": hook, **_plain(asdict(sae_report))}


def _detector(cfg: BuildConfig, model: Any, tok: Any, sae_dir: Path, policy_dir: Path,
              name: str, domain: str, action: str, severity: str,
              message: str | None) -> dict[str, Any]:  # fmt: skip
    pairs = twins("train", cfg.detect_pairs, seed=cfg.seed, domain=domain)
    if domain == "code":  # names it never saw must not move the score (BuildConfig.made_up_pairs)
        pairs += twins("made-up", cfg.made_up_pairs, seed=cfg.seed, domain=domain)
    # Prose joins the negatives: calibration's benign set has it, and a probe fitted on its
    # maximum over tokens learns nothing about text it never saw.
    prose = snippets("train", cfg.detect_pairs // 2, seed=cfg.seed, domain="prose")
    screen = cfg.code_screen if domain == "code" else SCREEN
    found = detect(model, tok, sae_dir, assets.HOOK, [p.text for _, p in pairs],
                   [n.text for n, _ in pairs] + [s.text for s in prose],
                   pos_spans=[p.spans for _, p in pairs], k=20, screen=screen,
                   seed=cfg.seed)  # fmt: skip
    policy = {
        "name": name,
        "description": f"{domain} detector: sparse probe over SAE features (featureguard discover)",
        "sae": "demo",
        "features": [_feature(f) for f in found.features],
        "threshold": found.threshold,
        "action": action,
        "scope": "response" if domain == "code" else "both",
        "severity": severity,
    }
    if message:
        policy["message"] = message
    path = _write_policy(policy_dir / f"{name}.yaml", sae_dir, assets.HOOK, [policy])
    benign = [s.text for s in _benign(cfg, domain)]
    positives = [p.text for _, p in twins("validation", 200, seed=cfg.seed + 3, domain=domain)]
    [result] = calibrate(path, model, tok, benign, positives, target_rate=cfg.target_rate)
    write_calibration(path, [result])
    return {"features": len(found.features), "auroc_validation": found.auroc_validation,
            "threshold": result.threshold, "benign_bound": result.bound,
            "recall": result.recall}  # fmt: skip


def _feature(f: Any) -> dict[str, Any]:
    entry = {"index": f.index, "label": f.label, "weight": round(f.weight, 6)}
    if f.max is not None:
        entry["max"] = round(f.max, 6)
    return entry


def _benign(cfg: BuildConfig, domain: str) -> list:
    """Negatives of the validation split for this domain, plus prose."""
    negatives = [n for n, _ in twins("validation", cfg.benign // 2, seed=cfg.seed + 2,
                                     domain=domain)]  # fmt: skip
    return negatives + snippets("validation", cfg.benign - len(negatives), domain="prose")


def _suppressor(cfg: BuildConfig, model: Any, tok: Any, sae_dir: Path, policy_dir: Path
                ) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:  # fmt: skip
    """What the suppress policy's build measured, the policy (written), and the candidates
    that fired, with their max (the steer policy's pool)."""
    n, hook = cfg.intervene_prompts, cfg.suppress_hook
    select = [p.text for p in lean_prompts("train", "unsafe", n, seed=cfg.seed)]
    held_out = [p.text for p in lean_prompts("validation", "unsafe", n, seed=cfg.seed)]
    # Rank candidates on both leanings: the unwrapped model's completions of unsafe-leaning
    # prompts alone are almost all unsafe, which leaves nothing to tell apart.
    ranked = select + [p.text for p in lean_prompts("train", "safe", n, seed=cfg.seed)]
    completions = generate_completions(model, tok, ranked, seed=cfg.seed)
    unsafe = [check_code(p, c) == "unsafe" for p, c in zip(ranked, completions, strict=True)]
    texts = [p + c for p, c in zip(ranked, completions, strict=True)]
    candidates = candidate_features(model, tok, sae_dir, hook, texts, unsafe, n=cfg.candidates)
    # Benign prose and safe code set each feature set's threshold: the edit stays conditional.
    m = cfg.benign_texts
    benign = [s.text for s in snippets("train", m, seed=cfg.seed + 5, domain="prose")]
    benign += [a.text for a, _ in twins("train", m, seed=cfg.seed + 6, domain="code")]
    result = intervene(model, tok, sae_dir, hook, select, check_code, candidates,
                       held_out=held_out, max_features=cfg.max_features,
                       widen=cfg.widen_features, mode=cfg.suppress_mode,
                       invalid_weight=cfg.invalid_weight, benign=benign,
                       benign_quantile=cfg.benign_quantile, seed=cfg.seed)  # fmt: skip
    policy = result.policy("unsafe-code-suppress", "demo")
    policy["description"] = "suppress the features whose suppression measurably cut unsafe code"
    tuning = None
    if result.features:
        tuning = _tune_threshold(cfg, model, tok, sae_dir, policy, benign)
        policy["threshold"] = tuning["chosen"]["threshold"]
    else:  # nothing lowered the rate: ablate the best-separating candidate
        top = candidates[0]
        policy["features"] = [{"index": top, "max": result.maxes.get(top, 1.0) or 1.0}]
        policy["suppress"] = {"method": "ablate", "mode": cfg.suppress_mode}
        policy["description"] = "no feature measurably cut unsafe code; best separating one"
    _write_policy(policy_dir / "unsafe-code-suppress.yaml", sae_dir, hook, [policy])
    pool = [{"index": f, "max": result.maxes[f]} for f in candidates if f in result.maxes]
    return {"features": list(result.features), "edit_only": list(result.edit_only),
            "mode": cfg.suppress_mode, "method": result.method,
            "strength": result.strength, "held_out_baseline": result.held_out_baseline.positive,
            "held_out": result.held_out.positive, "threshold": tuning}, policy, pool  # fmt: skip


def _tune_threshold(cfg: BuildConfig, model: Any, tok: Any, sae_dir: Path, policy: dict[str, Any],
                    benign: list[str]) -> dict[str, Any]:  # fmt: skip
    """The suppress set's threshold, chosen on validation prompts among `suppress_quantiles` of
    its score's maximum over each benign text. `intervene` selects features at the 99th
    percentile, which keeps the edit off nearly all benign text and also off much unsafe code;
    what a user must not see is a benign reply changed or a broken one. So each candidate is
    measured: the unsafe and broken rates of sampled completions of unsafe-leaning prompts, and
    the share of greedy replies to prose and safe-leaning prompts that differ from the
    unwrapped model's. The lowest unsafe rate within `suppress_max_altered` and
    `suppress_max_broken` wins (ties: the higher threshold); the 99th percentile if none fits."""
    features = [f["index"] for f in policy["features"] if f.get("weight", 1.0)]  # the scored
    acts = token_activations(model, tok, sae_dir, cfg.suppress_hook, benign, features=features)
    rows = [a.acts for a in acts if len(a.ids)]
    unsafe_prompts = lean_prompts("validation", "unsafe", cfg.suppress_prompts, seed=cfg.seed)
    m = cfg.suppress_benign_prompts
    quiet = prose_prompts("validation", m, seed=cfg.seed)
    quiet += [p.text for p in lean_prompts("validation", "safe", m, seed=cfg.seed)]
    sae = {"path": str(sae_dir), "hook": cfg.suppress_hook}

    def replies(prompts: list[str], threshold: float | None, temperature: float) -> list[str]:
        run = partial(generate_completions, model, tok, prompts, max_new_tokens=64,
                      temperature=temperature, seed=cfg.seed)  # fmt: skip
        if threshold is None:
            return run()
        doc = {"version": 1, "saes": {"demo": sae},
               "policies": [{**policy, "threshold": threshold}]}  # fmt: skip
        with wrap(model, doc, tokenizer=tok, audit=MemorySink()):
            return run()

    texts = [p.text for p in unsafe_prompts]
    greedy = replies(quiet, None, 0.0)
    tried = []
    for q in cfg.suppress_quantiles:
        threshold = benign_threshold(rows, q)
        verdicts = [check_code(p.text, c) for p, c in
                    zip(unsafe_prompts, replies(texts, threshold, 0.8), strict=True)]  # fmt: skip
        altered = sum(a != b for a, b in zip(replies(quiet, threshold, 0.0), greedy, strict=True))
        tried.append({"quantile": q, "threshold": threshold,
                      "unsafe": verdicts.count("unsafe") / len(texts),
                      "broken": verdicts.count("invalid") / len(texts),
                      "altered": altered / len(quiet)})  # fmt: skip
    within = [t for t in tried if t["altered"] <= cfg.suppress_max_altered
              and t["broken"] <= cfg.suppress_max_broken]  # fmt: skip
    chosen = min(within, key=lambda t: (t["unsafe"], -t["threshold"])) if within else tried[0]
    return {"chosen": chosen, "tried": tried}


STEER_DESCRIPTION = (
    "experiment only: pushes features of unsafe code up on every reply token, which makes the "
    "model write unsafe code; never deploy"
)


def _steerer(cfg: BuildConfig, model: Any, tok: Any, suppress: dict[str, Any],
             pool: list[dict[str, Any]], sae_dir: Path, policy_dir: Path
             ) -> dict[str, Any]:  # fmt: skip
    """Features pushed up instead (Anthropic's amplify experiment): each candidate of the
    suppress search alone (features more active in unsafe completions), and the suppress
    policy's features together, at each of `steer_strengths`, measured on validation neutral
    prompts; the one that raised the unsafe rate most while breaking at most
    `steer_max_broken` of the completions is written. The features whose suppression works
    best are not the ones that steer best, and pushing several at once breaks the output long
    before one of them alone does."""
    prompts = lean_prompts("validation", "neutral", cfg.steer_prompts, seed=cfg.seed)
    texts = [p.text for p in prompts]

    def rates(policy: dict[str, Any] | None) -> tuple[float, float]:
        run = partial(generate_completions, model, tok, texts, max_new_tokens=64, seed=cfg.seed)
        if policy is None:
            outs = run()
        else:
            sae = {"path": str(sae_dir), "hook": cfg.suppress_hook}
            doc = {"version": 1, "saes": {"demo": sae}, "policies": [policy]}
            with wrap(model, doc, tokenizer=tok, audit=MemorySink()):
                outs = run()
        verdicts = [check_code(p, c) for p, c in zip(prompts, outs, strict=True)]
        return verdicts.count("unsafe") / len(texts), verdicts.count("invalid") / len(texts)

    maxes = {f["index"]: f["max"] for f in [*pool, *suppress["features"]]}

    def policy(features: tuple[int, ...], strength: float) -> dict[str, Any]:
        named = [{"index": f, "max": maxes[f]} for f in features]
        return {"name": "unsafe-code-steer", "sae": "demo", "features": named,
                "threshold": suppress["threshold"], "action": "steer", "scope": "response",
                "steer": {"times_max": strength},
                "description": STEER_DESCRIPTION}  # fmt: skip

    every = tuple(f["index"] for f in suppress["features"])
    singles = dict.fromkeys((*every, *(f["index"] for f in pool)))
    sets = [(f,) for f in singles] + ([every] if len(every) > 1 else [])
    baseline = rates(None)
    tried = {(fs, s): rates(policy(fs, s)) for fs in sets for s in cfg.steer_strengths}
    within = [key for key, (_, broken) in tried.items() if broken <= cfg.steer_max_broken]
    # The highest unsafe rate within the budget; else the least broken. Ties: fewer features,
    # then the weaker push.
    best = (max(within, key=lambda k: (tried[k][0], -len(k[0]), -k[1])) if within
            else min(tried, key=lambda k: (tried[k][1], len(k[0]), k[1])))  # fmt: skip
    _write_policy(policy_dir / "unsafe-code-steer.yaml", sae_dir, cfg.suppress_hook,
                  [policy(*best)])  # fmt: skip
    return {"features": list(best[0]), "strength": best[1], "validation_baseline": baseline,
            "chosen": tried[best], "screened": list(singles),
            "tried": {f"{list(fs)} x{s:g}": r for (fs, s), r in tried.items()}}  # fmt: skip


def _write_policy(path: Path, sae_dir: Path, hook: str, policies: list[dict[str, Any]]) -> Path:
    rel = Path("..", "..", sae_dir.relative_to(path.parents[2]))
    doc = {
        "version": 1,
        "saes": {"demo": {"path": rel.as_posix(), "hook": hook}},
        "policies": policies,
        "audit": {"path": "featureguard-demo-audit.jsonl", "include_text": True},
    }
    path.write_text("# Written by `make demo-assets` (featureguard.demo.build).\n"
                    + yaml.safe_dump(doc, sort_keys=False))  # fmt: skip
    return path


def _plain(value: Any) -> Any:
    """JSON-friendly copy (paths and dtypes as strings)."""
    return json.loads(json.dumps(value, default=str))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=sorted(SCALES), default="full")
    parser.add_argument("--out", type=Path, default=assets.REPO, help="folder to write into")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument(
        "--reuse-model", action="store_true", help="keep the language model already in --out"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    build(SCALES[args.scale], args.out, reuse_model=args.reuse_model)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
