"""The whole demo pipeline at toy scale: corpus → model → SAE → discovered, calibrated policies."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import featureguard as fg
from featureguard.demo.assets import HOOK, load_model
from featureguard.demo.build import SCALES, build
from featureguard.demo.corpus import lean_prompts


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    _toy_build(out)
    return out


def _toy_build(out: Path, reuse_model: bool = False) -> None:
    threads = torch.get_num_threads()  # the build sets its own; the rest of the suite keeps ours
    try:
        build(SCALES["toy"], out, say=lambda _: None, reuse_model=reuse_model)
    finally:
        torch.set_num_threads(threads)


def test_build_writes_every_artifact(built: Path) -> None:
    """Model, tokenizer, SAE, five policy files and a report with the measured figures."""
    assert (built / "models" / "demo-coder" / "model.safetensors").is_file()
    assert (built / "saes" / "demo-coder-res1" / "sae_weights.safetensors").is_file()
    names = sorted(p.name for p in (built / "policies" / "demo").glob("*.yaml"))
    assert names == [
        "manipulation.yaml",
        "pii.yaml",
        "unsafe-code-steer.yaml",
        "unsafe-code-suppress.yaml",
        "unsafe-code.yaml",
    ]
    report = json.loads((built / "build-report.json").read_text())
    assert report["sae"]["variance_explained"] > 0.5
    for name in ("unsafe-code", "pii", "manipulation"):
        assert report[name]["benign_bound"] <= SCALES["toy"].target_rate
    steer, cfg = report["unsafe-code-steer"], SCALES["toy"]
    assert steer["strength"] in cfg.steer_strengths and steer["features"]
    # Every candidate of the suppress search is screened alone, not only the suppress features.
    assert set(report["unsafe-code-suppress"]["features"]) <= set(steer["screened"])
    assert {f"[{f}] x{s:g}" for f in steer["screened"] for s in cfg.steer_strengths} <= set(
        steer["tried"]
    )
    # The suppress threshold is one of the measured benign quantiles: the lowest unsafe rate
    # within the altered and broken budgets, or the 99th percentile when none fits.
    suppress = report["unsafe-code-suppress"]
    if suppress["features"]:
        tuning = suppress["threshold"]
        assert [t["quantile"] for t in tuning["tried"]] == list(cfg.suppress_quantiles)
        within = [t for t in tuning["tried"] if t["altered"] <= cfg.suppress_max_altered
                  and t["broken"] <= cfg.suppress_max_broken]  # fmt: skip
        assert tuning["chosen"] == (min(within, key=lambda t: (t["unsafe"], -t["threshold"]))
                                    if within else tuning["tried"][0])  # fmt: skip
        path = built / "policies/demo/unsafe-code-suppress.yaml"
        [written] = yaml.safe_load(path.read_text())["policies"]
        assert written["threshold"] == tuning["chosen"]["threshold"]
        # The scored features (weight 1), then the widened ones (edited, weight 0).
        assert [(f["index"], f["weight"]) for f in written["features"]] == [
            *((f, 1.0) for f in suppress["features"]),
            *((f, 0.0) for f in suppress["edit_only"]),
        ]
        assert written["suppress"]["mode"] == suppress["mode"] == cfg.suppress_mode


def test_reusing_the_model_rebuilds_the_same_saes_and_policies(built: Path, tmp_path: Path) -> None:
    """`--reuse-model` redoes every step after the model exactly as a build from scratch."""
    shutil.copytree(built / "models", tmp_path / "models")
    _toy_build(tmp_path, reuse_model=True)
    for sae in ("demo-coder-res1", "demo-coder-res2"):
        a = load_file(built / "saes" / sae / "sae_weights.safetensors")
        b = load_file(tmp_path / "saes" / sae / "sae_weights.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), sae

    def undated(path: Path) -> str:  # the calibration's date is the one thing allowed to differ
        return re.sub(r"(?m)^ *date: .*$", "", path.read_text())

    for path in sorted((built / "policies" / "demo").glob("*.yaml")):
        assert undated(tmp_path / "policies" / "demo" / path.name) == undated(path), path.name


def test_shipped_saes_load_through_the_user_loader(built: Path) -> None:
    """Both SAEs go through load_sae like any pretrained one, hook included; the suppress
    policy names the second one (its own hook), the detectors the first."""
    sae = fg.load_sae(built / "saes" / "demo-coder-res1")
    assert sae.cfg.format == "saelens" and sae.cfg.architecture == "topk" and sae.cfg.hook == HOOK
    hook = SCALES["toy"].suppress_hook
    assert fg.load_sae(built / "saes" / "demo-coder-res2").cfg.hook == hook
    policy_dir = built / "policies" / "demo"
    suppress = fg.load_policies(policy_dir / "unsafe-code-suppress.yaml")
    assert [s.hook for s in suppress.saes.values()] == [hook]
    assert [s.hook for s in fg.load_policies(policy_dir / "pii.yaml").saes.values()] == [HOOK]


def test_policies_validate_and_guard_the_model(built: Path) -> None:
    """Every written policy validates, carries its calibration, and wraps the built model."""
    model, tok = load_model(built / "models" / "demo-coder")
    for path in sorted((built / "policies" / "demo").glob("*.yaml")):
        policies = fg.load_policies(path)
        if path.stem not in ("unsafe-code-suppress", "unsafe-code-steer"):
            assert policies.policies[0].calibration is not None
        prompt = lean_prompts("test", "unsafe", 1)[0].text
        with fg.wrap(model, policies, tokenizer=tok, audit=fg.MemorySink()) as guard:
            [reply] = guard.generate(prompt, max_new_tokens=8, do_sample=False)
        assert isinstance(reply, str)
