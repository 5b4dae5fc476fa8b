"""The house's layout rules, checked: `decoders` never imports `ibprobe`; no circle of imports; only `ibprobe/report`
imports matplotlib, and only the pipeline and the command line import the report; the report draws from tables and
samples, never from a stage that trains or fits; command modules stay thin; modules are sized by concern."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "decoders").rglob("*.py")) + sorted((ROOT / "ibprobe").rglob("*.py"))


def _module(p: Path) -> str:
    parts = list(p.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, *, runtime_only: bool = False) -> list[str]:
    """Absolute imports of a module; with `runtime_only`, those at module level outside `if TYPE_CHECKING:` (the
    ones that run when it is imported, which make a circle fail)."""
    tree = ast.parse(path.read_text())
    nodes = []
    if runtime_only:
        for node in tree.body:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            nodes += list(ast.walk(node)) if not isinstance(node, (ast.FunctionDef, ast.ClassDef)) else []
    else:
        nodes = list(ast.walk(tree))
    names = []
    for node in nodes:
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
            names += [f"{node.module}.{a.name}" for a in node.names]
    return names


def _rel(p: Path) -> str:
    return str(p.relative_to(ROOT))


MODULES = {_module(p): p for p in SOURCES}


def _graph(runtime_only: bool) -> dict[str, set[str]]:
    return {m: {n for n in _imports(p, runtime_only=runtime_only) if n in MODULES and n != m}
            for m, p in MODULES.items()}


def test_decoders_never_imports_ibprobe():
    bad = [_rel(p) for p in (ROOT / "decoders").rglob("*.py") if any(n.split(".")[0] == "ibprobe" for n in _imports(p))]
    assert not bad, f"decoders must stay independent of ibprobe: {bad}"
    code = ("import sys, decoders, decoders.fitting, decoders.io, decoders.tools.bench, decoders.progress; "
            "from decoders import PixelCNNPP, fit; print(sorted(m for m in sys.modules if m.startswith('ibprobe')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"


def test_no_circle_of_imports():
    """No module imports, directly or through others, a module that imports it (lazy imports included)."""
    graph = _graph(runtime_only=False)
    for start in graph:
        seen, todo = set(), list(graph[start])
        while todo:
            m = todo.pop()
            if m == start:
                pytest.fail(f"{start} imports itself through a circle of imports")
            if m not in seen:
                seen.add(m)
                todo += graph[m]


def test_only_the_report_stage_imports_matplotlib():
    bad = [_rel(p) for p in SOURCES if "report" not in p.parts and any(n.split(".")[0] == "matplotlib"
                                                                      for n in _imports(p))]
    assert not bad, f"only ibprobe/report may import matplotlib: {bad}"


def test_only_the_pipeline_and_the_command_line_import_the_report():
    allowed = ("ibprobe.report", "ibprobe.pipeline", "ibprobe.cli")
    bad = [m for m, p in MODULES.items() if not m.startswith(allowed)
           and any(n.startswith("ibprobe.report") for n in _imports(p))]
    assert not bad, f"the report draws for the pipeline and the commands; nothing else imports it: {bad}"


def test_the_report_draws_and_does_not_fit_train_or_measure():
    stages = ("ibprobe.train", "ibprobe.capture", "ibprobe.jobs", "ibprobe.fit", "ibprobe.measure", "ibprobe.pipeline",
              "ibprobe.sample", "ibprobe.backends", "ibprobe.estimators", "torch", "decoders")
    bad = {m: [n for n in _imports(p, runtime_only=True) if n.startswith(stages)]
           for m, p in MODULES.items() if m.startswith("ibprobe.report")}
    assert not any(bad.values()), f"report modules import stages or models: {bad}"


def test_estimators_write_no_files():
    bad = {m: [n for n in _imports(p) if n.startswith(("ibprobe.rundir.files", "ibprobe.rundir.pinning",
                                                        "ibprobe.rundir.tables", "ibprobe.jobs"))]
           for m, p in MODULES.items() if m.startswith("ibprobe.estimators")}
    assert not any(bad.values()), f"estimators take arrays and return results, no files: {bad}"


def test_modules_are_sized_by_concern():
    """Most modules stay under ~400 lines (the house's size for one concept) and none runs away; a module is not
    split just to stay under a number."""
    sizes = {_rel(p): len(p.read_text().splitlines()) for p in SOURCES}
    assert max(sizes.values()) <= 600, f"a module has grown past one concept: {max(sizes, key=sizes.get)}"
    assert sum(n > 400 for n in sizes.values()) <= len(sizes) // 10, \
        f"too many large modules: {sorted((n, f) for f, n in sizes.items() if n > 400)}"


@pytest.mark.parametrize("path", sorted((ROOT / "ibprobe" / "cli").glob("*.py")), ids=_rel)
def test_command_modules_only_parse_and_print(path):
    if path.name != "flags.py":
        assert len(path.read_text().splitlines()) <= 80, "move the work into the library; commands parse and print"
