"""The house's layout rules, checked: `decoders` never imports `ibprobe`, only `ibprobe/report` imports
matplotlib, modules stay small and command modules stay thin."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "decoders").rglob("*.py")) + sorted((ROOT / "ibprobe").rglob("*.py"))


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def _rel(p: Path) -> str:
    return str(p.relative_to(ROOT))


def test_decoders_never_imports_ibprobe():
    bad = [_rel(p) for p in (ROOT / "decoders").rglob("*.py") if any(n.split(".")[0] == "ibprobe" for n in _imports(p))]
    assert not bad, f"decoders must stay independent of ibprobe: {bad}"
    code = ("import sys, decoders, decoders.fitting, decoders.io, decoders.tools.bench, decoders.progress; "
            "from decoders import PixelCNNPP, fit; print(sorted(m for m in sys.modules if m.startswith('ibprobe')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"


def test_only_the_report_stage_imports_matplotlib():
    bad = [_rel(p) for p in SOURCES if "report" not in p.parts and any(n.split(".")[0] == "matplotlib"
                                                                      for n in _imports(p))]
    assert not bad, f"only ibprobe/report may import matplotlib: {bad}"


@pytest.mark.parametrize("path", SOURCES, ids=_rel)
def test_modules_stay_small(path):
    assert len(path.read_text().splitlines()) <= 400, "split this module: the house keeps modules under ~400 lines"


@pytest.mark.parametrize("path", sorted((ROOT / "ibprobe" / "cli").glob("*.py")), ids=_rel)
def test_command_modules_only_parse_and_print(path):
    if path.name != "flags.py":
        assert len(path.read_text().splitlines()) <= 80, "move the work into the library; commands parse and print"
