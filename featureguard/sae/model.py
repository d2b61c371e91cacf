"""The canonical SAE: one representation that every file format is converted into.

    pre = (norm_in(x) - b_dec·[subtract_b_dec]) @ W_enc + b_enc     [..., k]
    f   = activation(pre)                          relu | jumprelu | topk | gated
    x̂   = norm_out(f @ W_dec + b_dec)              back in the model's space

`W_enc` is [d_in, k] and `W_dec` is [k, d_in] (row i is feature i's direction), where k is the
number of features held: all `d_sae` of them, or the subset named at load time (`features`).
Indices given to public methods are always the dictionary's own (global) feature indices.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import torch

from featureguard.errors import FeatureguardError, SAEFormatError

Architecture = Literal["relu", "jumprelu", "topk", "gated"]
NormKind = Literal["none", "constant", "layer_norm", "l2_rescale"]

LAYER_NORM_EPS = 1e-5  # OpenAI and SAELens add it to the (unbiased) std, not to the variance


@dataclass(frozen=True, slots=True, kw_only=True)
class Normalization:
    """How an activation is brought into the SAE's input space, and back."""

    kind: NormKind = "none"
    """none; constant (a fixed scale: SAELens folded scalars, Llama Scope dataset-wise norm);
    layer_norm (per token: OpenAI, SAELens `layer_norm`); l2_rescale (per token to norm
    sqrt(d_in): SAELens `constant_norm_rescale`)."""
    scale_in: float = 1.0
    """constant only: the input is multiplied by this before encoding."""
    scale_out: float = 1.0
    """constant only: the reconstruction is divided by this after decoding."""
    center: bool = False
    """Subtract each token's mean first (SAEs trained on TransformerLens with
    `center_writing_weights`); not undone on decode, as the model's LayerNorm removes it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SAEConfig:
    """Facts about an SAE that are not tensors."""

    format: str
    """The file format it was read from (a key of `featureguard.sae.formats.FORMATS`)."""
    architecture: Architecture
    """Activation function; batchtopk SAEs are stored and run as jumprelu."""
    d_in: int
    """Width of the activation it reads."""
    d_sae: int
    """Number of features in the whole dictionary (also when only some were loaded)."""
    k: int | None = None
    """topk only: features kept per token."""
    subtract_b_dec: bool = False
    """Whether `b_dec` is subtracted from the (normalised) input before encoding."""
    normalization: Normalization = field(default_factory=Normalization)
    """Input normalisation and its inverse on decode."""
    hook: str | None = None
    """The hook point named by the SAE's own config, when it names one."""
    model_name: str | None = None
    """The model the SAE was trained on, when the config says."""
    source: str = ""
    """Where it was loaded from (path or hf:// reference)."""


class SAE:
    """A sparse autoencoder in canonical form, on one device and dtype.

    Construct through `featureguard.load_sae`; the constructor checks every shape and that
    every weight is finite, so a loaded SAE is never silently wrong.
    """

    def __init__(
        self,
        cfg: SAEConfig,
        *,
        W_enc: torch.Tensor,
        b_enc: torch.Tensor,
        W_dec: torch.Tensor,
        b_dec: torch.Tensor,
        threshold: torch.Tensor | None = None,
        b_mag: torch.Tensor | None = None,
        r_mag: torch.Tensor | None = None,
        features: Sequence[int] | None = None,
        log_sparsity: torch.Tensor | None = None,
    ) -> None:
        self.cfg = cfg
        self.features: tuple[int, ...] | None = None if features is None else tuple(features)
        k = cfg.d_sae if features is None else len(self.features)
        d = cfg.d_in
        where = cfg.source or cfg.format
        _check(where, "W_enc", W_enc, (d, k))
        _check(where, "b_enc", b_enc, (k,))
        _check(where, "W_dec", W_dec, (k, d))
        _check(where, "b_dec", b_dec, (d,))
        if cfg.architecture == "jumprelu":
            if threshold is None:
                raise SAEFormatError(f"{where}: a jumprelu SAE needs a threshold")
            _check(where, "threshold", threshold, (k,))
        if cfg.architecture == "gated":
            if b_mag is None or r_mag is None:
                raise SAEFormatError(f"{where}: a gated SAE needs b_mag and r_mag")
            _check(where, "b_mag", b_mag, (k,))
            _check(where, "r_mag", r_mag, (k,))
        named = {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec,
                 "threshold": threshold, "b_mag": b_mag, "r_mag": r_mag}  # fmt: skip
        dtypes = {n: str(t.dtype).removeprefix("torch.") for n, t in named.items() if t is not None}
        if len(set(dtypes.values())) > 1:  # encode and decode need one dtype
            listing = ", ".join(f"{n} {d}" for n, d in dtypes.items())
            raise SAEFormatError(
                f"{where}: tensors of different dtypes ({listing}); pass dtype= to load_sae "
                "to read them as one"
            )
        if cfg.architecture == "topk" and not (cfg.k and 0 < cfg.k <= cfg.d_sae):
            raise SAEFormatError(f"{where}: topk needs 0 < k <= d_sae={cfg.d_sae}, got k={cfg.k}")
        if self.features is not None:
            bad = [i for i in self.features if not 0 <= i < cfg.d_sae]
            if bad or len(set(self.features)) != len(self.features):
                raise FeatureguardError(
                    f"{where}: features must be distinct indices in [0, {cfg.d_sae}); "
                    f"got {list(self.features)}"
                )
        self.W_enc, self.b_enc, self.W_dec, self.b_dec = W_enc, b_enc, W_dec, b_dec
        self.threshold, self.b_mag, self.r_mag = threshold, b_mag, r_mag
        self.log_sparsity = log_sparsity
        self._local = None if self.features is None else {g: i for i, g in enumerate(self.features)}

    # ---- facts ---------------------------------------------------------------------------------
    @property
    def d_in(self) -> int:
        """Width of the activation the SAE reads."""
        return self.cfg.d_in

    @property
    def d_sae(self) -> int:
        """Number of features in the whole dictionary."""
        return self.cfg.d_sae

    @property
    def dtype(self) -> torch.dtype:
        return self.W_enc.dtype

    @property
    def device(self) -> torch.device:
        return self.W_enc.device

    def __repr__(self) -> str:
        held = "all" if self.features is None else f"{len(self.features)} of them"
        return (
            f"SAE(format={self.cfg.format!r}, architecture={self.cfg.architecture!r}, "
            f"d_in={self.d_in}, d_sae={self.d_sae} ({held} loaded), hook={self.cfg.hook!r}, "
            f"dtype={self.dtype}, device={self.device})"
        )

    # ---- conversion ----------------------------------------------------------------------------
    def _tensors(self) -> dict[str, torch.Tensor | None]:
        names = ("W_enc", "b_enc", "W_dec", "b_dec", "threshold", "b_mag", "r_mag", "log_sparsity")
        return {n: getattr(self, n) for n in names}

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> SAE:
        """A copy on `device` in `dtype` (floating tensors only); self when nothing changes."""
        if (device is None or torch.device(device) == self.device) and dtype in (None, self.dtype):
            return self
        moved = {
            n: None if t is None else t.to(device=device, dtype=dtype or t.dtype)
            for n, t in self._tensors().items()
        }
        return SAE(self.cfg, features=self.features, **moved)

    def select(self, indices: Sequence[int]) -> SAE:
        """An SAE holding only `indices` (global), in that order: what a policy needs."""
        local = self._local_indices(indices)
        t = self._tensors()
        per_feature = ("b_enc", "threshold", "b_mag", "r_mag")
        sliced = {n: None if t[n] is None else t[n][local] for n in per_feature}
        sliced["W_enc"] = self.W_enc[:, local]
        sliced["W_dec"] = self.W_dec[local]
        sliced["b_dec"] = self.b_dec
        ls = self.log_sparsity
        sliced["log_sparsity"] = (
            None if ls is None or ls.shape[0] != self.W_enc.shape[1] else ls[local]
        )
        return SAE(self.cfg, features=list(indices), **sliced)

    def _local_indices(self, indices: Sequence[int]) -> torch.Tensor:
        if self._local is None:
            bad = [i for i in indices if not 0 <= int(i) < self.d_sae]
            local = [int(i) for i in indices]
        else:
            bad = [i for i in indices if int(i) not in self._local]
            local = [self._local.get(int(i), -1) for i in indices]
        if bad:
            held = (
                f"[0, {self.d_sae})" if self._local is None else f"the loaded {list(self.features)}"
            )
            raise FeatureguardError(f"features {bad} are not in {held} ({self.cfg.source})")
        return torch.tensor(local, dtype=torch.long, device=self.device)

    # ---- maths ---------------------------------------------------------------------------------
    def _norm_in(self, x: torch.Tensor) -> torch.Tensor:
        norm = self.cfg.normalization
        if norm.center:
            x = x - x.mean(-1, keepdim=True)
        if norm.kind == "constant":
            x = x * norm.scale_in
        elif norm.kind == "layer_norm":
            x = (x - x.mean(-1, keepdim=True)) / (x.std(-1, keepdim=True) + LAYER_NORM_EPS)
        elif norm.kind == "l2_rescale":
            x = x * (math.sqrt(self.d_in) / x.norm(dim=-1, keepdim=True))
        if self.cfg.subtract_b_dec:
            x = x - self.b_dec
        return x

    def output_scale(self, x: torch.Tensor) -> torch.Tensor | float:
        """Factor that takes a change in SAE output space to the model's space, per token.

        1 without normalisation; `1/scale_out` for a constant scale; the token's std for
        layer_norm; `||x|| / sqrt(d_in)` for l2_rescale. Shape [..., 1] when per token.
        """
        norm = self.cfg.normalization
        x = x.to(self.dtype)
        if norm.center and norm.kind in ("layer_norm", "l2_rescale"):
            x = x - x.mean(-1, keepdim=True)
        if norm.kind == "constant":
            return 1.0 / norm.scale_out
        if norm.kind == "layer_norm":
            return x.std(-1, keepdim=True)
        if norm.kind == "l2_rescale":
            return x.norm(dim=-1, keepdim=True) / math.sqrt(self.d_in)
        return 1.0

    def _activate(self, pre_no_bias: torch.Tensor, local: torch.Tensor | None) -> torch.Tensor:
        """Elementwise activations; topk's competition is applied by the caller."""

        def take(t: torch.Tensor) -> torch.Tensor:
            return t if local is None else t[local]

        arch = self.cfg.architecture
        if arch == "gated":
            gate = (pre_no_bias + take(self.b_enc)) > 0
            mag = torch.relu(pre_no_bias * torch.exp(take(self.r_mag)) + take(self.b_mag))
            return mag * gate
        pre = pre_no_bias + take(self.b_enc)
        if arch == "jumprelu":
            return torch.relu(pre) * (pre > take(self.threshold))
        return torch.relu(pre)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Feature activations [..., k] for every feature held (all of them after a full load).

        Input is cast to the SAE's dtype; so is the result. TopK needs the whole dictionary.
        """
        pre = self._norm_in(x.to(self.dtype)) @ self.W_enc  # [..., k]
        if self.cfg.architecture != "topk":
            return self._activate(pre, None)
        if self.features is not None:
            raise FeatureguardError(
                f"{self.cfg.source}: a TopK SAE loaded with features={list(self.features)} "
                "cannot compute the top-k competition; load it whole, or use encode_subset"
            )
        top = torch.topk(pre + self.b_enc, self.cfg.k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))

    def encode_subset(self, x: torch.Tensor, indices: Sequence[int] | None = None) -> torch.Tensor:
        """Activations [..., len(indices)] of the named (global) features only: 4·d·k FLOPs.

        Exact for relu, jumprelu and gated. For topk it returns ReLU(pre_i): the feature's
        activation if it is among the token's top k, and otherwise what it would be without
        the top-k competition (an upper bound on the true value, which is then 0). Exactness
        would need the full encode; policies on TopK SAEs should set thresholds knowing this.
        `indices=None` means every feature held (after `select`, the policy's own set).
        """
        local = None if indices is None else self._local_indices(indices)
        W = self.W_enc if local is None else self.W_enc[:, local]
        pre = self._norm_in(x.to(self.dtype)) @ W  # [..., len(indices)]
        return self._activate(pre, local)

    def decode(self, f: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """Reconstruction in the model's space from activations [..., k] of the held features.

        Per-token normalisations (layer_norm, l2_rescale) are undone with the statistics of the
        original input, so pass `x` for those SAEs.
        """
        y = f.to(self.dtype) @ self.W_dec + self.b_dec  # [..., d_in]
        norm = self.cfg.normalization
        if norm.kind == "constant":
            return y / norm.scale_out
        if norm.kind in ("layer_norm", "l2_rescale"):
            if x is None:
                raise FeatureguardError(
                    f"decode of an SAE with per-token {norm.kind} needs the original input: "
                    "decode(f, x)"
                )
            xs = x.to(self.dtype)
            if norm.center:
                xs = xs - xs.mean(-1, keepdim=True)
            mu = xs.mean(-1, keepdim=True) if norm.kind == "layer_norm" else 0.0
            return y * self.output_scale(x) + mu
        return y

    def decode_delta(
        self, x: torch.Tensor, indices: Sequence[int] | None, delta_f: torch.Tensor
    ) -> torch.Tensor:
        """Change of the model's activation when features `indices` change by `delta_f`.

        `x + decode_delta(x, idx, c - f)` is the error-term-preserving edit
        `decode(f') + (x - decode(f))`: only the named features move.
        """
        W = self.W_dec if indices is None else self.W_dec[self._local_indices(indices)]
        return (delta_f.to(self.dtype) @ W) * self.output_scale(x)  # [..., d_in]

    def direction(self, i: int) -> torch.Tensor:
        """Feature `i`'s decoder direction in the model's space, per unit of activation.

        For per-token normalisations the token's `output_scale` multiplies it.
        """
        row = self.W_dec[self._local_indices([i])[0]]
        norm = self.cfg.normalization
        return row / norm.scale_out if norm.kind == "constant" else row


def _check(where: str, name: str, t: torch.Tensor, shape: tuple[int, ...]) -> None:
    if not isinstance(t, torch.Tensor):
        raise SAEFormatError(f"{where}: {name} is not a tensor (got {type(t).__name__})")
    if tuple(t.shape) != shape:
        raise SAEFormatError(
            f"{where}: {name} has shape {list(t.shape)}, expected {list(shape)} "
            "(inconsistent shapes: is the file complete and of this format?)"
        )
    if not t.is_floating_point():
        return
    flat = t.reshape(-1)
    # In chunks: a whole-tensor isfinite() would briefly double a 19 GB dictionary's memory.
    bad = sum(
        int((~torch.isfinite(flat[i : i + _CHUNK])).sum()) for i in range(0, flat.numel(), _CHUNK)
    )
    if bad:
        raise SAEFormatError(f"{where}: {name} has {bad} NaN or infinite values")


_CHUNK = 1 << 22


def with_config(sae: SAE, **changes: object) -> SAE:
    """The same tensors under a config with `changes` (e.g. a hook named by the caller)."""
    return SAE(replace(sae.cfg, **changes), features=sae.features, **sae._tensors())
