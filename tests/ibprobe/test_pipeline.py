"""End to end on a tiny digits run: CSV schema and sanity, idempotent rerun, failed jobs, kill -9 and resume,
two processes on one folder."""
from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import ibprobe.fit
from ibprobe.cli import main
from ibprobe.config import AnalysisConfig, Runtime
from ibprobe.jobs import JobSpec, run_job
from ibprobe.pipeline import run_preset
from ibprobe.rundir.files import try_lock
from ibprobe.rundir.tables import MI, read_table
from tests.helpers import FIXTURES, TINY, TINY_LAST

QUIET = AnalysisConfig(jobs=1, progress=False)


def _n_test() -> int:
    """The decoders' test images of TINY: a fifth of the 400 training images (digits' held-out 359 are too few)."""
    from ibprobe.data import load_dataset
    from ibprobe.rundir.sources import decoder_split

    return len(decoder_split(load_dataset("digits", max_train=400), "train", 0)[1])

TINY_FLAGS = [
    "--train", "epochs=1", "--train", "checkpoint_epochs=0,1", "--train", "max_train=400",
    "--layers", "layer1,pool",
    "--decoder", "nr_resnet=1", "--decoder", "nr_filters=8", "--decoder", "nr_mix=2", "--decoder", "dropout=0",
    "--fit", "epochs=2", "--fit", "patience=2", "--quiet", "--no-figures",
]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    rows = run_preset(TINY, out, QUIET, figures=False)["classify"]
    return out, rows


def test_mi_csv_schema_and_sane_values(tiny_run):
    out, rows = tiny_run
    with open(out / "analysis" / "mi.csv", newline="") as f:
        header = next(csv.reader(f))
    assert tuple(header) == MI.columns
    table = read_table(out / "analysis" / "mi.csv")
    assert [(r["epoch"], r["layer"]) for r in table] == [(0, "layer1"), (0, "pool"), (1, "layer1"), (1, "pool")]
    d_log2l = 64 * math.log2(17)
    for r in table:
        assert r["status"] == "ok", r
        assert 0 < r["h_x_bits"] <= d_log2l
        assert r["i_xh_ci_low"] <= r["i_xh_bits"] <= r["i_xh_ci_high"]
        assert r["i_xh_bits"] == pytest.approx(r["h_x_bits"] - r["h_x_given_h_bits"], abs=1e-3)
        assert r["bits_per_dim"] == pytest.approx(r["i_xh_bits"] / 64, rel=1e-3, abs=1e-6)
        assert r["i_yh_bits"] is not None and r["i_yh_bits"] <= math.log2(10) + 1e-9
        assert r["n_test"] == _n_test() == 80 and r["decoder_data"] == "train"
        assert r["h_x_plain_bits"] is not None and r["h_x_ref"] == table[0]["h_x_ref"]  # one reference per run
        assert r["decoder"].startswith("pcnn-1x8x2")
        assert r["checkpoint"] == f"checkpoints/step_{r['step']:08d}.pt"
    # Every conditional job pairs against the same reference, chosen on validation images.
    assert len({r["h_x_bits"] for r in table}) == 1
    for r in table:
        job = JobSpec.conditional(r["layer"], r["step"]).job_dir(out)
        assert (job / "result.json").exists() and (job / "decoder.pt").exists()
        assert json.loads((job / "result.json").read_text())["decoder"] == r["decoder"]  # one id everywhere
    # finished jobs keep their decoder and results, not their resume state (optimizer moments)
    assert not list((out / "decoders").rglob("fit_state.pt"))
    index = json.loads((out / "decoders" / "jobs.json").read_text())["jobs"]
    assert [j["id"] for j in index] == ["_unconditional_init", "_unconditional", "_labels", "layer1@0", "pool@0",
                                        f"layer1@{TINY_LAST}", f"pool@{TINY_LAST}"]
    changes = read_table(out / "analysis" / "changes.csv")
    assert [(c["kind"], c["layer"], c["step"], c["layer_to"], c["step_to"]) for c in changes][:4] == [
        ("step", "layer1", 0, "layer1", TINY_LAST), ("step", "pool", 0, "pool", TINY_LAST),
        ("layer", "layer1", 0, "pool", 0), ("layer", "layer1", TINY_LAST, "pool", TINY_LAST)]
    assert {c["kind"] for c in changes[4:]} <= {"rise", "fall"}  # the stages of phases.csv, in the same family


def test_run_job_runs_one_job_by_id(tiny_run, capsys):
    out, _ = tiny_run
    assert main(["run-job", str(out), f"pool@{TINY_LAST}", "--device", "cpu", "--quiet"]) == 0
    assert capsys.readouterr().out.strip() == f"pool@{TINY_LAST}: ok"
    assert main(["run-job", str(out), "pool@99"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "has no job 'pool@99'" in err and "layer1@0" in err


def test_keep_fit_state_keeps_the_resume_state(tmp_path):
    import dataclasses

    from ibprobe.config import AnalysisConfig
    from ibprobe.fit import FitData, fit_decoder

    x = np.random.default_rng(0).integers(0, 4, (24, 1, 4, 4)).astype(np.uint8)
    settings = AnalysisConfig(decoder=dict(nr_resnet=1, nr_filters=4, nr_mix=1), fit=dict(epochs=1),
                              paired=False).settings((1, 4, 4), 4)
    for keep in (False, True):
        wd = tmp_path / str(keep)
        fit_decoder(settings, Runtime(progress=False, keep_fit_state=keep), "reference",
                    FitData(x[:16], None, x[16:], None), workdir=wd)
        assert (wd / "result.json").exists() and (wd / "fit_state.pt").exists() == keep
    again = type(settings).from_dict(json.loads(json.dumps(settings.to_dict())))  # as analysis.json stores it
    assert again.to_dict() == settings.to_dict() and again.decoder_id == settings.decoder_id
    assert again.decoder == settings.decoder and dataclasses.replace(again.fit, device="cpu") == settings.fit


def test_rerun_fits_nothing(tiny_run, monkeypatch):
    out, rows = tiny_run

    def boom(*a, **k):
        raise AssertionError("a finished job was fitted again")

    monkeypatch.setattr(ibprobe.fit.decoder_fitting, "fit", boom)
    again = run_preset(TINY, out, QUIET, figures=False)["classify"]
    assert [r["i_xh_bits"] for r in again] == [r["i_xh_bits"] for r in rows]


def test_a_resume_uses_the_pinned_settings_whatever_this_machine_defaults_to(tiny_run, tmp_path, monkeypatch):
    """A folder pins resolved settings: a job resumed where the defaults differ (e.g. on a GPU, where the default
    decoder is bigger and the fit longer) refits with the pinned ones and reproduces the same numbers; a whole
    rerun there is refused with one line, never mixed."""
    import shutil

    import ibprobe.config as config
    from decoders import DecoderConfig, load_decoder
    from ibprobe.errors import ConfigError

    out, _ = tiny_run
    job = JobSpec.conditional("pool", TINY_LAST).job_dir(out)
    before = np.load(job / "test_nll_bits.npy")
    moved = tmp_path / "pool_1"
    shutil.move(job, moved)
    monkeypatch.setattr(config, "default_decoder_config", lambda shape, levels, device="cpu": DecoderConfig(
        shape, levels, nr_resnet=3, nr_filters=96, nr_mix=10, dropout=0.3, cond_filters=32))
    real_fit = config.default_fit_config
    monkeypatch.setattr(config, "default_fit_config", lambda *a, **k: __import__("dataclasses").replace(
        real_fit(*a, **k), lr_decay=0.5, grad_clip=None))
    try:
        res = run_job(out, JobSpec.conditional("pool", TINY_LAST, str(out / "checkpoints" / f"step_{TINY_LAST:08d}.pt")), Runtime(progress=False))
        assert res["status"] == "ok"
        assert np.array_equal(np.load(job / "test_nll_bits.npy"), before)
        cfg = load_decoder(job / "decoder.pt").cfg
        assert (cfg.nr_resnet, cfg.nr_filters, cfg.nr_mix, cfg.cond_filters) == (1, 8, 2, 64)
        with pytest.raises(ConfigError, match="already holds results made with other settings.*lr_decay"):
            run_preset(TINY, out, QUIET, figures=False)
    finally:
        shutil.rmtree(job, ignore_errors=True)
        shutil.move(moved, job)


def test_starting_from_a_q0_of_another_shape_is_an_error_not_a_skip(tiny_run, tmp_path):
    """If q0's weights do not fit a job's decoder, the job fails and says why; it never drops weights silently."""
    import shutil

    import torch

    from decoders import DecoderConfig, PixelCNNPP, save_decoder

    out, _ = tiny_run
    q0 = JobSpec.q0().job_dir(out) / "decoder.pt"
    job = JobSpec.conditional("layer1", TINY_LAST).job_dir(out)
    saved_q0, moved = tmp_path / "q0.pt", tmp_path / "layer1_1"
    shutil.copy(q0, saved_q0)
    shutil.move(job, moved)
    try:
        torch.manual_seed(0)
        save_decoder(PixelCNNPP(DecoderConfig((1, 8, 8), 17, nr_resnet=1, nr_filters=16, nr_mix=2)), q0)
        res = run_job(out, JobSpec.conditional("layer1", TINY_LAST, str(out / "checkpoints" / f"step_{TINY_LAST:08d}.pt")), Runtime(progress=False))
        assert res["status"] == "failed"
        assert "cannot start this decoder" in res["error"] and "nr_filters 16 vs 8" in res["error"]
        assert not (job / "decoder.pt").exists()
    finally:
        shutil.copy(saved_q0, q0)
        shutil.rmtree(job, ignore_errors=True)
        shutil.move(moved, job)


def test_changed_decoder_settings_are_refused(tiny_run):
    out, _ = tiny_run
    from ibprobe.errors import ConfigError

    with pytest.raises(ConfigError, match=r"other settings \(decoder.nr_filters: 8 -> 16\)"):
        run_preset(TINY, out, replace(QUIET, decoder={"nr_filters": 16}), figures=False)


def test_nan_fit_marks_one_job_failed_and_others_finish(tmp_path, monkeypatch):
    real = ibprobe.fit.decoder_fitting.fit

    def flaky(model, images, codes=None, *a, **k):
        if codes is not None and codes.ndim == 2:  # the vector layer `pool`
            raise FloatingPointError("loss is nan at epoch 1 step 3")
        return real(model, images, codes, *a, **k)

    monkeypatch.setattr(ibprobe.fit.decoder_fitting, "fit", flaky)
    rows = run_preset(TINY, tmp_path, QUIET, figures=False)["classify"]
    by = {(r["layer"], r["epoch"]): r for r in rows}
    assert by[("pool", 1)]["status"] == "failed" and "nan" in by[("pool", 1)]["error"]
    assert by[("layer1", 1)]["status"] == "ok"
    table = read_table(tmp_path / "analysis" / "mi.csv")
    assert sum(r["status"] == "failed" for r in table) == 2
    assert all(r["i_xh_bits"] is None for r in table if r["status"] == "failed")
    assert rc_of(["plot", str(tmp_path), "--quiet"]) == 0  # failed rows don't break the figures


def rc_of(argv):
    return main(argv)


def _cli(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "ibprobe", "run", "--out", str(out), *TINY_FLAGS, *extra]


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


def test_kill_9_then_rerun_keeps_finished_jobs(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(_cli(out), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = JobSpec.conditional("layer1", 0).job_dir(out) / "result.json"
    deadline = time.time() + 240
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert first.exists(), "the first job never finished"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    kept = first.read_bytes()
    mtime = first.stat().st_mtime_ns
    done = subprocess.run(_cli(out), env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert first.read_bytes() == kept and first.stat().st_mtime_ns == mtime
    table = read_table(out / "analysis" / "mi.csv")
    assert len(table) == 4 and all(r["status"] == "ok" for r in table)


def test_two_processes_on_one_folder(tmp_path):
    out = tmp_path / "run"
    # Train first, so both processes race on the decoder jobs.
    assert subprocess.run(_cli(out), env=_env(), capture_output=True, timeout=300).returncode == 0
    import shutil

    shutil.rmtree(out / "decoders")
    shutil.rmtree(out / "analysis")
    procs = [subprocess.Popen(_cli(out, "--jobs", "1"), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-1500:] for o in outs]
    table = read_table(out / "analysis" / "mi.csv")
    assert len(table) == 4 and all(r["status"] == "ok" for r in table)
    # Both processes report the same numbers: each job was fitted once and read by the other.
    assert all((JobSpec.conditional(r["layer"], r["step"]).job_dir(out) / "result.json").exists() for r in table)


def test_flock_claims_are_exclusive_and_released(tmp_path):
    lock = tmp_path / "job" / ".lock"
    with try_lock(lock) as mine:
        assert mine
        code = "import sys; from ibprobe.rundir.files import try_lock\n" \
               "with try_lock(__import__('pathlib').Path(sys.argv[1])) as m: print(m)"
        held = subprocess.run([sys.executable, "-c", code, str(lock)], capture_output=True, text=True)
        assert held.stdout.strip() == "False"
    free = subprocess.run([sys.executable, "-c", code, str(lock)], capture_output=True, text=True)
    assert free.stdout.strip() == "True"


def test_hostile_layer_name_stays_inside_the_run(tmp_path):
    job = JobSpec.conditional("../../etc/passwd", 3).job_dir(tmp_path)
    assert tmp_path.resolve() in job.resolve().parents
    assert job.parent.parent == tmp_path / "decoders"


def test_decoders_and_probe_use_one_side_of_the_training_split(tmp_path, monkeypatch):
    """A memorising network's codes are 3x tighter on its training images than on others. Fitted and scored on one
    side (either), the probe finds the same I(Y;H); fitted on the training side and scored on the held-out side,
    as before, it is pushed down: the shift that can imitate compression in the information plane."""
    import torch

    from ibprobe.capture import capture
    from ibprobe.config import AnalysisConfig
    from ibprobe.data import load_dataset
    from ibprobe.estimators.probe import probe_i_yh
    from ibprobe.pipeline import run_analysis
    from ibprobe.rundir.sources import ModelSource

    fixtures = FIXTURES
    monkeypatch.chdir(fixtures)
    monkeypatch.syspath_prepend(str(fixtures))
    from memo_nets import Memorizer

    ckpt = tmp_path / "memo.pt"
    torch.save(Memorizer().state_dict(), ckpt)
    source = ModelSource(kind="spec", model="memo_nets:Memorizer", in_shape=(1, 8, 8), num_classes=10,
                         checkpoints=((0, str(ckpt)),))
    got = {}
    for side in ("train", "heldout"):
        cfg = AnalysisConfig(layers=("code",), decoder=dict(nr_resnet=1, nr_filters=4, nr_mix=1, dropout=0.0),
                             fit=dict(epochs=1, batch_size=256), reference="plain", progress=False,
                             decoder_data=side)
        row = run_analysis(tmp_path / side, source, {"name": "digits"}, cfg)[0]
        assert row["status"] == "ok" and row["decoder_data"] == side
        got[side] = row["i_yh_bits"]
    ds = load_dataset("digits")
    model = Memorizer()
    seen, unseen = (capture(model, ds.images[idx], ["code"], levels=17)["code"] for idx in (ds.train_idx, ds.test_idx))
    mixed = probe_i_yh(seen, ds.labels[ds.train_idx], unseen, ds.labels[ds.test_idx], num_classes=10).bits
    assert abs(got["train"] - got["heldout"]) < 0.35, got
    assert mixed < min(got.values()) - 0.5, (mixed, got)
    sys.modules.pop("memo_nets", None)


def test_repeats_refit_with_other_seeds_and_report_their_spread(tiny_run):
    """--repeats 2 fits every decoder again with another seed, in decoders/_repeat1/; each row's estimate is the mean
    over seeds of what each seed's pair reads (its q(x|h), or the reference under optional ignorance), its CI covers
    the variation over images and seeds, and it reports the spread between seeds; changes use both seeds too."""
    from ibprobe.estimators.reference import with_ignorance

    out, rows = tiny_run
    again = run_preset(TINY, out, replace(QUIET, repeats=2), figures=False)["classify"]
    assert (out / "decoders" / "_repeat1" / "pool" / f"step_{TINY_LAST:08d}" / "result.json").exists()
    seeds = [json.loads((JobSpec.conditional("pool", TINY_LAST, repeat=r).job_dir(out) / "fit_log.json").read_text())["fit_config"]["seed"]
             for r in (0, 1)]
    assert seeds[1] == seeds[0] + 1000
    checked = 0
    for r in again:
        assert r["seeds"] == 2 and r["i_xh_seed_sd"] is not None
        name = r["h_x_ref"]
        per_seed = []
        for k in (0, 1):
            if name.startswith("codes:"):
                layer, _, epoch = name[len("codes:"):].rpartition("@")
                ref = JobSpec.conditional(layer, int(epoch), repeat=k).job_dir(out)
            else:
                ref = (JobSpec.reference(k) if name == "plain" else JobSpec.labels(k)).job_dir(out)
            mix = "" if name == "plain" else "mix_"
            job = JobSpec.conditional(r["layer"], r["step"], repeat=k).job_dir(out)
            ref_val, ref_test = (np.load(ref / f"{mix}{w}_nll_bits.npy") for w in ("val", "test"))
            used, _ = with_ignorance(ref_val, ref_test, *(np.load(job / f"{w}_nll_bits.npy") for w in ("val", "test")))
            per_seed.append(np.mean(ref_test - used))
        assert r["i_xh_bits"] == pytest.approx(np.mean(per_seed))
        assert r["i_xh_seed_sd"] == pytest.approx(np.std(per_seed, ddof=1))
        checked += 1
    assert checked
    assert read_table(out / "analysis" / "mi.csv")[0]["i_xh_seed_sd"] == pytest.approx(again[0]["i_xh_seed_sd"])
    assert all(c["seeds"] == 2 for c in read_table(out / "analysis" / "changes.csv"))