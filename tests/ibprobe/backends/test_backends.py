"""The local backend and the engine-neutral unit of work, on one tiny trained run: workers with their own devices and
several jobs per task give the same table as one process; `ibprobe run-job --task` runs an array task; a worker
killed mid-job loses its jobs, not the run, and a rerun recovers the same table; `--backend none` prepares a folder
that `ibprobe run-job` then fits."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ibprobe.backends import make_backend, number_of_tasks, task_job_ids
from tests.helpers import LAST
from ibprobe.backends.tasks import require
from ibprobe.cli import main
from ibprobe.errors import ConfigError
from ibprobe.jobs import JobSpec, read_job_index
from ibprobe.rundir.tables import read_table
from tests.helpers import FIT_3, FLAGS, analyse, trained_copy


def fit_devices(run_dir: Path) -> set[str]:
    return {json.loads((s.job_dir(run_dir) / "fit_log.json").read_text())["fit_config"]["device"]
            for s in read_job_index(run_dir) if s.layer is not None}


def test_workers_with_their_devices_and_jobs_per_task_give_the_same_table(reference, tmp_path):
    out = trained_copy(reference, tmp_path / "pool", refs_from=reference)  # the conditional jobs are left
    backend = make_backend("local", devices=["cpu", "cpu:0"], jobs_per_task=2)
    assert (backend.workers, backend.jobs_per_task) == (2, 2)
    mi = analyse(out, backend)
    assert mi.read_bytes() == (reference / "analysis" / "mi.csv").read_bytes()
    assert fit_devices(out) <= {"cpu", "cpu:0"}  # each worker fits with the device it was given


def test_backend_flags_are_checked_before_any_work():
    with pytest.raises(ConfigError, match="--slurm goes with --backend slurm"):
        make_backend("local", slurm={"partition": "gpu"})
    with pytest.raises(ConfigError, match="not a device"):
        make_backend("local", devices=["gpu:0"])
    with pytest.raises(ConfigError, match="on Ray, give each task a GPU"):
        make_backend("ray", devices=["cuda:0"])
    with pytest.raises(ConfigError, match="unknown backend"):
        make_backend("dask")
    assert make_backend("local", devices=["cpu"] * 3).workers == 3  # one worker per entry, whatever --jobs says
    with pytest.raises(ConfigError, match=r"needs the optional package 'no_such_engine': pip install 'ibprobe\[ray\]'"):
        require("no_such_engine", "ray")


def test_backend_none_prepares_a_folder_that_run_job_tasks_fit(reference, tmp_path, capsys):
    """The plain array-script path: prepare with --backend none, run q0, then each array task."""
    out = trained_copy(reference, tmp_path / "array")
    assert main(["run", "--out", str(out), *FLAGS, "--backend", "none"]) == 0
    assert "prepared for `ibprobe run-job`" in capsys.readouterr().err
    assert not any(s.job_dir(out).exists() and (s.job_dir(out) / "result.json").exists()
                   for s in read_job_index(out))
    assert main(["run-job", str(out), "_unconditional_init", "--quiet"]) == 0  # every other job starts from q0
    n = number_of_tasks(6, 3)
    assert [task_job_ids(out, i, 3) for i in range(n)] == [["_unconditional", "_labels", "layer1@0"],
                                                             ["pool@0", f"layer1@{LAST}", f"pool@{LAST}"]]
    with pytest.raises(ConfigError, match="use an array of 0-1"):
        task_job_ids(out, 2, 3)
    for i in range(n):
        assert main(["run-job", str(out), "--task", str(i), "--jobs-per-task", "3", "--quiet"]) == 0
    assert f"pool@{LAST}: ok" in capsys.readouterr().out
    assert main(["run", "--out", str(out), *FLAGS]) == 0  # every job done: it measures, fits nothing
    assert (out / "analysis" / "mi.csv").read_bytes() == (reference / "analysis" / "mi.csv").read_bytes()


def _pool_workers(pid: int) -> list[int]:
    """The pool's worker processes among the children of `pid` (not multiprocessing's resource tracker)."""
    kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(k) for k in kids if "spawn_main" in Path(f"/proc/{k}/cmdline").read_bytes().decode(errors="replace")]


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds the pool's workers through /proc")
def test_a_worker_killed_mid_job_loses_its_jobs_and_a_rerun_recovers(reference, reference_3_epochs, tmp_path):
    out = trained_copy(reference, tmp_path / "killed", refs_from=reference_3_epochs)
    cmd = [sys.executable, "-m", "ibprobe", "run", "--out", str(out), *FLAGS, "--jobs", "2", "--fit",
           *(f"{k}={v}" for k, v in FIT_3.items())]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    states = [s.job_dir(out) / "fit_state.pt" for s in read_job_index_when_written(out, proc) if s.layer is not None]
    deadline = time.time() + 240
    while not any(p.exists() for p in states) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    workers = _pool_workers(proc.pid)
    assert workers and proc.poll() is None, "no worker was mid-job"
    os.kill(workers[0], signal.SIGKILL)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 1, err[-2000:]
    table = read_table(out / "analysis" / "mi.csv")
    lost = [r for r in table if r["status"] != "ok"]
    assert lost and all("its worker died" in r["error"] and "rerun" in r["error"] for r in lost)
    assert not any((s.job_dir(out) / "failed.json").exists() for s in read_job_index(out))  # nothing marked failed
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    whole = reference_3_epochs / "analysis" / "mi.csv"
    assert (out / "analysis" / "mi.csv").read_bytes() == whole.read_bytes()  # resumed fits equal whole ones


def read_job_index_when_written(out: Path, proc: subprocess.Popen) -> list[JobSpec]:
    deadline = time.time() + 120
    while not (out / "decoders" / "jobs.json").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    return read_job_index(out)
