"""Property-based fuzzing of every command and file (Hypothesis), run by tests/ibprobe/cli/test_fuzz.py in one
subprocess under an address-space limit, so that a blow-up fails the test rather than the machine:

    python -m tests.ibprobe.cli.fuzzing --profile ci|long [--only NAME ...]

The property, for every generated input: `ibprobe` exits 0 (or reaches its first heavy work: training, capture,
decoder fits, sampling and drawing stop there), or exits 2 with one line that names the input; never a traceback,
never exit 1 for a user error, never a finished folder changed by a command that failed. Commands run in this
process through `ibprobe.cli.main`. The inputs (tests/ibprobe/cli/fuzz_inputs.py): command lines built from the
parser, image and label arrays, checkpoints of the user's model, and damaged run-folder files. Inputs that once
failed stay as `@example`s.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import re
import resource
import shutil
import sys
import time
import traceback
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ibprobe.cli import main
from ibprobe.data import load_dataset
from ibprobe.tools import plan
from tests.helpers import FIXTURES
from tests.ibprobe.cli import fuzz_inputs as fi
from tests.ibprobe.cli.fuzz_inputs import ArrayFile, Checkpoint, RunDamage

ROOT = Path(__file__).resolve().parents[3]
MEMORY_LIMIT = 6 * 2**30  # bytes of address space: torch and matplotlib take about 3.7 GiB of it, the work under 1


class WorkStarted(BaseException):
    """Raised where a command would start its heavy work: everything before it was checked and accepted."""


def _stop(name: str):
    def stop(*args, **kwargs):
        raise WorkStarted(name)
    return stop


def _no_save(self, *args, **kwargs):  # a figure is built and laid out, not encoded
    self.canvas.draw()


HEAVY = ["ibprobe.train._train", "ibprobe.capture.capture_to_store", "ibprobe.jobs.fit_decoder",
         "ibprobe.backends.local.LocalBackend._pool", "ibprobe.backends.ray.RayBackend.run",
         "ibprobe.backends.slurm.SlurmBackend.run", "ibprobe.cli.validate.run_validation",
         "ibprobe.tools.plan.measure_speeds", "ibprobe.tools.plan.measure_startup", "ibprobe.lenses.run.hessian_rows",
         "ibprobe.lenses.run.complexity_rows", "ibprobe.lenses.run.linear_resnet_table",
         "decoders.tools.bench.setup_device"]
SAMPLING = ["ibprobe.sample.sample_decoders", "ibprobe.measure.kid.sample_decoders"]


@contextlib.contextmanager
def stopped_work(sampling: bool = True):
    """Heavy work raises WorkStarted; figures are drawn but not encoded; with `sampling`, sampling stops too."""
    with contextlib.ExitStack() as stack:
        for target in HEAVY + (SAMPLING if sampling else []):
            stack.enter_context(mock.patch(target, _stop(target)))
        import matplotlib.figure
        stack.enter_context(mock.patch.object(matplotlib.figure.Figure, "savefig", _no_save))
        yield


# ------------------------------------------------------------------------------------------------ the workspace
def digest(folder: Path) -> dict[str, str]:
    """{relative path: sha1} of every file (lock files, which hold a pid, left out)."""
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.endswith(".lock")}


class Workspace:
    """The fixed inputs every example starts from, made once: a finished run folder (trained, one layer analysed
    with tiny decoders), digits arrays, a user model file and its checkpoint, odd paths, a bench file."""

    def __init__(self, root: Path):
        self.root = root
        self.fin = root / "fin"
        with contextlib.redirect_stdout(io.StringIO()):
            assert main(["run", "--out", str(self.fin), *fi.TRAIN, *fi.TINY]) == 0
        jobs = plan.jobs_of_run(self.fin) + plan.jobs_of_preset("digits-quick", device="cpu")
        plan.write_bench(root / "bench.json", jobs, {plan.speed_key(j.decoder, j.fit): plan.Speed(0.01, 1e-4)
                                                     for j in jobs}, 1.0, "cpu")
        self.fin_digest = digest(self.fin)
        self.mi = (self.fin / "analysis" / "mi.csv").read_text()
        ds = load_dataset("digits")
        self.x, self.y = ds.images[:120], ds.labels[:120]
        np.save(root / "x.npy", self.x)
        np.save(root / "y.npy", self.y)
        np.savez(root / "xy.npz", x=self.x, y=self.y)
        shutil.copy(FIXTURES / "byo_nets.py", root / "byo_nets.py")
        sys.path.insert(0, str(root))
        from byo_nets import TinyNet  # noqa: E402 - the user's model, as the commands import it
        torch.manual_seed(0)
        self.byo_sd = TinyNet(width=4, in_channels=1).state_dict()
        torch.save(self.byo_sd, root / "byo.pt")
        (root / "file.txt").write_text("not what was asked for\n")
        (root / "dir").mkdir()
        (root / "unreadable").write_bytes(b"\x00" * 64)
        (root / "unreadable").chmod(0)
        (root / "cwd").mkdir()
        self.places = {"{CK}": str(self.fin / fi.on_disk(self.fin, "checkpoints/epoch_0001.pt")), "{X}": str(root / "x.npy"),
                       "{Y}": str(root / "y.npy"), "{NPZ}": str(root / "xy.npz"),
                       "{BYO}": f"{root / 'byo_nets.py'}:TinyNet", "{BYOCK}": str(root / "byo.pt"),
                       "{FILE}": str(root / "file.txt"), "{DIR}": str(root / "dir"),
                       "{MISSING}": str(root / "missing"), "{UNREADABLE}": str(root / "unreadable"),
                       "{BENCH}": str(root / "bench.json")}
        self.n = 0

    @contextlib.contextmanager
    def example(self):
        """A fresh folder for one example, removed after it."""
        self.n += 1
        d = self.root / "ex" / str(self.n)
        d.mkdir(parents=True)
        try:
            yield d
        finally:
            for p in [d, *d.rglob("*")]:
                with contextlib.suppress(OSError):
                    p.chmod(0o755 if p.is_dir() else 0o644)
            shutil.rmtree(d, ignore_errors=True)

    def fill(self, argv, d: Path) -> tuple[list[str], Path | None]:
        """argv with its placeholders filled in, and the copy of the finished folder it uses (if any)."""
        places = {**self.places, "{T}": str(d / "T")}
        copy = None
        if any("{F}" in a for a in argv):
            copy = d / "F"
            shutil.copytree(self.fin, copy, ignore=shutil.ignore_patterns("*.lock"))
            places["{F}"] = str(copy)
        self.last = places
        return [self.sub(a) for a in argv], copy

    def sub(self, text: str) -> str:
        """`text` with the placeholders of the last `fill` filled in."""
        for k, v in self.last.items():
            text = text.replace(k, v)
        return text


WS: Workspace | None = None
COUNTS: dict[str, int] = {}
OUTCOMES: dict[str, dict[str, int]] = {}


# ------------------------------------------------------------------------------------------------ the property
def run_command(argv: list[str]) -> tuple[int | None, str, str]:
    """(exit code, stdout, stderr) of `ibprobe argv` in this process; exit code None where heavy work started."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except WorkStarted:
            rc = None
    return rc, out.getvalue(), err.getvalue()


def check(prop: str, argv: list[str], names, folder: Path | None = None, before: dict | None = None) -> str:
    """Run argv and assert the property; return "ok" (exit 0), "work" (heavy work reached) or "refused" (exit 2).

    A refusal is one line `ibprobe CMD: error: ...` (the only line with --quiet), naming one of `names`; a
    folder given with its digest `before` must be unchanged by it and hold no temp files."""
    rc, out, err = run_command(argv)
    shown = f"argv={argv!r}\nexit {rc}\nstderr: {err[-3000:]}"
    assert "Traceback" not in out + err, shown
    assert rc in (None, 0, 2), f"exit {rc} for a user error\n{shown}"
    kind = {None: "work", 0: "ok", 2: "refused"}[rc]
    OUTCOMES.setdefault(prop, {}).setdefault(kind, 0)
    OUTCOMES[prop][kind] += 1
    if rc != 2:
        return kind
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if ": error: " in line]
    assert len(errors) == 1 and lines[-1] == errors[0], f"not one error line\n{shown}"
    assert errors[0].startswith("ibprobe"), shown
    if "--quiet" in argv:
        assert len(lines) == 1, f"more than the error line with --quiet\n{shown}"
    wanted = [str(n).strip() for n in names if str(n).strip()]
    assert not wanted or any(_names(errors[0], n) for n in wanted), f"the line names none of {wanted[:12]}\n{shown}"
    if folder is not None and before is not None:
        assert digest(folder) == before, f"a failed command changed the folder\n{shown}"
        assert not list(folder.rglob("*.tmp")), f"temp files left\n{shown}"
    return kind


def _names(line: str, name: str) -> bool:
    """Whether `line` names `name`: holds it, a short one (say '0') as a word of its own."""
    parts = [p for p in re.split(r"[-_,/=:. ]+", name) if len(p) >= 4 and not p.isdigit()]
    if any(p.lower() in line.lower() for p in parts):  # 'cifar10-paper' is named by 'cifar10'
        return True
    if len(name) >= 3:
        return name.lower() in line.lower()
    return re.search(rf"(?<![\w.]){re.escape(name)}(?![\w.])", line) is not None


def counted(prop: str) -> None:
    COUNTS[prop] = COUNTS.get(prop, 0) + 1


def _segments(argv) -> list[tuple[str, ...]]:
    """argv cut before every option: [('analyze',), ('--out', 'T'), ('--quiet',), ...]."""
    out: list[list[str]] = []
    for t in argv:
        if t.startswith("--") or not out:
            out.append([t])
        else:
            out[-1].append(t)
    return [tuple(seg) for seg in out]


def argv_names(argv, command: str) -> list[str]:
    """What a refusal of `argv` should name: the options (with their values, and the key and value of a K=V)
    that it adds to, changes in, or drops from the nearest base command line."""
    mine = _segments(argv)
    base = max((_segments(b) for b in fi.BASES[command]), key=lambda b: len(set(b) & set(mine)))
    names = []
    for seg in [s for s in mine if s not in base] + [s for s in base if s not in mine]:
        for t in seg:
            names += [t, *t.split("=", 1)] if "=" in t else [t]
    # or another option it meets (`--bench FILE` has no speeds for the other --preset)
    names += [t for t in argv[1:] if t.startswith("--") or len(t) >= 3]
    return [n.strip()[:60] for n in names]


@given(argv=fi.command_line())
@example(argv=("analyze", *fi.BYO, "--model-arg", "num_classes=abc", "--checkpoints", "{BYOCK}", "--images", "{X}",
               "--labels", "{Y}", "--levels", "17", "--out", "{T}", *fi.TINY))
@example(argv=("capture", "--layers", "pool", "--quiet", "--run", ""))  # an empty path was the current folder
@example(argv=("plan", "--run", "{F}", "--bench", "{BENCH}", "--quiet", "--workers", "2147483648"))  # MemoryError
@example(argv=("hessian", "--depths", "1..2", "--width", "2", "--out", "{T}"))  # the message forgot --linear
@example(argv=("plot", "{F}", "--quiet", "--estimators", ""))  # drew half the figures, then failed
@example(argv=("bench", "decoder", "--x", "--quiet"))  # argparse's usage block
@example(argv=("complexity", "--batch", "16", "--out", "{T}", "--quiet", "--run"))
def fuzz_command_lines(argv):
    """Every command, with options of the wrong type, out of range, empty or huge, odd paths, repeated flags."""
    counted("command_lines")
    with WS.example() as d:
        real, copy = WS.fill(argv, d)
        names = argv_names(argv, argv[0])
        names += [WS.sub(n) for n in names if "{" in n]
        check("command_lines", real, names, copy, WS.fin_digest if copy else None)


@given(images=fi.array_files("images"), labels=st.one_of(st.none(), st.just(ArrayFile()), fi.array_files("labels")),
       command=st.sampled_from(["analyze", "analyze", "train", "complexity"]),
       levels=st.sampled_from(["17", "17", "256", "2"]))
@example(images=ArrayFile(container="npz"), labels=None, command="analyze", levels="17")
@example(images=ArrayFile(), labels=ArrayFile(fill=((0.0, 10**9),)), command="analyze", levels="17")
@example(images=ArrayFile(container="header-lies"), labels=None, command="analyze", levels="17")
@example(images=ArrayFile(), labels=None, command="train", levels="17")  # the message named a flag that is not one
@example(images=ArrayFile(), labels=ArrayFile(dtype="uint64", fill=((0.5, 2**63),)), command="train", levels="17")
@example(images=ArrayFile(), labels=ArrayFile(container="torch", dtype=">i4"), command="analyze", levels="17")
def fuzz_arrays(images, labels, command, levels):
    """--images and --labels of every dtype, rank, shape, value range and container."""
    counted("arrays")
    with WS.example() as d:
        x, y = d / "images.npy", d / "labels.npy"
        images.write(x, WS.x)
        byo = [*fi.BYO, "num_classes=10", "--checkpoints", "{BYOCK}", "--out", "{T}"]
        argv = {"analyze": ["analyze", *byo, *fi.TINY], "complexity": ["complexity", *byo, "--quiet"],
                "train": ["train", "--out", "{T}", "--train", "epochs=1", "--quiet"]}[command]
        argv = argv + ["--images", str(x), "--levels", levels]
        names = [str(x), "--levels", "levels", "--images-key", "num_classes"]
        if images.key:
            argv += ["--images-key", images.key]
        if labels is not None:
            labels.write(y, WS.y)
            argv += ["--labels", str(y)] + (["--labels-key", labels.key] if labels.key else [])
            names += [str(y), "--labels-key"]
        real, _ = WS.fill(argv, d)
        check("arrays", real, names)


@given(ck=fi.checkpoints(), second=st.booleans(), command=st.sampled_from(["analyze", "analyze", "complexity"]))
@example(ck=Checkpoint(wrapper="list"), second=True, command="analyze")  # which checkpoint had no weights?
@example(ck=Checkpoint(edits=(("nan", 0.0),)), second=False, command="analyze")  # "diverged", but which one?
@example(ck=Checkpoint(edits=(("not-a-tensor", 0.0), ("nan", 0.0))), second=False, command="analyze")
def fuzz_checkpoints(ck, second, command):
    """Checkpoints of the user's model in every supported format, with wrong keys, shapes, dtypes and epochs."""
    counted("checkpoints")
    with WS.example() as d:
        path = d / ck.name
        ck.write(path, WS.byo_sd)
        cks = [str(path)] + (["{BYOCK}"] if second else [])
        argv = {"analyze": ["analyze", *fi.BYO, "--checkpoints", *cks, "--images", "{X}", "--labels", "{Y}",
                            "--levels", "17", "--out", "{T}", *fi.TINY],
                "complexity": ["complexity", *fi.BYO, "--checkpoints", *cks, "--images", "{X}", "--labels", "{Y}",
                               "--levels", "17", "--out", "{T}", "--quiet"]}[command]
        real, _ = WS.fill(argv, d)
        check("checkpoints", real, [str(path), path.name, "--checkpoints"])


RUN_ARGV = {"run": ["run", "--out", "{F}", *fi.TRAIN, *fi.TINY], "plot": ["plot", "{F}", "--quiet"],
            "run-job": ["run-job", "{F}", "pool@1", "--quiet"],
            "gallery": ["gallery", "{F}", "--n-images", "1", "--samples", "1", "--quiet"],
            "plan": ["plan", "--run", "{F}", "--bench", "{BENCH}", "--quiet"],
            "capture": ["capture", "--run", "{F}", "--layers", "pool", "--quiet"], "layers": ["layers", "--run", "{F}"],
            "complexity": ["complexity", "--run", "{F}", "--batch", "16", "--quiet"]}


@given(damage=fi.run_damages())
@example(damage=RunDamage(file="activations/epoch_0000/pool/fit.npy", damage="swap", where="checkpoints/epoch_0000.pt",
                          command="plan"))  # a zip where an activation file was: AttributeError
@example(damage=RunDamage(file="config.json", damage="swap", where="checkpoints/epoch_0000.pt", command="plan"))
@example(damage=RunDamage(file="analysis/baselines.csv", damage="garbage", command="plot"))  # drew, then failed
def fuzz_run_folder(damage):
    """A finished folder with one file truncated, replaced, removed or edited, met by every command that reads it."""
    counted("run_folder")
    with WS.example() as d:
        real, copy = WS.fill(RUN_ARGV[damage.command], d)
        damage.apply(copy, d)
        before = digest(copy)
        p = Path(damage.file)
        kind = check("run_folder", real, [p.name, p.parent.name or p.name, str(copy)], copy, before)
        if kind == "ok" and damage.command == "run":  # what a rerun rebuilds, it rebuilds to the same numbers
            assert (copy / "analysis" / "mi.csv").read_text() == WS.mi, f"other numbers after {damage}"


PROPERTIES = {"command_lines": (fuzz_command_lines, 2.0, True), "arrays": (fuzz_arrays, 1.0, True),
              "checkpoints": (fuzz_checkpoints, 0.6, True), "run_folder": (fuzz_run_folder, 0.6, False)}


def peak_rss_mib() -> float:
    text = Path("/proc/self/status").read_text() if Path("/proc/self/status").exists() else ""
    m = re.search(r"VmHWM:\s+(\d+) kB", text)
    return int(m.group(1)) / 1024 if m else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(profile: str, root: Path, only=None) -> dict:
    """Run the properties under `profile`; return the report (examples, outcomes and seconds per property)."""
    global WS
    import tests.conftest  # noqa: F401 - registers the profiles
    settings.load_profile(profile)
    t0 = time.time()
    os.chdir(root)
    WS = Workspace(root)
    os.chdir(root / "cwd")
    report = {"profile": profile, "setup_s": round(time.time() - t0, 1), "properties": {}, "failed": []}
    for name, (prop, weight, sampling) in PROPERTIES.items():
        if only and name not in only:
            continue
        t = time.time()
        n = max(5, int(settings.default.max_examples * weight))
        try:
            with stopped_work(sampling=sampling):
                settings(settings.default, max_examples=n)(prop)()
        except Exception:  # noqa: BLE001 - Hypothesis has printed the falsifying example
            traceback.print_exc()
            report["failed"].append(name)
        report["properties"][name] = {"examples": COUNTS.get(name, 0), "outcomes": OUTCOMES.get(name, {}),
                                      "seconds": round(time.time() - t, 1)}
        print(json.dumps({name: report["properties"][name]}), flush=True)
    report["seconds"] = round(time.time() - t0, 1)
    report["examples"] = sum(p["examples"] for p in report["properties"].values())
    report["peak_rss_mib"] = round(peak_rss_mib())
    report["address_space_limit_mib"] = resource.getrlimit(resource.RLIMIT_AS)[0] // 2**20
    return report


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="ci")
    ap.add_argument("--only", nargs="+", choices=sorted(PROPERTIES))
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--report", help="write the report (JSON) here")
    a = ap.parse_args()
    torch.set_num_threads(1)
    rep = run(a.profile, Path(a.workdir).resolve(), a.only)
    if a.report:
        Path(a.report).write_text(json.dumps(rep))
    print(json.dumps(rep), flush=True)
    sys.exit(1 if rep["failed"] else 0)
