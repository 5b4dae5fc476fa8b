"""Hostile inputs and faults: every bad invocation ends in one line and exit code 2 with no traceback, and leaves a
finished run folder as it was (its files' hashes are compared); what can be rebuilt is rebuilt to the same numbers.

One tiny trained and analysed run is shared by every case (module fixture); commands run in-process through
`ibprobe.cli.main`. The classes: numeric options out of range, options of the wrong type, empty or degenerate inputs,
damaged or foreign run files, a full disk and a read-only folder, changed inputs (checkpoint content, normalisation),
and two processes claiming one folder with different settings.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from ibprobe.capture import codes_key
from ibprobe.cli import main
from ibprobe.config import AnalysisConfig
from ibprobe.rundir.pinning import claim, read_inputs, read_pinned, source_inputs
from ibprobe.rundir.sources import ModelSource, decoder_split, open_source, source_from_run

TRAIN = ["--train", "epochs=1", "checkpoint_epochs=0,1", "max_train=150"]
TINY = ["--layers", "pool", "--decoder", "nr_resnet=1", "nr_filters=4", "nr_mix=1", "--fit", "epochs=1",
        "--reference", "plain", "--no-probe", "--jobs", "1", "--no-figures", "--quiet"]
LAST = 3  # the step of the last checkpoint, epoch 1: 150 training images, 64 a batch
NET = ["--model", "resnet", "--model-arg", "widths=16,32,64", "blocks=1,1,1"]  # what `run` trains by default


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished run folder: trained (2 checkpoints) and analysed (one layer, tiny decoders)."""
    out = tmp_path_factory.mktemp("hostile") / "fin"
    assert main(["run", "--out", str(out), *TRAIN, *TINY]) == 0
    return out


def digest(folder: Path) -> dict[str, str]:
    """{relative path: sha1} of every file (lock files, which hold a pid, left out)."""
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.endswith(".lock")}


def temps(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.tmp"))


def one_line(capsys, rc: int, *needles: str) -> str:
    """Assert exit code 2 and one line on stderr (no traceback) holding every needle; returns the line."""
    out = capsys.readouterr()
    lines = [line for line in out.err.splitlines() if line.strip()]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in out.err, (rc, out.err[-2000:])
    assert lines[0].startswith("ibprobe") and ": error: " in lines[0], lines[0]
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def rerun(folder: Path, *extra: str) -> int:
    return main(["run", "--out", str(folder), *TRAIN, *TINY, *extra])


def numbers(folder: Path) -> str:
    return (folder / "analysis" / "mi.csv").read_text()


def _copy(finished: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(finished, dst, ignore=shutil.ignore_patterns("*.lock"))
    return dst


# ------------------------------------------------------------------------------------------------ bad options
F, T, CK, X0 = "{F}", "{T}", "{CK}", "{X0}"
ANALYZE = ["analyze", *NET, "--checkpoints", CK, "--layers", "pool", "--dataset", "digits", "--out", T]
OPTIONS = [
    ("capture batch-size 0", ["capture", "--run", F, "--layers", "pool", "--batch-size", "0"], "--batch-size"),
    ("capture layers empty", ["capture", "--run", F, "--layers", ","], "--layers is empty"),
    ("capture seed negative", ["capture", "--run", F, "--layers", "pool", "--seed", "-3"], "--seed"),
    ("capture unknown epoch", ["capture", "--run", F, "--layers", "pool", "--epochs", "7"], "epoch"),
    ("train seed negative", ["train", "--out", T, "--seed", "-1"], "--seed"),
    ("train seed beyond 64 bits", ["train", "--out", T, "--seed", str(2**64)], "--seed"),
    ("run seed negative", ["run", "--out", T, "--seed", "-1"], "--seed"),
    ("gallery seed negative", ["gallery", F, "--seed", "-1"], "--seed"),
    ("validate seed negative", ["validate", "--quick", "--seed", "-1"], "--seed"),
    ("hessian seed not a number", ["hessian", "--linear", "--out", T, "--seed", "x"], "--seed"),
    ("gallery no images", ["gallery", F, "--n-images", "0"], "--n-images"),
    ("train max_train 0", ["train", "--out", T, "--train", "max_train=0"], "max_train"),
    ("train max_train negative", ["train", "--out", T, "--train", "max_train=-5"], "max_train"),
    ("train batch_size 0", ["train", "--out", T, "--train", "batch_size=0"], "batch_size"),
    ("train lr nan", ["train", "--out", T, "--train", "lr=nan"], "lr"),
    ("train epochs not an integer", ["train", "--out", T, "--train", "epochs=2.5"], "epochs"),
    ("train checkpoint epoch not an integer", ["train", "--out", T, "--train", "checkpoint_epochs=0,1.5"],
     "checkpoint_epochs"),
    ("train unknown dataset", ["train", "--out", T, "--dataset", "nosuch"], "nosuch"),
    ("train dataset and images", ["train", "--out", T, "--dataset", "digits", "--images", X0], "not both"),
    ("train labels without images", ["train", "--out", T, "--labels", X0], "--labels goes with --images"),
    ("train images without levels", ["train", "--out", T, "--images", X0], "--levels"),
    ("train unknown model", ["train", "--out", T, "--model", "nosuch", "--train", "epochs=0"], "nosuch"),
    ("train out empty", ["train", "--out", ""], "--out"),
    ("run out empty", ["run", "--out", ""], "--out"),
    ("analyze out blank", ANALYZE[:-1] + [" "], "--out"),
    ("run jobs negative", ["run", "--out", T, "--jobs", "-3"], "--jobs"),
    ("analyze jobs negative", [*ANALYZE, "--jobs", "-1"], "--jobs"),
    ("run repeats 0", ["run", "--out", T, "--repeats", "0"], "--repeats"),
    ("run mixture codes negative", ["run", "--out", T, "--mixture-codes", "-1"], "--mixture-codes"),
    ("fit epochs not an integer", ["run", "--out", T, *TRAIN, "--fit", "epochs=1.5"], "epochs"),
    ("fit seed negative", ["run", "--out", T, *TRAIN, "--fit", "seed=-1"], "seed"),
    ("fit lr infinite", ["run", "--out", T, *TRAIN, "--fit", "lr=inf"], "lr"),
    ("fit betas one value", ["run", "--out", T, *TRAIN, "--fit", "betas=0.9"], "betas"),
    ("decoder nr_filters 0", ["run", "--out", T, *TRAIN, "--layers", "pool", "--decoder", "nr_filters=0"],
     "nr_filters"),
    ("decoder nr_mix not an integer", ["run", "--out", T, *TRAIN, "--decoder", "nr_mix=2.5"], "nr_mix"),
    ("decoder unknown field", ["run", "--out", T, *TRAIN, "--decoder", "nr_filter=3"], "nr_filter"),
    ("decoder vector_cond unknown", ["run", "--out", T, *TRAIN, "--decoder", "vector_cond=deep"],
     "vector_cond must be one of linear, mlp"),
    ("analyze levels 1", [*ANALYZE[:-6], "--layers", "pool", "--images", X0, "--levels", "1", "--out", T], "--levels"),
    ("analyze no images", [*ANALYZE[:-6], "--layers", "pool", "--images", X0, "--levels", "17", "--out", T],
     "holds no images"),
    ("run unknown layer", ["run", "--out", T, *TRAIN, "--layers", "nope"], "unknown layer"),
    ("train normalize not a pair", ["train", "--out", T, "--train", "normalize=0.5"], "normalize"),
    ("analyze out is a file", [*ANALYZE[:-1], "{F}/config.json", "--quiet", *TINY[2:]], "a file stands where"),
    ("hessian width 0", ["hessian", "--linear", "--width", "0", "--out", T], "--width"),
    ("complexity batch negative", ["complexity", "--run", F, "--batch", "-1"], "--batch"),
    ("unknown flag", ["run", "--out", T, "--no-such-flag"], "unrecognized"),
    ("run-job unknown job", ["run-job", F, "nope@3"], "no job"),
    ("plot a folder that is not there", ["plot", T], "does not exist"),
    ("layers bad in-shape", ["layers", "--model", "resnet", "--in-shape", "a,b"], "--in-shape"),
    ("run jobs-per-task 0", ["run", "--out", T, "--jobs-per-task", "0"], "--jobs-per-task"),
    ("run unknown backend", ["run", "--out", T, "--backend", "mpi"], "--backend"),
    ("run slurm option not K=V", ["run", "--out", T, *TRAIN, "--backend", "slurm", "--slurm", "partition"],
     "KEY=VALUE"),
    ("run bins 0", ["run", "--out", T, "--bins", "0"], "--bins"),
    ("run kde noise 0", ["run", "--out", T, *TRAIN, "--kde-noise-var", "0"], "--kde-noise-var"),
    ("run kid samples 2", ["run", "--out", T, "--kid-samples", "2"], "--kid-samples"),
    ("analyze kid weights missing", [*ANALYZE, "--kid-weights", "{T}/nope.pt"], "--kid-weights"),
    ("run-job task negative", ["run-job", F, "--task", "-1"], "--task"),
    ("run-job task and ids", ["run-job", F, "pool@1", "--task", "0"], "one of the two"),
    ("run-job task beyond the jobs", ["run-job", F, "--task", "999"], "task"),
    ("plan workers 0", ["plan", "--run", F, "--workers", "0"], "--workers"),
    ("plot unknown estimator", ["plot", F, "--estimators", "decoder,mine"], "mine"),
]


@pytest.mark.parametrize("argv,needle", [c[1:] for c in OPTIONS], ids=[c[0] for c in OPTIONS])
def test_a_bad_option_is_one_line_before_any_work(finished, tmp_path, capsys, argv, needle):
    before = digest(finished)
    np.save(tmp_path / "x0.npy", np.zeros((0, 1, 8, 8), np.uint8))
    fill = {F: str(finished), T: str(tmp_path / "new"), CK: str(finished / "checkpoints" / "step_00000003.pt"),
            X0: str(tmp_path / "x0.npy")}
    rc = main([fill.get(a, a).replace(F, str(finished)) for a in argv])
    one_line(capsys, rc, needle)
    assert not (tmp_path / "new").exists(), "a bad option started work"
    assert digest(finished) == before


# ------------------------------------------------------------------------------------------------ damaged files
def _npy(a: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


POOL1 = "decoders/pool/step_00000003"
GARBAGE = b"garbage\x00{"
DAMAGED = [  # (file, new content or "half", command: "run" | "run-job" | "plot" | "gallery", needle)
    ("analysis.json", GARBAGE, "run", "analysis.json is unreadable"),
    ("analysis.json", "half", "run", "analysis.json is unreadable"),
    ("analysis.json", b'{"format": "ibprobe.analysis/3"}', "run", "analysis.json is of format"),
    ("analysis.json", b'{"format": "ibprobe.analysis/4"}', "run", "keyed by epoch"),
    ("analysis.json", b'{"format": "ibprobe.analysis/5", "settings": []}', "run", "lacks its settings"),
    (f"{POOL1}/result.json", GARBAGE, "run", "result.json is unreadable"),
    (f"{POOL1}/result.json", "half", "run", "result.json is unreadable"),
    (f"{POOL1}/result.json", b"[]", "run", "result.json is not a job result"),
    (f"{POOL1}/result.json", b'{"status": "ok"}', "run", "result.json is not a job result"),
    ("decoders/_unconditional/result.json", GARBAGE, "run", "_unconditional/result.json is unreadable"),
    (f"{POOL1}/test_nll_bits.npy", GARBAGE, "run", "test_nll_bits.npy is unreadable"),
    (f"{POOL1}/test_nll_bits.npy", "half", "run", "test_nll_bits.npy is unreadable"),
    (f"{POOL1}/test_nll_bits.npy", _npy(np.zeros(3)), "run", "not the"),
    ("decoders/_unconditional/test_nll_bits.npy", "half", "run", "_unconditional/test_nll_bits.npy"),
    ("decoders/jobs.json", GARBAGE, "run-job", "jobs.json is damaged"),
    ("decoders/jobs.json", b"[1, 2]", "run-job", "jobs.json is damaged"),
    ("source.json", GARBAGE, "gallery", "source.json is damaged"),
    ("metrics.jsonl", b'not json\n{"epoch": 1}\n', "plot", "metrics.jsonl line 1"),
    ("checkpoints/last.pt", GARBAGE, "run", "last.pt"),
    ("checkpoints/step_00000003.pt", GARBAGE, "run", "other checkpoint content"),
    (f"{POOL1}/decoder.pt", GARBAGE, "gallery", "decoder.pt is damaged"),
]


@pytest.mark.parametrize("rel,content,command,needle", DAMAGED,
                         ids=[f"{c[2]} {c[0]} {'half' if c[1] == 'half' else 'foreign'}" for c in DAMAGED])
def test_a_damaged_file_is_named_in_one_line(finished, tmp_path, capsys, rel, content, command, needle):
    run = _copy(finished, tmp_path)
    p = run / rel
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2] if content == "half" else content)
    before = digest(run)
    argv = {"run": ["run", "--out", str(run), *TRAIN, *TINY], "run-job": ["run-job", str(run), "pool@1"],
            "plot": ["plot", str(run), "--quiet"],
            "gallery": ["gallery", str(run), "--n-images", "1", "--samples", "1", "--quiet"]}[command]
    line = one_line(capsys, main(argv), needle)
    assert "delete" in line or "rerun" in line or "restore" in line or "use a new --out" in line, line
    assert digest(run) == before  # nothing else was touched
    assert not temps(run)


@pytest.mark.parametrize("key,value,needle", [("mixture_codes", "x", "pinned settings"),
                                                ("seed", "x", "pinned settings"),
                                                ("init_epochs", "x", "init_epochs must be an integer"),
                                                ("init_epochs", 0, "init_epochs must be an integer >= 1")])
def test_a_damaged_pinned_setting_is_one_line(finished, tmp_path, capsys, key, value, needle):
    run = _copy(finished, tmp_path)
    p = run / "analysis.json"
    meta = json.loads(p.read_text())
    meta["settings"][key] = value
    p.write_text(json.dumps(meta))
    before = digest(run)
    one_line(capsys, main(["plan", "--run", str(run), "--quiet"]), needle)
    assert digest(run) == before


def test_a_result_made_from_other_inputs_is_never_measured(finished, tmp_path, capsys):
    run = _copy(finished, tmp_path)
    p = run / POOL1 / "result.json"
    res = json.loads(p.read_text())
    res["inputs"]["checkpoint"] = "0" * 32
    p.write_text(json.dumps(res))
    before = digest(run)
    one_line(capsys, rerun(run), "was made from other inputs", "checkpoint", "delete")
    assert digest(run) == before


def test_a_damaged_q0_stops_the_jobs_that_start_from_it_without_failing_them(finished, tmp_path, capsys):
    run = _copy(finished, tmp_path)
    shutil.rmtree(run / POOL1)
    (run / "decoders" / "_unconditional_init" / "decoder.pt").write_bytes(GARBAGE)
    one_line(capsys, rerun(run), "_unconditional_init/decoder.pt is damaged", "delete")
    assert not (run / POOL1 / "failed.json").exists()  # a damaged input is not the job's failure
    p = run / POOL1 / "failed.json"  # and a damaged failed.json is named too
    p.write_bytes(GARBAGE)
    one_line(capsys, rerun(run), "failed.json is unreadable")


REBUILT = [  # damage that a rerun repairs, to the same numbers
    ("config.json", GARBAGE), ("config.json", "half"), ("metrics.jsonl", "half"), ("analysis/mi.csv", GARBAGE),
    ("activations/step_00000003/manifest.json", GARBAGE), ("activations/step_00000003/pool/test.npy", "half"),
    ("activations/step_00000000/pool/fit.npy", GARBAGE), (f"{POOL1}/fit_state.pt", GARBAGE),
]


@pytest.mark.parametrize("rel,content", REBUILT,
                         ids=[f"{r} {'half' if c == 'half' else 'garbage'}" for r, c in REBUILT])
def test_what_can_be_rebuilt_is_rebuilt_to_the_same_numbers(finished, tmp_path, capsys, rel, content):
    run = _copy(finished, tmp_path)
    if rel.endswith("fit_state.pt"):  # a killed job's resume point: the job is pending again
        (run / POOL1 / "result.json").unlink()
    p = run / rel
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2] if content == "half" else content)
    for leftover in ("decoders/.jobs.json.1x2y.tmp", "activations/step_00000003/pool/.fit.npy.3z.tmp",
                     "checkpoints/.last.pt.9q.tmp", ".analysis.json.7k.tmp"):  # what a kill -9 leaves
        (run / leftover).write_bytes(b"partial")
    assert rerun(run) == 0, capsys.readouterr().err[-2000:]
    assert numbers(run) == numbers(finished)
    for same in ("config.json", "metrics.jsonl"):
        assert (run / same).read_bytes() == (finished / same).read_bytes()
    assert not temps(run)


# ------------------------------------------------------------------------------------------------ the disk
@pytest.mark.parametrize("fail_at", [0, 3, 5, 9, 12, 13, 14])
def test_a_full_disk_is_one_line_leaves_no_temp_files_and_a_rerun_finishes(finished, tmp_path, capsys,
                                                                          monkeypatch, fail_at):
    """The fail_at-th durable write of a rerun (that must capture and fit again) finds the disk full."""
    run = _copy(finished, tmp_path)
    shutil.rmtree(run / POOL1)
    shutil.rmtree(run / "activations" / "step_00000003")
    before = digest(run)
    calls = {"n": 0}
    real = os.fsync

    def fsync(fd):
        calls["n"] += 1
        if calls["n"] > fail_at:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    one_line(capsys, rerun(run), "No space left on device", str(run))
    monkeypatch.setattr(os, "fsync", real)
    assert not temps(run)
    after = digest(run)
    assert all(after.get(k) == v for k, v in before.items()), "a finished file changed"
    assert not (run / POOL1 / "failed.json").exists()  # a full disk never fails a job for good
    assert rerun(run) == 0 and numbers(run) == numbers(finished) and not temps(run)


def test_a_read_only_folder_is_one_line(finished, tmp_path, capsys, monkeypatch):
    run = _copy(finished, tmp_path)
    shutil.rmtree(run / POOL1)
    before = digest(run)

    def refuse(*a, dir=None, **k):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), dir)

    monkeypatch.setattr(tempfile, "mkstemp", refuse)  # every atomic write starts with a temp file beside its target
    one_line(capsys, rerun(run), "Permission denied", str(run), "writable")
    monkeypatch.undo()
    assert digest(run) == before
    if os.geteuid() != 0:  # the real thing, where permissions bind (root ignores them)
        for d in [run, *(p for p in run.rglob("*") if p.is_dir())]:
            d.chmod(0o555)
        try:
            one_line(capsys, rerun(run), str(run))
            one_line(capsys, main(["train", "--out", str(run / "sub" / "x"), "--train", "epochs=0"]), str(run))
        finally:
            for d in [run, *(p for p in run.rglob("*") if p.is_dir())]:
                d.chmod(0o755)
        assert digest(run) == before


# ------------------------------------------------------------------------------------------------ changed inputs
def test_changed_checkpoint_content_is_refused_and_the_folder_kept(finished, tmp_path, capsys):
    """A1: other weights saved as a checkpoint the folder has results for."""
    run = _copy(finished, tmp_path)
    ck = torch.load(run / "checkpoints" / "step_00000000.pt", weights_only=True)
    ck["epoch"], ck["step"] = 1.0, LAST
    torch.save(ck, run / "checkpoints" / "step_00000003.pt")
    before = digest(run)
    one_line(capsys, rerun(run), "other checkpoint content", f"step {LAST}", "step_00000003.pt")
    assert digest(run) == before


def test_an_analysis_keeps_its_inputs_and_a_folder_without_results_takes_new_ones(finished, tmp_path, capsys):
    """A1 and A2 on `analyze`: another checkpoint file for epoch 1, another --normalize. Each is refused while the
    folder holds results; without results, the folder takes them and every job is made from them."""
    from ibprobe.data import load_dataset

    ds = load_dataset("digits")
    np.save(tmp_path / "x.npy", ds.images[:80])
    np.save(tmp_path / "y.npy", ds.labels[:80])
    out = tmp_path / "S"
    ckpts = [str(finished / "checkpoints" / f"step_{s:08d}.pt") for s in (0, LAST)]
    base = ["analyze", *NET, "--images", str(tmp_path / "x.npy"), "--labels", str(tmp_path / "y.npy"), "--levels",
            "17", "--out", str(out), *TINY]
    assert main([*base, "--checkpoints", *ckpts]) == 0
    before = digest(out)
    other = torch.load(ckpts[0], weights_only=True)
    other["epoch"], other["step"] = 1.0, LAST
    torch.save(other, tmp_path / "e1.pt")
    one_line(capsys, main([*base, "--checkpoints", str(tmp_path / "e1.pt")]), "other checkpoint content", "e1.pt")
    one_line(capsys, main([*base, "--checkpoints", *ckpts, "--normalize", "0.5,0.01"]), "normalize")
    assert digest(out) == before
    assert main([*base, "--checkpoints", *ckpts]) == 0 and digest(out) == before  # the same request: nothing to do

    shutil.rmtree(out / "decoders")
    shutil.rmtree(out / "analysis")
    assert main([*base, "--checkpoints", *ckpts, "--normalize", "0.5,0.01"]) == 0
    source, ds = open_source(out)
    assert source.normalize == ((0.5,), (0.01,))
    settings, _, _ = read_pinned(out)
    x_test = ds.images[decoder_split(ds, settings.decoder_data, settings.seed)[1]]
    pinned = read_inputs(out)["checkpoints"]
    plain = ModelSource(**{**source.__dict__, "normalize": None})
    for st in (0, LAST):  # every job was made from the normalised codes, none from the old ones
        codes = json.loads((out / "decoders" / "pool" / f"step_{st:08d}" / "result.json").read_text())["inputs"]["codes"]
        assert codes["test"] == codes_key(x_test, source, pinned[str(st)]) != codes_key(x_test, plain, pinned[str(st)])


# ------------------------------------------------------------------------------------------------ two processes
def test_a_folder_held_by_an_analysis_refuses_other_settings(finished, tmp_path, capsys):
    """A3, deterministically: while one analysis holds a folder without results, another with other decoder settings
    is refused in one line (and one with the same settings would share the work)."""
    run = _copy(finished, tmp_path)
    shutil.rmtree(run / "decoders")
    shutil.rmtree(run / "analysis")
    settings, spec, layers = read_pinned(run)
    source, _ = source_from_run(run)

    with claim(run, settings, spec, layers, source_inputs(source, run)):
        one_line(capsys, rerun(run, "--decoder", "nr_filters=5"), "another process is analysing",
                 "nr_filters: 4 -> 5")
    assert read_pinned(run)[0].decoder.nr_filters == 4


def test_two_processes_with_other_settings_at_once_one_wins(finished, tmp_path):
    """A3 for real: two `ibprobe run` at once on a folder without results, with other --decoder values. Exactly one
    wins; the other is refused in one line; every decoder in the folder is the winner's."""
    run = _copy(finished, tmp_path)
    shutil.rmtree(run / "decoders")
    shutil.rmtree(run / "analysis")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "ibprobe", "run", "--out", str(run), *TRAIN, *TINY]
    procs = [subprocess.Popen([*cmd, "--decoder", f"nr_filters={k}"], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for k in (4, 5)]
    errs = [p.communicate(timeout=300)[1] for p in procs]
    rcs = sorted(p.returncode for p in procs)
    assert rcs == [0, 2], errs
    loser = errs[[p.returncode for p in procs].index(2)].strip().splitlines()
    assert len(loser) == 1 and ("another process is analysing" in loser[0] or "already holds results" in loser[0])
    winner = read_pinned(run)[0].decoder_id
    made = {json.loads(p.read_text())["decoder"] for p in run.rglob("result.json")}
    assert made == {winner}


# ------------------------------------------------------------------------------------------------ a failed first run
def test_a_failed_first_run_binds_nothing(tmp_path, capsys):
    """B1 and B2: a first `run` or `train` that fails leaves no settings or config that refuse the corrected one."""
    out = tmp_path / "T"
    one_line(capsys, main(["train", "--out", str(out), "--model", "nosuch", "--train", "epochs=0", "max_train=60",
                           "--quiet"]), "nosuch")
    (out / "config.json").parent.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps({"model": "nosuch"}))  # as an older version left it
    assert main(["train", "--out", str(out), "--train", "epochs=0", "max_train=60", "--quiet"]) == 0
    assert json.loads((out / "config.json").read_text())["model"] == "resnet"
    one_line(capsys, main(["run", "--out", str(tmp_path / "R"), *TRAIN, *TINY[:2], "--decoder", "nr_filters=0"]),
             "nr_filters")
    assert not (tmp_path / "R").exists()
    cfg = AnalysisConfig(layers=("pool",), decoder={"nr_filters": 0})
    with pytest.raises(Exception, match="nr_filters"):
        cfg.settings((1, 8, 8), 17)
