"""Soak: one run folder under concurrent commands while another process is killed at random points.

A copy of the tiny trained network (tests/helpers.py FLAGS, without probes) whose references and tables are those of
an undisturbed run, but whose conditional decoder jobs are all gone, so there is work to share and to be killed in.
Two `ibprobe run` analyses, an `ibprobe run-job` array task and an `ibprobe plot` run at once on the folder, while a
third analysis is started and killed (SIGKILL) at a random moment, ten times over. Every process that was not
killed must end as its command promises (the analyses and the task with exit 0; the plot with exit 0, or 2 and one
line if it met a table mid-way), and then the folder's tables and per-image NLLs equal those of the undisturbed run,
byte for byte, with no temp file left once the next process has found the folder free.
"""
from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

from ibprobe.cli import main
from ibprobe.jobs import read_job_index
from tests.helpers import FLAGS, trained_copy

KILLS = 10
TABLES = ("mi.csv", "changes.csv", "baselines.csv", "binning_sensitivity.csv")


def _start(*argv: str) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "ibprobe", *argv], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def _nlls(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted((folder / "decoders").rglob("*_nll_bits.npy"))}


def test_concurrent_commands_and_kills_leave_the_results_of_an_undisturbed_run(reference, tmp_path):
    calm = trained_copy(reference, tmp_path / "undisturbed")  # the run the soaked folder must come back to
    analysis = [*FLAGS, "--no-probe", "--jobs", "1"]
    assert main(["run", "--out", str(calm), *analysis]) == 0
    out = trained_copy(reference, tmp_path / "soak", refs_from=calm)
    shutil.copytree(calm / "analysis", out / "analysis")
    lost = [s for s in read_job_index(calm) if s.layer is not None]
    assert len(lost) >= 4 and not any(s.job_dir(out).exists() for s in lost)  # all of them to fit again
    shutil.copy(calm / "decoders" / "jobs.json", out / "decoders" / "jobs.json")
    shutil.copy(calm / "source.json", out / "source.json")  # relative paths: the soaked folder's own checkpoints
    analysis = ["run", "--out", str(out), *analysis]
    procs = {"analysis 1": _start(*analysis), "analysis 2": _start(*analysis),
             "task": _start("run-job", str(out), "--task", "0", "--jobs-per-task", "2", "--quiet"),
             "plot": _start("plot", str(out), "--quiet")}
    rng, kills = random.Random(23), []
    for _ in range(KILLS):
        victim = _start(*analysis)
        kills.append(round(rng.uniform(0.3, 2.5), 2))
        time.sleep(kills[-1])
        victim.kill()
        victim.wait()
    for name, p in procs.items():
        err = p.communicate(timeout=300)[1]
        lines = [line for line in err.splitlines() if line.strip()]
        shown = f"{name} (kills after {kills} s): exit {p.returncode}\n{err[-3000:]}"
        assert "Traceback" not in err, shown
        assert p.returncode == 0 or (name == "plot" and p.returncode == 2 and len(lines) == 1), shown
    assert main(analysis) == 0  # the next process finds the folder free: it removes what a kill left
    assert not list(out.rglob("*.tmp")), "temp files left"
    for t in TABLES:
        assert (out / "analysis" / t).read_bytes() == (calm / "analysis" / t).read_bytes(), t
    assert _nlls(out) == _nlls(calm) and all((s.job_dir(out) / "result.json").is_file() for s in lost)
