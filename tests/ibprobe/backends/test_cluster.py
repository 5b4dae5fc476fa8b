"""Ray (a local Ray of 2 CPUs) and Slurm (submitit's local executor: one process per array task) run the same tiny
analysis as one local process and write the same mi.csv, byte for byte; a Slurm task killed mid-job loses its jobs,
not the run, and a rerun recovers the same table. Needs the optional extras, which CI installs."""
from __future__ import annotations

import importlib.util
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from ibprobe.backends import make_backend
from ibprobe.jobs import read_job_index
from ibprobe.rundir.tables import read_table
from tests.helpers import FIT_3, analyse, trained_copy

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("ray") is None or importlib.util.find_spec("submitit") is None,
    reason="the ray and slurm extras are not installed (pip install -e '.[test,ray,slurm]')")


@pytest.fixture(scope="module")
def local_ray():
    """A Ray on this machine only: its services on the loopback address, no usage reports; shut down after."""
    import ray

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # a one-machine Ray binds 127.0.0.1
        mp.setenv("RAY_USAGE_STATS_ENABLED", "0")
        mp.delenv("RAY_ADDRESS", raising=False)
        yield
        ray.shutdown()


def test_ray_gives_the_same_table_as_one_process(reference, tmp_path, local_ray):
    out = trained_copy(reference, tmp_path / "ray")
    mi = analyse(out, make_backend("ray", jobs=2))
    assert mi.read_bytes() == (reference / "analysis" / "mi.csv").read_bytes()


def test_slurm_arrays_give_the_same_table_as_one_process(reference, tmp_path):
    out = trained_copy(reference, tmp_path / "slurm")
    mi = analyse(out, make_backend("slurm", jobs_per_task=2, slurm={"cluster": "local", "timeout_min": 10}))
    assert mi.read_bytes() == (reference / "analysis" / "mi.csv").read_bytes()
    assert sorted(p.name for p in (out / "slurm").iterdir())  # submitit's pickles and logs stay in the run folder


def _task_processes() -> list[int]:
    """The array tasks that submitit's local executor runs below this process (`python -m submitit.core._submit`)."""
    found, todo = [], [os.getpid()]
    while todo:
        pid = todo.pop()
        try:
            kids = [int(k) for k in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
            found += [k for k in kids if b"submitit.core._submit" in Path(f"/proc/{k}/cmdline").read_bytes()]
        except OSError:  # it ended meanwhile
            kids = []
        todo += kids
    return found


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds the array tasks through /proc")
def test_a_slurm_task_killed_mid_job_is_recovered_by_a_rerun(reference, reference_3_epochs, tmp_path):
    out = trained_copy(reference, tmp_path / "killed", refs_from=reference_3_epochs)
    backend = make_backend("slurm", jobs_per_task=2, slurm={"cluster": "local", "timeout_min": 10})
    fit = FIT_3
    killed: list[int] = []

    def kill_one_mid_job():
        deadline = time.time() + 240
        while time.time() < deadline and not killed:
            index = out / "decoders" / "jobs.json"
            mid = index.exists() and any((s.job_dir(out) / "fit_state.pt").exists()
                                         for s in read_job_index(out) if s.layer is not None)
            tasks = _task_processes() if mid else []
            if tasks:
                os.kill(tasks[0], signal.SIGKILL)
                killed.append(tasks[0])
            time.sleep(0.05)

    killer = threading.Thread(target=kill_one_mid_job)
    killer.start()
    analyse(out, backend, fit=fit)
    killer.join()
    assert killed, "no array task was killed mid-job"
    table = read_table(out / "analysis" / "mi.csv")
    lost = [r for r in table if r["status"] != "ok"]
    assert lost and all("its worker died" in r["error"] for r in lost)
    analyse(out, backend, fit=fit)  # the rerun
    whole = reference_3_epochs / "analysis" / "mi.csv"
    assert (out / "analysis" / "mi.csv").read_bytes() == whole.read_bytes()  # resumed fits equal whole ones
