"""Sparse logistic probes and AUROC in torch: deterministic, CPU, float64.

AUROC is the Mann-Whitney statistic with ties counted half,

    AUROC = (#{(p, n): s_p > s_n} + ½ #{(p, n): s_p = s_n}) / (n₁ n₀),

computed from average ranks: (Σ_{positives} rank − n₁(n₁+1)/2) / (n₁ n₀).

`fit_sparse_probe` fits an L1 logistic regression over at most `k` columns, then refits it:

1. standardise the columns (mean 0, std 1; constant columns never enter);
2. weight the samples so each class sums to ½ (`balanced`), or each sample 1/n;
3. minimise  Σᵢ sᵢ [log(1 + e^{mᵢ}) − yᵢ mᵢ] + λ‖w‖₁,  mᵢ = zᵢ·w + b,  by FISTA (proximal
   gradient with momentum and restarts; step 1/L, L = ¼ λ_max([Z 1]ᵀ diag(s) [Z 1])) on a
   geometric path λ_max → λ_max·`lambda_ratio`, warm-started; λ_max = ‖Zᵀ(s ⊙ (σ(b₀) − y))‖_∞
   is where the first column enters. The support kept is that of the smallest λ with at most `k`
   non-zeros (if a step jumps from 0 to more than `k`, its `k` largest |w|); the path also stops
   once the loss falls below 1/100 of the intercept-only loss (separated classes);
4. refit the kept columns without L1 by Newton's method, with a small ridge (`ridge`·‖w‖²/2 on
   the standardised weights) so that separable data still gives finite weights;
5. map back to raw inputs: w_raw = w/σ, b_raw = b − Σ w μ/σ.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from featureguard.errors import FeatureguardError

__all__ = ["SparseProbe", "auroc", "auroc_columns", "fit_max_probe", "fit_sparse_probe"]

_CHUNK = 1 << 22  # elements per block of columns in auroc_columns
_SEPARATED = 1e-2  # the path stops once the loss is below this fraction of the null loss


def _labels(y: torch.Tensor | list, n: int) -> torch.Tensor:
    labels = torch.as_tensor(y).reshape(-1).bool()
    if labels.numel() != n:
        raise FeatureguardError(f"expected {n} labels, got {labels.numel()}")
    n1 = int(labels.sum())
    if n1 == 0 or n1 == n:
        raise FeatureguardError(f"AUROC and probes need both classes, got {n1} positive of {n}")
    return labels


def auroc_columns(x: torch.Tensor, y: torch.Tensor | list) -> torch.Tensor:
    """AUROC of each column of `x` [n, p] for labels `y` [n] (True: positive), ties half: [p]."""
    x = torch.as_tensor(x, dtype=torch.float64)
    x = x.reshape(-1, 1) if x.dim() == 1 else x
    n = x.shape[0]
    labels = _labels(y, n)
    if torch.isnan(x).any():
        raise FeatureguardError("AUROC of scores with NaN")
    n1 = int(labels.sum())
    n0 = n - n1
    out = torch.empty(x.shape[1], dtype=torch.float64)
    step = max(1, _CHUNK // max(n, 1))
    for start in range(0, x.shape[1], step):
        cols = x[:, start : start + step].T.contiguous()  # [c, n]
        ordered = cols.sort(dim=1).values
        pos = cols[:, labels].contiguous()  # [c, n1]
        below = torch.searchsorted(ordered, pos, right=False)  # values < s
        upto = torch.searchsorted(ordered, pos, right=True)  # values <= s
        ranks = (below + upto + 1).to(torch.float64) / 2  # 1-based average ranks
        u = ranks.sum(dim=1) - n1 * (n1 + 1) / 2
        out[start : start + step] = u / (n1 * n0)
    return out


def auroc(scores: torch.Tensor | list, labels: torch.Tensor | list) -> float:
    """AUROC of `scores` [n] for `labels` [n] (True: positive); ties count half."""
    return float(auroc_columns(torch.as_tensor(scores, dtype=torch.float64).reshape(-1), labels)[0])


@dataclass(frozen=True, slots=True)
class SparseProbe:
    """A logistic probe on a few columns: P(y) = σ(x[:, columns] · weights + bias)."""

    columns: tuple[int, ...]
    """Indices of the columns used, by decreasing |standardised weight|."""
    weights: tuple[float, ...]
    """Weight of each column on the raw (unstandardised) input."""
    bias: float
    """Intercept on the raw input: the probe says positive where x·w > −bias."""
    lam: float
    """The L1 strength whose support was kept (0.0 when it came from a fallback)."""
    path: tuple[tuple[float, int], ...]
    """(λ, non-zeros) at each point of the path visited."""

    def decision(self, x: torch.Tensor) -> torch.Tensor:
        """The probe's logit x[:, columns]·w + b for rows `x` [n, p]: [n]."""
        w = torch.tensor(self.weights, dtype=torch.float64)
        return torch.as_tensor(x, dtype=torch.float64)[:, list(self.columns)] @ w + self.bias


def _loss_grad(
    z: torch.Tensor, y: torch.Tensor, s: torch.Tensor, w: torch.Tensor, b: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    m = z @ w + b  # [n]
    loss = (s * (torch.nn.functional.softplus(m) - y * m)).sum()
    r = s * (torch.sigmoid(m) - y)  # [n]
    return loss, z.T @ r, r.sum()


def _soft(v: torch.Tensor, t: float) -> torch.Tensor:
    return torch.sign(v) * torch.clamp(v.abs() - t, min=0.0)


def _fista(
    z: torch.Tensor,
    y: torch.Tensor,
    s: torch.Tensor,
    lam: float,
    step: float,
    w: torch.Tensor,
    b: torch.Tensor,
    *,
    max_iter: int,
    tol: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """L1 logistic regression from (w, b) by FISTA with function-value restarts."""
    v_w, v_b, t = w.clone(), b.clone(), 1.0
    objective = float("inf")
    for _ in range(max_iter):
        _, g_w, g_b = _loss_grad(z, y, s, v_w, v_b)
        new_w = _soft(v_w - step * g_w, step * lam)
        new_b = v_b - step * g_b
        loss = float(_loss_grad(z, y, s, new_w, new_b)[0]) + lam * float(new_w.abs().sum())
        change = float(torch.cat([(new_w - w).abs(), (new_b - b).abs().reshape(1)]).max())
        if loss > objective:  # momentum overshot: restart from the last iterate
            if t == 1.0:  # a plain proximal step from it does not descend: converged
                break
            v_w, v_b, t = w.clone(), b.clone(), 1.0
            continue
        t_next = (1 + (1 + 4 * t * t) ** 0.5) / 2
        v_w = new_w + (t - 1) / t_next * (new_w - w)
        v_b = new_b + (t - 1) / t_next * (new_b - b)
        w, b, t, objective = new_w, new_b, t_next, loss
        if change < tol:
            break
    return w, b


def _newton(
    z: torch.Tensor, y: torch.Tensor, s: torch.Tensor, ridge: float, iters: int = 100
) -> torch.Tensor:
    """Ridge-logistic fit of [w, b] on columns `z` [n, q] by damped Newton steps."""
    a = torch.cat([z, torch.ones(z.shape[0], 1, dtype=z.dtype)], dim=1)  # [n, q+1]
    penalty = torch.full((a.shape[1],), ridge, dtype=z.dtype)
    penalty[-1] = 0.0  # the intercept is not penalised

    def objective(theta: torch.Tensor) -> float:
        m = a @ theta
        data = (s * (torch.nn.functional.softplus(m) - y * m)).sum()
        return float(data + 0.5 * (penalty * theta * theta).sum())

    theta = torch.zeros(a.shape[1], dtype=z.dtype)
    current = objective(theta)
    for _ in range(iters):
        p = torch.sigmoid(a @ theta)
        grad = a.T @ (s * (p - y)) + penalty * theta
        hess = (a * (s * p * (1 - p))[:, None]).T @ a + torch.diag(penalty)
        hess += 1e-10 * torch.eye(a.shape[1], dtype=z.dtype)
        direction = torch.linalg.solve(hess, grad)
        scale = 1.0
        while scale > 1e-8:
            candidate = theta - scale * direction
            value = objective(candidate)
            if value <= current:
                break
            scale /= 2
        else:
            break
        theta, done = candidate, current - value < 1e-12
        current = value
        if done or float(grad.abs().max()) < 1e-10:
            break
    return theta


def fit_sparse_probe(
    x: torch.Tensor,
    y: torch.Tensor | list,
    *,
    k: int,
    n_lambdas: int = 40,
    lambda_ratio: float = 1e-3,
    balanced: bool = True,
    ridge: float = 1e-3,
    max_iter: int = 2000,
    tol: float = 1e-7,
) -> SparseProbe:
    """An L1 logistic probe on at most `k` columns of `x` [n, p], refit (module docstring)."""
    if k < 1:
        raise FeatureguardError(f"expected k >= 1, got {k}")
    x = torch.as_tensor(x, dtype=torch.float64)
    labels = _labels(y, x.shape[0])
    if not torch.isfinite(x).all():
        raise FeatureguardError("probe inputs must be finite")
    yf = labels.to(torch.float64)
    n1 = float(yf.sum())
    n0 = x.shape[0] - n1
    s = torch.where(labels, 0.5 / n1, 0.5 / n0) if balanced else torch.full_like(yf, 1 / len(yf))
    mu, sd = x.mean(dim=0), x.std(dim=0, unbiased=False)
    live = sd > 1e-12 * (1 + mu.abs())
    z = torch.where(live, (x - mu) / torch.where(live, sd, 1.0), 0.0)  # [n, p]
    b0 = torch.logit((s * yf).sum())
    null, g0, _ = _loss_grad(z, yf, s, torch.zeros(z.shape[1], dtype=torch.float64), b0)
    lam_max = float(g0.abs().max())
    a = torch.cat([z, torch.ones(z.shape[0], 1, dtype=torch.float64)], dim=1)
    lipschitz = 0.25 * float(torch.linalg.eigvalsh((a * s[:, None]).T @ a)[-1])
    step = 1.0 / max(lipschitz, 1e-12)
    w, b = torch.zeros(z.shape[1], dtype=torch.float64), b0.clone()
    support, kept_lam, path = None, 0.0, []
    for j in range(n_lambdas):
        lam = lam_max * lambda_ratio ** (j / max(n_lambdas - 1, 1))
        w, b = _fista(z, yf, s, lam, step, w, b, max_iter=max_iter, tol=tol)
        nonzero = int((w != 0).sum())
        path.append((lam, nonzero))
        if nonzero > k:
            if support is None:  # jumped past k at once: keep its k largest weights
                support = torch.argsort(-w.abs(), stable=True)[:k]
            break
        if nonzero:
            support, kept_lam = torch.nonzero(w).reshape(-1), lam
        if float(_loss_grad(z, yf, s, w, b)[0]) < _SEPARATED * float(null):
            break  # the classes are separated: smaller λ only grows the same weights
    if support is None:  # nothing ever entered (e.g. no column differs between the classes)
        raise FeatureguardError("no column separates the classes at all; the probe is empty")
    support = support[live[support]]
    theta = _newton(z[:, support], yf, s, ridge)
    w_std, b_std = theta[:-1], float(theta[-1])
    order = torch.argsort(-w_std.abs(), stable=True)
    cols, w_std = support[order], w_std[order]
    w_raw = w_std / sd[cols]
    bias = b_std - float((w_std * mu[cols] / sd[cols]).sum())
    return SparseProbe(
        columns=tuple(int(c) for c in cols),
        weights=tuple(float(v) for v in w_raw),
        bias=bias,
        lam=kept_lam,
        path=tuple(path),
    )


def fit_max_probe(
    texts: list[torch.Tensor],
    y: torch.Tensor | list,
    *,
    k: int,
    temperature: float = 4.0,
    lambda_ratio: float = 1e-2,
    ridge: float = 1e-3,
    max_iter: int = 500,
    tol: float = 1e-6,
) -> SparseProbe:
    """An L1 logistic probe on at most `k` columns whose *text* score is the maximum over the
    text's rows (tokens): the score a policy computes, max_t x_t·w + b, fitted on text labels.

    `texts` holds one [t_i, p] tensor per text (t_i ≥ 1). Each step replaces the maximum by a
    smooth one, the log-mean-exp log(mean_t e^{τ s_t})/τ (it is the mean at τ → 0 and the
    maximum at τ → ∞), so the objective has a gradient everywhere; columns are standardised
    over all rows and the classes balanced as in `fit_sparse_probe`. One L1 fit at λ =
    `lambda_ratio` · λ_max (proximal gradient with backtracking) ranks the columns; its `k`
    largest weights are refitted without L1 (`ridge` on the standardised weights), and the bias
    last, for the hard maximum. Only text labels are needed: which tokens carry the concept is
    learnt.
    """
    if k < 1:
        raise FeatureguardError(f"expected k >= 1, got {k}")
    if not texts or any(t.ndim != 2 or len(t) == 0 for t in texts):
        raise FeatureguardError("expected one non-empty [tokens, columns] tensor per text")
    labels = _labels(y, len(texts))
    rows = torch.cat([torch.as_tensor(t, dtype=torch.float64) for t in texts])
    if not torch.isfinite(rows).all():
        raise FeatureguardError("probe inputs must be finite")
    mu, sd = rows.mean(dim=0), rows.std(dim=0, unbiased=False)
    live = sd > 1e-12 * (1 + mu.abs())
    scale = torch.where(live, sd, 1.0)
    longest = max(len(t) for t in texts)
    z = torch.zeros(len(texts), longest, rows.shape[1], dtype=torch.float64)
    mask = torch.zeros(len(texts), longest, dtype=torch.bool)
    for i, t in enumerate(texts):
        z[i, : len(t)] = torch.where(live, (torch.as_tensor(t, dtype=torch.float64) - mu) / scale,
                                     0.0)  # fmt: skip
        mask[i, : len(t)] = True
    yf = labels.to(torch.float64)
    n1 = float(yf.sum())
    if n1 in (0.0, float(len(texts))):
        raise FeatureguardError("the probe needs texts of both classes")
    s = torch.where(labels, 0.5 / n1, 0.5 / (len(texts) - n1))
    log_len = mask.sum(dim=1).to(torch.float64).log()

    def smooth(w: torch.Tensor) -> torch.Tensor:  # [n] log-mean-exp over each text's rows
        return (torch.logsumexp(temperature * (z @ w).masked_fill(~mask, -torch.inf), dim=1)
                - log_len) / temperature  # fmt: skip

    def loss(w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        m = smooth(w) + b
        return (s * (torch.nn.functional.softplus(m) - yf * m)).sum()

    b0 = torch.logit((s * yf).sum())
    w = torch.zeros(z.shape[2], dtype=torch.float64)
    lam = float(_grad(loss, w, b0)[1].abs().max()) * lambda_ratio  # λ_max: where columns enter
    # One L1 fit at a small λ, then its k largest weights: a λ path jumps past k in large steps
    # here (many columns enter together), and the joint fit ranks columns better than a path.
    w, b = _ista(loss, w, b0.clone(), lam, max_iter=max_iter, tol=tol)
    nonzero = int((w != 0).sum())
    if not nonzero:
        raise FeatureguardError("no column separates the classes at all; the probe is empty")
    support = torch.argsort(-w.abs(), stable=True)[: min(k, nonzero)]
    support = support[live[support]]
    w_s = _refit(lambda v, c: loss(torch.zeros_like(w).index_put((support,), v), c),
                 w[support], b, ridge)  # fmt: skip
    hard = (z[..., support] @ w_s).masked_fill(~mask, -torch.inf).max(dim=1).values  # [n]
    b_s = _bias(hard, yf, s)
    order = torch.argsort(-w_s.abs(), stable=True)
    cols, w_s = support[order], w_s[order]
    w_raw = w_s / scale[cols]
    return SparseProbe(
        columns=tuple(int(c) for c in cols),
        weights=tuple(float(v) for v in w_raw),
        bias=b_s - float((w_s * mu[cols] / scale[cols]).sum()),
        lam=lam,
        path=((lam, nonzero),),
    )


Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _grad(loss: Loss, w: torch.Tensor, b: torch.Tensor) -> tuple[float, torch.Tensor, torch.Tensor]:
    w, b = w.detach().requires_grad_(True), b.detach().requires_grad_(True)
    value = loss(w, b)
    g_w, g_b = torch.autograd.grad(value, (w, b))
    return float(value.detach()), g_w, g_b


def _ista(
    loss: Loss, w: torch.Tensor, b: torch.Tensor, lam: float, *, max_iter: int, tol: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """L1-penalised minimisation of a smooth `loss` from (w, b) by proximal gradient steps,
    each step size found by backtracking (and allowed to grow again)."""
    step = 1.0
    for _ in range(max_iter):
        value, g_w, g_b = _grad(loss, w, b)
        while True:
            new_w, new_b = _soft(w - step * g_w, step * lam), b - step * g_b
            d_w, d_b = new_w - w, new_b - b
            bound = value + float(g_w @ d_w + g_b * d_b) + float(d_w @ d_w + d_b * d_b) / (2 * step)
            with torch.no_grad():
                if float(loss(new_w, new_b)) <= bound + 1e-12 or step < 1e-12:
                    break
            step /= 2
        change = float(torch.cat([d_w.abs(), d_b.abs().reshape(1)]).max())
        w, b, step = new_w, new_b, step * 1.5
        if change < tol:
            break
    return w, b


def _refit(loss: Loss, w: torch.Tensor, b: torch.Tensor, ridge: float) -> torch.Tensor:
    """The weights minimising `loss` + ridge/2 ‖w‖² from (w, b), by L-BFGS."""
    w, b = w.clone().requires_grad_(True), b.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([w, b], max_iter=500, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        value = loss(w, b) + 0.5 * ridge * (w * w).sum()
        value.backward()
        return value

    opt.step(closure)
    return w.detach()


def _bias(scores: torch.Tensor, y: torch.Tensor, s: torch.Tensor) -> float:
    """The intercept b minimising the weighted logistic loss of `scores` + b (Newton in 1-D)."""
    b = 0.0
    for _ in range(100):
        p = torch.sigmoid(scores + b)
        grad, hess = float((s * (p - y)).sum()), float((s * p * (1 - p)).sum())
        if hess < 1e-15 or abs(grad) < 1e-12:
            break
        b -= max(-5.0, min(5.0, grad / hess))
    return b
