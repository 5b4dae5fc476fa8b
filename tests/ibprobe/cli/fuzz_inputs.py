"""What the fuzz suite feeds `ibprobe` (tests/ibprobe/cli/fuzzing.py): command lines built from the parser itself,
and damaged inputs (image and label arrays, checkpoints, run-folder files).

Every generated input is a small readable recipe (an argv with placeholders, or a frozen dataclass), and
`Workspace` turns it into files. A failure that the long profile finds is pinned by pasting its recipe into an
`@example(...)` of the property.

Placeholders in command lines: {F} a fresh copy of a finished run folder, {T} a new folder, {CK} one of its
checkpoints, {X} {Y} digits images and labels (.npy), {NPZ} both in one .npz, {BYO} a user model file's callable,
{BYOCK} a checkpoint of it, {FILE} a text file, {DIR} an empty folder, {MISSING} a path that does not exist,
{UNREADABLE} a file without read permission, {BENCH} a bench file for `plan`.
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import json
import pickle
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from hypothesis import strategies as st

from decoders import DecoderConfig, FitConfig
from ibprobe.cli import build_parser
from ibprobe.config import TrainConfig

# ------------------------------------------------------------------------------------------------ command lines
TRAIN = ["--train", "epochs=1", "checkpoint_epochs=0,1", "max_train=150"]
TINY = ["--layers", "pool", "--decoder", "nr_resnet=1", "nr_filters=4", "nr_mix=1", "--fit", "epochs=1",
        "--reference", "plain", "--no-probe", "--jobs", "1", "--no-figures", "--quiet"]
NET = ["--model", "resnet", "--model-arg", "widths=16,32,64", "blocks=1,1,1"]
BYO = ["--model", "{BYO}", "--model-arg", "width=4"]

# One or more valid, tiny command lines per command: a mutation makes them hostile. Each stops at its first heavy
# work (the fuzz property patches training, capture, fitting, sampling and drawing to stop there).
BASES: dict[str, list[list[str]]] = {
    "run": [["run", "--out", "{T}", *TRAIN, *TINY], ["run", "--out", "{F}", *TRAIN, *TINY]],
    "train": [["train", "--out", "{T}", "--train", "epochs=1", "max_train=100", "--quiet"],
              ["train", "--out", "{T}", "--images", "{X}", "--labels", "{Y}", "--levels", "17", "--quiet"]],
    "layers": [["layers", "--model", "resnet"], ["layers", "--run", "{F}"],
               ["layers", *BYO, "--in-shape", "1,8,8", "--num-classes", "10"]],
    "capture": [["capture", "--run", "{F}", "--layers", "pool", "--quiet"]],
    "analyze": [["analyze", *NET, "--checkpoints", "{CK}", "--dataset", "digits", "--out", "{T}", *TINY],
                ["analyze", *BYO, "--checkpoints", "{BYOCK}", "--images", "{X}", "--labels", "{Y}", "--levels", "17",
                 "--out", "{T}", *TINY]],
    "run-job": [["run-job", "{F}", "pool@1", "--quiet"], ["run-job", "{F}", "--task", "0", "--quiet"]],
    "plan": [["plan", "--run", "{F}", "--bench", "{BENCH}", "--quiet"],
             ["plan", "--preset", "digits-quick", "--bench", "{BENCH}", "--quiet"]],
    "plot": [["plot", "{F}", "--quiet"]],
    "gallery": [["gallery", "{F}", "--n-images", "1", "--samples", "1", "--quiet"]],
    "validate": [["validate", "--quick", "--quiet"]],
    "bench": [["bench", "decoder", "--image-shape", "1,8,8", "--levels", "17", "--quiet"]],
    "hessian": [["hessian", "--linear", "--depths", "1..2", "--width", "2", "--out", "{T}"],
                ["hessian", "--run", "{F}", "--k", "2", "--batch", "8", "--out", "{T}", "--quiet"]],
    "complexity": [["complexity", "--run", "{F}", "--batch", "16", "--out", "{T}", "--quiet"],
                   ["complexity", *BYO, "--checkpoints", "{BYOCK}", "--images", "{X}", "--labels", "{Y}",
                    "--levels", "17", "--out", "{T}", "--quiet"]],
}

PATHS = ["{F}", "{T}", "{CK}", "{X}", "{Y}", "{NPZ}", "{FILE}", "{DIR}", "{MISSING}", "{UNREADABLE}",
         "{F}/config.json", "{F}/analysis/mi.csv", "{DIR}/{MISSING}"]
HOSTILE = ["", " ", "abc", "-1", "0", "1", "2", "1.5", "2.0", "1e3", "-0", "nan", "inf", "-inf", "1e309", "0x10",
           str(2**31), str(2**63 - 1), str(2**63), str(2**64), str(-2**63), str(10**9), str(10**30), "٣", "None",
           "true", "false", "a,b", ",", ",,", "1,2,3", "1,,2", "0,1.5", "-1,2", "..", "../x", "a b", "a=b",
           "x" * 300, "x" * 5000, "é", "\t1", "1\n2", "%s", "{}", "[]", "*", "?", "~"]
KV_KEYS = {
    "train": [f.name for f in dataclasses.fields(TrainConfig)],
    "decoder": [f.name for f in dataclasses.fields(DecoderConfig)],
    "fit": [f.name for f in dataclasses.fields(FitConfig)],
    "model_arg": ["widths", "blocks", "strides", "shortcut_depth", "init", "batchnorm", "width", "num_classes",
                  "in_channels", "in_shape", "transient_widths", "weights"],
    "ray": ["num_cpus", "num_gpus", "max_retries", "memory", "resources"],
    "slurm": ["partition", "timeout_min", "gpus_per_node", "cluster", "mem_gb", "cpus_per_task"],
}
KEYS_EXTRA = ["nosuch", "", "-", "a-b", "Widths", "__class__"]


@lru_cache(maxsize=1)
def commands() -> dict[str, argparse.ArgumentParser]:
    """{command: its subparser}, read from `ibprobe`'s own parser."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def actions(command: str) -> list[argparse.Action]:
    return [a for a in commands()[command]._actions if not isinstance(a, argparse._HelpAction)]


def scalar_text() -> st.SearchStrategy[str]:
    """One hostile token: a wrong type, an out-of-range or extreme number, an empty or huge string."""
    text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12)
    return st.one_of(st.sampled_from(HOSTILE), st.integers(-2**70, 2**70).map(str),
                     st.floats(allow_nan=True, allow_infinity=True).map(repr), text)


def token(command: str, action: argparse.Action) -> st.SearchStrategy[str]:
    """A value for one option, from what the parser says it takes (choices, K=V, a path, a number)."""
    if action.dest in KV_KEYS:
        keys = st.sampled_from(KV_KEYS[action.dest] + KEYS_EXTRA)
        return st.one_of(st.builds(lambda k, v: f"{k}={v}", keys, scalar_text()), scalar_text())
    if action.choices:
        return st.one_of(st.sampled_from(sorted(map(str, action.choices))), scalar_text())
    return st.one_of(scalar_text(), st.sampled_from(PATHS))


def values(command: str, action: argparse.Action) -> st.SearchStrategy[list[str]]:
    if action.nargs == 0:
        return st.just([])
    if action.nargs in (None, "?"):
        return st.lists(token(command, action), min_size=0 if action.nargs == "?" else 1, max_size=1)
    if action.nargs == argparse.REMAINDER:  # the flags of `bench decoder`, from its own parser
        from decoders.tools.bench import build_parser as bench_parser
        opts = sorted(o for a in bench_parser()._actions for o in a.option_strings if o.startswith("--")
                      and o != "--help")
        return st.lists(st.one_of(token(command, action), st.sampled_from(opts + ["--x"])), max_size=6)
    return st.lists(token(command, action), min_size=0, max_size=3)  # +, *, N: 0 values is an error for +


@st.composite
def mutation(draw, command: str) -> tuple:
    """(kind, option, values): set an option (replacing the base's), add it once more, drop it, or add a stray
    token; kinds and options come from the command's parser."""
    acts = actions(command)
    action = draw(st.sampled_from(acts))
    kind = draw(st.sampled_from(["set", "set", "set", "add", "drop"]) if action.option_strings else
                st.sampled_from(["positional", "drop"]))
    opt = draw(st.sampled_from(action.option_strings)) if action.option_strings else action.dest
    vals = [] if kind == "drop" else draw(values(command, action))
    return kind, opt, tuple(vals)


def _span(argv: list[str], i: int, action: argparse.Action) -> int:
    """The index after option argv[i] and its values."""
    j = i + 1
    if action.nargs == 0:
        return j
    if action.nargs in (None, "?"):
        return min(j + 1, len(argv)) if j < len(argv) and not argv[j].startswith("--") else j
    while j < len(argv) and not argv[j].startswith("--"):
        j += 1
    return j


def apply_mutation(argv: list[str], command: str, m: tuple) -> list[str]:
    kind, opt, vals = m
    action = next(a for a in actions(command) if opt in a.option_strings or opt == a.dest)
    argv = list(argv)
    if kind == "positional":
        first = next(a for a in actions(command) if not a.option_strings)
        has_first = argv[1:2] and not argv[1].startswith("--")
        if action is first:  # it follows the command: replace it
            return [argv[0], *vals, *argv[2 if has_first else 1:]]
        at = 2 if has_first else 1  # a later one (job ids, the flags of `bench decoder`): after the first
        return [*argv[:at], *vals, *argv[at:]]
    if kind in ("set", "drop"):
        i = 0
        while i < len(argv):
            if argv[i] in action.option_strings:
                argv = argv[:i] + argv[_span(argv, i, action):]
            else:
                i += 1
    if kind in ("set", "add"):
        argv += [opt, *vals]
    return argv


@st.composite
def command_line(draw) -> tuple[str, ...]:
    """A base command line of any command with one to three mutations."""
    command = draw(st.sampled_from(sorted(BASES)))
    argv = list(draw(st.sampled_from(BASES[command])))
    for m in draw(st.lists(mutation(command), min_size=1, max_size=3)):
        argv = apply_mutation(argv, command, m)
    if draw(st.booleans()) and "--quiet" not in argv and any("--quiet" in a.option_strings for a in actions(command)):
        argv.append("--quiet")
    return tuple(argv)


# ------------------------------------------------------------------------------------------------ arrays
CONTAINERS = ["npy", "npy", "npy", "npz", "npz-key", "npz-two", "npz-none", "pickle-npy", "pickle", "truncated",
              "header-lies", "raw", "empty", "text", "torch", "folder", "missing"]
DTYPES = ["uint8", "uint8", "int64", "int8", "int16", ">i4", "<u2", "uint32", "uint64", "bool", "float16",
          "float32", "float64", "complex64", "object", "U3", "S2", "M8[s]", "m8[s]", "V2", "[('a','u1')]"]
SPECIALS = [-1, 0, 1, 16, 17, 255, 256, 2**31, 2**63 - 1, 2**63, 2**64 - 1, -2**63, 10**9, float("nan"),
            float("inf"), -0.5, 1.5, None, "x"]


@dataclass(frozen=True)
class ArrayFile:
    """How to make one --images or --labels file from the digits arrays: its container, dtype, shape (None: the
    natural one), values set at flat positions ((fraction of the size, value), ...) and, for a truncated file,
    the fraction of its bytes that is kept."""

    container: str = "npy"
    dtype: str = "natural"
    shape: tuple | None = None
    fill: tuple = ()
    keep: float = 0.5
    key: str | None = None  # --images-key / --labels-key, where given

    def array(self, base: np.ndarray) -> np.ndarray:
        a = np.array(base)
        if self.shape is not None:
            a = np.resize(a, self.shape) if a.size and int(np.prod(self.shape)) else np.zeros(self.shape, a.dtype)
        if self.dtype != "natural":
            dt = np.dtype([("a", "u1")]) if self.dtype.startswith("[(") else np.dtype(self.dtype)
            try:
                a = a.astype(dt)
            except (TypeError, ValueError):
                a = np.zeros(a.shape, dt)
        a = np.array(a)  # writable
        for frac, v in self.fill:
            if a.size:
                try:
                    with np.errstate(all="ignore"):  # an overflow is the point: 2**63 into int8 wraps
                        a.flat[int(frac * a.size)] = v
                except (TypeError, ValueError, OverflowError):
                    pass
        return a

    def write(self, path: Path, base: np.ndarray) -> None:
        """Make the file at `path` from `base` (the natural digits images or labels)."""
        a, c = self.array(base), self.container
        if path.is_file():
            path.unlink()
        if c == "missing":
            return
        if c == "folder":
            path.mkdir()
            return
        simple = a if a.dtype != object else a.astype(np.uint8, casting="unsafe") if a.dtype.kind != "O" else \
            np.zeros(a.shape, np.uint8)
        buf = io.BytesIO()
        if c in ("npy", "truncated", "raw", "text", "empty"):
            np.save(buf, a, allow_pickle=True)
        elif c == "pickle-npy":
            np.save(buf, a.astype(object), allow_pickle=True)
        elif c == "pickle":
            pickle.dump(a, buf)
        elif c == "header-lies":  # a header that declares far more data than the file holds
            np.lib.format.write_array_header_1_0(buf, {"descr": np.lib.format.dtype_to_descr(simple.dtype),
                                                       "fortran_order": False, "shape": (10**10, *simple.shape[1:])})
            buf.write(simple.tobytes())
        elif c == "npz":
            np.savez(buf, a)
        elif c == "npz-key":
            np.savez(buf, x=a)
        elif c == "npz-two":
            np.savez(buf, x=a, y=a)
        elif c == "npz-none":
            np.savez(buf)
        elif c == "torch":
            try:
                torch.save(torch.as_tensor(simple), buf)
            except (TypeError, RuntimeError, ValueError):  # a dtype torch has not (uint32, big-endian)
                torch.save({"x": 1}, buf)
        data = buf.getvalue()
        if c == "truncated":
            data = data[: int(len(data) * self.keep)]
        elif c == "raw":  # what np.memmap or tofile leaves: the bytes without a header
            data = simple.tobytes()
        elif c == "empty":
            data = b""
        elif c == "text":
            data = b"1,2,3\n4,5,6\n"
        path.write_bytes(data)


def shapes(role: str) -> st.SearchStrategy[tuple | None]:
    n = st.sampled_from([0, 1, 2, 3, 5, 40, 120])
    side = st.sampled_from([0, 1, 2, 8, 9])
    rank = {"images": [st.tuples(n, st.sampled_from([1, 3, 4]), side, side), st.tuples(n, side, side),
                       st.tuples(n, side, side, st.sampled_from([1, 3])), st.tuples(n), st.tuples(),
                       st.tuples(n, st.just(1), side, side, st.just(1))],
            "labels": [st.tuples(n), st.tuples(n, st.just(1)), st.tuples(), st.tuples(n, st.just(2))]}[role]
    return st.one_of(st.none(), st.none(), *rank)


def array_files(role: str) -> st.SearchStrategy[ArrayFile]:
    """Half of them a valid array with one thing wrong (or none), the others anything."""
    fill = st.tuples(st.floats(0, 1, exclude_max=True), st.sampled_from(SPECIALS))
    anything = st.builds(ArrayFile, container=st.sampled_from(CONTAINERS),
                         dtype=st.one_of(st.just("natural"), st.sampled_from(DTYPES)), shape=shapes(role),
                         fill=st.lists(fill, max_size=3).map(tuple), keep=st.floats(0, 1),
                         key=st.sampled_from([None, None, "x", "nosuch"]))
    one_wrong = st.one_of(st.just(ArrayFile()), st.builds(ArrayFile, container=st.sampled_from(CONTAINERS)),
                          st.builds(ArrayFile, dtype=st.sampled_from(DTYPES)), st.builds(ArrayFile, shape=shapes(role)),
                          st.builds(ArrayFile, fill=st.lists(fill, min_size=1, max_size=1).map(tuple)))
    return st.one_of(one_wrong, anything)


# ------------------------------------------------------------------------------------------------ checkpoints
WRAPPERS = ["raw", "model", "state_dict", "model_state_dict", "ours", "net", "nested", "list", "tensor", "none",
            "empty-dict"]
PREFIXES = ["", "", "module.", "model.", "_orig_mod.", "module.model.", "x."]
EDITS = ["drop", "extra", "shape", "empty", "dtype", "nan", "not-a-tensor", "int-key", "scalar"]
CK_CONTAINERS = ["torch", "torch", "torch", "legacy", "truncated", "garbage", "empty", "pickled-object", "numpy",
                 "folder", "json"]
CK_NAMES = ["ck.pt", "epoch_7.pt", "e-3.pt", f"epoch_{10**20}.ckpt", "1e5.pth", "ck.bin"]
EPOCHS = ["absent", 3, -1, 0, 2**63, 10**12, 1.5, float("nan"), "7", None, True, [1]]


@dataclass(frozen=True)
class Checkpoint:
    """How to make one checkpoint of the user model: its wrapper ({'model': sd}, Lightning's {'state_dict': sd},
    ours, ...), a key prefix, edits of its tensors ((edit, which tensor as a fraction), ...), its 'epoch' entry,
    the file's container and name."""

    wrapper: str = "raw"
    prefix: str = ""
    edits: tuple = ()
    epoch: object = "absent"
    container: str = "torch"
    name: str = "ck.pt"
    keep: float = 0.5

    def content(self, sd: dict) -> object:
        sd = {self.prefix + k: v.clone() for k, v in sd.items()}
        dtypes = [torch.float16, torch.float64, torch.int64, torch.bool, torch.complex64, torch.bfloat16, torch.uint8]
        for edit, frac in self.edits:
            keys = sorted(k for k in sd if isinstance(k, str))
            if not keys:
                break
            k = keys[int(frac * len(keys))]
            v = sd[k]
            if not isinstance(v, torch.Tensor):  # an earlier edit made it a str, an int or None
                v = torch.zeros(1)
            if edit == "drop":
                del sd[k]
            elif edit == "extra":
                sd[self.prefix + "extra.weight"] = torch.zeros(3)
            elif edit == "shape":
                sd[k] = torch.zeros(v.numel() + 1)
            elif edit == "empty":
                sd[k] = torch.zeros(0)
            elif edit == "dtype":
                sd[k] = v.to(dtypes[int(frac * 1000) % len(dtypes)])
            elif edit == "nan":
                sd[k] = torch.full_like(v, float("nan")) if v.is_floating_point() else v
            elif edit == "not-a-tensor":
                sd[k] = ["x", 3, None][int(frac * 1000) % 3]
            elif edit == "int-key":
                sd[7] = v
            elif edit == "scalar":
                sd[k] = torch.tensor(1.0)
        wrap = {"raw": lambda: sd, "model": lambda: {"model": sd}, "state_dict": lambda: {"state_dict": sd},
                "model_state_dict": lambda: {"model_state_dict": sd}, "net": lambda: {"net": sd},
                "ours": lambda: {"model": sd, "epoch": 1, "step": 10, "optimizer": {}, "metrics": {},
                                 "config": {"model": "resnet", "model_args": {}, "in_shape": [1, 8, 8],
                                            "num_classes": 10}},
                "nested": lambda: {"model": {"model": sd}}, "list": lambda: [sd], "tensor": lambda: torch.zeros(3),
                "none": lambda: None, "empty-dict": lambda: {}}
        obj = wrap[self.wrapper]()
        if self.epoch != "absent" and isinstance(obj, dict):
            obj["epoch"] = self.epoch
        return obj

    def write(self, path: Path, sd: dict) -> None:
        """Make the checkpoint at `path` from the user model's state dict `sd`."""
        c = self.container
        if c == "folder":
            path.mkdir()
            return
        obj = self.content(sd)
        buf = io.BytesIO()
        if c in ("torch", "truncated"):
            torch.save(obj, buf)
        elif c == "legacy":
            torch.save(obj, buf, _use_new_zipfile_serialization=False)
        elif c == "pickled-object":  # a class that only a full unpickler would rebuild
            torch.save({"model": sd, "args": argparse.Namespace(lr=0.1)}, buf)
        elif c == "numpy":
            np.save(buf, np.zeros(3))
        elif c == "json":
            buf.write(json.dumps({"model": {"w": [1, 2]}}).encode())
        elif c == "garbage":
            buf.write(b"PK\x03\x04garbage\x00" * 3)
        data = buf.getvalue()
        if c == "truncated":
            data = data[: int(len(data) * self.keep)]
        path.write_bytes(data)


def checkpoints() -> st.SearchStrategy[Checkpoint]:
    """Half of them a valid checkpoint with one thing changed (or none), the others anything."""
    edit = st.tuples(st.sampled_from(EDITS), st.floats(0, 1, exclude_max=True))
    anything = st.builds(Checkpoint, wrapper=st.sampled_from(WRAPPERS), prefix=st.sampled_from(PREFIXES),
                         edits=st.lists(edit, max_size=2).map(tuple), epoch=st.sampled_from(EPOCHS),
                         container=st.sampled_from(CK_CONTAINERS), name=st.sampled_from(CK_NAMES), keep=st.floats(0, 1))
    one = st.one_of(st.just(Checkpoint()), st.builds(Checkpoint, wrapper=st.sampled_from(WRAPPERS)),
                    st.builds(Checkpoint, prefix=st.sampled_from(PREFIXES)),
                    st.builds(Checkpoint, edits=st.lists(edit, min_size=1, max_size=1).map(tuple)),
                    st.builds(Checkpoint, epoch=st.sampled_from(EPOCHS), wrapper=st.just("model")),
                    st.builds(Checkpoint, container=st.sampled_from(CK_CONTAINERS)),
                    st.builds(Checkpoint, name=st.sampled_from(CK_NAMES)))
    return st.one_of(one, anything)


# ------------------------------------------------------------------------------------------------ run folders
RUN_FILES = ["config.json", "metrics.jsonl", "source.json", "analysis.json", "checkpoints/epoch_0000.pt",
             "checkpoints/epoch_0001.pt", "checkpoints/last.pt", "activations/epoch_0001/manifest.json",
             "activations/epoch_0001/pool/test.npy", "activations/epoch_0000/pool/fit.npy", "decoders/jobs.json",
             "decoders/pool/epoch_0001/result.json", "decoders/pool/epoch_0001/test_nll_bits.npy",
             "decoders/pool/epoch_0001/decoder.pt", "decoders/pool/epoch_0001/fit_log.json",
             "decoders/_unconditional/result.json", "decoders/_unconditional/test_nll_bits.npy",
             "decoders/_unconditional/decoder.pt", "decoders/_unconditional_init/decoder.pt",
             "decoders/_unconditional_init/result.json", "analysis/mi.csv", "analysis/changes.csv",
             "analysis/baselines.csv"]
def on_disk(folder: Path, rel: str) -> str:
    """`rel` with its checkpoint placeholder epoch_0000 / epoch_0001 named as on disk: the folder's first / second
    checkpoint by optimizer step (step_XXXXXXXX)."""
    steps = sorted(q.stem for q in (folder / "checkpoints").glob("step_*.pt"))
    for i, name in enumerate(("epoch_0000", "epoch_0001")):
        if i < len(steps):
            rel = rel.replace(name, steps[i])
    return rel


DAMAGES = ["truncate", "truncate", "garbage", "empty", "delete", "folder", "json", "field", "field", "field", "npy",
           "swap"]
RUN_COMMANDS = ["run", "run", "plot", "run-job", "gallery", "plan", "capture", "layers", "complexity"]
JSON_VALUES = st.one_of(st.sampled_from([None, -1, 0, 1, 2**63, 10**18, 10**9, -2**63, 1e308, 0.5, "", "x", "nan",
                                         [], {}, [10**9, 10**9, 10**9], [0], True, "../../etc"]),
                        st.integers(), st.text(max_size=8))


@dataclass(frozen=True)
class RunDamage:
    """One damaged file of a finished run folder and the command that then meets it. `where` picks the JSON leaf
    (a dotted path, or a fraction of the sorted leaves) or the other file of a swap; `value` is the new JSON value,
    the kept fraction of a truncated file, or the array of an npy replacement."""

    file: str = "analysis.json"
    damage: str = "truncate"
    where: object = 0.5
    value: object = 0.5
    command: str = "run"

    def apply(self, folder: Path, scratch: Path) -> None:
        """Damage `self.file` of the run folder `folder` (`scratch`: a folder for temporary files)."""
        p = folder / on_disk(folder, self.file)
        d = self.damage
        frac = self.value if isinstance(self.value, float) and 0 <= self.value <= 1 else 0.5
        if d == "field" and p.suffix not in (".json", ".jsonl", ".pt", ".csv"):
            d = "npy" if p.suffix == ".npy" else "truncate"
        if d == "delete":
            p.unlink()
        elif d == "folder":
            p.unlink()
            p.mkdir()
        elif d == "truncate":
            p.write_bytes(p.read_bytes()[: int(p.stat().st_size * frac)])
        elif d == "garbage":
            p.write_bytes(b"garbage\x00{")
        elif d == "empty":
            p.write_bytes(b"")
        elif d == "json":
            p.write_text(json.dumps(self.value if _jsonable(self.value) else None))
        elif d == "npy":
            try:
                base = np.load(p, allow_pickle=False)
            except (OSError, ValueError):
                base = np.zeros(4, np.float32)
            recipe = self.value if isinstance(self.value, ArrayFile) else ArrayFile(fill=((frac, float("nan")),))
            recipe.write(p, base)
        elif d == "swap":
            other = folder / on_disk(folder, self.where if isinstance(self.where, str)
                                     else RUN_FILES[int(self.where * len(RUN_FILES))])
            p.write_bytes(other.read_bytes())
        elif d == "field":
            value = self.value if _jsonable(self.value) else None
            if p.suffix == ".json":
                p.write_text(json.dumps(_set_leaf(json.loads(p.read_text()), self.where, value)))
            elif p.suffix == ".jsonl":
                lines = p.read_text().splitlines()
                i = int(frac * len(lines)) if lines else 0
                if lines:
                    lines[i] = json.dumps(_set_leaf(json.loads(lines[i]), self.where, value))
                p.write_text("\n".join(lines) + "\n")
            elif p.suffix == ".csv":
                rows = p.read_text().splitlines()
                cells = [(r, c) for r in range(1, len(rows)) for c in range(len(rows[r].split(",")))]
                if cells:
                    r, c = cells[int(frac * len(cells))]
                    row = rows[r].split(",")
                    row[c] = str(value)
                    rows[r] = ",".join(row)
                p.write_text("\n".join(rows) + "\n")
            else:  # a torch file: one leaf of its dict
                obj = torch.load(p, weights_only=True)
                torch.save(_set_leaf(obj, self.where, value), p)


def _jsonable(v) -> bool:
    try:
        json.dumps(v, allow_nan=False)
        return True
    except (TypeError, ValueError):
        return False


def _leaves(obj, prefix: tuple = ()) -> list[tuple]:
    if isinstance(obj, dict) and obj:
        return [p for k in sorted(obj, key=str) for p in _leaves(obj[k], (*prefix, k))]
    if isinstance(obj, list) and obj:
        return [p for i, v in enumerate(obj) for p in _leaves(v, (*prefix, i))]
    return [prefix]


def _set_leaf(obj, where, value):
    """`obj` with one leaf set to `value`: the leaf at `where`, a path 'a/b/0', or a fraction of the sorted
    leaves."""
    leaves = _leaves(obj)
    named = {"/".join(map(str, p)): p for p in leaves}
    path = named.get(where) if isinstance(where, str) else leaves[int(float(where) * len(leaves))]
    path = leaves[len(leaves) // 2] if path is None else path
    if not path:
        return value
    node = obj
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return obj


def run_damages() -> st.SearchStrategy[RunDamage]:
    return st.builds(RunDamage, file=st.sampled_from(RUN_FILES), damage=st.sampled_from(DAMAGES),
                     where=st.one_of(st.floats(0, 1, exclude_max=True), st.sampled_from(RUN_FILES)),
                     value=st.one_of(JSON_VALUES, st.floats(0, 1), array_files("labels")),
                     command=st.sampled_from(RUN_COMMANDS))
