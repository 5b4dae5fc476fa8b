"""Loss-Hessian spectra: exact for deep linear residual networks, top-k by Hessian-vector products for any model.

Li, Jiao, Han & Weissman ("Demystifying ResNet", 2016) study a deep LINEAR residual network of n units on
width-d vectors, each unit a shortcut around k linear layers,
    F = (I + W_{n,k} ... W_{n,1}) ... (I + W_{1,k} ... W_{1,1}),     loss(F) = E ||y - F x||^2,
at the zero initial point (every W = 0, so F = I). With M = E[x (x - y)^T] the Hessian there is
  - k = 1: the Gauss-Newton term of n units that all act alike plus unit-to-unit couplings; its largest
    |eigenvalue| grows linearly with n, so the condition number grows with depth (strictly when M = m I;
    for a generic M the smallest nonzero |eigenvalue| wanders with n, see synthetic_problem);
  - k = 2: block diagonal, one identical block [[0, B], [B^T, 0]] per unit (B built from M), so its spectrum
    is the singular values of M, +/-, each n times: the condition number is cond(M) at every depth;
  - k >= 3: exactly zero (each unit's product is cubic in its weights): a high-order saddle.
`linear_resnet_hessian` computes that Hessian exactly (float64, reverse-over-reverse torch.func.jacrev) at zero or small random
weights, and `linear_resnet_table` tabulates it over shortcut depths, depths and inits.

For real networks (our ResNets, any nn.Module) on a fixed batch, `top_hessian_eigenvalues` finds the
largest-|eigenvalue| end of the spectrum from Hessian-vector products (Lanczos, or power iteration with
deflation), without ever forming the Hessian. Losses are in nats: mean cross-entropy per example
(classify) or mean squared error per pixel (autoencode), as training uses; BatchNorm runs in eval mode.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ibprobe.errors import ConfigError

LINEAR_INITS = ("zero", "random")
REGIMES = ("classify", "autoencode")
ZERO_RTOL = 1e-9  # |eigenvalue| <= ZERO_RTOL * max |eigenvalue| counts as zero (float64 eigh errors ~1e-15)
ZERO_ATOL = 1e-12  # ... and so does |eigenvalue| <= ZERO_ATOL: an all-zero Hessian has no nonzero eigenvalue


# ------------------------------------------------------------------------------------- spectrum summaries
@dataclass(frozen=True)
class HessianSpectrum:
    """Eigenvalues (ascending) of a symmetric Hessian and what the condition number is built from.

    lambda_max: the largest |eigenvalue|; lambda_min_nonzero: the smallest |eigenvalue| that is not zero
    (zero: |lambda| <= max(ZERO_ATOL, ZERO_RTOL * lambda_max)); condition_number = their ratio, nan when
    every eigenvalue is zero. n_zero / n_negative count eigenvalues; a saddle has n_negative > 0.
    """

    eigenvalues: np.ndarray
    lambda_max: float
    lambda_min_nonzero: float
    condition_number: float
    n_zero: int
    n_negative: int


def summarize_spectrum(eigenvalues: np.ndarray | torch.Tensor, rtol: float = ZERO_RTOL,
                       atol: float = ZERO_ATOL) -> HessianSpectrum:
    """HessianSpectrum of a full list of eigenvalues; see HessianSpectrum for the zero tolerance."""
    e = np.sort(np.asarray(torch.as_tensor(eigenvalues).detach().cpu().double()))
    a = np.abs(e)
    top = float(a.max()) if a.size else 0.0
    nonzero = a > max(atol, rtol * top)
    lam_min = float(a[nonzero].min()) if nonzero.any() else float("nan")
    cond = top / lam_min if nonzero.any() else float("nan")
    return HessianSpectrum(eigenvalues=e, lambda_max=top, lambda_min_nonzero=lam_min, condition_number=cond,
                           n_zero=int((~nonzero).sum()), n_negative=int((e < 0)[nonzero].sum()))


# ------------------------------------------------------------------------------ deep linear residual nets
@dataclass(frozen=True)
class LinearProblem:
    """Squared loss of a linear map F on width-d data, through second moments (float64):
    loss(F) = E||y - F x||^2 = syy - 2 tr(F sxy) + tr(F sxx F^T), sxx = E[x x^T], sxy = E[x y^T], syy = E||y||^2.
    """

    sxx: torch.Tensor  # (d, d)
    sxy: torch.Tensor  # (d, d)
    syy: float

    @property
    def width(self) -> int:
        return int(self.sxx.shape[0])

    @classmethod
    def from_data(cls, x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor) -> "LinearProblem":
        """Moments of fixed data x, y: (N, d) each; the loss is then the mean over the N examples."""
        x = torch.as_tensor(x, dtype=torch.float64)
        y = torch.as_tensor(y, dtype=torch.float64)
        if x.ndim != 2 or x.shape != y.shape:
            raise ConfigError(f"x and y must both be (N, d) arrays of one shape, got {tuple(x.shape)} and "
                              f"{tuple(y.shape)}")
        n = x.shape[0]
        return cls(sxx=x.T @ x / n, sxy=x.T @ y / n, syy=float((y * y).sum() / n))

    def loss(self, f: torch.Tensor) -> torch.Tensor:
        return self.syy - 2 * torch.trace(f @ self.sxy) + torch.trace(f @ self.sxx @ f.T)

    def residual_moment(self) -> torch.Tensor:
        """M = E[x (x - y)^T]: at F = I with 2-layer shortcuts the Hessian's eigenvalues are +/- M's singular values."""
        return self.sxx - self.sxy


def synthetic_problem(width: int = 4, seed: int = 0, spread: float = 4.0, target_scale: float = 0.5,
                      isotropic_residual: bool = False) -> LinearProblem:
    """A fixed input covariance (eigenvalues evenly spaced from 1/sqrt(spread) to sqrt(spread) in a random basis)
    and a noise-free linear target y = T x.

    By default T = I + target_scale * G / sqrt(width), G standard normal, so M = E[x (x - y)^T] is a generic
    matrix. With isotropic_residual, T = I - m sxx^-1 with m = target_scale / sqrt(spread), so M = m I: then
    with 1-layer shortcuts the units' couplings commute with their shared Gauss-Newton term and the Hessian's
    condition number grows strictly with depth (2-layer shortcuts then give condition number 1). For a generic
    M the couplings do not commute, some eigenvalues pass close to zero at some depths, and the condition
    number trends up with depth (its largest |eigenvalue| grows linearly) without growing at every step.
    """
    g = torch.Generator().manual_seed(int(seed))
    q, _ = torch.linalg.qr(torch.randn(width, width, generator=g, dtype=torch.float64))
    eig = torch.linspace(spread ** -0.5, spread ** 0.5, width, dtype=torch.float64)
    sxx = q @ torch.diag(eig) @ q.T
    eye = torch.eye(width, dtype=torch.float64)
    if isotropic_residual:
        t = eye - target_scale * spread ** -0.5 * torch.linalg.inv(sxx)
    else:
        t = eye + target_scale * torch.randn(width, width, generator=g, dtype=torch.float64) / width ** 0.5
    return LinearProblem(sxx=sxx, sxy=sxx @ t.T, syy=float(torch.trace(t @ sxx @ t.T)))


def linear_resnet_map(theta: torch.Tensor, depth: int, shortcut_depth: int, width: int) -> torch.Tensor:
    """F = prod over units (I + W_k ... W_1) for flat weights theta of depth * shortcut_depth * width^2 entries."""
    w = theta.view(depth, shortcut_depth, width, width)
    eye = torch.eye(width, dtype=theta.dtype, device=theta.device)
    f = eye
    for i in range(depth):
        branch = w[i, 0]
        for j in range(1, shortcut_depth):
            branch = w[i, j] @ branch
        f = (eye + branch) @ f  # (d, d)
    return f


def linear_resnet_init(depth: int, shortcut_depth: int, width: int, init: str = "zero", scale: float = 0.05,
                       seed: int = 0) -> torch.Tensor:
    """Flat float64 weights: all zero, or ("random") i.i.d. normal with standard deviation `scale`."""
    if init not in LINEAR_INITS:
        raise ConfigError(f"init must be one of {', '.join(LINEAR_INITS)}, got {init!r}")
    n = depth * shortcut_depth * width * width
    if init == "zero":
        return torch.zeros(n, dtype=torch.float64)
    g = torch.Generator().manual_seed(int(seed))
    return scale * torch.randn(n, generator=g, dtype=torch.float64)


def linear_resnet_hessian(depth: int, shortcut_depth: int, *, init: str = "zero", problem: LinearProblem | None = None,
                          width: int = 4, scale: float = 0.05, seed: int = 0) -> HessianSpectrum:
    """Exact spectrum of the full Hessian (all depth * shortcut_depth * width^2 weights) of the linear residual
    network's squared loss at the given initialisation. `problem` defaults to synthetic_problem(width, seed)."""
    if depth < 1 or shortcut_depth < 1 or width < 1:
        raise ConfigError("depth, shortcut_depth and width must be positive integers")
    problem = problem if problem is not None else synthetic_problem(width, seed)
    d = problem.width
    theta = linear_resnet_init(depth, shortcut_depth, d, init, scale, seed)
    loss = lambda t: problem.loss(linear_resnet_map(t, depth, shortcut_depth, d))  # noqa: E731
    h = torch.func.jacrev(torch.func.jacrev(loss))(theta)  # reverse over reverse: no forward-mode decompositions
    return summarize_spectrum(torch.linalg.eigvalsh((h + h.T) / 2))


def linear_resnet_table(shortcut_depths: Sequence[int] = (1, 2, 3), depths: Iterable[int] = range(1, 11),
                        inits: Sequence[str] = ("zero", "random"), *, width: int = 4, scale: float = 0.05,
                        seed: int = 0, problem: LinearProblem | None = None) -> list[dict]:
    """One row per (shortcut_depth, depth, init): the Hessian's condition number and what it is built from.

    Every row uses the same data (one fixed input covariance and target), so rows differ only in the network.
    Columns: shortcut_depth, depth, init, n_params, condition_number, lambda_max, lambda_min_nonzero (both
    |eigenvalue|, loss units per weight^2), n_zero, n_negative; condition_number is nan for a zero Hessian.
    """
    problem = problem if problem is not None else synthetic_problem(width, seed)
    rows = []
    for k in shortcut_depths:
        for n in depths:
            for init in inits:
                s = linear_resnet_hessian(n, k, init=init, problem=problem, scale=scale, seed=seed)
                rows.append({"shortcut_depth": int(k), "depth": int(n), "init": init,
                             "n_params": int(len(s.eigenvalues)), "condition_number": s.condition_number,
                             "lambda_max": s.lambda_max, "lambda_min_nonzero": s.lambda_min_nonzero,
                             "n_zero": s.n_zero, "n_negative": s.n_negative})
    return rows


# ----------------------------------------------------------------------- any model: Hessian-vector products
def model_loss(model: nn.Module, x: torch.Tensor, target: torch.Tensor, regime: str) -> torch.Tensor:
    """Mean cross-entropy per example (classify; target = int labels) or MSE per pixel (autoencode), nats."""
    if regime not in REGIMES:
        raise ConfigError(f"regime must be one of {', '.join(REGIMES)}, got {regime!r}")
    out = model(x)
    return F.cross_entropy(out, target) if regime == "classify" else F.mse_loss(out, target)


class HessianOperator:
    """v -> H v for the loss of `model` on one fixed batch, over its trainable parameters flattened in
    model.parameters() order. Holds the first-order graph, so each product costs one extra backward pass.
    The model must already be in the mode wanted (top_hessian_eigenvalues puts it in eval mode)."""

    def __init__(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor, regime: str):
        self.params = [p for p in model.parameters() if p.requires_grad]
        if not self.params:
            raise ConfigError("the model has no trainable parameters, so its loss has no Hessian")
        loss = model_loss(model, x, target, regime)
        self.loss = float(loss.detach())
        self.grads = torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True)
        self.dim = sum(p.numel() for p in self.params)
        self.dtype = self.params[0].dtype
        self.device = self.params[0].device

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        parts, i = [], 0
        for p in self.params:
            parts.append(v[i:i + p.numel()].view_as(p).to(p.dtype))
            i += p.numel()
        used = [(g, p, u) for g, p, u in zip(self.grads, self.params, parts) if g is not None and g.requires_grad]
        out = {id(p): torch.zeros_like(p) for p in self.params}
        if used:
            hv = torch.autograd.grad([g for g, _, _ in used], self.params, grad_outputs=[u for _, _, u in used],
                                     retain_graph=True, allow_unused=True)
            out.update({id(p): h for p, h in zip(self.params, hv) if h is not None})
        return torch.cat([out[id(p)].reshape(-1) for p in self.params]).to(v.dtype)


def full_hessian(model: nn.Module, x: torch.Tensor, target: torch.Tensor, regime: str) -> torch.Tensor:
    """The whole (P, P) Hessian from P Hessian-vector products; for small models and checks only."""
    op = HessianOperator(model, x, target, regime)
    eye = torch.eye(op.dim, dtype=op.dtype, device=op.device)
    h = torch.stack([op(eye[i]) for i in range(op.dim)])
    return (h + h.T) / 2


def lanczos(matvec: Callable[[torch.Tensor], torch.Tensor], dim: int, steps: int, *, seed: int = 0,
            dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Lanczos with full reorthogonalisation: (Ritz values ascending, their residual norms ||H y - theta y||).

    Extreme Ritz values converge first; a residual well below the gaps around an eigenvalue means it is
    accurate to about residual^2 / gap. Stops early on an invariant subspace (then the values are exact).
    """
    m = min(int(steps), dim)
    g = torch.Generator().manual_seed(int(seed))
    basis = torch.empty(m, dim, dtype=dtype, device=device)  # (m, dim) orthonormal Lanczos vectors
    q = torch.randn(dim, generator=g, dtype=torch.float64).to(dtype=dtype, device=device)
    basis[0] = q / q.norm()
    alphas, betas, beta = [], [], 0.0
    for j in range(m):
        w = matvec(basis[j]).to(dtype)
        alphas.append(float(w @ basis[j]))
        qs = basis[: j + 1]
        for _ in range(2):
            w = w - qs.T @ (qs @ w)
        beta = float(w.norm())
        if j == m - 1 or beta <= 1e-10 * max(abs(a) for a in alphas):
            break
        betas.append(beta)
        basis[j + 1] = w / beta
    t = np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)
    theta, s = np.linalg.eigh(t)
    return theta, np.abs(beta * s[-1, :])


def power_iteration(matvec: Callable[[torch.Tensor], torch.Tensor], dim: int, k: int = 1, *, iters: int = 200,
                    tol: float = 1e-7, seed: int = 0, dtype: torch.dtype = torch.float64,
                    device: str | torch.device = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Top-k eigenvalues by |value| by power iteration, deflating each found eigenvector by projection.

    Returns (Rayleigh quotients in the order found, iterations used per eigenvalue). Each stops when its
    Rayleigh quotient changes by less than tol relative, or after `iters` products. Slow when two
    |eigenvalues| are close; `lanczos` is the better tool for a spectrum, this one for a quick lambda_max.
    """
    g = torch.Generator().manual_seed(int(seed))
    found: list[torch.Tensor] = []
    values, used = [], []
    for _ in range(int(k)):
        v = torch.randn(dim, generator=g, dtype=torch.float64).to(dtype=dtype, device=device)
        lam, it = 0.0, 0
        for it in range(1, int(iters) + 1):
            for u in found:
                v = v - (u @ v) * u
            v = v / v.norm()
            w = matvec(v).to(dtype)
            for u in found:
                w = w - (u @ w) * u
            new = float(v @ w)
            done = abs(new - lam) <= tol * abs(new)
            lam, v = new, w
            if done or float(w.norm()) == 0.0:
                break
        v = v / v.norm() if float(v.norm()) > 0 else v
        found.append(v)
        values.append(lam)
        used.append(it)
    return np.asarray(values), np.asarray(used)


@dataclass(frozen=True)
class TopSpectrum:
    """The k eigenvalues of largest |value| of a model's loss Hessian on one batch (descending |value|).

    cond_estimate = |eigenvalues[0]| / |eigenvalues[k-1]|: how wide the TOP of the spectrum is. It is NOT the
    Hessian's condition number (largest / smallest nonzero |eigenvalue|): a network's Hessian has a bulk of
    eigenvalues near zero that k extreme eigenvalues do not reach, so cond_estimate is a LOWER bound on the
    condition number that grows with k, and is comparable across checkpoints only at the same k and batch.
    """

    eigenvalues: np.ndarray
    residuals: np.ndarray  # Lanczos residual norms (nan for power iteration)
    lambda_max: float  # the largest eigenvalue (signed: positive at a minimum)
    cond_estimate: float
    loss: float  # nats, on the batch
    method: str


def top_hessian_eigenvalues(model: nn.Module, x: torch.Tensor, target: torch.Tensor, regime: str = "classify", *,
                            k: int = 10, method: str = "lanczos", steps: int | None = None, iters: int = 200,
                            seed: int = 0) -> TopSpectrum:
    """Top-k Hessian eigenvalues (by |value|) of `model`'s loss on the batch (x, target), BatchNorm in eval mode.

    method "lanczos" runs `steps` Lanczos steps (default min(P, 2k + 30)); "power" runs power iteration with
    deflation, `iters` products at most per eigenvalue. Krylov vectors are float64 on the model's device
    (steps x P x 8 bytes for Lanczos). The model's training flag is restored afterwards.
    """
    if method not in ("lanczos", "power"):
        raise ConfigError(f"method must be 'lanczos' or 'power', got {method!r}")
    if k < 1:
        raise ConfigError(f"k must be at least 1, got {k}")
    was = model.training
    model.eval()
    try:
        op = HessianOperator(model, x, target, regime)
        k = min(int(k), op.dim)
        if method == "lanczos":
            theta, res = lanczos(op, op.dim, steps or min(op.dim, 2 * k + 30), seed=seed, device=op.device)
            order = np.argsort(-np.abs(theta))[:k]
            vals, res = theta[order], res[order]
        else:
            vals, _ = power_iteration(op, op.dim, k, iters=iters, seed=seed, device=op.device)
            order = np.argsort(-np.abs(vals))
            vals, res = vals[order], np.full(len(vals), np.nan)
    finally:
        model.train(was)
    cond = float(abs(vals[0]) / abs(vals[-1])) if abs(vals[-1]) > 0 else float("inf")
    pos = vals[vals > 0]
    return TopSpectrum(eigenvalues=vals, residuals=res, lambda_max=float(pos.max()) if pos.size else float(vals.max()),
                       cond_estimate=cond, loss=op.loss, method=method)


def hessian_rows(models: Iterable[tuple[int, nn.Module]], x: torch.Tensor, target: torch.Tensor,
                 regime: str = "classify", **kwargs) -> list[dict]:
    """One row per (step, model), the step naming the checkpoint: step, loss, lambda_max, cond_estimate, method, k,
    eig_1..eig_k (by |value|). kwargs go to top_hessian_eigenvalues; every checkpoint sees the same batch."""
    rows = []
    for step, model in models:
        s = top_hessian_eigenvalues(model, x, target, regime, **kwargs)
        row = {"step": int(step), "loss": s.loss, "lambda_max": s.lambda_max, "cond_estimate": s.cond_estimate,
               "method": s.method, "k": int(len(s.eigenvalues))}
        row.update({f"eig_{i + 1}": float(v) for i, v in enumerate(s.eigenvalues)})
        rows.append(row)
    return rows


def fixed_batch(images: np.ndarray, labels: np.ndarray, levels: int, regime: str = "classify", *, n: int = 256,
                seed: int = 0, normalize=None) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded batch of n images as (model input, target): labels for classify, [0, 1] pixels for autoencode."""
    from ibprobe.data import to_model_input

    idx = np.sort(np.random.default_rng(seed).permutation(len(images))[: int(n)])
    x = to_model_input(images[idx], levels, normalize)  # (n, C, H, W)
    if regime == "autoencode":
        return x, to_model_input(images[idx], levels)
    return x, torch.as_tensor(np.asarray(labels)[idx], dtype=torch.long)
