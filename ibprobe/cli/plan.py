"""`ibprobe plan --preset NAME | --run DIR [--workers K] [--price-per-hour P] [--bench FILE | --write-bench FILE]`:
the decoder jobs, each one's expected time, and the expected wall time and cost on K workers (ibprobe.tools.plan)."""
from __future__ import annotations

import sys

from ibprobe.backends import BACKENDS
from ibprobe.cli import flags
from ibprobe.config import resolve_device
from ibprobe.jobs import threads_per_worker
from ibprobe.presets import PRESETS
from ibprobe.rundir.sources import parse_layers
from ibprobe.tools import plan


def add_parser(sub) -> None:
    p = sub.add_parser(
        "plan", help="list the decoder jobs and the expected wall time and cost on K workers",
        description="List the decoder jobs of a preset (as `ibprobe run` would fit them on this device) or of an "
        "analysed folder, time a few training steps of each decoder on this machine (or read the speeds from a "
        "bench file made on the target machine with --write-bench), and print the expected time of each job and "
        "the wall time, worker-hours and cost on 1..K workers. Fits nothing.")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--preset", choices=sorted(PRESETS), help="the jobs `ibprobe run --preset NAME` would fit")
    what.add_argument("--run", type=flags.folder, metavar="DIR",
                      help="the jobs of an analysed folder (with their state)")
    p.add_argument("--workers", type=flags.count(1), default=1, metavar="K",
                   help="workers (processes, tasks at once; default 1)")
    p.add_argument("--jobs-per-task", type=flags.count(1), default=1, metavar="K", help="jobs per task (default 1)")
    p.add_argument("--backend", default="local", choices=BACKENDS[:3],
                   help="local and ray start a worker once, slurm once per task (default local)")
    p.add_argument("--price-per-hour", type=float, metavar="P", help="price of one worker-hour: adds a cost column")
    bench = p.add_mutually_exclusive_group()
    bench.add_argument("--bench", metavar="FILE", help="read the speeds from this bench file instead of measuring")
    bench.add_argument("--write-bench", metavar="FILE", help="also write the speeds measured here to FILE")
    p.add_argument("--data-root", type=flags.folder, metavar="DIR",
                   help="folder holding the preset's data set (else known sizes)")
    flags.add_layers(p)
    flags.add_device(p)
    flags.add_quiet(p)
    p.set_defaults(handler=handler)


def handler(args) -> int:
    if args.run:
        jobs = plan.jobs_of_run(args.run)
    else:
        jobs = plan.jobs_of_preset(args.preset, data_root=args.data_root, device=args.device,
                                   layers=parse_layers(args.layers) if args.layers else None)
    log = None if args.quiet else (lambda s: print(s, file=sys.stderr))
    if args.bench:
        speeds, startup, device = plan.read_bench(args.bench, jobs)
        where = f"from {args.bench} ({device})"
    else:
        device = resolve_device(args.device)
        threads = threads_per_worker(args.workers) if device.type == "cpu" else None
        speeds = plan.measure_speeds(jobs, device=str(device), threads=threads, log=log)
        startup = plan.measure_startup()
        where = f"measured here ({device}, {threads or 'default'} thread(s) per worker)"
        if args.write_bench:
            print(f"wrote {plan.write_bench(args.write_bench, jobs, speeds, startup, str(device))}", file=sys.stderr)
    print(plan.format_plan(plan.Plan.of(jobs, speeds, startup, where), args.workers, jobs_per_task=args.jobs_per_task,
                           price_per_hour=args.price_per_hour, backend=args.backend))
    return 0
