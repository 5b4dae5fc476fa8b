"""Jobs as Ray tasks: `--backend ray [--ray-address ADDR] [--ray num_cpus=1 num_gpus=1 ...]`.

With an address (or $RAY_ADDRESS) the tasks go to that Ray cluster, whose workers must have ibprobe installed and
see the run folder at the same path; without one, a local Ray is started for the run (`--jobs N`: N CPUs, one
task each). Each task is `run_task` on K job ids, with the `ray.remote` options given by `--ray` (default one CPU,
and one GPU when the cluster has GPUs and --device is not cpu; Ray then sets which GPU a task sees). A task whose
worker dies is retried by Ray (`max_retries`, Ray's default 3), and resumes its job from the fit checkpoint.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from decoders.progress import progress as progress_report
from ibprobe.backends.local import run_task
from ibprobe.backends.tasks import chunks, lost_unless_done, require, split_finished, worker_runtime
from ibprobe.config import Runtime
from ibprobe.errors import ConfigError


@dataclass(frozen=True)
class RayBackend:
    """Ray tasks of `jobs_per_task` jobs each; `options` are ray.remote options ((name, value), ...)."""

    address: str | None = None
    jobs: int = 0
    jobs_per_task: int = 1
    options: tuple = ()

    def run(self, run_dir: Path, specs: list, runtime: Runtime, *, retry_failed: bool = False,
            desc: str = "decoder jobs") -> dict[str, dict]:
        run_dir = Path(run_dir).resolve()
        out, todo = split_finished(run_dir, specs, retry_failed)
        if not todo:
            return out
        ray = require("ray", "ray")
        self.connect(ray, runtime.progress)
        opts = self.task_options(ray, runtime.device)
        remote = ray.remote(run_task).options(**opts)
        device = "cuda" if opts.get("num_gpus") else runtime.device  # Ray shows a task only its own GPU(s)
        threads = max(1, int(opts.get("num_cpus") or 1))
        refs = {remote.remote(str(run_dir), ids, worker_runtime(runtime, device), retry_failed=retry_failed,
                              threads=threads): ids for ids in chunks(todo, self.jobs_per_task)}
        bugs: list[str] = []
        pending = list(refs)
        with progress_report(total=len(todo), enabled=runtime.progress, desc=desc, unit="job") as bar:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                ids = refs[done[0]]
                try:
                    res = ray.get(done[0])
                except ray.exceptions.RayTaskError as e:  # our code raised: a bug, not a lost worker
                    bugs.append(f"task {', '.join(ids)}:\n{e}")
                    res = {}
                except ray.exceptions.RayError as e:  # the worker or its node died (after Ray's retries)
                    res = lost_unless_done(run_dir, ids, todo, f"Ray: {type(e).__name__}")
                out.update(res)
                bar.update(len(ids))
        if bugs:
            raise RuntimeError("decoder task(s) crashed on Ray:\n" + "\n".join(bugs))
        return out

    def check(self) -> None:
        """Fail now, before any training, if Ray is not installed."""
        require("ray", "ray")

    def connect(self, ray, progress: bool) -> None:
        """ray.init once per process: to `address`, or a local Ray of `jobs` CPUs (0: all of them)."""
        if ray.is_initialized():
            return
        kw = dict(address=self.address, log_to_driver=progress,
                  logging_level=logging.INFO if progress else logging.ERROR)
        if self.address is None and not os.environ.get("RAY_ADDRESS"):
            kw.update(include_dashboard=False, num_cpus=self.jobs or None)
        try:
            ray.init(**kw)
        except (ConnectionError, ValueError, RuntimeError) as e:
            raise ConfigError(f"--backend ray: cannot start or reach Ray at {self.address or 'a local instance'} "
                              f"({type(e).__name__}: {e}); check --ray-address") from None

    def task_options(self, ray, device: str) -> dict:
        """ray.remote options of one task: the user's, over one CPU and (on a cluster with GPUs) one GPU."""
        opts = dict(self.options)
        opts.setdefault("num_cpus", 1)
        if "num_gpus" not in opts:
            opts["num_gpus"] = 1 if str(device) != "cpu" and ray.cluster_resources().get("GPU", 0) else 0
        try:
            ray.remote(run_task).options(**opts)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"--ray: {e}") from None
        return opts
