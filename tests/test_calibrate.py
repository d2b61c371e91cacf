"""featureguard.calibrate: thresholds with a finite-sample bound on the benign trigger rate."""

from __future__ import annotations

import argparse
import itertools
import math
from pathlib import Path

import pytest
import tiny_world as tw
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

import featureguard as fg
from featureguard.calibrate import (
    add_parser,
    calibrate,
    choose_threshold,
    held_out_count_bound,
    min_set_size,
    run,
    set_sha256,
    upper_bound,
    write_calibration,
)
from featureguard.discovery.scores import reply_scores
from featureguard.errors import FeatureguardError

ALPHABET = "abcdefghijklmnopqrstuvwxyz .,:=()"
PROPERTY = settings(max_examples=60, deadline=None)


def _binomial_cdf(k: int, n: int, p: float) -> float:
    """P(Binomial(n, p) ≤ k) by summing exact terms."""
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k + 1))


def _normal_tail(t: float) -> float:
    """P(Z > t) for a standard normal Z."""
    return 0.5 * math.erfc(t / math.sqrt(2))


# ---- the maths -----------------------------------------------------------------------------------
@pytest.mark.parametrize(("k", "n"), [(0, 10), (1, 10), (5, 100), (30, 400), (9, 10)])
def test_upper_bound_solves_the_clopper_pearson_equation(k: int, n: int) -> None:
    """At the bound, P(Binomial(n, bound) ≤ k) equals 1 − confidence."""
    bound = upper_bound(k, n, 0.95)
    assert _binomial_cdf(k, n, bound) == pytest.approx(0.05, abs=1e-9)
    assert k / n < bound < 1


@PROPERTY
@given(n=st.integers(1, 600), data=st.data())
def test_upper_bound_is_monotone(n: int, data: st.DataObject) -> None:
    """The bound grows with k and with the confidence, and shrinks as n grows."""
    k = data.draw(st.integers(0, n - 1))
    conf = data.draw(st.floats(0.5, 0.99))
    assert upper_bound(k, n, conf) <= upper_bound(k + 1, n, conf)
    assert upper_bound(k, n + 1, conf) <= upper_bound(k, n, conf)
    assert upper_bound(k, n, conf) <= upper_bound(k, n, min(conf + 0.005, 0.999))


@PROPERTY
@given(
    scores=st.lists(st.floats(-5, 5), min_size=300, max_size=700),
    rates=st.tuples(st.floats(0.02, 0.3), st.floats(0.02, 0.3)).map(sorted),  # n >= 228 suffices
    confidence=st.floats(0.8, 0.99),
)
def test_threshold_rule_properties(
    scores: list[float], rates: list[float], confidence: float
) -> None:
    """bound ≤ target; at most `allowed` scores exceed; a higher target never raises the
    threshold nor lowers the bound."""
    low, high = (choose_threshold(scores, r, confidence) for r in rates)
    for choice, rate in ((low, rates[0]), (high, rates[1])):
        assert choice.bound <= rate
        assert choice.exceed == sum(s > choice.threshold for s in scores) <= choice.allowed
        assert sum(s >= choice.threshold for s in scores) > choice.allowed  # nothing lower works
        assert choice.threshold in scores
    assert high.threshold <= low.threshold and high.bound >= low.bound


def test_true_rate_is_within_the_bound_for_about_95_percent_of_seeds() -> None:
    """With normal benign scores, P(score > t) ≤ bound holds for ≥ ~95% of 200 fixed seeds."""
    covered, rates = 0, []
    for seed in range(200):
        g = torch.Generator().manual_seed(seed)
        scores = torch.randn(600, generator=g, dtype=torch.float64)
        choice = choose_threshold(scores, target_rate=0.02, confidence=0.95)
        true_rate = _normal_tail(choice.threshold)
        covered += true_rate <= choice.bound
        rates.append(true_rate)
    assert covered >= 190 - 10  # expected 190 (95%), sd ≈ 3.1; 193 with these seeds
    assert sum(rates) / len(rates) < 0.02


def test_too_few_benign_replies_is_a_clear_error() -> None:
    """Below the minimum the error names it; the minimum for 1% at 95% is 299."""
    assert min_set_size(0.01, 0.95) == 299 and min_set_size(0.05, 0.9) == 45
    choose_threshold(list(range(299)), 0.01, 0.95)
    with pytest.raises(FeatureguardError, match=r"at least 299 benign replies .* got 298"):
        choose_threshold(list(range(298)), 0.01, 0.95)


def test_set_hash_depends_on_content_and_order() -> None:
    """The set's hash is the SHA-256 of its JSON form: same list, same hash."""
    assert set_sha256(["a", ("p", "r")]) == set_sha256(["a", ["p", "r"]])
    assert set_sha256(["a", "b"]) != set_sha256(["b", "a"])
    assert len(set_sha256(["a"])) == 64


# ---- on a model ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tw.World:
    torch.set_num_threads(1)
    return tw.build_world(tmp_path_factory.mktemp("world"), "llama")


def _texts(n: int, seed: int, length: int = 12) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    picks = torch.randint(0, len(ALPHABET), (n, length), generator=g).tolist()
    return ["".join(ALPHABET[i] for i in row) for row in picks]


COMMENTED = """\
# a policy file with comments  (kept by write_calibration)
version: 1
saes:
  s: {{path: {sae}, hook: {hook}}}
policies:
  - name: watch        # the one calibrated
    sae: s
    features: [{{index: 3, label: aimed}}, {{index: 7, weight: 0.5}}]
    threshold: 99.0    # to be replaced
    action: log
    window: 2
  - {{name: flow, sae: s, features: [{{index: 5}}], threshold: 1.0, action: log}}
audit: {{path: {audit}}}
"""


@pytest.fixture
def policy_file(world: tw.World, tmp_path: Path) -> Path:
    path = tmp_path / "p.yaml"
    path.write_text(
        COMMENTED.format(sae=world.sae_dir, hook=world.hook, audit=tmp_path / "a.jsonl")
    )
    return path


def test_scores_are_the_guards(world: tw.World, policy_file: Path) -> None:
    """A threshold between two replies' scores: the guard triggers on exactly the replies above
    it (window 2 included), so scores are in the guard's units."""
    texts = _texts(16, seed=5)
    scores = reply_scores(fg.load_policies(policy_file), world.model, world.tokenizer, texts)
    ordered = sorted(scores["watch"].tolist())
    gaps = [(b - a, (a + b) / 2) for a, b in itertools.pairwise(ordered[4:-1])]
    threshold = max(gaps)[1]
    doc = yaml.safe_load(policy_file.read_text())
    doc["policies"][0].update(threshold=threshold, scope="prompt")
    with fg.wrap(world.model, doc, tokenizer=world.tokenizer, audit=fg.MemorySink()) as guard:
        guard.generate(texts, max_new_tokens=1, do_sample=False)
        fired = [any(t.policy == "watch" for t in o.triggers) for o in guard.last]
    assert fired == (scores["watch"] > threshold).tolist() and 0 < sum(fired) < 16


def test_calibrate_reports_threshold_bound_and_recall(world: tw.World, policy_file: Path) -> None:
    """calibrate() applies the rule to the benign scores and counts positives above it."""
    benign, positives = _texts(320, seed=6), _texts(40, seed=8, length=40)
    [watch] = calibrate(policy_file, world.model, world.tokenizer, benign, positives,
                        target_rate=0.02, confidence=0.9, names=["watch"])  # fmt: skip
    policies = fg.load_policies(policy_file)
    scores = reply_scores(policies, world.model, world.tokenizer, benign + positives)["watch"]
    choice = choose_threshold(scores[:320], 0.02, 0.9)
    assert (watch.threshold, watch.bound, watch.allowed) == (choice.threshold, choice.bound, 2)
    assert (watch.policy, watch.set_size, watch.set_sha256) == ("watch", 320, set_sha256(benign))
    assert watch.bound <= 0.02 and watch.exceed <= watch.allowed and watch.previous_threshold == 99
    assert watch.recall == float((scores[320:] > watch.threshold).double().mean()) > 0
    assert watch.positives == 40


def test_held_out_benign_rate_stays_within_the_held_out_bound(world: tw.World) -> None:
    """200 seeded draws of disjoint (calibration, held-out) sets of 320 benign replies from a
    pool: the held-out rate is within held_out_bound(320) in ≥ ~90% of them, and within
    `bound` (which bounds the true rate, not a held-out estimate of it) in most."""
    doc = tw.policy_doc(world, Path("."), features=[{"index": 3}, {"index": 7, "weight": 0.5}])
    pool = reply_scores(fg.load_policies(doc), world.model, world.tokenizer,
                        _texts(2000, seed=11))["watch"]  # fmt: skip
    g = torch.Generator().manual_seed(0)
    within_held, within_bound = 0, 0
    for _ in range(200):
        draw = pool[torch.randperm(len(pool), generator=g)[:640]]
        choice = choose_threshold(draw[:320], target_rate=0.02, confidence=0.9)
        rate = float((draw[320:] > choice.threshold).double().mean())
        count = held_out_count_bound(choice.allowed, 320, 320, 0.9)
        within_held += rate <= count / 320
        within_bound += rate <= choice.bound
    assert within_held >= 170 and within_bound >= 150


def test_held_out_count_bound_covers_uniform_draws() -> None:
    """The beta-binomial prediction bound holds for ≥ ~90% of 2000 seeded uniform draws."""
    g = torch.Generator().manual_seed(0)
    count = held_out_count_bound(2, 320, 320, 0.9)
    covered = 0
    for _ in range(2000):
        s = torch.rand(640, generator=g)
        t = torch.sort(s[:320], descending=True).values[2]
        covered += int((s[320:] > t).sum()) <= count
    assert covered >= 0.9 * 2000 - 40  # sd ≈ 13


def test_calibrate_refuses_a_small_set_before_scoring(world: tw.World, policy_file: Path) -> None:
    """Too few benign replies for the target is an error naming the minimum."""
    with pytest.raises(FeatureguardError, match="at least 299"):
        calibrate(policy_file, world.model, world.tokenizer, ["abc"] * 100)


def test_write_calibration_round_trips(world: tw.World, policy_file: Path) -> None:
    """Thresholds and records load back through load_policies; comments survive; writing
    again replaces the record."""
    benign = _texts(60, seed=9)
    results = calibrate(policy_file, world.model, world.tokenizer, benign, target_rate=0.05,
                        confidence=0.9)  # fmt: skip
    write_calibration(policy_file, results)
    text = policy_file.read_text()
    assert "# a policy file with comments" in text and "# the one calibrated" in text
    loaded = {p.name: p for p in fg.load_policies(policy_file).policies}
    for r in results:
        record = loaded[r.policy].calibration
        assert loaded[r.policy].threshold == r.threshold
        assert (record.target_rate, record.bound, record.confidence) == (0.05, r.bound, 0.9)
        assert (record.set_sha256, record.set_size, record.recall) == (r.set_sha256, 60, None)
        assert record.date == r.date
    again = calibrate(policy_file, world.model, world.tokenizer, benign[:50], target_rate=0.06,
                      confidence=0.9)  # fmt: skip
    write_calibration(policy_file, again)
    text = policy_file.read_text()
    assert text.count("calibration:") == 2 and "# to be replaced" in text
    assert fg.load_policies(policy_file).policies[0].calibration.set_size == 50


def test_cli_calibrate_writes_back(world: tw.World, policy_file: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    """`featureguard calibrate --write` prints each policy's result and writes it back."""
    world.model.save_pretrained(tmp_path / "model")
    world.tokenizer.save_pretrained(tmp_path / "model")
    (tmp_path / "benign.txt").write_text("\n".join(_texts(60, seed=10)))
    parser = argparse.ArgumentParser(prog="featureguard")
    add_parser(parser.add_subparsers(dest="command", required=True))
    benign = str(tmp_path / "benign.txt")
    args = parser.parse_args(["calibrate", str(policy_file), "--benign", benign, "--target-rate",
                              "0.05", "--confidence", "0.9", "--model", str(tmp_path / "model"),
                              "--policy", "flow", "--write"])  # fmt: skip
    assert args.func is run and run(args) == 0
    out = capsys.readouterr().out
    assert out.startswith("flow: threshold 1 -> ") and "written to" in out
    flow = fg.load_policies(policy_file).policies[1]
    assert flow.calibration is not None and flow.calibration.set_size == 60
    assert fg.load_policies(policy_file).policies[0].calibration is None
