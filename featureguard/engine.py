"""Score tokens, decide, edit activations: what runs inside the hooked layer's forward pass.

Everything a step needs is compiled once per hooked layer (`LayerEngine`): the SAE restricted
to the features its policies name, a [n_feat, n_pol] weight matrix, thresholds, clamp targets
and orthonormal ablation bases. A step is then a handful of tensor ops with no Python loop over
tokens or features, and no host synchronisation: decisions stay on the device until the
caller reads them (a stopping criterion, a streamer, the audit at the end of the call).

Layer maths, per token (x: the hooked activation, f: the named features' activations):
    score_p   = Σ_i w_pi f_i                        triggers when score_p > threshold_p,
                                                    for `window` in-scope tokens in a row
    clamp     x' = x + Σ_i (c_i − f_i) W_dec[i]     the SAE error term is kept
    ablate    x' = x − Q Qᵀ x                        Q: orthonormal basis of the decoder rows
Edits apply where the policy triggers (suppress mode `conditional`), on every in-scope token of
a row from its first trigger on (`latched`), or on every in-scope token (`always`).
Tokens no edit applies to are returned bit-identical (`torch.where`, never `x + 0`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from featureguard.policy import Policy
from featureguard.sae import SAE
from featureguard.sae.top import TopFeatures

# Policy columns are compiled in this order of actions; the names are the YAML's.
EDITING_ACTIONS = ("suppress", "steer")


@dataclass(frozen=True, slots=True)
class StepContext:
    """What the guard knows about the tokens of the forward pass about to run."""

    valid: torch.Tensor
    """[batch, seq] bool: real tokens to score (not padding, not BOS/special)."""
    is_prompt: bool
    """True for the prefill pass (prompt tokens), False for a generated token's pass."""
    position: int
    """Index of the first of these tokens in the (left-padded) full sequence."""


@dataclass(slots=True)
class StepRecord:
    """One layer's scores for one forward pass, kept on the device until read."""

    layer: LayerEngine
    position: int
    is_prompt: bool
    activations: torch.Tensor  # [b, s, n_feat]
    scores: torch.Tensor  # [b, s, n_pol]
    triggered: torch.Tensor  # [b, s, n_pol] bool
    valid: torch.Tensor | None = None  # [b, s] bool: the tokens scored (StepContext.valid)
    top: tuple[torch.Tensor, torch.Tensor] | None = None  # [b, s, k] values, indices: topk trace


@dataclass(slots=True)
class GenerationState:
    """Per-call state shared by a guard's layers; created at the start of a call."""

    batch: int
    device: torch.device
    context: StepContext | None = None
    records: list[StepRecord] = field(default_factory=list)
    runs: dict[int, torch.Tensor] = field(default_factory=dict)
    latched: dict[int, torch.Tensor] = field(default_factory=dict)
    """Per layer: [b, n_pol] bool, the policies that have triggered so far in each row."""
    errors: list[str] = field(default_factory=list)
    as_reply: bool = False
    """Treat the first forward pass's tokens as reply tokens (teacher-forced scoring)."""
    blocked: torch.Tensor = field(init=False)  # [b] bool, updated in place on the device

    def __post_init__(self) -> None:
        self.blocked = torch.zeros(self.batch, dtype=torch.bool, device=self.device)


class LayerEngine:
    """The policies attached to one SAE at one hook point, compiled to tensors."""

    def __init__(
        self,
        *,
        sae_name: str,
        hook: str,
        sae: SAE,
        policies: list[Policy],
        device: torch.device,
        dtype: torch.dtype,
        trace_topk: int = 0,
    ) -> None:
        """`trace_topk` > 0 (a `topk` trace; `sae` then holds every feature) also records the
        k largest features of each token: one full encode per step, and no cost otherwise."""
        self.sae_name, self.hook, self.policies = sae_name, hook, policies
        self.top = TopFeatures(sae.to(device, dtype), trace_topk) if trace_topk else None
        features = sorted({f.index for p in policies for f in p.features})
        self.features: tuple[int, ...] = tuple(features)
        self.sae = sae.select(features).to(device, dtype)
        col = {g: i for i, g in enumerate(features)}
        self.cols = [
            torch.tensor([col[f.index] for f in p.features], device=device) for p in policies
        ]
        weights = torch.zeros(len(features), len(policies), dtype=dtype, device=device)
        for j, p in enumerate(policies):
            for f in p.features:
                weights[col[f.index], j] = f.weight
        self.weights = weights  # [n_feat, n_pol]
        self.thresholds = torch.tensor([p.threshold for p in policies], dtype=dtype, device=device)
        self.windows = torch.tensor([p.window for p in policies], device=device)
        self.in_prompt = torch.tensor(
            [p.scope in ("prompt", "both") for p in policies], device=device
        )
        self.in_response = torch.tensor(
            [p.scope in ("response", "both") for p in policies], device=device
        )
        self.blocks = torch.tensor([p.action == "block" for p in policies], device=device)
        self.edits = [self._compile_edit(j, p) for j, p in enumerate(policies)]
        self.edits = [e for e in self.edits if e is not None]
        self.latches = any(e.where == "latched" for e in self.edits)

    def _compile_edit(self, j: int, p: Policy) -> _Edit | None:
        if p.action not in EDITING_ACTIONS:
            return None
        spec = p.suppress if p.action == "suppress" else p.steer
        method = p.suppress.method if p.action == "suppress" else "clamp"
        if p.action == "steer":
            where = "response"  # steering applies to every response token, whatever the scope
        else:
            where = {"always": "scope", "latched": "latched"}.get(p.suppress.mode, "triggered")
        if method == "ablate":
            rows = torch.stack([self.sae.direction(f.index) for f in p.features])  # [k, d]
            q, _ = torch.linalg.qr(rows.to(torch.float64).T)  # [d, k], orthonormal columns
            return _Edit(j, "ablate", where, basis=q.T.to(self.sae.dtype).contiguous())
        if spec.times_max is not None:
            targets = [spec.times_max * f.max for f in p.features]
        else:
            targets = [spec.value] * len(p.features)
        target = torch.tensor(targets, dtype=self.sae.dtype, device=self.sae.device)
        return _Edit(j, "clamp", where, target=target)

    # ---- the step ------------------------------------------------------------------------------
    def __call__(self, x: torch.Tensor, state: GenerationState) -> torch.Tensor | None:
        """Score this forward pass's tokens at this layer; return the edited activation or None."""
        ctx = state.context
        f = self.sae.encode_subset(x)  # [b, s, n_feat]
        scores = f @ self.weights  # [b, s, n_pol]
        scope = self.in_prompt if ctx.is_prompt else self.in_response  # [n_pol]
        in_scope = ctx.valid[..., None] & scope  # [b, s, n_pol]
        above = (scores > self.thresholds) & in_scope
        triggered = self._windowed(above, state)
        state.blocked |= (triggered & self.blocks).any(dim=(1, 2))
        top = None
        if self.top is not None:
            top = self.top(x)  # [b, s, k] values and indices
        state.records.append(
            StepRecord(self, ctx.position, ctx.is_prompt, f, scores, triggered, ctx.valid, top)
        )
        if not self.edits:
            return None
        response = (ctx.valid & (not ctx.is_prompt))[..., None].expand_as(in_scope)
        masks = {"triggered": triggered, "scope": in_scope, "response": response}
        if self.latches:
            masks["latched"] = self._latched(triggered, state) & in_scope
        return self._edit(x, f, masks)

    def _windowed(self, above: torch.Tensor, state: GenerationState) -> torch.Tensor:
        """Trigger where `window` in-scope tokens in a row are above threshold (across steps)."""
        b, s, n = above.shape
        carry = state.runs.get(id(self))
        if carry is None:
            carry = torch.zeros(b, n, dtype=torch.long, device=above.device)
        idx = torch.arange(s, device=above.device)[None, :, None]  # [1, s, 1]
        last_break = torch.where(~above, idx, -1).cummax(dim=1).values  # [b, s, n]
        run = torch.where(last_break < 0, carry[:, None, :] + idx + 1, idx - last_break)
        state.runs[id(self)] = run[:, -1, :]
        return above & (run >= self.windows)

    def _latched(self, triggered: torch.Tensor, state: GenerationState) -> torch.Tensor:
        """Where each policy has triggered in the row so far: at this token or an earlier one.

        A prompt arrives whole, so a trigger anywhere in it latches all of its tokens: the
        context that led there (a style cue, an earlier decision) is edited too, not only what
        follows. Text read as a reply (`as_reply`) stays causal, token by token."""
        carry = state.latched.get(id(self))
        if carry is None:
            carry = torch.zeros_like(triggered[:, 0, :])
        since = (triggered.cumsum(dim=1) > 0) | carry[:, None, :]  # [b, s, n_pol]
        state.latched[id(self)] = since[:, -1, :]
        if state.context.is_prompt:
            return since[:, -1:, :].expand_as(since)
        return since

    def _edit(
        self, x: torch.Tensor, f: torch.Tensor, masks: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """Apply clamps (one decoder matmul for all of them), then ablations, where they apply.

        `masks` maps each kind of `_Edit.where` to the [b, s, n_pol] tokens it selects.
        """
        where = torch.zeros_like(f, dtype=torch.bool)  # [b, s, n_feat]: features being clamped
        target = torch.zeros_like(f)
        touched = torch.zeros(x.shape[:-1], dtype=torch.bool, device=x.device)  # [b, s]
        ablations = []
        for e in self.edits:
            mask = masks[e.where][..., e.policy]  # [b, s]
            touched |= mask
            if e.kind == "ablate":
                ablations.append((mask, e.basis))
                continue
            cols = self.cols[e.policy]
            where[..., cols] |= mask[..., None]
            target[..., cols] = torch.where(mask[..., None], e.target, target[..., cols])
        delta = torch.where(where, target - f, torch.zeros_like(f))  # [b, s, n_feat]
        out = x + self.sae.decode_delta(x, None, delta).to(x.dtype)
        for mask, q in ablations:
            xs = out.to(q.dtype)
            out = out - ((xs @ q.T) @ q).to(x.dtype) * mask[..., None]
        return torch.where(touched[..., None], out, x)


@dataclass(frozen=True, slots=True)
class _Edit:
    policy: int
    kind: str  # "clamp" | "ablate"
    where: str  # tokens edited: "triggered" (conditional), "latched", "scope" (always),
    # "response" (steer)
    target: torch.Tensor | None = None  # clamp: [k_p] values
    basis: torch.Tensor | None = None  # ablate: [k_p, d] orthonormal rows
