"""The GPU check script runs its every step on CPU with a tiny decoder (the GPU figures need a GPU)."""
from __future__ import annotations

import re

from decoders.tools.gpu_check import main


def test_gpu_check_smoke_run_on_cpu_reports_every_section(capsys):
    assert main(["--device", "cpu", "--smoke"]) == 0
    out = capsys.readouterr().out
    summary = out[out.index("== summary"):]
    assert "nll agreement: skipped (needs CUDA)" in out
    for name in ("fp32 eager", "bf16+channels_last"):
        m = re.search(rf"^train {re.escape(name)}: ([0-9.e+-]+) img/s at batch 4, ([0-9.e+-]+) GFLOP/image", summary,
                      re.M)
        assert m and float(m.group(1)) > 0 and float(m.group(2)) > 0, summary
    assert re.search(r"^train speedup .*: [0-9.e+-]+x$", summary, re.M)
    assert re.search(r"^sampling batch 2: .* ratio [0-9.e+-]+x; same integers 1\.000000;", summary, re.M), summary
