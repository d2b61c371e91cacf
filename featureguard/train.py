"""Train a TopK SAE on a model's activations at one hook, and save it in SAELens format.

Training runs on scaled activations x·s, s = 1/mean‖x‖ over the training rows (Gao et al.):

    pre = (x·s - b_dec) @ W_enc + b_enc          [B, width]
    f   = scatter(topk(pre, k), ReLU)            k active latents per token
    x̂   = f @ W_dec + b_dec                      W_dec rows kept at unit norm
    L   = ‖x·s - x̂‖² / ‖x·s - mean‖²  +  aux_coef · ‖e - ê‖² / ‖e‖²

where e = x·s - x̂ (no gradient) and ê = z @ W_dec, z = ReLU(top aux_k pre-activations of the
latents that have not fired in `dead_after_tokens` tokens): AuxK lets dead latents learn the
residual. The returned SAE works on raw activations: W_enc·s, W_dec/s, b_dec/s gives exactly
the same top-k choice and activations f, and x̂/s (SAELens `fold_activation_norm_scaling_factor`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import save_file

from featureguard.errors import FeatureguardError
from featureguard.hooks import resolve_hook
from featureguard.sae import SAE, SAEConfig

__all__ = ["Metrics", "SAETrainConfig", "TrainReport", "collect_activations", "measure",
           "save_saelens", "train_sae"]  # fmt: skip


@dataclass(frozen=True, slots=True, kw_only=True)
class SAETrainConfig:
    """Hyper-parameters of one SAE training run."""

    width: int = 2048
    """Number of latents (d_sae)."""
    k: int = 16
    """Latents kept per token by TopK."""
    architecture: Literal["topk"] = "topk"
    """Only TopK: its sparsity is set by k, with no penalty to tune."""
    lr: float = 1e-3
    """Adam learning rate, constant. On 1.2M synthetic tokens (width 2048, 4 epochs), 5.7e-4
    (Gao et al.) / 1e-3 / 2e-3 explained 0.926 / 0.933 / 0.937 with 1.5 / 4.9 / 20% of latents
    silent on held-out rows: higher rates fit a little better and kill many more latents."""
    batch_size: int = 4096
    """Tokens per step."""
    epochs: int = 4
    """Passes over the training rows (the default suits ~1M tokens: ~1200 steps)."""
    aux_k: int = 256
    """Dead latents that reconstruct the residual in the AuxK loss; 0 turns it off."""
    aux_coef: float = 1 / 32
    """Weight of the AuxK loss."""
    dead_after_tokens: int = 262_144
    """A latent that has not fired in this many training tokens is dead (gets the AuxK loss)."""
    eval_tokens: int = 65_536
    """Held-out rows for the report: the last min(eval_tokens, N // 10) rows, never trained on."""
    seed: int = 0
    """Seeds initialisation and batch order; the same seed gives the same weights on CPU."""

    def __post_init__(self) -> None:
        sizes = ("width", "k", "batch_size", "epochs", "dead_after_tokens", "eval_tokens")
        bad = [f"{n}={getattr(self, n)!r} (expected >= 1)" for n in sizes if getattr(self, n) < 1]
        if self.k > self.width:
            bad.append(f"k={self.k} (expected <= width={self.width})")
        if self.lr <= 0 or self.aux_k < 0 or self.aux_coef < 0:
            bad.append(f"lr={self.lr}, aux_k={self.aux_k}, aux_coef={self.aux_coef} "
                       "(expected lr > 0, aux_k >= 0, aux_coef >= 0)")  # fmt: skip
        if self.architecture != "topk":
            bad.append(f"architecture={self.architecture!r} (expected 'topk')")
        if bad:
            raise FeatureguardError(f"SAETrainConfig: {'; '.join(bad)}")


@dataclass(frozen=True, slots=True)
class Metrics:
    """How an SAE does on a set of raw activations."""

    l0: float
    """Mean number of non-zero latents per token."""
    variance_explained: float
    """1 - Σ‖x - x̂‖² / Σ‖x - mean(x)‖²."""
    dead_fraction: float
    """Fraction of latents that never fire on these activations."""


@dataclass(frozen=True, slots=True)
class TrainReport(Metrics):
    """The outcome of `train_sae`: its metrics on the held-out rows, and the run's facts."""

    tokens: int
    """Training tokens seen (rows x epochs)."""
    seconds: float
    """Wall time of training and measurement."""
    scale: float
    """s = 1/mean‖x‖ used in training, folded into the returned weights."""


class _Progress:
    """tqdm when importable, else a plain line on stderr redrawn at most once a second."""

    def __init__(self, total: int, desc: str, enabled: bool) -> None:
        self.total, self.desc, self.enabled, self.n, self.last = total, desc, enabled, 0, 0.0
        try:
            from tqdm import tqdm
        except ImportError:
            tqdm = None
        self.bar = tqdm(total=total, desc=desc, file=sys.stderr) if tqdm and enabled else None

    def update(self, n: int, **post: float) -> None:
        self.n, text = self.n + n, " ".join(f"{k}={v:.4g}" for k, v in post.items())
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=False)
            self.bar.update(n)
        elif self.enabled and (time.monotonic() - self.last > 1 or self.n >= self.total):
            self.last = time.monotonic()
            sys.stderr.write(f"\r{self.desc}: {self.n}/{self.total} {text}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled:
            sys.stderr.write("\n")


class _Enough(Exception):
    """Raised from the hook to skip the layers above it."""


def _batches(tokenizer: Any, texts: Sequence[str], seq_len: int, batch_size: int
             ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:  # fmt: skip
    """Right-padded (ids, mask) [b, T] of `batch_size` texts at a time, each cut to seq_len."""
    for start in range(0, len(texts), batch_size):
        batch = list(texts[start : start + batch_size])
        rows = tokenizer(batch, truncation=True, max_length=seq_len)["input_ids"]
        width = max(map(len, rows))
        if width:
            yield (torch.tensor([r + [0] * (width - len(r)) for r in rows]),
                   torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows]))  # fmt: skip


@torch.no_grad()
def collect_activations(
    model: torch.nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    hook: str,
    *,
    max_tokens: int,
    seq_len: int = 256,
    batch_size: int = 32,
    skip_special: bool = True,
    progress: bool = True,
) -> torch.Tensor:
    """[N ≤ max_tokens, d] float32 activations at `hook`, token by token in text order.

    Each text is cut to `seq_len` tokens and run on its own row, right-padded, so every token
    sees what it would see alone. Padding is dropped, and so are special tokens (BOS, EOS...)
    with `skip_special`. The model runs in eval mode only up to the hook, then gets its mode back.
    """
    point, was_training, chunks, n = resolve_hook(model, hook), model.training, [], 0
    device = next(model.parameters()).device
    special = torch.tensor(tokenizer.all_special_ids if skip_special else [], dtype=torch.long)
    seen: list[torch.Tensor] = []

    def grab(x: torch.Tensor) -> None:
        seen.append(x)
        raise _Enough

    handle, bar = point.attach(grab), _Progress(max_tokens, f"activations at {hook}", progress)
    model.eval()
    try:
        for ids, mask in _batches(tokenizer, texts, seq_len, batch_size):
            seen.clear()
            with contextlib.suppress(_Enough):
                model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
            keep = mask.bool() & ~torch.isin(ids, special)  # [b, T]
            chunks.append(seen[0][keep.to(seen[0].device)][: max_tokens - n].float().cpu())
            n += len(chunks[-1])
            bar.update(len(chunks[-1]))
            if n >= max_tokens:
                break
    finally:
        handle.remove()
        model.train(was_training)
        bar.close()
    return torch.cat(chunks) if chunks else torch.empty(0, point.width or 0)


def measure(sae: SAE, activations: torch.Tensor, *, batch_size: int = 8192) -> Metrics:
    """L0, variance explained and dead fraction of `sae` on raw `activations` [N, d]."""
    return _measure(sae, activations, batch_size)[0]


def _measure(sae: SAE, x: torch.Tensor, batch_size: int) -> tuple[Metrics, torch.Tensor]:
    fired = torch.zeros(sae.d_sae, dtype=torch.float64)
    sse = sst = nnz = 0.0
    mean = x.double().mean(0)
    with torch.no_grad():
        for xb in x.split(batch_size):
            f = sae.encode(xb)  # [b, width]
            sse += float((xb - sae.decode(f)).double().pow(2).sum())
            sst += float((xb.double() - mean).pow(2).sum())
            active = f > 0
            nnz += float(active.sum())
            fired += active.sum(0)
    n, dead = max(len(x), 1), float((fired == 0).double().mean())
    return Metrics(nnz / n, 1 - sse / sst if sst > 0 else 0.0, dead), fired / n


def _losses(p: dict[str, torch.Tensor], xb: torch.Tensor, dead: torch.Tensor,
            cfg: SAETrainConfig) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Total loss and the indices of the latents that fired, for one scaled batch [B, d]."""
    pre = (xb - p["b_dec"]) @ p["W_enc"] + p["b_enc"]  # [B, width]
    top = pre.topk(cfg.k, dim=-1, sorted=False)
    acts = torch.relu(top.values)  # [B, k]
    e = xb - _decode(top.indices, acts, p["W_dec"]) - p["b_dec"]  # [B, d]
    loss = e.pow(2).sum() / (xb - xb.mean(0)).pow(2).sum()
    n_dead = int(dead.sum())
    if cfg.aux_k and n_dead:
        aux = pre.masked_fill(~dead, -math.inf).topk(min(cfg.aux_k, n_dead), dim=-1, sorted=False)
        r = e.detach()
        e_hat = _decode(aux.indices, torch.relu(aux.values), p["W_dec"])  # [B, d], no bias
        loss = loss + cfg.aux_coef * (r - e_hat).pow(2).sum() / r.pow(2).sum()
    return loss, top.indices[acts > 0]


def _step(
    p: dict[str, torch.Tensor],
    opt: torch.optim.Optimizer,
    xb: torch.Tensor,
    dead: torch.Tensor,
    cfg: SAETrainConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One Adam step on a scaled batch; decoder rows stay on the unit sphere."""
    loss, fired = _losses(p, xb, dead, cfg)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    with torch.no_grad():
        d, grad = p["W_dec"], p["W_dec"].grad
        grad -= (grad * d).sum(1, keepdim=True) * d  # no component along the row
        opt.step()
        d /= d.norm(dim=1, keepdim=True)
    return loss.detach(), fired


def _decode(indices: torch.Tensor, acts: torch.Tensor, W_dec: torch.Tensor) -> torch.Tensor:
    """Σ_j acts[:, j] · W_dec[indices[:, j]]: [B, d] without materialising [B, width]."""
    return torch.nn.functional.embedding_bag(indices, W_dec, per_sample_weights=acts, mode="sum")


def train_sae(
    activations: torch.Tensor, cfg: SAETrainConfig, *, progress: bool = True
) -> tuple[SAE, TrainReport]:
    """Train on all but the last `eval_tokens` rows of raw `activations` [N, d]; see the module.

    Returns an SAE (normalisation "none", SAELens-style b_dec subtraction) that works on raw
    activations, with `log_sparsity` = log10 firing frequency on the held-out rows.
    """
    t0, x = time.perf_counter(), activations.detach().float().cpu()
    n_eval = min(cfg.eval_tokens, len(x) // 10) if x.ndim == 2 else 0
    if x.ndim != 2 or n_eval < 1 or not torch.isfinite(x).all():
        raise FeatureguardError(f"train_sae: expected finite activations [N>=10, d], got "
                                f"{list(x.shape)}")  # fmt: skip
    train, held, g = x[:-n_eval], x[-n_eval:], torch.Generator().manual_seed(cfg.seed)
    scale = float(1 / train.double().norm(dim=1).mean())
    p = _init(train[torch.randperm(len(train), generator=g)[:65_536]] * scale, cfg.width, g)
    since = torch.zeros(cfg.width, dtype=torch.long)  # tokens since each latent last fired
    bs = min(cfg.batch_size, len(train))
    opt = torch.optim.Adam(p.values(), lr=cfg.lr)
    bar = _Progress(cfg.epochs * math.ceil(len(train) / bs), "training SAE", progress)
    try:
        for _ in range(cfg.epochs):
            for idx in torch.randperm(len(train), generator=g).split(bs):
                loss, fired = _step(p, opt, train[idx] * scale, since >= cfg.dead_after_tokens, cfg)
                since += len(idx)
                since[fired] = 0
                dead = float((since >= cfg.dead_after_tokens).float().mean())
                bar.update(1, loss=float(loss), l0=len(fired) / len(idx), dead=dead)
    finally:
        bar.close()
    sae = _fold(p, scale, cfg, x.shape[1])
    metrics, freq = _measure(sae, held, 8192)
    sae.log_sparsity = torch.log10(freq.float() + 1e-10)
    return sae, TrainReport(metrics.l0, metrics.variance_explained, metrics.dead_fraction,
                            len(train) * cfg.epochs, time.perf_counter() - t0, scale)  # fmt: skip


def _init(sample: torch.Tensor, width: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    """Random unit decoder rows, W_enc = W_decᵀ, b_enc = 0, b_dec = the sample's median."""
    W_dec = torch.randn(width, sample.shape[1], generator=g)
    W_dec /= W_dec.norm(dim=1, keepdim=True)
    p = {"W_enc": W_dec.T.clone(), "b_enc": torch.zeros(width), "W_dec": W_dec,
         "b_dec": sample.median(dim=0).values}  # fmt: skip
    return {n: t.requires_grad_(True) for n, t in p.items()}


def _fold(p: dict[str, torch.Tensor], s: float, cfg: SAETrainConfig, d: int) -> SAE:
    """The raw-space SAE: (x - b_dec/s)·(s W_enc) = (x s - b_dec) W_enc; decode gives x̂/s."""
    c = SAEConfig(format="saelens", architecture="topk", d_in=d, d_sae=cfg.width, k=cfg.k,
                  subtract_b_dec=True, source="featureguard.train")  # fmt: skip
    t = {n: v.detach().clone() for n, v in p.items()}
    return SAE(c, W_enc=t["W_enc"] * s, b_enc=t["b_enc"], W_dec=t["W_dec"] / s,
               b_dec=t["b_dec"] / s)  # fmt: skip


def save_saelens(
    sae: SAE,
    folder: Path,
    *,
    hook: str,
    model_name: str | None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write `sae` (topk, no normalisation, held whole) as an SAELens v6 folder, atomically.

    `extra` adds metadata keys (context_size, prepend_bos, dataset_path...). An existing folder
    is replaced only when it is empty or an SAELens folder. Returns `folder`.
    """
    c = sae.cfg
    if c.architecture != "topk" or c.normalization.kind != "none" or sae.features is not None:
        raise FeatureguardError(f"save_saelens: expected a whole topk SAE without "
                                f"normalisation, got {sae!r}")  # fmt: skip
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()) and not (folder / "cfg.json").is_file():
        raise FeatureguardError(f"{folder}: exists and is not an SAELens folder; not replacing")
    meta = {"sae_lens_version": None, "sae_lens_training_version": None, "hook_name": hook,
            "model_name": model_name, "hook_head_index": None, "context_size": None,
            "prepend_bos": None, **(extra or {})}  # fmt: skip
    cfg = {"d_in": c.d_in, "d_sae": c.d_sae, "dtype": "float32", "device": "cpu",
           "apply_b_dec_to_input": c.subtract_b_dec, "normalize_activations": "none",
           "reshape_activations": "none", "architecture": "topk", "k": c.k,
           "rescale_acts_by_decoder_norm": False, "metadata": meta}  # fmt: skip
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    old = tmp.with_name(tmp.name + ".old")
    try:
        (tmp / "cfg.json").write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
        weights = {n: getattr(sae, n).detach().float().cpu().contiguous()
                   for n in ("W_enc", "b_enc", "W_dec", "b_dec")}  # fmt: skip
        save_file(weights, str(tmp / "sae_weights.safetensors"))
        if sae.log_sparsity is not None:
            sparsity = {"sparsity": sae.log_sparsity.detach().float().cpu().contiguous()}
            save_file(sparsity, str(tmp / "sparsity.safetensors"))
        if folder.exists():
            os.replace(folder, old)  # the old save stays until the new one is in place
        os.replace(tmp, folder)
    except BaseException:
        if old.exists() and not folder.exists():
            os.replace(old, folder)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return folder
