"""The reference Ĥ(X): one valid density over images per run, the best of several on validation images.

Any normalised density q over images gives an upper bound E[-log2 q(X)] >= H(X), so the reference can be the best
of several candidates, chosen on images none of them was trained on (the decoders' validation split) and then
scored on the test images:

- `plain`: the unconditional decoder q(x);
- `labels`: the label mixture q_Y(x) = sum_y pi(y) q(x|y), with q(x|y) one decoder conditioned on the label and
  pi the label frequencies of its training images;
- `codes:<layer>@<epoch>`: a code mixture q_M(x) = (1/M) sum_j q(x|h_j) of a fitted q(x|h), over M codes h_j drawn
  from its training images. Each costs M forward passes per scored image.

ONE density is chosen per run (a per-image minimum over densities is not a density), and every layer and checkpoint
is measured against it, so Î(X;H) = Ĥ_ref(X) - Ĥ(X|H) keeps its meaning across the table.
"""
from __future__ import annotations

import numpy as np

PLAIN, LABELS, CODES = "plain", "labels", "codes:"


def label_mixture(labels_train: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(one-hot codes [K, K], weights pi [K]) of the label mixture, pi the label frequencies of the fit images."""
    counts = np.bincount(np.asarray(labels_train, dtype=np.int64), minlength=num_classes).astype(np.float64)
    return np.eye(num_classes, dtype=np.float32), counts / counts.sum()


def choose(candidates: dict[str, np.ndarray], rule: str = "best") -> str:
    """The name of the reference: `plain` under rule "plain", else the candidate of lowest mean validation NLL.

    candidates: name -> per-image validation NLLs (bits) on the same images.
    """
    if rule == PLAIN or len(candidates) == 1:
        return PLAIN
    return min(candidates, key=lambda name: (float(np.mean(candidates[name])), name != PLAIN, name))
