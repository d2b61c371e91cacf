"""featureguard.discovery: rank and probe features that detect a token; pick features that steer.

Two tiny worlds on a random Llama with a character tokenizer (`tiny_world`):
- detection: feature TARGET of an SAE at `blocks.0.hook_resid_pre` (the token embeddings) points
  along the embedding of "z", with a bias so that it fires on "z" and on nothing else;
- intervention: the logit of "z" is scaled up so the model writes it often, and feature TARGET
  of an SAE at the last layer's output points along the direction that raises that logit.
  The other features are orthogonal to it, so only TARGET's suppression removes "z".
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import tiny_world as tw
import torch
from safetensors.torch import save_file

import featureguard as fg
from featureguard.discovery import (
    add_parser,
    detect,
    intervene,
    policy_snippet,
    rank_features,
    read_examples,
    run,
    token_activations,
    top_contexts,
)
from featureguard.discovery.activations import TokenActs
from featureguard.discovery.command import _candidates, load_checker
from featureguard.discovery.detect import DENSE_MARGIN, RECALL_QUANTILE, Forms
from featureguard.errors import FeatureguardError

ALPHABET = "abcdefghijklmnopqrstuvwxy "  # no "z"
EMBED_HOOK = "blocks.0.hook_resid_pre"
LAST_HOOK = "blocks.2.hook_resid_post"
HEADER = "version: 1\nsaes:\n  s:\n    path: {path}\n    hook: {hook}\npolicies:\n"


def _texts(n: int, length: int, seed: int) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    picks = torch.randint(0, len(ALPHABET), (n, length), generator=g).tolist()
    return ["".join(ALPHABET[i] for i in row) for row in picks]


def _save_sae(folder: Path, basis: torch.Tensor, bias: torch.Tensor, hook: str) -> Path:
    """A relu SAELens folder with W_enc = basisᵀ, W_dec = basis and b_enc = bias."""
    folder.mkdir(parents=True, exist_ok=True)
    d_sae, d = basis.shape
    tensors = {"W_enc": basis.T.contiguous(), "b_enc": bias, "W_dec": basis.contiguous(),
               "b_dec": torch.zeros(d)}  # fmt: skip
    save_file(tensors, str(folder / "sae_weights.safetensors"))
    cfg = {"d_in": d, "d_sae": d_sae, "architecture": "standard", "apply_b_dec_to_input": False,
           "normalize_activations": "none", "dtype": "float32",
           "metadata": {"hook_name": hook, "model_name": None}}  # fmt: skip
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return folder


class Detection:
    """Positive texts hold one "z" (with its span); negative texts hold none."""

    def __init__(self, folder: Path) -> None:
        torch.set_num_threads(1)
        self.tok = tw.char_tokenizer()
        self.model = tw.tiny_model("llama", len(self.tok))
        emb = self.model.get_input_embeddings().weight.detach()
        z = emb[self.tok.convert_tokens_to_ids("z")]
        bias = torch.zeros(tw.D_SAE)
        bias[tw.TARGET] = -0.5 * float(z.norm())  # only "z" projects this far along itself
        self.sae = _save_sae(folder, tw.orthonormal_with(z / z.norm()), bias, EMBED_HOOK)
        self.negatives = _texts(24, 16, seed=1)
        self.positives, self.spans = [], []
        for i, text in enumerate(_texts(24, 16, seed=2)):
            at = (5 * i) % 16
            self.positives.append(text[:at] + "z" + text[at:])
            self.spans.append([(at, at + 1)])


class Intervention:
    """A model that writes "z" often, and prompts split into selection and held out."""

    def __init__(self, folder: Path) -> None:
        torch.set_num_threads(1)
        self.tok = tw.char_tokenizer()
        self.model = tw.tiny_model("llama", len(self.tok))
        z = self.tok.convert_tokens_to_ids("z")
        with torch.no_grad():
            self.model.lm_head.weight[z] *= 60
        up = (self.model.lm_head.weight[z] * self.model.model.norm.weight).detach()
        self.sae = _save_sae(folder, tw.orthonormal_with(up / up.norm()), torch.zeros(tw.D_SAE),
                             LAST_HOOK)  # fmt: skip
        self.prompts, self.held_out = _texts(10, 8, seed=3), _texts(10, 8, seed=4)


def says_z(prompt: str, completion: str) -> str:
    """The checker: a completion is "unsafe" when it writes the letter z."""
    return "unsafe" if "z" in completion else "safe"


@pytest.fixture(scope="module")
def det(tmp_path_factory: pytest.TempPathFactory) -> Detection:
    return Detection(tmp_path_factory.mktemp("detect") / "sae")


@pytest.fixture(scope="module")
def inter(tmp_path_factory: pytest.TempPathFactory) -> Intervention:
    return Intervention(tmp_path_factory.mktemp("intervene") / "sae")


def _load_snippet(tmp_path: Path, sae: Path, hook: str, snippet: str) -> fg.PolicySet:
    path = tmp_path / "snippet.yaml"
    path.write_text(HEADER.format(path=sae, hook=hook) + snippet)
    return fg.load_policies(path)


# ---- token activations ---------------------------------------------------------------------------
def test_token_activations_cover_each_character(det: Detection) -> None:
    """Each character is one scored token with its offsets; a subset equals the full columns."""
    full = token_activations(det.model, det.tok, det.sae, EMBED_HOOK, det.positives[:3])
    sub = token_activations(det.model, det.tok, det.sae, None, det.positives[:3], features=[7, 3])
    for text, a, b in zip(det.positives, full, sub, strict=False):
        assert a.acts.shape == (len(text), tw.D_SAE) and b.acts.shape == (len(text), 2)
        assert a.offsets.tolist() == [[i, i + 1] for i in range(len(text))]
        assert torch.allclose(b.acts, a.acts[:, [7, 3]], atol=1e-6) and b.column(3) == 1
        assert torch.equal(a.acts[:, tw.TARGET] > 0, torch.tensor([c == "z" for c in text]))


def test_token_activations_leave_out_special_tokens(det: Detection) -> None:
    """BOS and EOS in a text are not scored, as the guard never scores them."""
    [a] = token_activations(det.model, det.tok, det.sae, EMBED_HOOK, ["<bos>ab z<eos>"])
    assert a.ids.tolist() == det.tok("ab z")["input_ids"] and a.offsets[0].tolist() == [5, 6]


# ---- detect --------------------------------------------------------------------------------------
def test_rank_features_puts_the_aimed_feature_first(det: Detection) -> None:
    """The feature aimed at "z" separates texts with "z" perfectly, by sequence and by token."""
    acts = token_activations(det.model, det.tok, det.sae, EMBED_HOOK,
                             det.positives + det.negatives)  # fmt: skip
    pos, neg = acts[: len(det.positives)], acts[len(det.positives) :]
    stats = rank_features(pos, neg, pos_spans=det.spans)
    first = stats[0]
    assert (first.index, first.auroc_seq, first.auroc_token) == (tw.TARGET, 1.0, 1.0)
    assert all(s.auroc_seq < 0.9 for s in stats[1:]) and len(stats) == tw.D_SAE
    assert first.firing_rate == pytest.approx(len(pos) / sum(len(a.ids) for a in acts))
    assert first.mean_diff == pytest.approx(first.max_activation)
    contexts = top_contexts(acts, det.tok, det.positives + det.negatives, tw.TARGET, n=3, width=4)
    assert len(contexts) == 3 and all("[[z]]" in c for c in contexts)


def test_rank_features_recall_finds_a_feature_of_one_kind_of_positive() -> None:
    """A feature that fires in one kind of positive only (a quarter of them) and never in the
    negatives has a low sequence AUROC but full recall of its kind: `recall_seq` ranks it above
    a broad feature that is a little higher in every positive than in most negatives."""

    def text(broad: float, kind: float) -> TokenActs:
        acts = torch.zeros(6, 2)
        acts[0, 0], acts[2, 1] = broad, kind
        return TokenActs(torch.arange(6), None, acts, None)

    pos = [text(0.4 + 0.58 * i / 39, 1.0 if i % 4 == 0 else 0.0) for i in range(40)]
    neg = [text(i / 99, 0.0) for i in range(100)]
    broad, one_kind = sorted(rank_features(pos, neg), key=lambda s: s.index)
    assert one_kind.auroc_seq == pytest.approx(0.625) and broad.auroc_seq > 0.65
    # Recall above the negatives' 99th percentile of their per-text maxima (0.99 here).
    assert torch.quantile(torch.linspace(0, 1, 100), RECALL_QUANTILE) == pytest.approx(0.99)
    assert (one_kind.recall_seq, broad.recall_seq) == (0.25, 0.0)


@pytest.mark.parametrize("probe", ["max", "tokens", "pooled"])
def test_detect_probe_is_the_aimed_feature(det: Detection, tmp_path: Path, probe: str) -> None:
    """Each probe picks the "z" feature, separates held-out texts, and its snippet loads."""
    result = detect(det.model, det.tok, det.sae, EMBED_HOOK, det.positives, det.negatives,
                    pos_spans=det.spans if probe == "tokens" else None, probe=probe,
                    k=3)  # fmt: skip
    assert result.features[0].index == tw.TARGET and result.features[0].weight > 0
    assert result.auroc_train == 1.0 and result.auroc_validation == 1.0
    assert result.n_train == (18, 18) and result.n_validation == (6, 6)
    top = result.features[0].max
    assert 0 < result.threshold / result.features[0].weight < top
    assert "'z'" in result.features[0].label and result.ranking[0].index == tw.TARGET
    loaded = _load_snippet(tmp_path, det.sae, EMBED_HOOK, result.snippet("z-detector", "s"))
    [policy] = loaded.policies
    assert (policy.name, policy.action, policy.features[0].index) == ("z-detector", "log", 3)
    assert policy.features[0].max == pytest.approx(top, rel=1e-5)


def test_detect_compares_the_policy_forms_with_a_dense_probe(det: Detection) -> None:
    """On the validation split: the probe, the single best feature (recomputed here) and a
    dense probe on the raw activation; "z" is one direction, so all three separate fully."""
    result = detect(det.model, det.tok, det.sae, EMBED_HOOK, det.positives, det.negatives, k=3)
    forms = result.forms
    assert forms is not None and forms.single_index == tw.TARGET
    assert forms.probe == result.auroc_validation == 1.0
    assert forms.single_feature == 1.0 and forms.dense == 1.0
    assert forms.best == "probe" and forms.dense_gap == 0.0
    assert "use the sparse probe" in forms.advice() and "better" not in forms.advice()
    no_split = detect(det.model, det.tok, det.sae, EMBED_HOOK, det.positives, det.negatives,
                      k=3, validation=0.0)  # fmt: skip
    assert no_split.forms is None


def test_forms_advice_names_the_better_form_and_warns_below_the_dense_probe() -> None:
    """A single feature ahead of the probe is the advice; a dense probe ahead by more than
    DENSE_MARGIN is a warning with the gap."""
    close = Forms(probe=0.80, single_feature=0.85, single_index=7, dense=0.87)
    assert close.best == "single feature" and "use the single feature 7" in close.advice()
    assert "better" not in close.advice()
    far = Forms(probe=0.90, single_feature=0.70, single_index=7, dense=0.95)
    assert far.dense_gap == pytest.approx(0.05) and DENSE_MARGIN == 0.03
    assert "use the sparse probe" in far.advice() and "dense probe is 0.050 better" in far.advice()


def test_detect_rejects_an_unknown_probe_or_tokens_without_spans(det: Detection) -> None:
    """A probe name that does not exist, or a token probe with no spans, is a clear error."""
    args = (det.model, det.tok, det.sae, EMBED_HOOK, det.positives, det.negatives)
    with pytest.raises(FeatureguardError, match="probe must be one of max, tokens, pooled"):
        detect(*args, probe="dense")
    with pytest.raises(FeatureguardError, match="needs the spans"):
        detect(*args, probe="tokens")


def test_detected_policy_triggers_in_the_guard_on_z_only(det: Detection, tmp_path: Path) -> None:
    """The probe's weights and threshold are in the guard's units: it triggers exactly on "z"."""
    result = detect(det.model, det.tok, det.sae, EMBED_HOOK, det.positives, det.negatives, k=3)
    snippet = result.snippet("z", "s", scope="prompt")
    path = tmp_path / "p.yaml"
    path.write_text(HEADER.format(path=det.sae, hook=EMBED_HOOK) + snippet)
    prompts = det.positives[:4] + det.negatives[:4]
    with fg.wrap(det.model, path, tokenizer=det.tok, audit=fg.MemorySink()) as guard:
        guard.generate(prompts, max_new_tokens=1, do_sample=False)
        hits = [[prompts[r][t.token_index] for t in o.triggers] for r, o in enumerate(guard.last)]
    assert hits == [["z"]] * 4 + [[]] * 4


def test_policy_snippet_is_checked() -> None:
    """A snippet that would not load is refused with the loader's message."""
    with pytest.raises(fg.PolicyError, match="required when action is 'suppress'"):
        policy_snippet("p", "s", [1, 2], 0.5, "suppress")
    text = policy_snippet("p", "s", [{"index": 1, "weight": 0.1234567891}], 0.5, "log",
                          comment="two\nlines")  # fmt: skip
    assert text.startswith("# two\n# lines\n- name: p") and "weight: 0.123457" in text


def test_read_examples(tmp_path: Path) -> None:
    """Plain lines and JSON Lines with spans are read; bad spans are located errors."""
    plain = tmp_path / "a.txt"
    plain.write_text("one\n\ntwo\n")
    assert [e.text for e in read_examples(plain)] == ["one", "two"]
    lines = tmp_path / "b.jsonl"
    lines.write_text('{"text": "a z", "spans": [[2, 3]]}\n{"text": "b", "prompt": "q: "}\n')
    first, second = read_examples(lines)
    assert (first.spans, second.spans, second.prompt) == (((2, 3),), None, "q: ")
    lines.write_text('{"text": "a z", "spans": [[2, 9]]}\n')
    with pytest.raises(FeatureguardError, match=r"b.jsonl:1: expected spans"):
        read_examples(lines)


# ---- intervene -----------------------------------------------------------------------------------
def test_intervene_selects_the_steering_feature(inter: Intervention, tmp_path: Path) -> None:
    """Of the aimed feature and three others, greedy selection picks the aimed one first, the
    held-out rate drops, and the snippet is a valid suppress policy."""
    result = intervene(inter.model, inter.tok, inter.sae, LAST_HOOK, inter.prompts, says_z,
                       [0, 5, tw.TARGET, 9], held_out=inter.held_out, max_features=2,
                       samples_per_prompt=2, max_new_tokens=8)  # fmt: skip
    assert result.features[0] == tw.TARGET
    assert all(t.features[:1] == (tw.TARGET,) for t in result.trials)
    assert result.baseline.positive >= 0.5 and result.selected.positive < result.baseline.positive
    assert result.held_out.positive < result.held_out_baseline.positive / 2
    assert result.held_out.total == 20 and set(result.maxes) == {0, 5, tw.TARGET, 9}
    [policy] = _load_snippet(tmp_path, inter.sae, LAST_HOOK, result.snippet("no-z", "s")).policies
    assert (policy.action, policy.suppress.mode, policy.suppress.method) == (
        "suppress", "conditional", result.method)  # fmt: skip
    assert policy.features[0].index == tw.TARGET and policy.features[0].max > 0


def test_intervene_is_reproducible(inter: Intervention) -> None:
    """The same seed gives the same measurements; the global RNG is left as it was."""
    kwargs = dict(held_out=inter.held_out[:4], max_features=1, methods=(("ablate", None),),
                  max_new_tokens=6)  # fmt: skip
    state = torch.get_rng_state()
    a = intervene(inter.model, inter.tok, inter.sae, LAST_HOOK, inter.prompts[:4], says_z,
                  [tw.TARGET, 1], **kwargs)  # fmt: skip
    b = intervene(inter.model, inter.tok, inter.sae, LAST_HOOK, inter.prompts[:4], says_z,
                  [tw.TARGET, 1], **kwargs)  # fmt: skip
    assert a == b and torch.equal(torch.get_rng_state(), state)


def test_intervene_thresholds_each_set_at_the_benign_quantile(inter: Intervention) -> None:
    """Given benign texts, the policy's threshold is the quantile of the chosen set's Σ f
    maximised over each text (guard units), recomputed here from the activations."""
    benign = inter.held_out[:6]
    result = intervene(inter.model, inter.tok, inter.sae, LAST_HOOK, inter.prompts[:6], says_z,
                       [tw.TARGET, 1], held_out=inter.held_out[:4], max_features=1,
                       methods=(("ablate", None),), max_new_tokens=6, benign=benign,
                       benign_quantile=0.2)  # fmt: skip
    assert result.features == (tw.TARGET,)
    acts = token_activations(inter.model, inter.tok, inter.sae, LAST_HOOK, benign,
                             features=[tw.TARGET])  # fmt: skip
    peaks = torch.stack([a.acts[:, 0].max() for a in acts]).double()
    expected = float(torch.quantile(peaks, 0.2))
    assert result.threshold == pytest.approx(max(0.0, expected), abs=1e-9)
    assert result.policy()["threshold"] == result.threshold
    with pytest.raises(FeatureguardError, match=r"benign_quantile must be in \(0, 1\)"):
        intervene(inter.model, inter.tok, inter.sae, LAST_HOOK, inter.prompts[:2], says_z,
                  [tw.TARGET], held_out=inter.held_out[:2], benign=benign,
                  benign_quantile=1.0)  # fmt: skip


def test_intervene_widen_edits_more_features_without_scoring_them(tmp_path: Path) -> None:
    """A model that writes "z" and "y", an SAE with a feature along each letter's logit
    direction, and a checker that counts both: selection limited to one feature cuts one
    letter; `widen` then adds the other feature with weight 0 (the threshold, set by the scored
    feature alone, does not change), and the held-out rate drops further. The written policy is
    latched, the widened feature in it with weight 0."""
    torch.manual_seed(0)
    tok = tw.char_tokenizer()
    model = tw.tiny_model("llama", len(tok))
    z, y = tok.convert_tokens_to_ids(["z", "y"])
    with torch.no_grad():
        model.lm_head.weight[[z, y]] *= 40
    ups = (model.lm_head.weight[[z, y]] * model.model.norm.weight).detach()
    basis = tw.orthonormal_with(ups[0] / ups[0].norm())
    other = 4  # the feature along the part of "y"'s direction orthogonal to "z"'s
    y_up = ups[1] - (ups[1] @ basis[tw.TARGET]) * basis[tw.TARGET]
    rest = [i for i in range(tw.D_SAE) if i not in (tw.TARGET, other)]
    vectors = torch.cat([basis[[tw.TARGET]], (y_up / y_up.norm())[None], basis[rest]])
    q, _ = torch.linalg.qr(vectors.T)
    q = q.T * torch.sign(torch.diagonal(q.T @ vectors.T))[:, None]  # keep each row's sign
    basis[[tw.TARGET, other, *rest]] = q
    sae = _save_sae(tmp_path / "sae", basis, torch.zeros(tw.D_SAE), LAST_HOOK)

    def says_z_or_y(prompt: str, completion: str) -> str:
        return "unsafe" if {"z", "y"} & set(completion) else "safe"

    prompts, held_out = _texts(10, 8, seed=3), _texts(10, 8, seed=4)
    kwargs = dict(held_out=held_out, max_features=1, methods=(("ablate", None),), mode="latched",
                  samples_per_prompt=2, max_new_tokens=8, benign=_texts(6, 8, seed=5),
                  benign_quantile=0.5)  # fmt: skip
    narrow = intervene(model, tok, sae, LAST_HOOK, prompts, says_z_or_y, [tw.TARGET, other],
                       **kwargs)  # fmt: skip
    wide = intervene(model, tok, sae, LAST_HOOK, prompts, says_z_or_y, [tw.TARGET, other],
                     widen=1, **kwargs)  # fmt: skip
    assert len(narrow.features) == 1 and wide.features == narrow.features
    assert wide.edit_only == tuple({tw.TARGET, other} - set(narrow.features))
    assert [r.feature for r in wide.widen_rounds] == list(wide.edit_only)
    assert wide.selected == wide.widen_rounds[-1].rate
    assert wide.selected.objective(1.0) < narrow.selected.objective(1.0)
    assert wide.held_out.positive < narrow.held_out.positive
    assert wide.threshold == narrow.threshold
    [policy] = _load_snippet(tmp_path, sae, LAST_HOOK, wide.snippet("no-zy", "s")).policies
    assert policy.suppress.mode == "latched"
    assert [(f.index, f.weight) for f in policy.features] == [
        (narrow.features[0], 1.0), (wide.edit_only[0], 0.0)]  # fmt: skip
    with pytest.raises(FeatureguardError, match="mode must be 'conditional' or 'latched'"):
        intervene(model, tok, sae, LAST_HOOK, prompts, says_z_or_y, [tw.TARGET],
                  **{**kwargs, "mode": "always"})  # fmt: skip


def test_intervene_refuses_other_verdicts(inter: Intervention) -> None:
    """A checker must answer unsafe, safe or invalid."""
    with pytest.raises(FeatureguardError, match="'maybe'"):
        intervene(inter.model, inter.tok, inter.sae, LAST_HOOK, inter.prompts[:2],
                  lambda p, c: "maybe", [tw.TARGET], held_out=inter.held_out[:2],
                  max_new_tokens=2)  # fmt: skip


# ---- command line --------------------------------------------------------------------------------
def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="featureguard")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_cli_detect_and_intervene(det: Detection, inter: Intervention, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    """`discover detect` and `discover intervene` write snippets that load."""
    det.model.save_pretrained(tmp_path / "m1")
    det.tok.save_pretrained(tmp_path / "m1")
    pairs = zip(det.positives, det.spans, strict=True)
    lines = [json.dumps({"text": t, "spans": s}) for t, s in pairs]
    (tmp_path / "pos.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "neg.txt").write_text("\n".join(det.negatives))
    args = _parse(["discover", "detect", "--model", str(tmp_path / "m1"), "--sae", str(det.sae),
                   "--positive", str(tmp_path / "pos.jsonl"), "--negative",
                   str(tmp_path / "neg.txt"), "--k", "2", "--out", str(tmp_path / "d.yaml"),
                   "--sae-name", "s", "--screen", "8"])  # fmt: skip
    assert args.screen == 8
    assert args.func is run and run(args) == 0
    out = capsys.readouterr().out
    assert "[[z]]" in out and "forms: validation AUROC: sparse probe 1.000" in out
    snippet = (tmp_path / "d.yaml").read_text()
    assert _load_snippet(tmp_path, det.sae, EMBED_HOOK, snippet).policies[0].features[0].index == 3

    inter.model.save_pretrained(tmp_path / "m2")
    inter.tok.save_pretrained(tmp_path / "m2")
    (tmp_path / "prompts.txt").write_text("\n".join(inter.prompts))
    (tmp_path / "check.py").write_text(
        "def check(prompt, completion):\n    return 'unsafe' if 'z' in completion else 'safe'\n"
    )
    args = _parse(["discover", "intervene", "--model", str(tmp_path / "m2"), "--sae",
                   str(inter.sae), "--prompts", str(tmp_path / "prompts.txt"), "--checker",
                   f"{tmp_path / 'check.py'}:check", "--candidates", "3", "--max-features", "1",
                   "--samples", "2", "--max-new-tokens", "6", "--mode", "latched",
                   "--widen", "1"])  # fmt: skip
    assert (args.mode, args.widen) == ("latched", 1)
    assert run(args) == 0
    out = capsys.readouterr().out
    assert "action: suppress" in out and f"index: {tw.TARGET}" in out and "mode: latched" in out
    # --contrast prompts join the ranking of candidates (2 samples each), not the selection
    args = _parse(["discover", "intervene", "--model", str(tmp_path / "m2"),
                   "--sae", str(inter.sae), "--prompts", str(tmp_path / "prompts.txt"),
                   "--checker", f"{tmp_path / 'check.py'}:check", "--samples", "2",
                   "--contrast", str(tmp_path / "prompts.txt"), "--benign",
                   str(tmp_path / "neg.txt"), "--benign-quantile", "0.9"])  # fmt: skip
    assert (args.benign, args.benign_quantile) == (str(tmp_path / "neg.txt"), 0.9)
    selection = inter.prompts[:5]
    _candidates(args, inter.model, inter.tok, load_checker(args.checker), selection)
    n = 2 * (len(selection) + len(inter.prompts))
    assert f"of {n} completions unsafe)" in capsys.readouterr().out
