"""The plan before a long run: the jobs a preset would fit, list scheduling on K workers with start-up per worker or
per task, the time of a job from its speeds, bench files that round-trip, and the command's table."""
from __future__ import annotations

import json
import math

import pytest
import torch

from decoders import DecoderConfig, FitConfig
from ibprobe.cli import main
from ibprobe.errors import ConfigError
from ibprobe.tools import plan
from tests.helpers import LAST


def _job(key: str, role: str, regime: str = "classify") -> plan.PlannedJob:
    return plan.PlannedJob(key, regime, role, DecoderConfig((1, 8, 8), 17, nr_resnet=1, nr_filters=8, nr_mix=2),
                           FitConfig(epochs=3, batch_size=10), n_images=100, n_test=40)


def test_digits_quick_jobs_are_what_run_would_fit():
    jobs = plan.jobs_of_preset("digits-quick", device="cpu")
    assert [j.key for j in jobs[:4]] == ["_unconditional_init", "_unconditional", "_labels", "layer1@0"]
    assert len(jobs) == 3 + 3 * 3
    shapes = {j.key.split("@")[0]: j.decoder.code_shape for j in jobs}
    assert shapes == {"_unconditional_init": None, "_unconditional": None, "_labels": (10,), "layer1": (16, 8, 8),
                      "layer2": (32, 4, 4), "pool": (64,)}
    assert [j.fit.epochs for j in jobs[:3]] == [40, 40, 40]  # every fit's cap (q0 has no init_epochs of its own)
    assert {(j.decoder.nr_resnet, j.decoder.nr_filters, j.decoder.nr_mix) for j in jobs} == {(1, 16, 3)}
    # digits: 359 held-out images are too few, so the decoders use the training side's 1438, a fifth for testing
    assert {(j.n_images, j.n_test) for j in jobs} == {(1151, 287)}  # stratified: a fifth of each class
    assert [j.mixture for j in jobs[:4]] == [0, 0, 10, 16]  # the label mixture's 10 classes, M codes per layer


def test_a_jobs_time_is_its_budget_at_the_measured_speeds():
    job = _job("pool@0", "conditional")
    assert (job.n_val, job.steps_per_epoch) == (10, 9)  # 90 training images in batches of 10
    speed = plan.Speed(train_step_s=0.5, eval_image_s=0.01)
    assert plan.job_seconds(job, speed) == pytest.approx(3 * (9 * 0.5 + 10 * 0.01) + (40 + 10) * 0.01)
    mixed = plan.PlannedJob(**{**job.__dict__, "mixture": 16})  # + 16 passes over the val and test images
    assert plan.job_seconds(mixed, speed) == pytest.approx(plan.job_seconds(job, speed) + 16 * 50 * 0.01)


def test_wall_time_hands_tasks_to_the_first_free_worker_in_order():
    jobs = [_job("_unconditional_init", "q0"), _job("_unconditional", "reference")] + \
        [_job(f"pool@{e}", "conditional") for e in range(4)]
    secs = {(j.key, j.regime): s for j, s in zip(jobs, [10, 5, 4, 4, 4, 8])}
    # q0 first (10 s); then q(x) and the conditional jobs, 5 4 4 4 8, each to the first free worker in order
    assert plan.wall_seconds(jobs, secs, 1) == 10 + 25
    assert plan.wall_seconds(jobs, secs, 2) == 10 + 16  # 5 | 4; 4 -> w2 (8); 4 -> w1 (9); 8 -> w2 (16)
    assert plan.wall_seconds(jobs, secs, 8) == 10 + 8
    assert plan.wall_seconds(jobs, secs, 2, jobs_per_task=2) == 10 + 16  # tasks 9 | 8; 8 -> w2 (16)
    assert plan.wall_seconds(jobs, secs, 2, startup_s=1) == 10 + 1 + 16
    assert plan.wall_seconds(jobs, secs, 2, startup_s=1, per_task_startup=True) == 10 + 1 + 19
    two = jobs + [plan.PlannedJob(**{**j.__dict__, "regime": "autoencode"}) for j in jobs]
    secs.update({(k, "autoencode"): s for (k, _), s in secs.items()})
    assert plan.wall_seconds(two, secs, 2) == 2 * (10 + 16)  # regimes run one after the other


def test_a_bench_file_round_trips_and_names_what_it_lacks(tmp_path):
    jobs = [_job("_unconditional", "reference"), _job("pool@0", "conditional")]
    speeds = {plan.speed_key(j.decoder, j.fit): plan.Speed(0.25, 0.001) for j in jobs}
    path = plan.write_bench(tmp_path / "bench.json", jobs, speeds, startup_s=3.5, device="cuda")
    assert json.loads(path.read_text())["format"] == plan.BENCH_FORMAT
    assert plan.read_bench(path, jobs) == (speeds, 3.5, "cuda")
    bigger = plan.PlannedJob(**{**jobs[1].__dict__, "key": "layer1@0",
                                "decoder": DecoderConfig((1, 8, 8), 17, nr_resnet=1, nr_filters=16, nr_mix=2)})
    with pytest.raises(ConfigError, match="no speed for the decoders of job.*layer1@0.*--write-bench"):
        plan.read_bench(path, jobs + [bigger])


def test_measuring_times_each_distinct_decoder_once_and_gives_the_threads_back():
    jobs = [_job("_unconditional_init", "q0"), _job("_unconditional", "reference"), _job("pool@0", "conditional"),
            plan.PlannedJob(**{**_job("pool@1", "conditional").__dict__,
                               "decoder": DecoderConfig((1, 8, 8), 17, nr_resnet=1, nr_filters=8, nr_mix=2,
                                                        code_shape=(5,))})]
    threads = torch.get_num_threads()
    speeds = plan.measure_speeds(jobs, device="cpu", threads=1, steps=1)
    assert torch.get_num_threads() == threads
    assert len(speeds) == 2 and all(v.train_step_s > 0 and v.eval_image_s > 0 for v in speeds.values())


def test_plan_command_reads_a_bench_file_and_prices_the_workers(tmp_path, capsys):
    jobs = plan.jobs_of_preset("digits-quick", device="cpu")
    bench = plan.write_bench(tmp_path / "target.json", jobs, {plan.speed_key(j.decoder, j.fit): plan.Speed(0.1, 0.0)
                                                               for j in jobs}, startup_s=2.0, device="cuda")
    assert main(["plan", "--preset", "digits-quick", "--bench", str(bench), "--workers", "4", "--device", "cpu",
                 "--price-per-hour", "2"]) == 0
    out = capsys.readouterr().out
    assert "pool@184" in out and "12 decoder jobs (11 after q0, 11 task(s) of 1)" in out and "(cuda)" in out
    rows = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit() and len(line.split()) == 4]
    walls = [sum(int(p) * f for p, f in zip(r[1].split(":"), (3600, 60, 1))) for r in rows]
    steps = math.ceil((1151 - 115) / 64)  # digits' training side: 1151 fit images, 115 of them for validation
    q0, job = 40 * steps * 0.1, 40 * steps * 0.1  # q0, then 11 jobs, each at its cap of 40 epochs (scoring is free)
    assert [int(r[0]) for r in rows] == [1, 2, 4]
    assert walls == [round(q0 + 2 + 11 * job), round(q0 + 2 + 6 * job), round(q0 + 2 + 3 * job)]
    assert all(math.isclose(float(r[3]), 2 * float(r[2]), abs_tol=0.011) for r in rows)  # cost = price x worker-h


def test_plan_of_a_finished_folder_shows_what_each_fit_took(reference, capsys):
    assert main(["plan", "--run", str(reference), "--workers", "2", "--device", "cpu", "--quiet"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line.split() for line in out.splitlines() if "@" in line[:12] or line.startswith("_")}
    assert set(lines) == {"_unconditional_init", "_unconditional", "_labels", "layer1@0", "pool@0", f"layer1@{LAST}",
                          f"pool@{LAST}"}
    assert all(v[-1] == "done" and float(v[-2]) > 0 for v in lines.values())  # fit s, from each job's fit log
    assert "wall, left" in out and " 0:00:00" in out  # nothing is left to fit


def test_a_plan_for_two_billion_workers_is_a_few_lines():
    """The worker counts shown are 1, 2, 4, ... up to 64 and the one asked for: never a list of all of them."""
    jobs = plan.jobs_of_preset("digits-quick", device="cpu")
    p = plan.Plan.of(jobs, {plan.speed_key(j.decoder, j.fit): plan.Speed(0.1, 0.0) for j in jobs}, 1.0, "test")
    text = plan.format_plan(p, 2**31)
    rows = [line.split()[0] for line in text.splitlines() if line.strip()[:1].isdigit() and len(line.split()) == 3]
    assert rows == ["1", "2", "4", "8", "16", "32", "64", str(2**31)]
