"""`ibprobe run-job RUN_DIR JOB_ID`: run one decoder job of an analysed folder (for cluster engines and array
scripts). Job ids are listed in RUN_DIR/decoders/jobs.json: `_unconditional_init`, `_unconditional`, `layer@epoch`.
The references must finish before the conditional jobs; rerun `ibprobe run`/`analyze` to measure and draw."""
from __future__ import annotations

from ibprobe.cli import flags
from ibprobe.config import Runtime
from ibprobe.fit import find_job, run_job
from ibprobe.folder import hold


def add_parser(sub) -> None:
    p = sub.add_parser(
        "run-job", help="run one decoder job of an analysed folder by its id",
        description="Run one decoder job of an analysed folder: the engine-neutral unit of work for a cluster. "
        "Job ids are in RUN_DIR/decoders/jobs.json. With paired fitting, _unconditional_init (q0) must finish "
        "before the others (_unconditional, _labels, layer@epoch; #r for repeat r); then rerun `ibprobe run` or "
        "`ibprobe analyze` to measure and draw. Exit 0: done; 1: the job failed; 3: another process holds it.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a folder prepared by `ibprobe run` or `ibprobe analyze`")
    p.add_argument("job_id", metavar="JOB_ID", help="e.g. _unconditional or layer2@10 (see RUN_DIR/decoders/jobs.json)")
    p.add_argument("--retry-failed", action="store_true", help="rerun the job if it failed before")
    p.add_argument("--keep-fit-state", action="store_true", help="keep the finished job's fit_state.pt")
    flags.add_device(p)
    flags.add_quiet(p)
    p.set_defaults(handler=handler)


def handler(args) -> int:
    spec = find_job(args.run_dir, args.job_id)
    runtime = Runtime(device=args.device, progress=not args.quiet, keep_fit_state=args.keep_fit_state)
    with hold(args.run_dir):  # no other process can re-pin the folder under this job
        res = run_job(args.run_dir, spec, runtime, retry_failed=args.retry_failed)
    if res is None:
        print(f"{spec.key}: held by another process")
        return 3
    print(f"{spec.key}: {res.get('status')}" + (f" ({res['error']})" if res.get("error") else ""))
    return 0 if res.get("status") == "ok" else 1
