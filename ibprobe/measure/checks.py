"""Self-checks of the estimates, and the changes users ask about, with their own paired CIs.

Changes: Î of the same layer at consecutive checkpoints (kind "step"), of adjacent layers at one checkpoint (kind
"layer"), and the stages around each layer's peak (kinds "rise" and "fall", ibprobe.measure.phases). All come from
the per-image NLL differences of the two rows' densities on the same test images, so the shared reference cancels:
ΔÎ = Î_b − Î_a = mean_i(−log2 q_a(x_i|h_a) + log2 q_b(x_i|h_b)), with a t-interval over images (and over seeds with
--repeats, ibprobe.estimators.decoder.paired_difference). `significant` is decided after Holm's correction over
every comparison in the table (their number is in each row), so a table of many changes does not report chance
ones; the CI beside it is the uncorrected 95% interval of that one change. Each row names both checkpoints by step
(`step`, `step_to`) and epoch (`epoch`, `epoch_to`).

Self-checks flag rows of mi.csv whose estimate is suspect, in its `checks` column (names joined by ';'):
- `dpi`: along a chain of layers where each is a function of the one before, a later layer cannot hold more
  information about X; if its Î exceeds the earlier one's significantly (the Holm-corrected change of the table),
  the gain δ proves that the earlier layer's decoder misses at least δ bits (ε_{X|H} >= δ). The later row is
  flagged.
- `above_h`: Î(X;H) exceeds the reference Ĥ(X): impossible for the true quantities.
- `not_converged`: a decoder the row depends on (its own, the reference's, and q0, where every paired fit starts)
  hit its cap of epochs still improving: it never met its plateau rule (`patience` epochs without an improvement of
  min_delta bits per image).
- `partial_reference`: a candidate of the reference (pinned with the settings) has not finished, so the reference
  was chosen among fewer densities than the run promises; rerun when every job has finished.
- `yh_above_xh`: Î(Y;H) exceeds Î(X;H) by more than its CI: for Y a function of X, I(Y;H) <= I(X;H).
"""
from __future__ import annotations

import numpy as np

from ibprobe.estimators.decoder import holm, paired_difference

ALPHA = 0.05  # family-wise error rate of the `significant` column


def change(nll_a: np.ndarray, nll_b: np.ndarray) -> dict:
    """ΔÎ = Î_b − Î_a (bits per image) from the two rows' per-image test NLLs ([N] or [K, N] for K seeds), with its
    uncorrected 95% CI and p-value."""
    d = paired_difference(nll_a, nll_b)
    return {"delta_bits": d.bits, "ci_low": d.ci_low, "ci_high": d.ci_high, "n_test": d.n, "seeds": d.seeds,
            "p_value": d.p_value}


def changes(rows: list[dict], nll: dict, chain: list[str] | None = None, extra: list[dict] = ()) -> list[dict]:
    """changes.csv rows: each layer between consecutive checkpoints ("step"), then adjacent layers at each
    checkpoint ("layer"; in chain order when given, else the table's order), then `extra` comparisons (the stages
    of ibprobe.measure.phases), `significant` after Holm's correction over all of them. `nll`: (layer, step) ->
    per-image test NLLs of the finished rows' densities."""
    ok = [r for r in rows if (r["layer"], r["step"]) in nll]
    layers = list(dict.fromkeys(r["layer"] for r in ok))
    steps = sorted({r["step"] for r in ok})
    epoch = {r["step"]: r["epoch"] for r in ok}
    order = [l for l in (chain or layers) if l in layers]
    out = []
    for layer in layers:
        have = [s for s in steps if (layer, s) in nll]
        for a, b in zip(have, have[1:]):
            out.append({"kind": "step", "layer": layer, "step": a, "epoch": epoch[a], "layer_to": layer,
                        "step_to": b, "epoch_to": epoch[b], **change(nll[(layer, a)], nll[(layer, b)])})
    for s in steps:
        have = [l for l in order if (l, s) in nll]
        for a, b in zip(have, have[1:]):
            out.append({"kind": "layer", "layer": a, "step": s, "epoch": epoch[s], "layer_to": b, "step_to": s,
                        "epoch_to": epoch[s], **change(nll[(a, s)], nll[(b, s)])})
    out += [dict(c) for c in extra]
    if out:
        for r, p in zip(out, holm([r["p_value"] for r in out])):
            r.update(p_holm=float(p), significant=bool(p < ALPHA), comparisons=len(out))
    return out


def self_checks(rows: list[dict], infos: dict, shared: list[dict], change_rows: list[dict],
                chain: list[str] | None = None, partial: bool = False) -> dict[tuple, list[str]]:
    """{(layer, step): [check names]} for the finished rows (see the module docstring).

    infos: (layer, step) -> the fit results the row depends on beyond the shared ones (its own decoder's); shared:
    the fit results every row depends on (q0, the reference's decoder); change_rows: the table's changes (for the
    dpi check along `chain`); partial: whether a candidate of the reference is missing."""
    flags: dict[tuple, list[str]] = {}
    shared_ok = all(converged(i) for i in shared)
    for r in rows:
        key = (r["layer"], r["step"])
        if key not in infos:
            continue
        f = flags.setdefault(key, [])
        if r["i_xh_bits"] > r["h_x_bits"]:
            f.append("above_h")
        if not shared_ok or not all(converged(i) for i in infos[key]):
            f.append("not_converged")
        if partial:
            f.append("partial_reference")
        if r.get("i_yh_bits") is not None and r["i_yh_bits"] > r["i_xh_ci_high"]:
            f.append("yh_above_xh")
    for c in change_rows if chain else []:  # with a chain, the "layer" changes follow it (see `changes`)
        if c["kind"] == "layer" and c["significant"] and c["delta_bits"] > 0 and (c["layer_to"], c["step"]) in flags:
            flags[(c["layer_to"], c["step"])].append("dpi")
    return {k: sorted(v) for k, v in flags.items()}


def converged(info: dict | None) -> bool:
    """Whether a decoder met its plateau rule: it stopped early, or its best validation epoch came at least
    `patience` epochs (at least one) before its cap. A fit that ran no epoch (nothing to train) counts as
    converged; so does a missing result (nothing to say)."""
    if not info:
        return True
    if info.get("stopped_early") or int(info.get("epochs_run", 1)) == 0:
        return True
    patience = max(1, int(info.get("patience", 0) or 0))
    return int(info.get("best_epoch", 0)) <= int(info.get("epochs", 0)) - patience
