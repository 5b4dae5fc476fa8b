"""The measure stage -> DIR/analysis/: every (checkpoint, layer)'s Î(X;H) against the run's one reference Ĥ(X),
with a 95% CI from paired per-image NLLs, its spread over seeds, Î(Y;H) from a probe (ibprobe.estimators.probe), the
self-checks and the changes (ibprobe.measure.checks), as the rows of analysis/mi.csv and analysis/changes.csv (their
schemas: ibprobe.rundir.tables).

Ĥ(X) is the held-out cross-entropy of the reference density chosen on validation images (ibprobe.estimators.reference),
Ĥ(X|H) that of a conditional decoder q(x|h); both are scored on the SAME test images. Both are upper bounds of
their entropies, so Î is an estimate, not a bound: it is reported as is, negative values included. Units: bits
per image unless named `bits_per_dim` (bits per sub-pixel, D = C·H·W).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ibprobe.capture import ActivationStore
from ibprobe.config import Settings
from ibprobe.estimators.decoder import MIEstimate, paired_mi
from ibprobe.estimators.probe import probe_i_yh
from ibprobe.estimators.reference import CODES
from ibprobe.estimators.reference import LABELS as LABEL_REF
from ibprobe.estimators.reference import PLAIN, choose
from ibprobe.jobs import JobSpec, read_result
from ibprobe.measure.checks import changes, self_checks
from ibprobe.rundir import paths
from ibprobe.rundir.pinning import check_inputs, job_inputs, load_nll, read_pinned_analysis
from ibprobe.rundir.sources import decoder_split, open_source, relative_to_run
from ibprobe.rundir.tables import MI


# ------------------------------------------------------------------------------------------------ a run folder
def measure_jobs(run_dir: str | os.PathLike, specs: list[JobSpec], settings: Settings, *, repeats: int = 1,
                 chain: list[str] | None = None, results: dict | None = None) -> tuple[list[dict], list[dict]]:
    """(mi.csv rows, changes.csv rows) of the conditional jobs `specs` (repeat 0; `repeats` seeds in all).

    A job that failed (or whose reference failed) gives a failed row saying why; `results` ({job id: result} from
    the run) says why for jobs that left nothing on disk (e.g. their worker died). A finished job made from other
    inputs than the folder's is a DataError: rows made from different inputs are never mixed.
    """
    run_dir = Path(run_dir)
    meta = read_pinned_analysis(run_dir)  # analysis.json, read once
    source, ds = open_source(run_dir, meta["dataset"])
    fit_idx, test_idx = decoder_split(ds, settings.decoder_data, settings.seed)
    inputs = _check_made_from(run_dir, specs, settings, source, ds.images[fit_idx], ds.images[test_idx], repeats,
                              meta["inputs"]["checkpoints"])
    dims = int(np.prod(ds.image_shape))
    ref_res = read_result(JobSpec.reference().job_dir(run_dir)) or (results or {}).get(JobSpec.reference().key)
    if ref_res is None or ref_res.get("status") != "ok":
        reason = f"unconditional reference failed: {(ref_res or {}).get('error') or 'did not finish'}"
        rows = [failed_row(**_where(s, run_dir), error=reason) for s in specs]
        return rows, []
    name = choose(_candidates(run_dir, specs, 0, "val"), settings.reference)
    plain = _nll(JobSpec.reference().job_dir(run_dir), "test", n=len(test_idx))
    ref_test = [_reference_nll(run_dir, specs, name, r, "test") for r in range(repeats)]
    store = ActivationStore(paths.RunDir(run_dir).activations)
    probed = settings.probe and len(np.unique(ds.labels[fit_idx])) > 1
    rows, nll, infos = [], {}, {}
    for s in specs:
        res = read_result(s.job_dir(run_dir)) or (results or {}).get(s.key)
        if res is None or res.get("status") != "ok":
            rows.append(failed_row(**_where(s, run_dir), error=(res or {}).get("error") or "did not finish"))
            continue
        probe = None
        if probed:
            keys = inputs[str(s.epoch)]["codes"]
            probe = probe_i_yh(store.read(s.epoch, s.layer, "fit", keys["fit"]), ds.labels[fit_idx],
                               store.read(s.epoch, s.layer, "test", keys["test"]), ds.labels[test_idx],
                               num_classes=ds.num_classes, seed=settings.seed)
        nll[(s.layer, s.epoch)] = _nll(s.job_dir(run_dir), "test", n=len(test_idx))
        infos[(s.layer, s.epoch)] = res
        est = paired_mi(ref_test[0], nll[(s.layer, s.epoch)], dims=dims, probe=probe, ref=name,
                       h_x_plain_bits=float(np.mean(plain)))
        row = mi_row(est, **_where(s, run_dir), decoder=res["decoder"], decoder_data=settings.decoder_data)
        row["i_xh_seed_sd"] = _seed_sd(run_dir, s, ref_test, est.bits)
        rows.append(row)
    flags = self_checks(rows, nll, infos, _reference_info(run_dir, name), chain)
    for r in rows:
        r["checks"] = ";".join(flags.get((r["layer"], r["epoch"]), [])) if r["status"] == "ok" else ""
    return rows, changes(rows, nll, chain)


def _check_made_from(run_dir: Path, specs: list[JobSpec], settings: Settings, source, x_fit, x_test,
                     repeats: int, digests: dict) -> dict:
    """Check that every finished job this table reads was made from the folder's inputs (`digests`: the pinned
    checkpoint digests, {epoch (str): digest}); returns what the jobs of each checkpoint are made from,
    {epoch (str): job_inputs} (the same for all its layers and repeats)."""
    plain = job_inputs(settings, x_fit, x_test)
    inputs = {str(e): job_inputs(settings, x_fit, x_test, source=source, checkpoint=digests.get(str(e)))
              for e in dict.fromkeys(s.epoch for s in specs)}
    for r in range(repeats):
        for s in [JobSpec.reference(r), JobSpec.labels(r)] + [s.again(r) for s in specs]:
            res = read_result(s.job_dir(run_dir))
            if res is not None and res.get("status") == "ok":
                check_inputs(s.job_dir(run_dir), res, plain if s.layer is None else inputs[str(s.epoch)])
    return inputs


def _where(s: JobSpec, run_dir: Path) -> dict:
    return dict(epoch=s.epoch, checkpoint=relative_to_run(s.checkpoint, run_dir), layer=s.layer)


def _nll(job_dir: Path, which: str, mixture: bool = False, n: int | None = None) -> np.ndarray:
    return load_nll(job_dir / paths.nll_file(which, mixture), n)


def _candidates(run_dir: Path, specs: list[JobSpec], repeat: int, which: str) -> dict[str, np.ndarray]:
    """Every finished reference candidate's per-image NLLs on the validation ("val") or test images."""
    plain = JobSpec.reference(repeat).job_dir(run_dir)
    if not (plain / paths.RESULT).exists():
        return {}
    out = {PLAIN: _nll(plain, which)}
    for spec, name in [(JobSpec.labels(repeat), LABEL_REF)] + \
            [(s.again(repeat), CODES + s.key) for s in specs]:
        job = spec.job_dir(run_dir)
        if (job / paths.RESULT).exists() and (job / paths.nll_file(which, mixture=True)).exists():
            out[name] = _nll(job, which, mixture=True)
    return out


def _reference_nll(run_dir: Path, specs: list[JobSpec], name: str, repeat: int, which: str) -> np.ndarray | None:
    """The per-image NLLs of the reference `name` in repeat `repeat` (None if that repeat lacks it)."""
    return _candidates(run_dir, specs, repeat, which).get(name)


def _reference_info(run_dir: Path, name: str) -> dict | None:
    """The fit result of the plain or label reference's decoder (a code mixture's is its row's own)."""
    if name == PLAIN:
        return read_result(JobSpec.reference().job_dir(run_dir))
    if name == LABEL_REF:
        return read_result(JobSpec.labels().job_dir(run_dir))
    return None


def _seed_sd(run_dir: Path, s: JobSpec, ref_test: list, bits: float) -> float | None:
    """The standard deviation of Î over the repeats that finished (None with one seed)."""
    values = [bits]
    for r, ref in enumerate(ref_test[1:], start=1):
        job = s.again(r).job_dir(run_dir)
        res = read_result(job)
        if ref is not None and res is not None and res.get("status") == "ok":
            values.append(float(np.mean(ref - _nll(job, "test"))))
    return float(np.std(values, ddof=1)) if len(values) > 1 else None


# ------------------------------------------------------------------------------------------------ mi.csv
def mi_row(est: MIEstimate, *, epoch: int, checkpoint: str | None, layer: str, decoder: str,
           decoder_data: str | None = None) -> dict:
    """One row of analysis/mi.csv for a finished (checkpoint, layer)."""
    row = {c: None for c in MI.columns}
    row.update(epoch=int(epoch), checkpoint=checkpoint, layer=layer, i_xh_bits=est.bits, i_xh_ci_low=est.ci_low,
               i_xh_ci_high=est.ci_high, h_x_bits=est.h_x_bits, h_x_ref=est.h_x_ref,
               h_x_plain_bits=est.h_x_plain_bits, h_x_given_h_bits=est.h_x_given_h_bits,
               bits_per_dim=est.bits_per_dim, i_yh_bits=est.i_yh_bits, n_test=int(est.n),
               decoder_data=decoder_data, decoder=decoder, checks="", status="ok", error="")
    return row


def failed_row(*, epoch: int | None, checkpoint: str | None, layer: str | None, error: str) -> dict:
    """A row of analysis/mi.csv for a (checkpoint, layer) whose job could not finish; `error` says why."""
    row = {c: None for c in MI.columns}
    row.update(epoch=epoch, checkpoint=checkpoint, layer=layer, status="failed",
               error=str(error).replace("\n", " ")[:500])
    return row
