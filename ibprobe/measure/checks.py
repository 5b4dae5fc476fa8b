"""Self-checks of the estimates, and the changes users ask about, with their own paired CIs.

Changes: Î of the same layer at consecutive checkpoints, and of adjacent layers at one checkpoint. Both come from
the per-image NLL differences of the two conditional decoders on the same test images, so the shared reference
cancels: ΔÎ = Î_b − Î_a = mean_i(−log2 q_a(x_i|h_a) + log2 q_b(x_i|h_b)), with a t-interval over images.

Self-checks flag rows of mi.csv whose estimate is suspect, in its `checks` column (names joined by ';'):
- `dpi`: along a chain of layers where each is a function of the one before, a later layer cannot hold more
  information about X; if its Î exceeds the earlier one's by more than the paired CI (ΔÎ's interval above 0), the
  gain δ proves that the earlier layer's decoder misses at least δ bits (ε_{X|H} >= δ). The later row is flagged.
- `above_h`: Î(X;H) exceeds the reference Ĥ(X): impossible for the true quantities.
- `not_converged`: the row's decoder, or the reference's, was still improving at the end of its budget (best
  validation epoch = the last epoch of the budget).
- `yh_above_xh`: Î(Y;H) exceeds Î(X;H) by more than its CI: for Y a function of X, I(Y;H) <= I(X;H).
"""
from __future__ import annotations

import numpy as np

from ibprobe.estimators.decoder import paired_difference


def change(nll_a: np.ndarray, nll_b: np.ndarray) -> dict:
    """ΔÎ = Î_b − Î_a (bits per image) from the two conditional decoders' per-image test NLLs, with a 95% CI."""
    d = paired_difference(nll_a, nll_b)
    return {"delta_bits": d.bits, "ci_low": d.ci_low, "ci_high": d.ci_high, "n_test": d.n,
            "significant": d.significant}


def changes(rows: list[dict], nll: dict, chain: list[str] | None = None) -> list[dict]:
    """changes.csv rows: each layer between consecutive checkpoints ("epoch"), then adjacent layers at each
    checkpoint ("layer"; in chain order when given, else the table's order). `nll`: (layer, epoch) -> per-image
    test NLLs of the finished rows."""
    ok = [r for r in rows if (r["layer"], r["epoch"]) in nll]
    layers = list(dict.fromkeys(r["layer"] for r in ok))
    epochs = sorted({r["epoch"] for r in ok})
    order = [l for l in (chain or layers) if l in layers]
    out = []
    for layer in layers:
        have = [e for e in epochs if (layer, e) in nll]
        for a, b in zip(have, have[1:]):
            out.append({"kind": "epoch", "layer": layer, "epoch": a, "layer_to": layer, "epoch_to": b,
                        **change(nll[(layer, a)], nll[(layer, b)])})
    for e in epochs:
        have = [l for l in order if (l, e) in nll]
        for a, b in zip(have, have[1:]):
            out.append({"kind": "layer", "layer": a, "epoch": e, "layer_to": b, "epoch_to": e,
                        **change(nll[(a, e)], nll[(b, e)])})
    return out


def self_checks(rows: list[dict], nll: dict, infos: dict, ref_info: dict | None,
                chain: list[str] | None = None) -> dict[tuple, list[str]]:
    """{(layer, epoch): [check names]} for the finished rows (see the module docstring).

    nll: (layer, epoch) -> per-image test NLLs; infos: (layer, epoch) -> the job's fit result; ref_info: the
    reference decoder's fit result (None for a mixture of its own decoder or none at all)."""
    flags: dict[tuple, list[str]] = {}
    ok = [r for r in rows if (r["layer"], r["epoch"]) in nll]
    for r in ok:
        key = (r["layer"], r["epoch"])
        f = flags.setdefault(key, [])
        if r["i_xh_bits"] > r["h_x_bits"]:
            f.append("above_h")
        if not converged(infos.get(key)) or (ref_info is not None and not converged(ref_info)):
            f.append("not_converged")
        if r.get("i_yh_bits") is not None and r["i_yh_bits"] > r["i_xh_ci_high"]:
            f.append("yh_above_xh")
    for e in sorted({r["epoch"] for r in ok}):
        links = [l for l in chain or [] if (l, e) in nll]
        for a, b in zip(links, links[1:]):
            if change(nll[(a, e)], nll[(b, e)])["ci_low"] > 0:
                flags[(b, e)].append("dpi")
    return {k: sorted(v) for k, v in flags.items()}


def converged(info: dict | None) -> bool:
    """Whether a decoder's best validation epoch came before the end of its budget (or it stopped early)."""
    if not info:
        return True
    return bool(info.get("stopped_early")) or int(info.get("best_epoch", 0)) < int(info.get("epochs", 0))
