"""Paired estimates: Î(X;H) and its changes from per-image NLL differences on the same test images, with a 95%
Student-t interval over images. Bits per image unless named `bits_per_dim` (bits per sub-pixel, D = C·H·W)."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from ibprobe.errors import DataError


@dataclass(frozen=True)
class MIEstimate:
    """One I(X;H) estimate. Bits per image unless stated; `bits_per_dim` = bits / D."""

    bits: float                       # Î(X;H) = mean over test images of −log2 q_ref(x) + log2 q(x|h)
    ci_low: float                     # 95% t-interval of the paired differences
    ci_high: float
    h_x_bits: float                   # held-out mean −log2 q_ref(x), the reference (see ibprobe.reference)
    h_x_given_h_bits: float           # held-out mean −log2 q(x|h)
    bits_per_dim: float
    n_test: int
    i_yh_bits: float | None = None    # CE(prior) − CE(probe), when labels are given
    h_y_bits: float | None = None     # CE(prior): the held-out labels' cross-entropy under the label frequencies
    h_x_ref: str = "plain"            # which density the reference is
    h_x_plain_bits: float | None = None  # held-out mean −log2 q(x) of the plain unconditional decoder

    def to_dict(self) -> dict:
        return asdict(self)


def paired_mi(h_x_per_image, h_x_given_h_per_image, *, dims: int) -> dict:
    """Î = mean of per-image differences −log2 q(x) + log2 q(x|h) on the same test images, bits per image.

    The 95% CI is a Student-t interval on the paired differences (mean ± t_{0.975,n−1}·sd/√n); it is
    symmetric around, hence always contains, the estimate. Returns keys bits, ci_low, ci_high, h_x_bits,
    h_x_given_h_bits, bits_per_dim, n_test (and se_bits, the standard error).
    """
    from scipy.stats import t as student_t  # scipy.stats costs ~0.7 s to import: only here, not at CLI start-up
    a = np.asarray(h_x_per_image, dtype=np.float64).reshape(-1)
    b = np.asarray(h_x_given_h_per_image, dtype=np.float64).reshape(-1)
    if a.shape != b.shape:
        raise DataError(f"paired_mi needs NLLs of the same test images: got {a.size} and {b.size} values")
    if a.size < 2:
        raise DataError(f"paired_mi needs at least 2 test images for a CI, got {a.size}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise DataError("paired_mi: per-image NLLs contain NaN or inf")
    d = a - b  # (N,) bits
    n = d.size
    bits = float(d.mean())
    se = float(d.std(ddof=1) / math.sqrt(n))
    half = float(student_t.ppf(0.975, n - 1)) * se
    return {"bits": bits, "ci_low": bits - half, "ci_high": bits + half, "h_x_bits": float(a.mean()),
            "h_x_given_h_bits": float(b.mean()), "bits_per_dim": bits / int(dims), "n_test": int(n),
            "se_bits": se}


def estimate(h_x_per_image, h_x_given_h_per_image, *, dims: int, probe: dict | None = None, ref: str = "plain",
             h_x_plain_bits: float | None = None) -> MIEstimate:
    """An MIEstimate from the reference's and the conditional decoder's per-image test NLLs (bits) and, optionally,
    a probe result."""
    mi = paired_mi(h_x_per_image, h_x_given_h_per_image, dims=dims)
    return MIEstimate(bits=mi["bits"], ci_low=mi["ci_low"], ci_high=mi["ci_high"], h_x_bits=mi["h_x_bits"],
                      h_x_given_h_bits=mi["h_x_given_h_bits"], bits_per_dim=mi["bits_per_dim"],
                      n_test=mi["n_test"], i_yh_bits=None if probe is None else probe["i_yh_bits"],
                      h_y_bits=None if probe is None else probe["h_y_bits"], h_x_ref=ref,
                      h_x_plain_bits=mi["h_x_bits"] if h_x_plain_bits is None and ref == "plain" else h_x_plain_bits)
