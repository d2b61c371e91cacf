"""SAE feature activations of every token of some texts, and the example files they come from.

`token_activations` runs plain forward passes (right-padded batches, positions from 0 as in
guarded generation), reads the hooked activation and encodes it. It drops exactly the tokens
the guard never scores: padding, the tokenizer's special tokens, and the model's BOS/EOS/pad.
With `features` it computes what the guard computes (`SAE.encode_subset`: for TopK SAEs the
pre-activation without the top-k competition), so scores and thresholds derived from it are in
the guard's units; without it, the full `SAE.encode`. `hook_activations` returns the hooked
activation itself, for dense baselines.

Example files hold one example per line: plain text, or JSON Lines of
`{"text": ..., "spans": [[start, end], ...], "prompt": ...}` (`spans`: character spans of the
positive content, for token-level labels; `prompt`: context before the text, for calibration).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from featureguard.errors import FeatureguardError
from featureguard.guard import special_ids
from featureguard.hooks import resolve_hook
from featureguard.sae import SAE, load_sae

__all__ = [
    "Example",
    "TokenActs",
    "hook_activations",
    "read_examples",
    "resolve_sae",
    "token_activations",
]

Span = tuple[int, int]


@dataclass(frozen=True, slots=True)
class TokenActs:
    """The scored tokens of one text and their feature activations."""

    ids: torch.Tensor
    """[T] token ids, special tokens and padding left out."""
    offsets: torch.Tensor | None
    """[T, 2] character span of each token in the text; None for tokenizers without offsets."""
    acts: torch.Tensor
    """[T, n_feat] float32 activations."""
    features: tuple[int, ...] | None
    """The SAE index of each column of `acts`; None when column i is feature i (full encode)."""

    def column(self, feature: int) -> int:
        """The column of `acts` that holds SAE feature `feature`."""
        if self.features is None:
            if not 0 <= feature < self.acts.shape[1]:
                raise FeatureguardError(f"feature {feature} is not in [0, {self.acts.shape[1]})")
            return feature
        try:
            return self.features.index(feature)
        except ValueError:
            raise FeatureguardError(f"feature {feature} was not computed") from None


@dataclass(frozen=True, slots=True)
class Example:
    """One line of an example file."""

    text: str
    """The text scored."""
    spans: tuple[Span, ...] | None = None
    """Character spans [start, end) of the positive content; None when not given."""
    prompt: str | None = None
    """Context before the text (calibration: scored only by policies whose scope takes it)."""


def resolve_sae(sae: SAE | str | os.PathLike, features: Sequence[int] | None = None) -> SAE:
    """`sae` itself, or the SAE loaded from a path (only `features`, when given)."""
    if isinstance(sae, SAE):
        return sae
    return load_sae(sae, features=None if features is None else sorted(set(features)))


class _Captured(Exception):
    """Raised from the hook to stop a forward pass once the activation is read."""


def token_activations(
    model: torch.nn.Module,
    tokenizer: Any,
    sae: SAE | str | os.PathLike,
    hook: str | None,
    texts: Sequence[str],
    *,
    batch_size: int = 32,
    features: Sequence[int] | None = None,
) -> list[TokenActs]:
    """Activations of the scored tokens of each text (module docstring); `hook` defaults to
    the one the SAE's config names."""
    sae = resolve_sae(sae, features)
    hook = hook or sae.cfg.hook
    if not hook:
        raise FeatureguardError("the SAE's config names no hook point; pass hook=")
    point = resolve_hook(model, hook)
    point.check_width(sae.d_in, f"SAE {sae.cfg.source or sae.cfg.format}")
    feats = None if features is None else tuple(int(i) for i in features)
    sae = sae.to(next(model.parameters()).device)  # encode where the activations are

    def encode(x: torch.Tensor) -> torch.Tensor:
        return sae.encode(x) if feats is None else sae.encode_subset(x, feats)

    return _scored_tokens(model, tokenizer, point, texts, batch_size, encode, feats)


def hook_activations(
    model: torch.nn.Module,
    tokenizer: Any,
    hook: str,
    texts: Sequence[str],
    *,
    batch_size: int = 32,
) -> list[TokenActs]:
    """The hooked activation itself (no SAE) of the scored tokens of each text: what dense
    baselines (a probe or a direction on the raw residual stream) are fitted on."""
    point = resolve_hook(model, hook)
    return _scored_tokens(model, tokenizer, point, texts, batch_size, lambda x: x, None)


def _scored_tokens(
    model: torch.nn.Module,
    tokenizer: Any,
    point: Any,
    texts: Sequence[str],
    batch_size: int,
    encode: Any,
    feats: tuple[int, ...] | None,
) -> list[TokenActs]:
    """`encode` of the activation at `point`, for the tokens the guard scores (module docstring)."""
    special = special_ids(model, tokenizer)
    device = next(model.parameters()).device
    seen: list[torch.Tensor] = []

    def capture(x: torch.Tensor) -> None:
        seen.append(x.detach())
        raise _Captured

    out: list[TokenActs] = []
    handle = point.attach(capture)
    try:
        for start in range(0, len(texts), batch_size):
            enc, offsets = _encode(tokenizer, list(texts[start : start + batch_size]))
            seen.clear()
            try:
                with torch.no_grad():
                    model(
                        input_ids=enc["input_ids"].to(device),
                        attention_mask=enc["attention_mask"].to(device),
                    )
            except _Captured:
                pass
            with torch.no_grad():
                f = encode(seen[0]).float().cpu()  # [b, s, n_feat]
            ids = enc["input_ids"]
            keep = enc["attention_mask"].bool() & ~torch.isin(ids, special)  # [b, s]
            for r in range(ids.shape[0]):
                row = keep[r]
                offs = None if offsets is None else offsets[r][row]
                out.append(TokenActs(ids[r][row], offs, f[r][row], feats))
    finally:
        handle.remove()
    return out


def _encode(tokenizer: Any, texts: list[str]) -> tuple[dict, Any]:
    """Right-padded ids and mask, and [b, s, 2] offsets when the tokenizer gives them."""
    side = getattr(tokenizer, "padding_side", "right")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    fast = bool(getattr(tokenizer, "is_fast", False))
    try:
        enc = tokenizer(texts, return_tensors="pt", padding=True, return_offsets_mapping=fast)
    finally:
        tokenizer.padding_side = side
    return enc, enc.pop("offset_mapping", None)


def read_examples(path: str | os.PathLike) -> list[Example]:
    """The examples of a file: JSON Lines (`.jsonl`, or a first line that is a JSON object) or
    plain text, one example per non-empty line."""
    file = os.fspath(path)
    try:
        lines = Path(file).read_text(encoding="utf-8").splitlines()
    except (OSError, ValueError) as exc:
        raise FeatureguardError(f"{file}: cannot read the examples: {exc}") from exc
    first = next((line for line in lines if line.strip()), "")
    jsonl = file.endswith(".jsonl") or first.lstrip().startswith("{")
    examples = [
        _json_example(line, f"{file}:{n}") if jsonl else Example(text=line)
        for n, line in enumerate(lines, 1)
        if line.strip()
    ]
    if not examples:
        raise FeatureguardError(f"{file}: no examples")
    return examples


def _json_example(line: str, where: str) -> Example:
    try:
        doc = json.loads(line)
    except json.JSONDecodeError as exc:
        raise FeatureguardError(
            f"{where}: expected a JSON object, got invalid JSON ({exc.msg})"
        ) from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("text"), str):
        raise FeatureguardError(f'{where}: expected an object with a string "text"')
    unknown = set(doc) - {"text", "spans", "prompt"}
    if unknown:
        raise FeatureguardError(f"{where}: unknown keys {sorted(unknown)} (text, spans, prompt)")
    prompt = doc.get("prompt")
    if prompt is not None and not isinstance(prompt, str):
        raise FeatureguardError(f'{where}: expected "prompt" to be a string')
    spans = doc.get("spans")
    if spans is not None:
        if not isinstance(spans, list):
            raise FeatureguardError(f"{where}: expected spans as a list of [start, end]")
        spans = tuple(_span(s, len(doc["text"]), where) for s in spans)
    return Example(text=doc["text"], spans=spans, prompt=prompt)


def _span(value: Any, length: int, where: str) -> Span:
    ok = (
        isinstance(value, list)
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        and 0 <= value[0] < value[1] <= length
    )
    if not ok:
        raise FeatureguardError(
            f"{where}: expected spans as [start, end] with 0 <= start < end <= "
            f"{length} (the text's length), got {value!r}"
        )
    return (value[0], value[1])


def token_labels(acts: TokenActs, spans: Sequence[Span]) -> torch.Tensor:
    """[T] bool: tokens whose character span overlaps one of `spans`."""
    if acts.offsets is None:
        raise FeatureguardError("token labels from spans need a fast tokenizer (offsets)")
    if not spans:
        return torch.zeros(acts.ids.shape[0], dtype=torch.bool)
    a, b = acts.offsets[:, 0:1], acts.offsets[:, 1:2]  # [T, 1]
    s = torch.tensor([x for x, _ in spans])[None, :]  # [1, n]
    e = torch.tensor([y for _, y in spans])[None, :]
    overlap = (a < e) & ((s < b) | ((a == b) & (s <= a)))
    return overlap.any(dim=1)
