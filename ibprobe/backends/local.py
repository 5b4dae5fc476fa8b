"""Jobs on this machine: `run_task`, the unit of work every backend hands out (K jobs in one process), and the
local backend, a pool of worker processes (`--jobs N`, or one per `--devices` entry, each worker with its device).

A killed worker breaks the pool: the jobs it and the others had not finished come back as lost (see
`tasks.lost`), the finished ones are kept, and a rerun resumes the rest from their fit checkpoints.
"""
from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import signal
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import torch

from decoders.progress import progress as progress_report
from ibprobe.backends.tasks import chunks, lost_unless_done, split_finished, worker_runtime
from ibprobe.config import Runtime
from ibprobe.jobs import find_job, read_job_index, run_jobs, threads_per_worker
from ibprobe.rundir.pinning import hold

_DEVICE: str | None = None  # the device of this pool worker (set once, when it starts)


def run_task(run_dir: str | os.PathLike, job_ids: Sequence[str], runtime: Runtime = Runtime(), *,
             retry_failed: bool = False, threads: int | None = None,
             devices: Sequence[str] = ()) -> dict[str, dict | None]:
    """Run these jobs of DIR one after another in this process, or with several `devices` on a pool of one worker
    per device; return {job id: result} (None: another process holds the job). The unit of work of every backend
    and of `ibprobe run-job`: a worker loads the folder's settings and data once for its K jobs.

    threads: torch's CPU threads in this worker (None: leave them).
    """
    if threads:
        torch.set_num_threads(int(threads))
    index = {s.key: s for s in read_job_index(run_dir)}
    specs = [index.get(k) or find_job(run_dir, k) for k in job_ids]  # find_job says which ids there are
    with hold(run_dir):  # held shared: no process can re-pin the folder under these jobs
        if len(devices) > 1:
            return LocalBackend(workers=len(devices), devices=tuple(devices)).run(
                Path(run_dir), specs, runtime, retry_failed=retry_failed)
        if devices:
            runtime = replace(runtime, device=devices[0])
        return run_jobs(Path(run_dir), specs, runtime, retry_failed=retry_failed, desc="task")


@dataclass(frozen=True)
class LocalBackend:
    """`workers` processes on this machine (one job at a time in this process for 1), each running tasks of
    `jobs_per_task` jobs; with `devices`, worker i runs on devices[i]."""

    workers: int = 1
    jobs_per_task: int = 1
    devices: tuple[str, ...] = ()

    def run(self, run_dir: Path, specs: list, runtime: Runtime, *, retry_failed: bool = False,
            desc: str = "decoder jobs") -> dict[str, dict]:
        run_dir = Path(run_dir)
        here = replace(runtime, device=self.devices[0]) if self.devices else runtime  # this process's jobs
        if self.workers <= 1 or len(specs) <= 1:
            return run_jobs(run_dir, specs, here, retry_failed=retry_failed, desc=desc)
        out, todo = split_finished(run_dir, specs, retry_failed)
        out.update(self._pool(run_dir, todo, runtime, retry_failed, desc))  # a task waits for jobs others hold
        return out

    def _pool(self, run_dir: Path, todo: list, runtime: Runtime, retry_failed: bool, desc: str) -> dict:
        tasks = chunks(todo, self.jobs_per_task)
        if not tasks:
            return {}
        workers = min(self.workers, len(tasks)) if not self.devices else self.workers
        ctx = mp.get_context("spawn")
        slots = ctx.Queue()
        for d in self.devices:
            slots.put(d)
        threads = threads_per_worker(workers)
        out: dict = {}
        bugs: list[str] = []
        with progress_report(total=len(todo), enabled=runtime.progress, desc=desc, unit="job") as bar, \
                ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init,
                                    initargs=(threads, slots if self.devices else None)) as pool:
            futs = {pool.submit(_task, str(run_dir), ids, worker_runtime(runtime), retry_failed): ids
                    for ids in tasks}
            for f in as_completed(futs):
                ids = futs[f]
                try:
                    res, bug = f.result()
                except BrokenProcessPool:
                    res, bug = lost_unless_done(run_dir, ids, todo, "a worker process was killed"), None
                out.update(res)
                if bug:
                    bugs.append(f"task {', '.join(ids)}:\n{bug}")
                bar.update(len(ids))
        if bugs:
            raise RuntimeError("decoder task(s) crashed:\n" + "\n".join(bugs))
        return out


def _init(threads: int, slots) -> None:
    """A pool worker: `threads` CPU threads (single-threaded tiny decoders run fastest one per core), its own device
    if given, and killed with its parent: on Linux the kernel kills this worker when its parent dies (e.g. kill -9
    of `ibprobe run`), so no orphan keeps fitting a job whose parent is gone."""
    global _DEVICE
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    torch.set_num_threads(threads)
    _DEVICE = slots.get() if slots is not None else None


def _task(run_dir: str, ids: list[str], runtime: Runtime, retry_failed: bool) -> tuple[dict, str | None]:
    try:
        rt = worker_runtime(runtime, _DEVICE)
        return run_task(run_dir, ids, rt, retry_failed=retry_failed), None
    except Exception:  # a bug: keep its traceback for the parent
        return {k: None for k in ids}, traceback.format_exc()


@dataclass(frozen=True)
class NoBackend:
    """Hands out nothing (`--backend none`): the folder is prepared for `ibprobe run-job`, and every job that is
    not finished yet is reported as not run."""

    def run(self, run_dir: Path, specs: list, runtime: Runtime, *, retry_failed: bool = False,
            desc: str = "decoder jobs") -> dict[str, dict]:
        out, todo = split_finished(Path(run_dir), specs, retry_failed)
        for s in todo:
            out[s.key] = {"status": "failed", "pending": True,
                          "error": f"not run (--backend none): `ibprobe run-job {run_dir} {s.key}` runs it"}
        return out
