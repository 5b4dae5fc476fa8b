"""The stages of training, measured -> DIR/analysis/phases.csv (its schema: ibprobe.rundir.tables.PHASES).

Darlow & Storkey describe two stages in what a layer keeps about its input: fitting, early and short, where Î(X;H)
rises, then compression, where it falls. Per layer, the peak is the checkpoint of the largest Î(X;H); the rise is the
change from the first checkpoint to the peak, the fall the change from the peak to the last checkpoint. Each is a
paired difference of the two rows' per-image test NLLs on the same images (ibprobe.estimators.decoder.
paired_difference: the reference cancels), with its 95% CI, like every change of changes.csv.

A stage is significant only after the correction for many comparisons, and its test counts the choice of the peak:
the peak is picked from the data (the largest of T estimates), so the first-to-peak difference is inflated by that
choice even where nothing changes. Its p-value is therefore first multiplied by T − 1, the checkpoints the peak could
have been (Bonferroni over the candidates: valid whichever is picked), and then enters the same Holm family as every
other comparison of changes.csv, where the rise and fall rows are written (kinds "rise" and "fall"). So one
family-wise error rate (5%) covers every "significant" of changes.csv and phases.csv together.

phases.csv has one row per layer: `regime` (the folder's training regime, from its config.json; empty for a folder of
your own checkpoints), `layer`, the peak's `step`, `epoch` and `i_xh_bits`, the first and last checkpoints, and for
each stage its size in bits (`rise_bits` = Î(peak) − Î(first), `fall_bits` = Î(peak) − Î(last), both >= 0 by the
choice of the peak) with its 95% CI (uncorrected, like changes.csv's), its Holm-corrected p-value and `significant`.
A stage that does not exist (the peak is the first, or the last, checkpoint) is empty and not significant.
"""
from __future__ import annotations

import os
from pathlib import Path

from ibprobe.measure.checks import change
from ibprobe.rundir.files import read_json
from ibprobe.rundir.paths import RunDir
from ibprobe.rundir.tables import PHASES

STAGES = ("rise", "fall")


def peaks(rows: list[dict], nll: dict) -> dict[str, tuple[dict, dict, dict]]:
    """{layer: (first row, peak row, last row)} over the rows that have NLLs (`nll`: (layer, step) -> [K, N]), in
    step order; the peak is the row of the largest Î(X;H) (the earliest of equal ones)."""
    out = {}
    for layer in dict.fromkeys(r["layer"] for r in rows):
        have = sorted((r for r in rows if r["layer"] == layer and (layer, r["step"]) in nll), key=lambda r: r["step"])
        if have:
            peak = max(have, key=lambda r: (r["i_xh_bits"], -r["step"]))
            out[layer] = (have[0], peak, have[-1])
    return out


def stage_changes(rows: list[dict], nll: dict) -> list[dict]:
    """changes.csv rows of kinds "rise" (first checkpoint -> peak) and "fall" (peak -> last checkpoint) per layer,
    before the Holm correction (ibprobe.measure.checks.changes applies it to all comparisons together); each p-value
    is multiplied by T − 1 for the choice of the peak among T checkpoints (see the module docstring)."""
    out = []
    for layer, (first, peak, last) in peaks(rows, nll).items():
        n_candidates = sum(1 for r in rows if r["layer"] == layer and (layer, r["step"]) in nll) - 1
        for kind, a, b in (("rise", first, peak), ("fall", peak, last)):
            if a["step"] == b["step"]:
                continue
            c = change(nll[(layer, a["step"])], nll[(layer, b["step"])])
            c["p_value"] = min(1.0, c["p_value"] * n_candidates)
            out.append({"kind": kind, "layer": layer, "step": a["step"], "epoch": a["epoch"], "layer_to": layer,
                        "step_to": b["step"], "epoch_to": b["epoch"], **c})
    return out


def phase_rows(rows: list[dict], change_rows: list[dict], regime: str | None = None) -> list[dict]:
    """phases.csv rows (see the module docstring) from mi.csv's rows and changes.csv's (with its rise and fall
    rows); layers without a finished row are left out."""
    ok = [r for r in rows if r.get("status") == "ok" and r.get("i_xh_bits") is not None]
    stage = {(c["kind"], c["layer"]): c for c in change_rows if c.get("kind") in STAGES}
    out = []
    for layer in dict.fromkeys(r["layer"] for r in ok):
        mine = sorted((r for r in ok if r["layer"] == layer), key=lambda r: r["step"])
        peak = max(mine, key=lambda r: (r["i_xh_bits"], -r["step"]))
        row = {c: None for c in PHASES.columns}
        row.update(regime=regime or "", layer=layer, step=peak["step"], epoch=peak["epoch"],
                   i_xh_bits=peak["i_xh_bits"], first_step=mine[0]["step"], first_epoch=mine[0]["epoch"],
                   last_step=mine[-1]["step"], last_epoch=mine[-1]["epoch"], checkpoints=len(mine),
                   n_test=peak.get("n_test"), seeds=peak.get("seeds"), rise_significant=False, fall_significant=False)
        for kind in STAGES:
            c = stage.get((kind, layer))
            if c is None:
                continue
            sign = 1.0 if kind == "rise" else -1.0  # sizes: how far Î rose to the peak, how far it fell after it
            lo, hi = sorted((sign * c["ci_low"], sign * c["ci_high"]))
            row.update({f"{kind}_bits": sign * c["delta_bits"], f"{kind}_ci_low": lo, f"{kind}_ci_high": hi,
                        f"{kind}_p_holm": c.get("p_holm"),
                        f"{kind}_significant": bool(c.get("significant")) and sign * c["delta_bits"] > 0},
                       comparisons=c.get("comparisons"), n_test=c.get("n_test"), seeds=c.get("seeds"))
        out.append(row)
    return out


def phase_line(p: dict) -> str:
    """One line per layer, e.g. 'layer2: rises 0→150 steps (epoch 0→6.52) by 4.1 bits [3.2, 5.0], then falls to
    step 690 (epoch 30) by 9.8 bits [8.7, 10.9]', or 'layer2: no significant rise or fall (...)'."""
    def ep(v) -> str:
        return f"{float(v):.3g}"

    def size(kind: str) -> str:
        return f"{p[f'{kind}_bits']:.1f} bits [{p[f'{kind}_ci_low']:.1f}, {p[f'{kind}_ci_high']:.1f}]"

    where = f"peak at step {p['step']}, epoch {ep(p['epoch'])}"
    rise = (f"rises {p['first_step']}→{p['step']} steps (epoch {ep(p['first_epoch'])}→{ep(p['epoch'])}) by "
            f"{size('rise')}") if p.get("rise_significant") else None
    fall = (f"falls to step {p['last_step']} (epoch {ep(p['last_epoch'])}) by {size('fall')}"
            if p.get("fall_significant") else None)
    unsure = "".join(f"; {k} {size(k)}" for k in STAGES
                     if p.get(f"{k}_bits") is not None and not p.get(f"{k}_significant"))
    if rise and fall:
        text = f"{rise}, then {fall}"
    elif rise:
        text = f"{rise}; no significant fall after it" + (f" ({unsure[2:]})" if unsure else "")
    elif fall:
        text = f"no significant rise ({where}{unsure}); {fall}"
    else:
        text = f"no significant rise or fall ({where}{unsure})"
    return f"{p['layer']}: {text}"


def folder_regime(run_dir: str | os.PathLike) -> str | None:
    """The training regime (classify or autoencode) of a run folder, from its config.json; None for a folder of
    your own checkpoints (no config.json) or an unreadable one."""
    path = RunDir(run_dir).config
    try:
        conf = read_json(path) if path.is_file() else None
    except (OSError, ValueError):
        return None
    regime = conf.get("regime") if isinstance(conf, dict) else None
    return str(regime) if regime else None


def measure_phases(run_dir: str | os.PathLike, rows: list[dict], change_rows: list[dict]) -> list[dict]:
    """phases.csv rows of a run folder's mi.csv and changes.csv rows, with the folder's regime."""
    return phase_rows(rows, change_rows, folder_regime(Path(run_dir)))


__all__ = ["peaks", "stage_changes", "phase_rows", "phase_line", "folder_regime", "measure_phases", "STAGES"]
