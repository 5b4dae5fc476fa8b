"""What every backend shares: tasks of K job ids, the jobs a rerun still has to run, the result of a job whose
worker died, the Runtime of a worker, and the import of an optional engine."""
from __future__ import annotations

import dataclasses
import importlib
import os
from pathlib import Path
from typing import Sequence

import torch

from ibprobe.config import Runtime
from ibprobe.errors import ConfigError
from ibprobe.jobs import JobSpec, Role, finished_result, read_job_index, read_result


def chunks(specs: Sequence[JobSpec], k: int) -> list[list[str]]:
    """Job ids in tasks of `k`, in order."""
    ids = [s.key for s in specs]
    return [ids[i:i + k] for i in range(0, len(ids), max(1, int(k)))]


def number_of_tasks(n_jobs: int, jobs_per_task: int) -> int:
    return -(-int(n_jobs) // max(1, int(jobs_per_task)))


def task_job_ids(run_dir: str | os.PathLike, task: int, jobs_per_task: int = 1) -> list[str]:
    """The job ids of array task `task` (0-based): every job of DIR/decoders/jobs.json but q0 (of each repeat), in
    index order, in chunks of `jobs_per_task`. q0 is in no task: every other job starts from it, so run it first
    (`ibprobe run-job DIR _unconditional_init`)."""
    if int(jobs_per_task) < 1:
        raise ConfigError(f"--jobs-per-task must be >= 1, got {jobs_per_task}")
    ids = [s.key for s in read_job_index(run_dir) if s.role is not Role.Q0]
    n = number_of_tasks(len(ids), jobs_per_task)
    if not 0 <= int(task) < n:
        raise ConfigError(f"task {task} is out of range: {run_dir} has {len(ids)} jobs after q0, {n} task(s) of "
                          f"{jobs_per_task}; use an array of 0-{n - 1}")
    return ids[int(task) * jobs_per_task:(int(task) + 1) * jobs_per_task]


def split_finished(run_dir: Path, specs: Sequence[JobSpec], retry_failed: bool) -> tuple[dict, list[JobSpec]]:
    """({job id: result} of the finished jobs, the jobs still to run): a rerun hands out only what is left."""
    done, todo = {}, []
    for s in specs:
        res = finished_result(s.job_dir(run_dir), retry_failed)
        if res is not None:
            done[s.key] = res
        else:
            todo.append(s)
    return done, todo


def lost(reason: str) -> dict:
    """The result of a job whose worker died before it finished. Nothing is written to its folder, so a rerun of
    the same command runs it again, resuming from its last fit checkpoint."""
    return {"status": "failed", "error": f"its worker died ({reason}); rerun the command to resume it",
            "lost": True}


def lost_unless_done(run_dir: Path, ids: Sequence[str], specs: Sequence[JobSpec], reason: str) -> dict:
    """{job id: result} of a task whose worker died: what its jobs wrote before, else `lost(reason)`."""
    dirs = {s.key: s.job_dir(run_dir) for s in specs}
    return {k: read_result(dirs[k]) or lost(reason) for k in ids}


def worker_runtime(runtime: Runtime, device: str | None = None) -> Runtime:
    """The Runtime of a worker: no progress bars (many workers would interleave them), this device if given."""
    return dataclasses.replace(runtime, device=device or runtime.device, progress=False)


def check_devices(devices: Sequence[str]) -> tuple[str, ...]:
    """The `--devices` entries, each a torch device string (cpu, cuda, cuda:N); repeat one to run two workers on
    it."""
    out = []
    for d in devices or ():
        try:
            dev = torch.device(str(d).strip())
        except (RuntimeError, TypeError):
            raise ConfigError(f"--devices: {d!r} is not a device; use cpu, cuda or cuda:N") from None
        if dev.type not in ("cpu", "cuda"):
            raise ConfigError(f"--devices: {d!r} is not a cpu or cuda device")
        out.append(str(dev))
    return tuple(out)


def require(module: str, extra: str):
    """Import an optional engine, here and not at the top of a module, so the core install works without the
    extras; a ConfigError says how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"--backend {extra} needs the optional package {module!r}: pip install "
                          f"'ibprobe[{extra}]'") from None
