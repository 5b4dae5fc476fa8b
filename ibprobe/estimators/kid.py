"""Kernel Inception Distance (KID) of decoder samples against held-out images.

KID (Bińkowski et al., "Demystifying MMD GANs", ICLR 2018) is the unbiased estimate of the squared maximum mean
discrepancy MMD² between two sets of image features, with the cubic polynomial kernel
k(a, b) = (aᵀb / d + 1)³ on d-dimensional features. Unlike FID it has an unbiased estimator, so it can be
compared across sample sizes and it stays reliable with a few hundred images. As in the paper (and in
torch-fidelity and torchmetrics, whose draws `kid` reproduces), it is computed on `subsets` random subsets of
`subset_size` features from each side, drawn without replacement within a subset, and reported as the mean and
the (population) standard deviation over subsets. Units: kernel units (dimensionless), 0 for equal laws; a
finite-sample value may be slightly negative.

How sure the mean is (`KidResult.sem`). The subsets are drawn from the same features and overlap (in
`kid_halves` each uses a whole half), so their std over subsets measures the noise of drawing subsets from fixed
data, not that of drawing the images and samples, and std / sqrt(subsets) understates the uncertainty of their
mean by far (3 to 4 times in the tests). As the subsets grow in number their mean tends to one statistic of all
the data, the U-statistic MMD²_U in the pairs z_i = (x_i, y_i) with h(z_i, z_j) = k(x_i, x_j) + k(y_i, y_j)
− k(x_i, y_j) − k(x_j, y_i): in `kid_halves` sample i and image i (whose cross term k(x_i, y_i) no split ever
uses); in `kid` the first min(N, M) rows of each side, an arbitrary pairing of independent sets (conservative when
N != M, as the mean then uses more rows). By the law of total variance the standard error of the mean is
    sem² = Var(MMD²_U) + std² / subsets,   Var(MMD²_U) = 2 / (N (N − 1)) · (2 (N − 2) ζ1 + ζ2)
(Hoeffding's variance of a U-statistic of order 2, as Sutherland et al., 2017, use it for MMD), with ζ1 and ζ2
estimated without bias from the N x N kernel matrices (`mmd2_and_variance`). It holds near 0 as well, where the
second-order ζ2 term carries the variance and a first-order (delta-method) error would say 0, and when a sample
depends on its own image (only the pairs need to be independent of each other). The tests check it by simulation:
over repeated draws of the data, the spread of `kid` matches `sem`. It covers the draw of images and samples, not
the choice of feature network. Rows of one table share the held-out images and the splits, so their errors are
positively correlated and their sems combined in quadrature overstate the uncertainty of a difference.

What it is used for here: the gallery shows samples from q(x | h(x_i)) for held-out images x_i. KID turns their
look into a number per (layer, checkpoint): the decoder's samples against the held-out images, on disjoint halves
of the N chosen images (`kid_halves`: no sample meets its own original), with two references on the same splits:
  - `unconditional`: samples of q(x) against the held-out images (a decoder that knows no code);
  - `split_half`: one half of the held-out images against the other: the floor set by sampling noise, and exactly
    what a decoder that reproduced every original would score.
So KID says whether the samples, as a set, look like held-out images (realism and variety); how much each sample
keeps of its own original is what I(X;H) measures. A code helps when the conditional KID falls from the q(x)
reference towards the floor.

Features. By default the features are the analysed network's own penultimate layer (the input of its final
classifier; `pool` for our ResNets, `bottleneck` for our autoencoder) at its last checkpoint, for every layer and
checkpoint alike, so that one fixed yardstick is used throughout. Why that is reasonable: it needs no download;
it was trained on these very images at their stored resolution (no resizing of 8x8 digits to 299x299, where an
ImageNet Inception sees mostly interpolation artefacts); and it plays the part Inception's pool3 plays for
ImageNet: the representation a trained classifier uses to tell its classes apart. Where it falls short:
  - it is blind to whatever the trained network is invariant to, which is exactly the information a compressed
    layer discards. A sample that keeps the class but redraws every stroke can score near 0. Read it as "do the
    samples carry what the final network uses", not as "do they look like the image";
  - a small network has few penultimate features (8 for widths 8,8,8), and the cubic kernel then compares only
    the first three moments of a low-dimensional summary, a weak test;
  - the values depend on the run, so compare them across layers and checkpoints of one run, never across runs or
    with published KIDs.
For a fixed yardstick across runs, pass a torchvision network with local weights (`load_feature_model`); it sees
the images resized to its input size, grey repeated to its channels, with ImageNet's normalisation.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ibprobe.capture import call_order, capture
from ibprobe.data import to_model_input
from ibprobe.errors import ConfigError, DataError, LayerError
from ibprobe.models import build_model
from ibprobe.models.autoencoder import ResNetAutoencoder
from ibprobe.rundir.checkpoints import extract_state_dict, load_checkpoint_file, load_weights


WEIGHTS_FEATURES = "torchvision:inception_v3"  # the feature network that a weights file alone stands for: KID's own


@dataclass(frozen=True)
class KidConfig:
    """How KID is estimated: `subsets` random subsets of `subset_size` features per side, seeded by `seed`; on
    `samples` held-out images per decoder (at most: all of the decoders' test images when they are fewer), one
    sample each, compared on disjoint halves, so a subset holds min(subset_size, samples // 2) features; with
    `features` "run" (the analysed network's penultimate layer at its last checkpoint) or a network spec such as
    "torchvision:inception_v3" whose weights are read from the local file `weights`.

    Defaults, measured on digits-quick (README, "KID of the samples"): with 64 or 128 samples no two layers at one
    checkpoint were apart by twice their combined sem; all 287 test images told 5 of 12 pairs apart with 100
    subsets and 10 of 12 with 1000, because at this size the subsets' own noise (std / sqrt(subsets)) was most of
    the sem. Hence up to 1000 samples and 1000 subsets (the reference script's 100 subsets estimate the same
    quantity with more noise; with the kernel matrices computed once, 1000 subsets of 1000 take seconds). The
    paper presets ask for 2000 samples, so that subsets hold 1000 features as in Bińkowski et al.'s script."""

    subsets: int = 1000
    subset_size: int = 1000
    seed: int = 0
    samples: int = 1000
    features: str = "run"
    weights: str | None = None

    def __post_init__(self):
        if int(self.subsets) < 1 or int(self.subset_size) < 2:
            raise ConfigError(f"KID needs subsets >= 1 and subset_size >= 2, got {self.subsets}, {self.subset_size}")
        if int(self.samples) < 4:
            raise ConfigError(f"--kid-samples must be at least 4 (two halves of 2), got {self.samples}")
        if self.features != "run" and ":" not in str(self.features):
            raise ConfigError(f"--kid-features must be run or a network spec such as torchvision:inception_v3, "
                              f"got {self.features!r}")
        if self.features == "run" and self.weights:
            raise ConfigError("--kid-weights is for a feature network of your own: name it with --kid-features "
                              "(e.g. torchvision:inception_v3), or drop --kid-weights to use the analysed network")
        if self.features != "run" and not self.weights:
            raise ConfigError(f"--kid-features {self.features} needs --kid-weights PATH, a local weights file; "
                              "nothing is downloaded")


@dataclass(frozen=True)
class KidResult:
    """KID (`kid`: the mean over subsets of the unbiased MMD², in kernel units, not bits), `std` over subsets (the
    spread of one subset's estimate on these data) and `sem`, the standard error of `kid` over draws of the data
    (see the module docstring; NaN below 4 rows), from n_fake samples against n_real images, with the subset
    sizes; `n` = n_fake."""

    kid: float
    std: float
    sem: float
    subsets: int
    subset_size: int
    n_real: int
    n_fake: int

    @property
    def n(self) -> int:
        return self.n_fake

    def row(self) -> dict:
        """The columns of analysis/kid.csv: kid_mean, kid_std, kid_sem, subsets, subset_size, n_real, n_fake."""
        d = asdict(self)
        return {"kid_mean": d.pop("kid"), "kid_std": d.pop("std"), "kid_sem": d.pop("sem"), **d}


# ----------------------------------------------------------------------------------------------- the statistic
def _features(f: np.ndarray | torch.Tensor, what: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(f) if not isinstance(f, torch.Tensor) else f).detach().cpu()
    if t.ndim < 2 or t.shape[0] == 0:
        raise DataError(f"{what} features must be an array [N, ...] with N >= 1, got shape {tuple(t.shape)}")
    t = t.reshape(t.shape[0], -1).to(torch.float64)  # (N, d)
    if not torch.isfinite(t).all():
        raise DataError(f"{what} features contain NaN or inf")
    return t


def polynomial_kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """KID's kernel k(a, b) = (aᵀb / d + 1)³ for all pairs of rows: (m, d), (n, d) -> (m, n)."""
    return (a @ b.T / a.shape[1] + 1.0) ** 3


def mmd2_unbiased(x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor) -> float:
    """Unbiased MMD² between feature sets x [m, d] and y [n, d] with `polynomial_kernel` (m, n >= 2).

    = mean of k(x_i, x_j) over i != j + mean of k(y_i, y_j) over i != j - 2 mean of k(x_i, y_j); in float64.
    """
    x, y = _features(x, "first"), _features(y, "second")
    m, n = len(x), len(y)
    if m < 2 or n < 2 or x.shape[1] != y.shape[1]:
        raise DataError(f"MMD needs two feature sets of >= 2 rows and equal width, "
                        f"got {tuple(x.shape)}, {tuple(y.shape)}")
    return _mmd2(polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y))


def mmd2_and_variance(x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor) -> tuple[float, float]:
    """(unbiased MMD² of the KID, the variance of the MMD² U-statistic) for feature sets x, y of m rows each,
    row i of x paired with row i of y (m >= 4), in float64.

    The U-statistic is in the pairs z_i = (x_i, y_i), with h(z_i, z_j) = k(x_i, x_j) + k(y_i, y_j) − k(x_i, y_j)
    − k(x_j, y_i): the KID estimate without its m cross terms k(x_i, y_i). Its variance is
    2 / (m (m − 1)) (2 (m − 2) ζ1 + ζ2) with ζ1 = E h12 h13 − θ² and ζ2 = E h12² − θ², each estimated without
    bias (E h12² over ordered pairs, E h12 h13 over ordered triples and θ² = E h12 h34 over ordered quadruples of
    distinct rows, all from the row sums of the matrix of h), so the estimate can be slightly negative when the
    variance is near 0. x_i and y_i may depend on each other (a sample and the image it was conditioned on): the
    z_i only need to be independent of one another.
    """
    x, y = _features(x, "first"), _features(y, "second")
    if len(x) != len(y) or len(x) < 4 or x.shape[1] != y.shape[1]:
        raise DataError(f"the variance of the MMD² estimate needs two feature sets of equal size >= 4 and equal "
                        f"width, got {tuple(x.shape)}, {tuple(y.shape)}")
    return _mmd2(polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)), u_variance(x, y)


def _mmd2(kxx: torch.Tensor, kyy: torch.Tensor, kxy: torch.Tensor) -> float:
    m, n = len(kxx), len(kyy)
    within_x = (kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))
    within_y = (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
    return float(within_x + within_y - 2.0 * kxy.mean())


FULL_KERNELS_MAX = 4096  # rows per side up to which the kernel matrices are computed once for every subset


def u_variance(x: torch.Tensor, y: torch.Tensor, block: int = 1024) -> float:
    """The variance of the MMD² U-statistic in the paired rows of float64 x, y [m, d] (see mmd2_and_variance;
    NaN for m < 4), from the matrix of h built `block` rows at a time, so memory stays O(block · m)."""
    m = len(x)
    rows, sq = torch.empty(m, dtype=torch.float64), 0.0
    for i in range(0, m, block):
        j = slice(i, min(i + block, m))
        h = (polynomial_kernel(x[j], x) + polynomial_kernel(y[j], y) - polynomial_kernel(x[j], y)
             - polynomial_kernel(y[j], x))  # (b, m): h(z_i, z_j) for the block's i
        h[torch.arange(h.shape[0]), torch.arange(j.start, j.stop)] = 0.0  # i == j is not a pair
        rows[j] = h.sum(1)
        sq += float((h * h).sum())
    return _u_variance(m, rows, sq)


def _u_variance(m: int, rows: torch.Tensor, sq: float) -> float:
    """Var of the order-2 U-statistic from the row sums `rows` [m] and the sum of squares `sq` of its matrix of h
    (zero diagonal): unbiased estimates of E h12², E h12 h13 and θ² = E h12 h34 over distinct rows."""
    if m < 4:
        return float("nan")
    total, rows_sq = float(rows.sum()), float((rows * rows).sum())
    e_h2 = sq / (m * (m - 1))  # E h12²
    e_h12_h13 = (rows_sq - sq) / (m * (m - 1) * (m - 2))  # E h12 h13
    theta2 = (total * total - 4.0 * rows_sq + 2.0 * sq) / (m * (m - 1) * (m - 2) * (m - 3))  # E h12 h34 = θ²
    zeta1, zeta2 = e_h12_h13 - theta2, e_h2 - theta2
    return 2.0 / (m * (m - 1)) * (2.0 * (m - 2) * zeta1 + zeta2)


class _Kernels:
    """The kernel between two feature sets a [N, d], b [M, d], on all pairs computed once when both are at most
    FULL_KERNELS_MAX rows (each subset is then a lookup), else per subset."""

    def __init__(self, a: torch.Tensor, b: torch.Tensor):
        self.a, self.b = a, b
        self.full = max(len(a), len(b)) <= FULL_KERNELS_MAX
        if self.full:
            self.kaa = polynomial_kernel(a, a)  # (N, N)
            self.kbb = self.kaa if b is a else polynomial_kernel(b, b)  # (M, M)
            self.kab = self.kaa if b is a else polynomial_kernel(a, b)  # (N, M)

    def mmd2(self, draws: list[tuple[torch.Tensor, torch.Tensor]], chunk: int = 256) -> list[float]:
        """Unbiased MMD² between rows ia of a and rows ib of b for each (ia, ib) in `draws` (m rows each). With the
        full matrices a subset's sums are quadratic forms of its 0/1 indicator vectors, `chunk` subsets at once."""
        if not self.full:
            return [mmd2_unbiased(self.a[ia], self.b[ib]) for ia, ib in draws]
        out = []
        for c in range(0, len(draws), chunk):
            part = draws[c:c + chunk]
            wa = torch.zeros(len(part), len(self.a), dtype=torch.float64)  # (S, N) indicators of ia
            wb = torch.zeros(len(part), len(self.b), dtype=torch.float64)  # (S, M) indicators of ib
            for k, (ia, ib) in enumerate(part):
                wa[k, ia], wb[k, ib] = 1.0, 1.0
            m = len(part[0][0])
            within_a = ((wa @ self.kaa) * wa).sum(1) - wa @ self.kaa.diagonal()  # (S,) sums over i != j
            within_b = ((wb @ self.kbb) * wb).sum(1) - wb @ self.kbb.diagonal()
            cross = ((wa @ self.kab) * wb).sum(1)
            out += ((within_a + within_b) / (m * (m - 1)) - 2.0 * cross / (m * m)).tolist()
        return out

    def u_variance(self, k: int) -> float:
        """The U-statistic variance with row i of a paired with row i of b, over the first k rows."""
        if not self.full:
            return u_variance(self.a[:k], self.b[:k])
        kab = self.kab[:k, :k]
        h = self.kaa[:k, :k] + self.kbb[:k, :k] - kab - kab.T  # (k, k)
        h.fill_diagonal_(0.0)
        return _u_variance(k, h.sum(1), float((h * h).sum()))


def _result(values: list[float], data_var: float, subsets: int, m: int, n_real: int, n_fake: int) -> KidResult:
    """KidResult of per-subset MMD² values: sem² = the variance of the all-data statistic the subsets' mean
    estimates (`data_var`, clipped at 0) + the subsets' own noise std² / subsets (module docstring)."""
    v = np.asarray(values, dtype=np.float64)
    std = float(v.std())
    sem = math.sqrt(max(data_var, 0.0) + std ** 2 / len(v)) if math.isfinite(data_var) else float("nan")
    return KidResult(float(v.mean()), std, sem, int(subsets), m, n_real, n_fake)


def kid(real: np.ndarray | torch.Tensor, fake: np.ndarray | torch.Tensor, *, subsets: int = 100,
        subset_size: int = 1000, seed: int = 0) -> KidResult:
    """KID between `real` [N, ...] and `fake` [M, ...] features (flattened): mean and std of the unbiased MMD²
    over `subsets` subsets of min(subset_size, N, M) rows drawn from each side, and its sem (module docstring).

    Each subset takes the first rows of a fresh random permutation of each side (real first), drawn from a
    torch.Generator seeded with `seed`; this is the draw torchmetrics makes from the global generator, so with
    torch.manual_seed(seed) both give the same subsets. The std is the population std (ddof 0), as there.

    >>> rng = np.random.default_rng(0)
    >>> real = rng.standard_normal((200, 8))
    >>> same, shifted = kid(real, rng.standard_normal((200, 8))), kid(real, 1.0 + rng.standard_normal((200, 8)))
    >>> abs(same.kid) < 0.05, shifted.kid > 0.5, same.n
    (True, True, 200)
    """
    r, f = _features(real, "real"), _features(fake, "fake")
    if r.shape[1] != f.shape[1]:
        raise DataError(f"real and fake features differ in width: {r.shape[1]} vs {f.shape[1]}")
    m = min(int(subset_size), len(r), len(f))
    if m < 2:
        raise DataError(f"KID needs at least 2 images on each side, got {len(r)} real and {len(f)} fake")
    g = torch.Generator().manual_seed(int(seed))
    draws = []
    for _ in range(int(subsets)):
        ir = torch.randperm(len(r), generator=g)[:m]
        draws.append((ir, torch.randperm(len(f), generator=g)[:m]))
    kernels = _Kernels(r, f)
    values = kernels.mmd2(draws)
    # the first min(N, M) rows of each side, paired (independent sets: any pairing will do)
    return _result(values, kernels.u_variance(min(len(r), len(f))), int(subsets), m, len(r), len(f))


def kid_halves(held_out: np.ndarray | torch.Tensor, samples: np.ndarray | torch.Tensor | None = None, *,
               subsets: int = 100, subset_size: int = 1000, seed: int = 0) -> KidResult:
    """KID of `samples` [N, ...] against the `held_out` images' features [N, ...] on disjoint halves: each subset
    draws a fresh random split of the N rows into two halves and compares min(subset_size, N // 2) samples of one
    half with as many held-out images of the other. `samples[i]` belongs to image i (a draw of q(x | h(x_i))), or
    to nothing in particular (q(x)); None compares the held-out images with themselves (the split-half floor).

    No sample meets its own original, so a decoder whose samples copied their originals exactly would score the
    split-half KID itself (same seed, same splits): KID then measures whether the samples look like held-out
    images as a set, with the floor set by sampling noise, not how close each is to its original (that is
    I(X;H)'s job). A fresh split per subset keeps the std honest when subsets are as large as the halves.
    """
    r = _features(held_out, "held-out")
    s = r if samples is None else _features(samples, "sample")
    if len(s) != len(r) or s.shape[1] != r.shape[1]:
        raise DataError(f"samples and held-out features must match row for row: {tuple(s.shape)} vs {tuple(r.shape)}")
    half = len(r) // 2
    m = min(int(subset_size), half)
    if m < 2:
        raise DataError(f"KID on disjoint halves needs at least 4 held-out images, got {len(r)}")
    g = torch.Generator().manual_seed(int(seed))
    perms = [torch.randperm(len(r), generator=g) for _ in range(int(subsets))]
    kernels = _Kernels(r, s)
    values = kernels.mmd2([(perm[half:half + m], perm[:m]) for perm in perms])
    return _result(values, kernels.u_variance(len(r)), int(subsets), m, len(r) - half, half)


def kid_split_half(held_out: np.ndarray | torch.Tensor, *, subsets: int = 100, subset_size: int = 1000,
                   seed: int = 0) -> KidResult:
    """KID of one half of the held-out images against the other (`kid_halves` without samples): the floor set by
    sampling noise alone, and what a decoder that reproduced every original would score."""
    return kid_halves(held_out, None, subsets=subsets, subset_size=subset_size, seed=seed)


def kid_rows(held_out: np.ndarray | torch.Tensor, conditional: Mapping[tuple[int, str], Any], *,
             unconditional: np.ndarray | torch.Tensor | None = None, cfg: KidConfig = KidConfig(),
             features: str = "", epochs: Mapping[int, float] | None = None) -> list[dict]:
    """The rows of a KID table (analysis/kid.csv), one per comparison, all by `kid_halves` with one seed.

    Args:
        held_out: features of the held-out images x_i, [N, ...].
        conditional: {(step, layer): features of samples of q(x | h(x_i)), row i for image i}, [N, ...] each; the
            step is the checkpoint's key.
        unconditional: features of N samples of q(x), or None to leave that reference out.
        cfg: subsets, subset size and seed. Every comparison uses the same seed, so the same splits (common random
            numbers): differences between layers are not blurred by different draws.
        features: what the features are (e.g. "run:pool@step_00000150"), written into every row.
        epochs: {step: fractional epoch} of the checkpoints (a step not in it: its own number).
    Returns:
        Rows with step, epoch, layer, reference ("conditional", "unconditional", "split_half"), kid_mean, kid_std,
        kid_sem, subsets, subset_size, n_real, n_fake, features. The reference rows have step, epoch and layer None.
    """
    opts = dict(subsets=cfg.subsets, subset_size=cfg.subset_size, seed=cfg.seed)
    rows = [{"step": int(step), "epoch": float(dict(epochs or {}).get(int(step), step)), "layer": str(layer),
             "reference": "conditional", **kid_halves(held_out, f, **opts).row()}
            for (step, layer), f in conditional.items()]
    if unconditional is not None:
        rows.append({"step": None, "epoch": None, "layer": None, "reference": "unconditional",
                     **kid_halves(held_out, unconditional, **opts).row()})
    rows.append({"step": None, "epoch": None, "layer": None, "reference": "split_half",
                 **kid_split_half(held_out, **opts).row()})
    for r in rows:
        r["features"] = features
    return rows


# ----------------------------------------------------------------------------------------------- the features
def default_feature_layer(model: nn.Module, example: torch.Tensor) -> str:
    """The penultimate layer: the last module that fires, once, before the network's final nn.Linear.

    Our ResNet gives `pool`, torchvision ResNets `avgpool`, Inception v3 `dropout` (its pooled 2048 features).
    Our autoencoder has no classifier; its code `bottleneck` is used. `example` is one float input batch.
    """
    if isinstance(model, ResNetAutoencoder):
        return "bottleneck"
    order = call_order(model, example)
    counts: dict[str, int] = {}
    for name, _, _ in order:
        counts[name] = counts.get(name, 0) + 1
    last_linear = max((i for i, (_, m, _) in enumerate(order) if isinstance(m, nn.Linear)), default=None)
    if last_linear is not None:
        head = order[last_linear][0]
        for name, _, is_tensor in reversed(order[:last_linear]):
            if is_tensor and counts[name] == 1 and not head.startswith(name + "."):
                return name
    raise LayerError("cannot tell this network's penultimate layer (no final nn.Linear after a layer that fires "
                     "once); name the KID feature layer explicitly")


class _Adapted(nn.Module):
    """Feeds a feature network what it was trained on: bilinear resize, grey -> RGB, then (mean, std) per channel
    of the network's input."""

    def __init__(self, net: nn.Module, size: int | None, channels: int | None, normalize: Any = None):
        super().__init__()
        self.net, self.size, self.channels, self.normalize = net, size, channels, normalize

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.size is not None and tuple(x.shape[-2:]) != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)  # (B, C, S, S)
        if self.channels is not None and x.shape[1] == 1 and self.channels != 1:
            x = x.expand(-1, self.channels, -1, -1)  # (B, channels, S, S)
        if self.normalize is not None:
            mean, std = (torch.as_tensor(v, dtype=x.dtype, device=x.device).reshape(1, -1, 1, 1)
                         for v in self.normalize)
            x = (x - mean) / std
        return self.net(x)


def input_channels(model: nn.Module) -> int | None:
    """The input channels of a network's first convolution (None without one)."""
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return None if conv is None else int(conv.in_channels)


def kid_features(model: nn.Module, images: np.ndarray | torch.Tensor, *, levels: int, layer: str | None = None,
                 normalize: Any = None, input_size: int | None = None, batch_size: int = 256,
                 device: str | torch.device = "cpu") -> np.ndarray:
    """Features for KID: `layer` of `model` on uint8 `images` [N, C, H, W], flattened to float32 [N, D].

    The images go in as the network saw them in training: x / (levels - 1), then `normalize` (mean, std per
    channel of the network's input). `layer` None takes `default_feature_layer`. `input_size` resizes (bilinearly)
    to a square size, for a network trained at another resolution; grey images are repeated to the network's input
    channels (before the normalisation).
    """
    imgs = np.asarray(images) if not isinstance(images, torch.Tensor) else images
    if imgs.ndim != 4 or len(imgs) == 0:
        raise DataError(f"images must be uint8 [N, C, H, W] with N >= 1, got shape {tuple(imgs.shape)}")
    channels = input_channels(model)
    net, prefix = model, ""
    if input_size is not None or (channels is not None and channels != imgs.shape[1]):
        size = None if input_size is None else int(input_size)
        net, prefix, normalize = _Adapted(model, size, channels, normalize), "net.", None
    if layer is None:
        net.to("cpu")
        layer = default_feature_layer(net, to_model_input(imgs[:2], levels, normalize))
        prefix = ""
    acts = capture(net, imgs, [prefix + layer], levels=levels, normalize=normalize, batch_size=batch_size,
                   device=device)[prefix + layer]
    return acts.reshape(len(acts), -1).astype(np.float32)


@dataclass(frozen=True)
class FeatureNet:
    """A KID feature network: `layer` of `model`, fed as `kid_features` says; `name` goes into kid.csv."""

    model: nn.Module
    layer: str
    name: str
    normalize: Any = None
    input_size: int | None = None

    def features(self, images: np.ndarray, *, levels: int, device: str | torch.device = "cpu") -> np.ndarray:
        """float32 [N, D] features of uint8 `images` [N, C, H, W]."""
        return kid_features(self.model, images, levels=levels, layer=self.layer, normalize=self.normalize,
                            input_size=self.input_size, device=device)


def feature_net(model: nn.Module, image_shape: tuple[int, int, int], *, normalize: Any = None,
                input_size: int | None = None, name: str = "") -> FeatureNet:
    """The penultimate layer (`default_feature_layer`) of `model` as a FeatureNet for images of `image_shape`;
    its name is "<name>:<layer>"."""
    c = input_channels(model) or int(image_shape[0])
    h, w = (input_size, input_size) if input_size else tuple(int(v) for v in image_shape[1:])
    layer = default_feature_layer(model.to("cpu"), torch.zeros(2, c, h, w))
    return FeatureNet(model, layer, f"{name}:{layer}" if name else layer, normalize, input_size)


def load_feature_model(spec: str, weights: str | None, *, model_args: Mapping[str, Any] | None = None) -> nn.Module:
    """A user's feature network, `torchvision:NAME` (or `package.module:callable`) with weights from a local file.

    The input channels and class count are read from the weights (the first conv's and the last matrix's shape),
    so an ImageNet checkpoint loads as it is; nothing is downloaded. Returns the model in eval mode.
    """
    if not weights:
        raise ConfigError(f"KID features {spec!r} need a local weights file (--kid-weights PATH); "
                          "nothing is downloaded")
    sd, _ = extract_state_dict(load_checkpoint_file(weights), f"--kid-weights {weights}")
    convs = [v for v in sd.values() if v.ndim == 4]
    mats = [v for k, v in sd.items() if v.ndim == 2 and k.endswith("weight")]
    in_channels = int(convs[0].shape[1]) if convs else 3
    num_classes = int(mats[-1].shape[0]) if mats else 1000
    model = build_model(spec, in_shape=(in_channels, 224, 224), num_classes=num_classes, **dict(model_args or {}))
    load_weights(model, weights)
    return model.eval()


def default_input_size(spec: str) -> int | None:
    """The resolution a torchvision feature network expects (299 for Inception v3), else None (no resizing)."""
    return 299 if str(spec) == "torchvision:inception_v3" else None


__all__ = ["WEIGHTS_FEATURES", "KidConfig", "KidResult", "polynomial_kernel", "mmd2_unbiased", "mmd2_and_variance", "u_variance", "kid",
           "kid_halves", "kid_split_half", "kid_rows", "default_feature_layer", "kid_features", "FeatureNet",
           "feature_net", "input_channels", "load_feature_model", "default_input_size"]

