"""`ibprobe run-job RUN_DIR JOB_ID [JOB_ID ...]` or `ibprobe run-job RUN_DIR --task I [--jobs-per-task K]`: run
decoder jobs of an analysed folder, one after another in this process: the unit of work every backend hands out,
for cluster engines and plain array scripts. Job ids are listed in RUN_DIR/decoders/jobs.json."""
from __future__ import annotations

from ibprobe.backends import run_task, task_job_ids
from ibprobe.backends.tasks import check_devices
from ibprobe.cli import flags
from ibprobe.config import Runtime
from ibprobe.errors import ConfigError


def add_parser(sub) -> None:
    p = sub.add_parser(
        "run-job", help="run decoder jobs of an analysed folder by id, or the I-th task of an array",
        description="Run decoder jobs of a folder prepared by `ibprobe run` or `ibprobe analyze` (e.g. with "
        "--backend none): the engine-neutral unit of work for a cluster. Job ids are in RUN_DIR/decoders/jobs.json. "
        "With paired fitting _unconditional_init (q0; #r for repeat r) must finish before the others; `--task I` "
        "runs the I-th chunk of --jobs-per-task of those others (for `sbatch --array`). "
        "Then rerun `ibprobe run` or `ibprobe analyze` to measure and draw. A finished job is skipped, a killed one "
        "resumes, one that another process holds is waited for. Exit 0: all done; 1: a job failed.")
    p.add_argument("run_dir", type=flags.folder, metavar="RUN_DIR",
                   help="a folder prepared by `ibprobe run` or `ibprobe analyze`")
    p.add_argument("job_ids", nargs="*", metavar="JOB_ID",
                   help="e.g. _unconditional or layer2@10 (see RUN_DIR/decoders/jobs.json)")
    p.add_argument("--task", type=flags.count(0), metavar="I", help="instead of ids: the I-th (0-based) task of the "
                   "jobs after q0(x) (_unconditional_init), e.g. $SLURM_ARRAY_TASK_ID; `ibprobe plan --run RUN_DIR` "
                   "counts the tasks")
    p.add_argument("--jobs-per-task", type=flags.count(1), default=1, metavar="K",
                   help="jobs per task with --task (default 1)")
    p.add_argument("--devices", metavar="D1,D2", help="spread the jobs over these devices, one worker each")
    p.add_argument("--retry-failed", action="store_true", help="rerun jobs that failed before")
    p.add_argument("--keep-fit-state", action="store_true", help="keep each finished job's fit_state.pt")
    flags.add_device(p)
    flags.add_quiet(p)
    p.set_defaults(handler=handler)


def handler(args) -> int:
    if bool(args.job_ids) == (args.task is not None):
        raise ConfigError("give the job ids or --task I (one of the two)")
    ids = args.job_ids or task_job_ids(args.run_dir, args.task, args.jobs_per_task)
    runtime = Runtime(device=args.device, progress=not args.quiet, keep_fit_state=args.keep_fit_state)
    results = run_task(args.run_dir, ids, runtime, retry_failed=args.retry_failed,
                       devices=check_devices(flags.parse_list(args.devices) or ()))
    for key in ids:
        res = results.get(key) or {"status": "held by another process"}
        print(f"{key}: {res.get('status')}" + (f" ({res['error']})" if res.get("error") else ""))
    return 0 if all((results.get(k) or {}).get("status") == "ok" for k in ids) else 1
