"""End to end on a tiny digits run: CSV schema and sanity, idempotent rerun, failed jobs, kill -9 and resume,
two processes on one folder."""
from __future__ import annotations

import csv
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ibprobe.cli import main
from ibprobe.jobs import JobSpec, try_lock
from ibprobe.pipeline import MI_COLUMNS, read_mi_csv
from ibprobe.presets import Preset
from ibprobe.run import run_preset

TINY = Preset(
    name="tiny",
    description="test",
    train=dict(dataset="digits", model="resnet", model_args={"widths": (8, 16, 16), "blocks": (1, 1, 1)}, epochs=1,
               checkpoint_epochs=(0, 1), optimizer="adam", lr=3e-3, batch_size=64, max_train=400),
    layers={"classify": ("layer1", "pool")},
    decoder=dict(nr_resnet=1, nr_filters=8, nr_mix=2, dropout=0.0),
    fit=dict(epochs=1, batch_size=64, patience=1),
)

N_TEST = len(__import__("ibprobe.data", fromlist=["x"]).load_dataset("digits").test_idx)

TINY_FLAGS = [
    "--train", "epochs=1", "--train", "checkpoint_epochs=0,1", "--train", "max_train=400",
    "--layers", "layer1,pool",
    "--decoder", "nr_resnet=1", "--decoder", "nr_filters=8", "--decoder", "nr_mix=2", "--decoder", "dropout=0",
    "--fit", "epochs=2", "--fit", "patience=2", "--quiet", "--no-figures",
]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    rows = run_preset(TINY, out, jobs=1, progress=False)["classify"]
    return out, rows


def test_mi_csv_schema_and_sane_values(tiny_run):
    out, rows = tiny_run
    with open(out / "analysis" / "mi.csv", newline="") as f:
        header = next(csv.reader(f))
    assert header == MI_COLUMNS
    table = read_mi_csv(out / "analysis" / "mi.csv")
    assert [(r["epoch"], r["layer"]) for r in table] == [(0, "layer1"), (0, "pool"), (1, "layer1"), (1, "pool")]
    d_log2l = 64 * math.log2(17)
    for r in table:
        assert r["status"] == "ok", r
        assert 0 < r["h_x_bits"] <= d_log2l
        assert r["i_xh_ci_low"] <= r["i_xh_bits"] <= r["i_xh_ci_high"]
        assert r["i_xh_bits"] == pytest.approx(r["h_x_bits"] - r["h_x_given_h_bits"], abs=1e-3)
        assert r["bits_per_dim"] == pytest.approx(r["i_xh_bits"] / 64, rel=1e-3, abs=1e-6)
        assert r["i_yh_bits"] is not None and r["i_yh_bits"] <= math.log2(10) + 1e-9
        assert r["n_test"] == N_TEST
        assert r["decoder"].startswith("pcnn-1x8x2")
        assert r["checkpoint"] == f"checkpoints/epoch_{r['epoch']:04d}.pt"
    # Every conditional job pairs against the same unconditional reference.
    assert len({r["h_x_bits"] for r in table}) == 1
    for r in table:
        job = JobSpec(r["layer"], r["epoch"]).job_dir(out)
        assert (job / "row.json").exists() and (job / "decoder.pt").exists()


def test_rerun_fits_nothing(tiny_run, monkeypatch):
    out, rows = tiny_run
    import ibprobe.estimate as est

    def boom(*a, **k):
        raise AssertionError("a finished job was fitted again")

    monkeypatch.setattr(est, "fit_decoder", boom)
    again = run_preset(TINY, out, jobs=1, progress=False)["classify"]
    assert [r["i_xh_bits"] for r in again] == [r["i_xh_bits"] for r in rows]


def test_changed_decoder_settings_are_refused(tiny_run):
    out, _ = tiny_run
    from ibprobe.errors import ConfigError

    with pytest.raises(ConfigError, match="different decoder"):
        run_preset(TINY, out, jobs=1, progress=False, decoder={"nr_filters": 16})


def test_nan_fit_marks_one_job_failed_and_others_finish(tmp_path, monkeypatch):
    import ibprobe.estimate as est

    real = est.fit_decoder

    def flaky(images_train, codes_train, *a, **k):
        if codes_train is not None and codes_train.ndim == 2:  # the vector layer `pool`
            raise FloatingPointError("loss is nan at epoch 1 step 3")
        return real(images_train, codes_train, *a, **k)

    monkeypatch.setattr(est, "fit_decoder", flaky)
    rows = run_preset(TINY, tmp_path, jobs=1, progress=False)["classify"]
    by = {(r["layer"], r["epoch"]): r for r in rows}
    assert by[("pool", 1)]["status"] == "failed" and "nan" in by[("pool", 1)]["error"]
    assert by[("layer1", 1)]["status"] == "ok"
    table = read_mi_csv(tmp_path / "analysis" / "mi.csv")
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
    first = JobSpec("layer1", 0).job_dir(out) / "row.json"
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
    table = read_mi_csv(out / "analysis" / "mi.csv")
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
    table = read_mi_csv(out / "analysis" / "mi.csv")
    assert len(table) == 4 and all(r["status"] == "ok" for r in table)
    # Both processes report the same numbers: each job was fitted once and read by the other.
    assert all((JobSpec(r["layer"], r["epoch"]).job_dir(out) / "row.json").exists() for r in table)


def test_flock_claims_are_exclusive_and_released(tmp_path):
    lock = tmp_path / "job" / ".lock"
    with try_lock(lock) as mine:
        assert mine
        code = "import sys; from ibprobe.jobs import try_lock\n" \
               "with try_lock(__import__('pathlib').Path(sys.argv[1])) as m: print(m)"
        held = subprocess.run([sys.executable, "-c", code, str(lock)], capture_output=True, text=True)
        assert held.stdout.strip() == "False"
    free = subprocess.run([sys.executable, "-c", code, str(lock)], capture_output=True, text=True)
    assert free.stdout.strip() == "True"


def test_hostile_layer_name_stays_inside_the_run(tmp_path):
    job = JobSpec("../../etc/passwd", 3).job_dir(tmp_path)
    assert tmp_path.resolve() in job.resolve().parents
    assert job.parent.parent == tmp_path / "decoders"
