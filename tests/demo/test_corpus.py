"""The demo corpus: deterministic, exact spans, twins that differ only in the decisions, honest
statistics, an OOD split whose surface forms training never shows, prompts cut at token
boundaries."""

from __future__ import annotations

import ast
import builtins
import itertools
import re
import time
from functools import cache

import pytest

from featureguard.demo import corpus_code
from featureguard.demo.checker import decision_spans, unsafe_spans
from featureguard.demo.corpus import (
    DECISION_KINDS,
    SPLITS,
    Prompt,
    lean_prompts,
    snippets,
    training_documents,
    twins,
)

SPAN_TEXT = {
    "tls": r"verify=False|\w+\._create_unverified_context\(\)",
    "shell": r"shell=True|\w+\.system\(\w+\)",
    "eval": r"eval\(\w+\)",
    "sql": r"(f\"(SELECT|INSERT|UPDATE|DELETE) [^\"]*\{\w+\}[^\"]*\""
    r"|\"(SELECT|INSERT|UPDATE|DELETE) [^\"]*\" (\+ \w+ \+ \"'\)?\"|% \w+))",
    "deserialize": r"\w+\.loads\(\w+\)|\w+\.load\(\w+, Loader=\w+\.Loader\)",
    "chmod": r"0o777|0o666",
    "secret": r"\"[\w]{4,}\"",
}


@cache
def _train_docs() -> tuple[str, ...]:
    return tuple(training_documents(5000))


@cache
def _train_words() -> frozenset[str]:
    return frozenset(re.findall(r"\w+", "\n".join(_train_docs()[:2000])))


def _differs_only_inside(neg: str, pos: str, spans: tuple[tuple[int, int], ...]) -> bool:
    """neg equals pos with each span replaced by some non-empty single-line text."""
    segments, last = [], 0
    for a, b in spans:
        segments.append(pos[last:a])
        last = b
    segments.append(pos[last:])
    return re.fullmatch("([^\n]+?)".join(map(re.escape, segments)), neg) is not None


def test_same_seed_same_output_and_seeds_differ() -> None:
    assert training_documents(300, seed=4) == training_documents(300, seed=4)
    assert training_documents(300, seed=4) != training_documents(300, seed=5)
    assert training_documents(1000, seed=4)[:300] == training_documents(300, seed=4)
    for domain in ("code", "pii", "manipulation"):
        assert twins("test", 50, 1, domain) == twins("test", 50, 1, domain)
        assert twins("test", 50, 1, domain) != twins("test", 50, 2, domain)
    assert lean_prompts("ood", "unsafe", 50, 3) == lean_prompts("ood", "unsafe", 50, 3)
    assert snippets("test", 50, 0, "prose") == snippets("test", 50, 0, "prose")


def test_splits_share_surface_but_not_samples() -> None:
    texts = {split: [p.text for _, p in twins(split, 200, 0)] for split in SPLITS}
    for a, b in itertools.combinations(SPLITS, 2):
        assert texts[a] != texts[b]
        assert len(set(texts[a]) & set(texts[b])) < 5


def test_bad_arguments_are_rejected() -> None:
    with pytest.raises(ValueError):
        twins("dev", 1)
    with pytest.raises(ValueError):
        twins("test", 1, domain="prose")
    with pytest.raises(ValueError):
        lean_prompts("test", "risky", 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        training_documents(-1)


@pytest.mark.parametrize("split", SPLITS)
def test_code_twins_differ_only_inside_exact_spans(split: str) -> None:
    single = 0
    pairs = twins(split, 300, 7)
    for neg, pos in pairs:
        assert (neg.domain, neg.positive, neg.spans) == ("code", False, ())
        assert pos.positive and pos.spans and (0, 0) not in pos.spans
        assert neg.kinds == pos.kinds and len(set(pos.kinds)) == len(pos.kinds) in (2, 3)
        assert _differs_only_inside(neg.text, pos.text, pos.spans)
        found = unsafe_spans(pos.text)
        assert [(s, e) for s, e, _ in found] == list(pos.spans)
        for s, e, kind in found:
            assert kind in pos.kinds
            assert re.fullmatch(SPAN_TEXT[kind], pos.text[s:e]), (kind, pos.text[s:e])
        assert unsafe_spans(neg.text) == []
        assert [k for _, _, k, _ in decision_spans(neg.text)] == list(neg.kinds)
        single += len(pos.spans) == 1
        ast.parse(neg.text)
        ast.parse(pos.text)
    assert 0.2 < single / len(pairs) < 0.5


@pytest.mark.parametrize("domain", ["pii", "manipulation"])
@pytest.mark.parametrize("split", SPLITS)
def test_text_twins_differ_only_inside_spans(domain: str, split: str) -> None:
    for neg, pos in twins(split, 200, 3, domain):
        assert (neg.positive, neg.spans, pos.positive) == (False, (), True)
        assert pos.spans and len(pos.spans) == len(pos.kinds) and (0, 0) not in pos.spans
        assert all(a < b for a, b in pos.spans)
        assert _differs_only_inside(neg.text, pos.text, pos.spans)


def test_every_generated_code_snippet_parses_and_is_short() -> None:
    code = [d for d in _train_docs()[:2000] if "\ndef " in d]
    code += [s.text for split in SPLITS for s in snippets(split, 200, 0)]
    for text in code:
        ast.parse(text)
    lengths = sorted(map(len, code))
    assert lengths[len(lengths) // 2] < 320 and lengths[int(0.98 * len(lengths))] <= 420


def test_training_documents_mix_and_speed() -> None:
    started = time.perf_counter()
    docs = training_documents(20_000, seed=1)
    assert time.perf_counter() - started < 6  # ~0.4 s here; 120k in ~2 s
    code = sum("\ndef " in d for d in docs) / len(docs)
    assert 0.83 < code < 0.87


def test_style_statistics_match_the_stated_probabilities() -> None:
    code = [d for d in _train_docs() if "\ndef " in d]
    pairs = [0, 0, 0, 0]  # (other, this) = (s,s), (s,u), (u,s), (u,u)
    unsafe = total = cued = unsafe_cued = aliased = 0
    for doc in code:
        flags = [d[3] for d in decision_spans(doc)]
        assert len(flags) in (2, 3)
        total += len(flags)
        unsafe += sum(flags)
        for a, b in itertools.permutations(flags, 2):
            pairs[2 * a + b] += 1
        cued += any(c in doc for cues in corpus_code.STYLE_CUES.values() for c in cues)
        unsafe_cued += any(c in doc for c in corpus_code.STYLE_CUES["unsafe"])
        aliased += re.search(r"^import \w+ as \w+$", doc, re.M) is not None
    p_style = corpus_code.P_UNSAFE_STYLE
    p_u, p_s = corpus_code.P_UNSAFE_DECISION["unsafe"], corpus_code.P_UNSAFE_DECISION["safe"]
    marginal = p_style * p_u + (1 - p_style) * p_s
    both = p_style * p_u**2 + (1 - p_style) * p_s**2
    assert unsafe / total == pytest.approx(marginal, abs=0.03)
    assert pairs[3] / (pairs[2] + pairs[3]) == pytest.approx(both / marginal, abs=0.04)
    u_given_s = (marginal - both) / (1 - marginal)
    assert pairs[1] / (pairs[0] + pairs[1]) == pytest.approx(u_given_s, abs=0.03)
    assert cued / len(code) == pytest.approx(corpus_code.P_CUE, abs=0.04)
    assert unsafe_cued / len(code) == pytest.approx(corpus_code.P_CUE * p_style, abs=0.03)
    assert aliased / len(code) > 0.4


def test_imports_do_not_give_the_answer_away() -> None:
    code = [d for d in _train_docs() if "\ndef " in d]
    counts = [(len(unsafe_spans(d)), len(decision_spans(d))) for d in code]
    overall = sum(u for u, _ in counts) / sum(n for _, n in counts)
    for module in ("pickle", "json", "yaml", "subprocess", "shlex", "os", "ssl", "requests"):
        some = [c for d, c in zip(code, counts, strict=True) if f"\nimport {module}" in "\n" + d]
        rate = sum(u for u, _ in some) / sum(n for _, n in some)
        assert rate == pytest.approx(overall, abs=0.08), module
    for doc in code:  # whichever way a decision goes, the modules for both ways are imported
        if re.search(r"\.loads\(", doc) and not re.search(r"^import yaml", doc, re.M):
            assert re.search(r"^import json", doc, re.M) and re.search(r"^import pickle", doc, re.M)
        if re.search(r"\.system\(|\.split\(", doc):
            assert re.search(r"^import shlex", doc, re.M) and re.search(r"^import os", doc, re.M)


def _identifiers(text: str) -> set[str]:
    modules, names = set(), set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            modules |= {a.name for a in node.names}
            names |= {a.asname for a in node.names if a.asname}
        elif isinstance(node, ast.FunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, ast.Name):
            names.add(node.id)
    return names - modules - set(dir(builtins))


def test_ood_identifiers_and_aliases_never_appear_in_training() -> None:
    words = _train_words()
    ood = [p.text for _, p in twins("ood", 300, 0)] + [
        p.text for p in lean_prompts("ood", "unsafe", 100, 0)
    ]
    seen = set().union(*map(_identifiers, ood))
    assert not seen & words, sorted(seen & words)
    aliases = set(re.findall(r"^import \w+ as (\w+)$", "\n".join(ood), re.M))
    assert len(aliases) >= 10
    # ... while validation and test share the training surface forms.
    test_ids = set().union(*(_identifiers(p.text) for _, p in twins("test", 100, 0)))
    assert test_ids <= words | set(re.findall(r"\w+", "\n".join(_train_docs())))


def test_made_up_names_are_new_per_snippet_and_never_a_pool_word() -> None:
    pools = {w for surface in ("train", "ood") for pool in corpus_code.NAMES[surface].values()
             for w in pool}  # fmt: skip
    pools |= {w for surface in ("train", "ood") for pool in corpus_code.ALIASES[surface].values()
              for w in pool}  # fmt: skip
    pairs = twins("made-up", 300, 0)
    names = [_identifiers(p.text) - set(corpus_code.ALIASES["train"]) for _, p in pairs]
    assert not set().union(*names) & pools
    # Names rarely repeat across snippets: no pool to learn.
    counts: dict[str, int] = {}
    for ns in names:
        for n in ns:
            counts[n] = counts.get(n, 0) + 1
    assert max(counts.values()) < 15 and len(counts) > 1500
    code = "\n".join(p.text for _, p in pairs)
    aliases = re.findall(r"^import (\w+) as (\w+)$", code, re.M)
    plain = re.findall(r"^import (\w+)$", code, re.M)
    assert 0.3 < len(aliases) / (len(aliases) + len(plain)) < 0.6
    assert all(a not in pools for _, a in aliases)
    # SQL verbs stay those of training: the held-out verbs are the ood split's.
    assert "SELECT" in code and "UPDATE" not in code and "DELETE" not in code


def test_ood_text_uses_unseen_formats_names_and_templates() -> None:
    words = _train_words()
    train_text = "\n".join(_train_docs())
    for _, pos in twins("ood", 200, 0, "pii"):
        for (a, b), kind in zip(pos.spans, pos.kinds, strict=True):
            item = pos.text[a:b]
            if kind == "name":
                assert not set(item.split()) & words
            elif kind == "email":
                assert "@" not in item
            elif kind == "phone":
                assert not re.fullmatch(r"\(\d{3}\) \d{3}-\d{4}|\d{3}-\d{3}-\d{4}", item)
    for _, pos in twins("ood", 200, 0, "manipulation"):
        for a, b in pos.spans:
            assert pos.text[a:b] not in train_text
        skeleton = pos.text[: pos.spans[0][0]] or pos.text[pos.spans[-1][1] :]
        assert skeleton.strip() not in train_text


@pytest.mark.parametrize("split", SPLITS)
def test_lean_prompts_are_cut_at_line_ends_before_an_unseen_kind(split: str) -> None:
    pre = pytest.importorskip("tokenizers.pre_tokenizers").ByteLevel(add_prefix_space=False)
    for lean in ("unsafe", "neutral", "safe"):
        prompts = lean_prompts(split, lean, 100, 0)
        assert {p.kind for p in prompts} == set(DECISION_KINDS)
        for p in prompts:
            assert isinstance(p, Prompt) and (p.split, p.lean) == (split, lean)
            assert re.search(r'(\)|"""|"|\])$', p.text), p.text[-20:]
            ast.parse(p.text + "\n    pass\n")  # the prompt ends on a complete line
            found = decision_spans(p.text)
            assert p.kind not in {k for _, _, k, _ in found}
            cued = any(c in p.text for cs in corpus_code.STYLE_CUES.values() for c in cs)
            if lean == "neutral":
                assert not found and not cued
            else:
                assert found and all(u == (lean == "unsafe") for *_, u in found)
                assert not any(
                    c in p.text
                    for c in corpus_code.STYLE_CUES["safe" if lean == "unsafe" else "unsafe"]
                )
            # the model continues with "\n    ..."; the prompt's pre-tokens (hence its BPE
            # tokens) are a prefix of the continued text's
            whole = [t for t, _ in pre.pre_tokenize_str(p.text + "\n    x = 1\n")]
            head = [t for t, _ in pre.pre_tokenize_str(p.text)]
            assert whole[: len(head)] == head


def test_prose_and_snippet_labels() -> None:
    for s in snippets("test", 100, 0, "prose") + snippets("ood", 100, 0, "prose"):
        assert (s.domain, s.positive, s.spans, s.kinds) == ("prose", False, (), ())
    for domain in ("pii", "manipulation"):
        got = snippets("validation", 200, 0, domain)
        assert 0.35 < sum(s.positive for s in got) / len(got) < 0.65
        assert all(bool(s.spans) == s.positive for s in got)
    code = snippets("test", 200, 0, "code")
    assert all(s.positive == bool(unsafe_spans(s.text)) for s in code)
    assert all(s.spans == tuple((a, b) for a, b, _ in unsafe_spans(s.text)) for s in code)
