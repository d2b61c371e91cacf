"""The demo corpus: seeded, deterministic documents, evaluation twins and lean prompts.

Four domains: code (Python-like functions with 2-3 decision points, each made safely or unsafely),
pii (templated messages with or without names, emails, phones, addresses), manipulation (messages
with pressure phrases or their neutral twins) and prose (TinyStories-like). The grammar lives in
`corpus_code` and `corpus_text`; this module is the API.

Determinism: every call draws from its own `random.Random`, seeded with a string naming the call,
the split and the seed (string seeds hash with SHA-512, so results do not depend on
PYTHONHASHSEED). train, validation and test share the training surface forms and differ by seed;
"ood" uses held-out identifiers, import aliases, SQL verbs, PII formats and manipulation templates.
"made-up" is code whose identifiers and import aliases are made up per snippet (random syllables,
never a word of the train or ood pools; the training SQL verbs), for fitting detectors that must
not lean on names; its pii, manipulation and prose are the training surface.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

from featureguard.demo import corpus_code, corpus_text
from featureguard.demo.corpus_code import DECISION_KINDS

__all__ = [
    "DECISION_KINDS",
    "DOMAINS",
    "LEANS",
    "SPLITS",
    "TRAINING_MIX",
    "Prompt",
    "Snippet",
    "lean_prompts",
    "snippets",
    "training_documents",
    "twins",
]

SPLITS = ("train", "validation", "test", "ood", "made-up")
DOMAINS = ("code", "pii", "manipulation", "prose")
LEANS = ("unsafe", "neutral", "safe")
TRAINING_MIX = (("code", 0.85), ("pii", 0.05), ("manipulation", 0.05), ("prose", 0.05))
"""Domain shares of `training_documents`; pii and manipulation are half positive, half twins."""
P_SINGLE_UNSAFE = 1 / 3
"""Share of code twin pairs whose positive has exactly one unsafe decision (else all unsafe)."""

Domain = Literal["code", "pii", "manipulation", "prose"]
Lean = Literal["unsafe", "neutral", "safe"]


@dataclass(frozen=True, slots=True)
class Snippet:
    """One generated document with its labels."""

    text: str
    domain: Domain
    positive: bool
    """Unsafe code / contains PII / manipulative."""
    spans: tuple[tuple[int, int], ...]
    """Character spans [start, end) of each unsafe construct / PII item / pressure phrase;
    empty when not positive."""
    kinds: tuple[str, ...]
    """code: the decision kinds present, in order (safe and unsafe alike); pii and manipulation:
    the kind of each span ("name", "email", "phone", "address" / "urgency", "guilt", "loss");
    prose: empty."""


@dataclass(frozen=True, slots=True)
class Prompt:
    """A code prefix cut just before a decision point.

    `text` ends at the end of the line before the decision line, without its newline (after the
    docstring for a first decision), so the model writes "\\n    <decision line>". With a
    byte-level BPE (GPT-2 pre-tokenisation) that end is always a token boundary: the newline and
    indentation form one pre-token with the next line, which a prompt ending in "\\n    " would
    split differently from training.
    """

    text: str
    kind: str
    """The decision kind expected next."""
    split: str
    lean: Lean


def _surface(split: str, domain: str = "code") -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if split == "made-up":
        return split if domain == "code" else "train"
    return "ood" if split == "ood" else "train"


def _rng(purpose: str, split: str, seed: int) -> random.Random:
    return random.Random(f"featureguard.demo/{purpose}/{split}/{int(seed)}")


def _check_n(n: int) -> None:
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")


def _code_snippet(rng: random.Random, surface: str) -> Snippet:
    text, spans, kinds = corpus_code.style_snippet(rng, surface)
    return Snippet(text, "code", bool(spans), spans, kinds)


def _text_pair(rng: random.Random, surface: str, domain: str) -> tuple[Snippet, Snippet]:
    make = corpus_text.pii_pair if domain == "pii" else corpus_text.manipulation_pair
    (neg_text, _, _), (pos_text, spans, kinds) = make(rng, surface)
    return (
        Snippet(neg_text, domain, False, (), ()),  # type: ignore[arg-type]
        Snippet(pos_text, domain, True, spans, kinds),
    )  # type: ignore[arg-type]


def _one(rng: random.Random, surface: str, domain: str) -> Snippet:
    if domain == "code":
        return _code_snippet(rng, surface)
    if domain == "prose":
        return Snippet(corpus_text.prose(rng, surface), "prose", False, (), ())
    pair = _text_pair(rng, surface, domain)
    return pair[rng.random() < 0.5]


def training_documents(n: int, seed: int = 0) -> list[str]:
    """The LM's training corpus: `TRAINING_MIX` of domains, training surface forms only.

    Code snippets carry the hidden style (`corpus_code.P_UNSAFE_STYLE`, `P_UNSAFE_DECISION`,
    `P_CUE`, `P_ALIAS`). A prefix of a longer call is the shorter call:
    training_documents(n)[:m] == training_documents(m).
    """
    _check_n(n)
    rng = _rng("training-documents", "train", seed)
    bounds: list[tuple[float, str]] = []
    total = 0.0
    for domain, share in TRAINING_MIX:
        total += share
        bounds.append((total, domain))
    docs: list[str] = []
    for _ in range(n):
        u = rng.random()
        domain = next((d for b, d in bounds if u < b), bounds[-1][1])
        docs.append(_one(rng, "train", domain).text)
    return docs


def snippets(split: str, n: int, seed: int = 0, domain: str = "code") -> list[Snippet]:
    """Labelled single documents of one domain and split (code with the hidden style, pii and
    manipulation half positive, prose never) - e.g. held-out prose and code for fluency costs."""
    surface = _surface(split, domain)
    _check_n(n)
    if domain not in DOMAINS:
        raise ValueError(f"domain must be one of {DOMAINS}, got {domain!r}")
    rng = _rng(f"snippets-{domain}", split, seed)
    return [_one(rng, surface, domain) for _ in range(n)]


def twins(split: str, n: int, seed: int = 0, domain: str = "code") -> list[tuple[Snippet, Snippet]]:
    """n (negative, positive) pairs, each from one draw, differing only inside the positive's spans.

    code: the positive makes every decision unsafely, or (share `P_SINGLE_UNSAFE`) exactly one;
    the negative makes all of them safely; no style cue in either docstring, same imports.
    pii: with / without PII items; manipulation: pressure phrases / neutral sentences.
    """
    surface = _surface(split, domain)
    _check_n(n)
    if domain not in ("code", "pii", "manipulation"):
        raise ValueError(f"twins exist for code, pii and manipulation, not {domain!r}")
    rng = _rng(f"twins-{domain}", split, seed)
    pairs: list[tuple[Snippet, Snippet]] = []
    for _ in range(n):
        if domain != "code":
            pairs.append(_text_pair(rng, surface, domain))
            continue
        frame = corpus_code.make_frame(rng, surface)
        k = len(frame.decisions)
        if rng.random() < P_SINGLE_UNSAFE:
            one = rng.randrange(k)
            flags = tuple(i == one for i in range(k))
        else:
            flags = (True,) * k
        kinds = tuple(d.kind for d in frame.decisions)
        neg_text, _, _ = corpus_code.render(frame, (False,) * k, None)
        pos_text, spans, _ = corpus_code.render(frame, flags, None)
        pairs.append(
            (
                Snippet(neg_text, "code", False, (), kinds),
                Snippet(pos_text, "code", True, spans, kinds),
            )
        )
    return pairs


def lean_prompts(split: str, lean: Lean, n: int, seed: int = 0) -> list[Prompt]:
    """n code prompts cut just before a decision point (see `Prompt` for where exactly).

    unsafe: one or more earlier decisions, all made unsafely, and an unsafe style cue in half the
    docstrings; safe: the same with safe decisions and safe cues; neutral: cut before the first
    decision, no cue. The prompt never contains a decision of the kind expected next.
    """
    surface = _surface(split)
    _check_n(n)
    if lean not in LEANS:
        raise ValueError(f"lean must be one of {LEANS}, got {lean!r}")
    rng = _rng(f"lean-{lean}", split, seed)
    prompts: list[Prompt] = []
    for _ in range(n):
        frame = corpus_code.make_frame(rng, surface)
        k = len(frame.decisions)
        cue = None
        if lean == "neutral":
            cut = 0
        else:
            cut = rng.randrange(1, k)
            if rng.random() < corpus_code.P_CUE:
                cue = rng.choice(corpus_code.STYLE_CUES[lean])
        flags = tuple(lean == "unsafe" and i < cut for i in range(k))
        text, _, cuts = corpus_code.render(frame, flags, cue)
        kind = frame.decisions[cut].kind
        prompts.append(Prompt(text[: cuts[cut]], kind, split, lean))
    return prompts


def prose_prompts(split: str, n: int, seed: int = 0) -> list[str]:
    """n benign prose prompts: the first half (in words) of prose snippets."""
    out = []
    for s in snippets(split, n, seed=seed, domain="prose"):
        words = s.text.split(" ")
        out.append(" ".join(words[: max(1, len(words) // 2)]))
    return out
