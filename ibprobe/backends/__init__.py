"""Backends: who runs the decoder jobs of a run folder (DIR/decoders/), on this machine or on a cluster.

    local  worker processes on this machine: `--jobs N` of them, or one per `--devices` entry
    ray    Ray tasks on a Ray cluster (`--ray-address`), or on a local Ray started for the run
    slurm  Slurm job arrays through submitit (its local and debug executors run the same arrays here)
    none   hands out nothing: the folder is prepared (activations, settings, DIR/decoders/jobs.json) for
           `ibprobe run-job`, e.g. in a plain sbatch array script

Every backend hands out the same unit of work, a task: `run_task(run_dir, job ids)` runs `--jobs-per-task K`
jobs one after another in one worker, which loads the folder's pinned settings and data once. A job is a
function of (run folder, job id) alone (ibprobe.jobs.run_job): it writes its results into the run folder, so the
folder must be on storage every worker sees, and a rerun skips what is finished and resumes what was killed. The
engines only hand out tasks and report which ones died; nothing here schedules, queues or retries by itself.
Ray and submitit are optional extras, imported only when their backend runs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Protocol, Sequence

from ibprobe.backends.local import LocalBackend, NoBackend, run_task
from ibprobe.backends.ray import RayBackend
from ibprobe.backends.slurm import SlurmBackend
from ibprobe.backends.tasks import check_devices, number_of_tasks, task_job_ids
from ibprobe.config import Runtime, check_int
from ibprobe.errors import ConfigError
from ibprobe.jobs import JobSpec, resolve_jobs

BACKENDS = ("local", "ray", "slurm", "none")


class Backend(Protocol):
    def run(self, run_dir: Path, specs: list[JobSpec], runtime: Runtime, *, retry_failed: bool = False,
            desc: str = "decoder jobs") -> dict[str, dict]:
        """Run `specs` (any order, any worker) and wait; returns {job id: result} for every spec."""


def make_backend(name: str = "local", *, jobs: int = 0, jobs_per_task: int = 1, devices: Sequence[str] = (),
                 ray_address: str | None = None, ray: dict | None = None, slurm: dict | None = None,
                 device: str = "auto") -> Backend:
    """The backend of the `--backend` flag group; an invalid combination is a ConfigError here, before any work.

    jobs: tasks at once. local: worker processes (0: one per CPU core on CPU, 1 on CUDA); ray: the CPUs of a
        local Ray (0: all); slurm: the array's parallelism (0: the cluster's limit).
    devices: local: one worker per entry, with that device; slurm: each task spreads its jobs over them.
    """
    if name not in BACKENDS:
        raise ConfigError(f"unknown backend {name!r}; choose one of: {', '.join(BACKENDS)}")
    jobs, jobs_per_task = check_int("--jobs", jobs, 0), check_int("--jobs-per-task", jobs_per_task, 1)
    devices = check_devices(devices)
    if (ray or ray_address) and name != "ray":
        raise ConfigError("--ray and --ray-address go with --backend ray")
    if slurm and name != "slurm":
        raise ConfigError("--slurm goes with --backend slurm")
    if name == "local":
        return LocalBackend(workers=len(devices) or resolve_jobs(jobs, device), jobs_per_task=jobs_per_task,
                            devices=devices)
    if name == "ray":
        if devices:
            raise ConfigError("--devices goes with the local and slurm backends; on Ray, give each task a GPU with "
                              "--ray num_gpus=1 (Ray sets which one it sees)")
        backend = RayBackend(address=ray_address, jobs=jobs, jobs_per_task=jobs_per_task,
                             options=tuple(sorted((ray or {}).items())))
    elif name == "slurm":
        backend = SlurmBackend(params=tuple(sorted((slurm or {}).items())), jobs=jobs,
                               jobs_per_task=jobs_per_task, devices=devices)
    else:
        return NoBackend()
    backend.check()
    return backend


__all__ = ["BACKENDS", "Backend", "make_backend", "run_task", "task_job_ids", "number_of_tasks", "LocalBackend",
           "RayBackend", "SlurmBackend", "NoBackend"]
