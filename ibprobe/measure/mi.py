"""The measure stage -> DIR/analysis/: every (checkpoint, layer)'s Î(X;H) against the run's one reference Ĥ(X),
with a 95% CI from paired per-image NLLs, its spread over seeds, Î(Y;H) from a probe (ibprobe.estimators.probe), the
self-checks and the changes (ibprobe.measure.checks) with the stages around each layer's peak in one Holm family
(ibprobe.measure.phases), as the rows of analysis/mi.csv and analysis/changes.csv (their schemas:
ibprobe.rundir.tables). A row names its checkpoint by step and gives its fractional epoch.

Ĥ(X) is the held-out cross-entropy of the reference density chosen on validation images (ibprobe.estimators.reference),
Ĥ(X|H) that of a conditional decoder q(x|h); both are scored on the SAME test images. Both are upper bounds of
their entropies, so Î is an estimate, not a bound: it is reported as is, negative values included. Units: bits
per image unless named `bits_per_dim` (bits per sub-pixel, D = C·H·W).
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from ibprobe.capture import ActivationStore
from ibprobe.config import Settings
from ibprobe.estimators.decoder import MIEstimate, paired_mi
from ibprobe.estimators.probe import probe_i_yh
from ibprobe.estimators.reference import CODES
from ibprobe.estimators.reference import LABELS as LABEL_REF
from ibprobe.estimators.reference import PLAIN, choose, with_ignorance
from ibprobe.jobs import JobSpec, read_result
from ibprobe.measure.checks import changes, self_checks
from ibprobe.measure.phases import stage_changes
from ibprobe.rundir import paths
from ibprobe.rundir.pinning import check_inputs, job_inputs, load_nll, read_pinned_analysis
from ibprobe.rundir.sources import decoder_split, open_source, relative_to_run
from ibprobe.rundir.tables import MI


# ------------------------------------------------------------------------------------------------ a run folder
def reference_candidates(settings: Settings, specs: list[JobSpec], labelled: bool) -> list[str]:
    """The densities the reference is chosen among: the plain q(x), the label mixture (labelled data) and the code
    mixture of every conditional job of `specs` (ibprobe.estimators.reference), as the settings ask."""
    if settings.reference == "plain":
        return [PLAIN]
    return [PLAIN] + ([LABEL_REF] if labelled else []) + \
        ([CODES + s.key for s in specs] if settings.mixture_codes > 0 else [])


def measure_jobs(run_dir: str | os.PathLike, specs: list[JobSpec], settings: Settings, *, repeats: int = 1,
                 chain: list[str] | None = None, results: dict | None = None,
                 candidates: list[str] | None = None) -> tuple[list[dict], list[dict]]:
    """(mi.csv rows, changes.csv rows) of the conditional jobs `specs` (repeat 0; `repeats` seeds in all). changes.csv
    holds the rise and fall of each layer (ibprobe.measure.phases) beside the changes between checkpoints and layers,
    all under one Holm correction.

    The reference is chosen on the validation images among `candidates` (default: `reference_candidates`); while
    one of them has not finished, every row says `partial_reference`. Each row reads its q(x|h), or the reference
    under optional ignorance (Settings.ignorance); with several seeds its estimate is the mean over seeds. A job that
    failed (or whose reference failed) gives a failed row saying why; `results` ({job id: result} from the run) says
    why for jobs that left nothing on disk (e.g. their worker died). A finished job made from other inputs than the
    folder's is a DataError: rows made from different inputs are never mixed.
    """
    run_dir = Path(run_dir)
    meta = read_pinned_analysis(run_dir)  # analysis.json, read once
    source, ds = open_source(run_dir, meta["dataset"])
    fit_idx, test_idx = decoder_split(ds, settings.decoder_data, settings.seed)
    inputs = _check_made_from(run_dir, specs, settings, source, ds.images[fit_idx], ds.images[test_idx], repeats,
                              meta["inputs"]["checkpoints"])
    dims, n_test = int(np.prod(ds.image_shape)), len(test_idx)
    labelled = len(np.unique(ds.labels[fit_idx])) > 1
    ref_res = read_result(JobSpec.reference().job_dir(run_dir)) or (results or {}).get(JobSpec.reference().key)
    if ref_res is None or ref_res.get("status") != "ok":
        reason = f"unconditional reference failed: {(ref_res or {}).get('error') or 'did not finish'}"
        return [failed_row(**_where(s, run_dir, source), error=reason) for s in specs], []
    wanted = candidates or reference_candidates(settings, specs, labelled)
    jobs = _candidate_jobs(run_dir, wanted, repeats)
    have = {n: j for n, j in jobs.items() if all(_finished(run_dir, s) for s in j)}
    if PLAIN not in have:
        reason = "a repeat of the unconditional reference did not finish; rerun to fit it"
        return [failed_row(**_where(s, run_dir, source), error=reason) for s in specs], []
    name = choose({n: _nll(j[0].job_dir(run_dir), "val", mixture=n != PLAIN) for n, j in have.items()},
                  settings.reference)
    ref = [(_nll(j.job_dir(run_dir), "val", mixture=name != PLAIN),
            _nll(j.job_dir(run_dir), "test", mixture=name != PLAIN, n=n_test)) for j in jobs[name]]
    plain = float(np.mean(_nll(JobSpec.reference().job_dir(run_dir), "test", n=n_test)))
    store = ActivationStore(paths.RunDir(run_dir).activations)
    probed = settings.probe and labelled
    rows, nll, infos = [], {}, {}
    for s in specs:
        res = read_result(s.job_dir(run_dir)) or (results or {}).get(s.key)
        if res is None or res.get("status") != "ok":
            rows.append(failed_row(**_where(s, run_dir, source), error=(res or {}).get("error") or "did not finish"))
            continue
        probe = None
        if probed:
            keys = inputs[str(s.step)]["codes"]
            probe = probe_i_yh(store.read(s.step, s.layer, "fit", keys["fit"]), ds.labels[fit_idx],
                               store.read(s.step, s.layer, "test", keys["test"]), ds.labels[test_idx],
                               num_classes=ds.num_classes, seed=settings.seed)
        seeds = [r for r in range(repeats) if _finished(run_dir, s.again(r))]  # repeat 0 is finished
        own = [(_nll(s.again(r).job_dir(run_dir), "val"), _nll(s.again(r).job_dir(run_dir), "test", n=n_test))
               for r in seeds]
        used = [with_ignorance(ref[r][0], ref[r][1], *own[i], settings.ignorance) for i, r in enumerate(seeds)]
        ref_test = np.stack([ref[r][1] for r in seeds])  # (K, N)
        nll[(s.layer, s.step)] = np.stack([u for u, _ in used])  # (K, N) the row's density, per seed
        infos[(s.layer, s.step)] = [read_result(s.again(r).job_dir(run_dir)) for r in seeds]
        est = dataclasses.replace(
            paired_mi(ref_test, nll[(s.layer, s.step)], dims=dims, probe=probe, ref=name, h_x_plain_bits=plain),
            bits_raw=float(np.mean(ref_test) - np.mean([t for _, t in own])), from_decoder=all(o for _, o in used))
        row = mi_row(est, **_where(s, run_dir, source), decoder=res["decoder"], decoder_data=settings.decoder_data)
        if est.seeds > 1 and any(o for _, o in used) and not est.from_decoder:
            row["i_xh_from"] = "mixed"  # some seeds read q(x|h), others the reference
        rows.append(row)
    shared = [read_result(j.job_dir(run_dir)) for j in jobs[name]]  # the reference's decoder (a code mixture's too)
    if settings.paired:
        shared += [read_result(JobSpec.q0(r).job_dir(run_dir)) for r in range(repeats)]
    ok = [r for r in rows if r["status"] == "ok"]
    change_rows = changes(rows, nll, chain, extra=stage_changes(ok, nll))
    flags = self_checks(rows, infos, shared, change_rows, chain, partial=len(have) < len(jobs))
    for r in rows:
        r["checks"] = ";".join(flags.get((r["layer"], r["step"]), [])) if r["status"] == "ok" else ""
    return rows, change_rows


def _finished(run_dir: Path, spec: JobSpec) -> bool:
    res = read_result(spec.job_dir(run_dir))
    return res is not None and res.get("status") == "ok"


def _candidate_jobs(run_dir: Path, names: list[str], repeats: int) -> dict[str, list[JobSpec]]:
    """{candidate name: its job in each repeat}; a code mixture names its conditional job by id (layer@step)."""
    out = {}
    for name in names:
        if name == PLAIN:
            out[name] = [JobSpec.reference(r) for r in range(repeats)]
        elif name == LABEL_REF:
            out[name] = [JobSpec.labels(r) for r in range(repeats)]
        elif name.startswith(CODES):
            layer, _, step = name[len(CODES):].rpartition("@")
            out[name] = [JobSpec.conditional(layer, int(step), repeat=r) for r in range(repeats)]
    return out


def _check_made_from(run_dir: Path, specs: list[JobSpec], settings: Settings, source, x_fit, x_test,
                     repeats: int, digests: dict) -> dict:
    """Check that every finished job this table reads was made from the folder's inputs (`digests`: the pinned
    checkpoint digests, {step (str): digest}); returns what the jobs of each checkpoint are made from,
    {step (str): job_inputs} (the same for all its layers and repeats)."""
    plain = job_inputs(settings, x_fit, x_test)
    inputs = {str(st): job_inputs(settings, x_fit, x_test, source=source, checkpoint=digests.get(str(st)))
              for st in dict.fromkeys(s.step for s in specs)}
    for r in range(repeats):
        for s in [JobSpec.reference(r), JobSpec.labels(r)] + [s.again(r) for s in specs]:
            res = read_result(s.job_dir(run_dir))
            if res is not None and res.get("status") == "ok":
                check_inputs(s.job_dir(run_dir), res, plain if s.layer is None else inputs[str(s.step)])
    return inputs


def _where(s: JobSpec, run_dir: Path, source) -> dict:
    return dict(step=s.step, epoch=source.epoch_of(s.step), checkpoint=relative_to_run(s.checkpoint, run_dir),
                layer=s.layer)


def _nll(job_dir: Path, which: str, mixture: bool = False, n: int | None = None) -> np.ndarray:
    return load_nll(job_dir / paths.nll_file(which, mixture), n)


# ------------------------------------------------------------------------------------------------ mi.csv
def mi_row(est: MIEstimate, *, step: int, epoch: float, checkpoint: str | None, layer: str, decoder: str,
           decoder_data: str | None = None) -> dict:
    """One row of analysis/mi.csv for a finished (checkpoint, layer): the checkpoint's step and fractional epoch."""
    row = {c: None for c in MI.columns}
    row.update(step=int(step), epoch=float(epoch), checkpoint=checkpoint, layer=layer, i_xh_bits=est.bits,
               i_xh_ci_low=est.ci_low, i_xh_ci_high=est.ci_high, i_xh_seed_sd=est.seed_sd,
               i_xh_raw_bits=est.bits if est.bits_raw is None else est.bits_raw,
               i_xh_from="decoder" if est.from_decoder else "reference", h_x_bits=est.h_x_bits, h_x_ref=est.h_x_ref,
               h_x_plain_bits=est.h_x_plain_bits, h_x_given_h_bits=est.h_x_given_h_bits,
               bits_per_dim=est.bits_per_dim, i_yh_bits=est.i_yh_bits, n_test=int(est.n),
               seeds=int(est.seeds),
               decoder_data=decoder_data, decoder=decoder, checks="", status="ok", error="")
    return row


def failed_row(*, step: int | None, epoch: float | None, checkpoint: str | None, layer: str | None,
               error: str) -> dict:
    """A row of analysis/mi.csv for a (checkpoint, layer) whose job could not finish; `error` says why."""
    row = {c: None for c in MI.columns}
    row.update(step=step, epoch=epoch, checkpoint=checkpoint, layer=layer, status="failed",
               error=str(error).replace("\n", " ")[:500])
    return row
