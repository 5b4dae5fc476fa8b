"""The paper pilot: its known-answer images have the stated H(X), its fit keeps the preset's per-step decay, and
bench/paper_pilot.sh --smoke runs the whole path (fits, table, bench file, plan) on a CPU in well under a minute."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ibprobe.presets import PIXELCNN_STEP_DECAY, get_preset
from ibprobe.tools import pilot, plan
from ibprobe.tools.validate import entropy_bits, logistic_pmf

ROOT = Path(__file__).resolve().parents[3]


def test_the_pilot_images_carry_the_stated_information():
    fam = pilot.pilot_family(400, seed=0)
    x, t = fam.images, fam.templates
    assert x.shape == (400, 3, 32, 32) and x.dtype == np.uint8
    assert set(np.unique(x[:, :2])) <= {0, 255}  # the template channels sit at the extreme levels
    assert np.array_equal(x[:, 0, 0, 0] // 255 + 2 * (x[:, 1, 0, 0] // 255), t)  # X determines T
    assert fam.h_x == pytest.approx(2 + 1024 * entropy_bits(logistic_pmf(128.0, 1.0, 256)))
    assert fam.h_x == pytest.approx(2976.86, abs=0.01)
    truths = {c.name: c.truth for c in fam.cases}
    assert truths == {"noise": 0.0, "id": 2.0}
    noise = x[:, 2].reshape(-1)
    assert abs(noise.mean() - 128.0) < 0.05 and noise.std() == pytest.approx(np.pi / np.sqrt(3), rel=0.05)


def test_the_pilot_fits_with_the_presets_decoder_and_per_step_decay():
    decoder, fit = pilot.pilot_settings(pilot.PILOT)
    preset = get_preset("cinic10-paper")
    assert decoder == preset.decoder
    assert {k: fit[k] for k in ("batch_size", "lr")} == {k: preset.fit[k] for k in ("batch_size", "lr")}
    # 2000 images: 1600 to fit, 160 of them for validation, 1440 in 23 steps of 64
    assert fit["lr_decay"] == pytest.approx(PIXELCNN_STEP_DECAY ** 23)
    assert (fit["epochs"], fit["patience"]) == (pilot.PILOT["epochs"], pilot.PILOT["patience"])


def test_the_smoke_pilot_runs_end_to_end(tmp_path):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    out = tmp_path / "pilot"
    res = subprocess.run([str(ROOT / "bench" / "paper_pilot.sh"), "--smoke", "--out", str(out), "--quiet"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    text = res.stdout
    assert "planes32: id" in text and "planes32: noise" in text and "q(x|id)" in text and "SMOKE" in text
    assert "an epoch of q(x|id): measured" in text
    bench = json.loads((out / "bench.json").read_text())
    assert bench["format"] == "ibprobe.bench/1" and bench["decoders"]
    n_jobs = len(plan.jobs_of_preset("digits-quick", data_root=None, device="cpu", layers=None))
    assert "worker-h" in text and f"{n_jobs} decoder jobs" in text  # the whole preset was planned
    assert f"from {out / 'bench.json'}" in text  # at the speeds of the bench file, not measured again
    for name in ("_unconditional_init", "_unconditional", "id", "noise"):
        assert (out / "fits" / name / "fit_log.json").is_file()
