"""Jobs as Slurm job arrays through submitit: `--backend slurm --slurm partition=gpu gpus_per_node=1 timeout_min=720
account=lab`.

Each call submits one array (`sbatch --array`), one array task per `--jobs-per-task K` jobs, and waits for it;
`--jobs N` caps how many tasks run at once (the array's %N). `--slurm` takes submitit's shared parameters
(timeout_min, gpus_per_node, cpus_per_task, mem_gb, nodes, tasks_per_node, name) and any Slurm option submitit
knows, without its `slurm_` prefix (partition, account, qos, constraint, exclude, array_parallelism, setup,
additional_parameters, ...), plus two of ours: `folder=DIR` for submitit's pickles and logs (default
RUN_DIR/slurm/), and `cluster=local` or `cluster=debug`, which run the same arrays on this machine with submitit's
local executor (a process per task) or in this process. A task that Slurm preempts, or whose time runs out, is
requeued (the task is checkpointable) and resumes its jobs from their fit checkpoints.
"""
from __future__ import annotations

import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from decoders.progress import progress as progress_report
from ibprobe.backends.local import run_task
from ibprobe.backends.tasks import chunks, lost_unless_done, require, split_finished, worker_runtime
from ibprobe.config import Runtime
from ibprobe.errors import ConfigError

CLUSTERS = ("slurm", "local", "debug")
SHARED = ("name", "timeout_min", "mem_gb", "nodes", "cpus_per_task", "gpus_per_node", "tasks_per_node",
          "stderr_to_stdout")  # submitit's parameters for every cluster; any other goes to Slurm
DEFAULT_TIMEOUT_MIN = 240  # per task; a task past it is requeued and resumes


class SubmititTask:
    """The callable of every array task: `run_task` on its job ids. Checkpointable: on preemption or timeout,
    submitit calls `checkpoint` and requeues the same call."""

    def __call__(self, run_dir: str, job_ids: list[str], runtime: Runtime, retry_failed: bool, threads: int | None,
                 devices: tuple[str, ...]) -> dict:
        return run_task(run_dir, job_ids, runtime, retry_failed=retry_failed, threads=threads, devices=devices)

    def checkpoint(self, *args, **kwargs):
        return require("submitit", "slurm").helpers.DelayedSubmission(self, *args, **kwargs)


@dataclass(frozen=True)
class SlurmBackend:
    """Array tasks of `jobs_per_task` jobs; `params` are `--slurm` ((name, value), ...); with several `devices`,
    each task spreads its jobs over them (e.g. gpus_per_node=4 and --devices cuda:0,cuda:1,cuda:2,cuda:3)."""

    params: tuple = ()
    jobs: int = 0
    jobs_per_task: int = 1
    devices: tuple[str, ...] = ()

    def run(self, run_dir: Path, specs: list, runtime: Runtime, *, retry_failed: bool = False,
            desc: str = "decoder jobs") -> dict[str, dict]:
        run_dir = Path(run_dir).resolve()
        out, todo = split_finished(run_dir, specs, retry_failed)
        if not todo:
            return out
        submitit = require("submitit", "slurm")
        executor, cluster, threads = self.executor(submitit, run_dir / "slurm")
        tasks = chunks(todo, self.jobs_per_task)
        n = len(tasks)
        try:
            jobs = executor.map_array(SubmititTask(), [str(run_dir)] * n, tasks, [worker_runtime(runtime)] * n,
                                      [retry_failed] * n, [threads] * n, [self.devices] * n)
        except (OSError, RuntimeError) as e:  # no sbatch, or sbatch refused the array
            raise ConfigError(f"--backend slurm: submitting {n} task(s) failed ({type(e).__name__}: "
                              f"{str(e).strip().splitlines()[-1] if str(e).strip() else ''}); check --slurm, or "
                              f"try --slurm cluster=local on a machine without Slurm") from None
        if runtime.progress:
            print(f"{desc}: submitted {n} task(s) of up to {self.jobs_per_task} job(s) to {cluster} (array "
                  f"{str(jobs[0].job_id).split('_')[0]}); logs in {executor.folder}", file=sys.stderr)
        task_of = {id(j): ids for j, ids in zip(jobs, tasks)}
        bugs: list[str] = []
        poll = 30.0 if cluster == "slurm" else 0.5
        with progress_report(total=len(todo), enabled=runtime.progress, desc=desc, unit="job") as bar:
            for job in submitit.helpers.as_completed(jobs, poll_frequency=poll):
                ids = task_of[id(job)]
                error = job.exception()
                if error is None:
                    out.update(job.result())
                elif isinstance(error, submitit.core.utils.FailedJobError):  # our code raised: a bug
                    bugs.append(f"task {', '.join(ids)}:\n{error}")
                else:  # killed, cancelled, out of memory, or out of time too often
                    out.update(lost_unless_done(run_dir, ids, todo, f"{cluster} job {job.job_id} ended without a "
                                                f"result, state {job.state}; its log: {job.paths.stderr}"))
                bar.update(len(ids))
        if bugs:
            raise RuntimeError(f"decoder task(s) crashed on {cluster}:\n" + "\n".join(bugs))
        return out

    def check(self) -> None:
        """Fail now, before any training, if submitit is missing, Slurm is not here or a parameter is wrong."""
        with tempfile.TemporaryDirectory() as tmp:
            self.executor(require("submitit", "slurm"), Path(tmp))

    def executor(self, submitit, folder: Path):
        """(submitit executor with the `--slurm` parameters and logs in `folder`, its cluster, torch threads per
        task)."""
        params = dict(self.params)
        cluster = str(params.pop("cluster", "slurm"))
        if cluster not in CLUSTERS:
            raise ConfigError(f"--slurm cluster={cluster}: choose one of {', '.join(CLUSTERS)}")
        folder = Path(str(params.pop("folder", folder))) / "%j"
        given = {k if k in SHARED or k.startswith("slurm_") else f"slurm_{k}": _plain(k, v) for k, v in params.items()}
        given.setdefault("timeout_min", DEFAULT_TIMEOUT_MIN)
        given.setdefault("name", "ibprobe")
        if self.jobs > 0:
            given.setdefault("slurm_array_parallelism", self.jobs)
        try:
            executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
            executor.update_parameters(**given)
        except RuntimeError as e:  # no srun on this machine
            raise ConfigError(f"--backend slurm: {e}; on a machine without Slurm, --slurm cluster=local runs the "
                              f"arrays here") from None
        except (NameError, AssertionError, ValueError, TypeError) as e:
            raise ConfigError(f"--slurm: {str(e).splitlines()[0]}") from None
        threads = given.get("cpus_per_task") or (1 if cluster != "slurm" else None)
        return executor, cluster, threads


def _plain(key: str, value):
    """A comma list from `--slurm partition=a,b` (parsed as a tuple) back to the string Slurm takes."""
    if isinstance(value, tuple) and key not in ("setup", "srun_args"):
        return ",".join(map(str, value))
    return list(value) if isinstance(value, tuple) else value
