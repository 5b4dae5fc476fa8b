"""Known-answer validation: exact truths of the synthetic families, and the quick suite end to end."""
import math

import numpy as np
import pytest

from ibprobe.tools import validate as V


def _plugin_entropy(rows: np.ndarray) -> float:
    _, counts = np.unique(rows.reshape(len(rows), -1), axis=0, return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


def test_logistic_pmf_is_normalised_and_matches_sampling():
    p = V.logistic_pmf(8.0, 1.0)
    assert p.shape == (V.LEVELS,) and (p > 0).all() and p.sum() == pytest.approx(1.0, abs=1e-12)
    assert p[8] == pytest.approx(2 * math.tanh(0.25) / 2, rel=1e-9)  # sigmoid(.5) - sigmoid(-.5) = tanh(.25)
    # the end bins take the tails: P(0) = sigmoid((0.5 - 8) / 1)
    assert p[0] == pytest.approx(1 / (1 + math.exp(7.5)), rel=1e-9)
    assert V.entropy_bits(p) == pytest.approx(2.9035, abs=1e-4)
    draws = np.random.default_rng(0).choice(V.LEVELS, size=200_000, p=p)
    assert _plugin_entropy(draws[:, None]) == pytest.approx(V.entropy_bits(p), abs=0.01)


def test_planes_has_exact_entropy_and_determines_the_template():
    fam = V.planes(600, 0, quick=False)
    x, t = fam.images, fam.templates
    assert x.dtype == np.uint8 and x.shape == (600, 3, 4, 4) and x.max() < V.LEVELS
    planes = x[:, :2]
    assert set(np.unique(planes)) <= {0, V.LEVELS - 1} and (planes == planes[:, :, :1, :1]).all()
    # X determines T: the two template planes spell T in binary
    assert ((planes[:, 0, 0, 0] > 0) + 2 * (planes[:, 1, 0, 0] > 0) == t).all()
    assert fam.h_x == pytest.approx(2 + 16 * V.entropy_bits(V.logistic_pmf(8.0, 1.0)))
    _check_cases(fam, 600)


def test_thermo_has_exact_entropy_and_determines_the_template():
    fam = V.thermo(600, 0, quick=False)
    x, t = fam.images, fam.templates
    assert x.shape == (600, 4, 4, 4) and set(np.unique(x[:, :3])) <= {0, V.LEVELS - 1}
    assert ((x[:, :3, 0, 0] > 0).sum(1) == t).all()  # thermometer: the number of planes at the top level
    assert fam.h_x == pytest.approx(2 + 16 * V.entropy_bits(V.logistic_pmf(6.0, 1.5)))
    _check_cases(fam, 600)


def _check_cases(fam, n):
    truths = {c.name: c.truth for c in fam.cases}
    assert truths["image"] == pytest.approx(fam.h_x)
    vals = [truths[name] for name in fam.order]
    assert vals == sorted(vals) and len(set(vals)) == len(vals)
    for c in fam.cases:
        assert c.codes.shape[0] == n and np.isfinite(c.codes).all()


def test_discrete_codes_carry_their_stated_bits():
    fam = V.planes(4000, 1, quick=False)
    # X determines each code, so I(X; code) = H(code): the plug-in entropy of the code equals its truth.
    for c in fam.cases:
        if c.name in ("id mod 2", "id", "id map 2x2", "template planes"):
            assert _plugin_entropy(c.codes) == pytest.approx(c.truth, abs=0.01), c.name
    thermo = V.thermo(4000, 1, quick=False)
    for c in thermo.cases:
        if c.name in ("id >= 2", "min(id, 2)", "id"):
            assert _plugin_entropy(c.codes) == pytest.approx(c.truth, abs=0.01), c.name


@pytest.mark.parametrize("make", [V.flat4, V.random4])
def test_hard_families_determine_the_template(make):
    fam = make(400, 0, quick=False)
    x = fam.images
    assert x.shape == (400, *V.HARD_SHAPE) and x.max() < V.LEVELS
    assert fam.h_x == pytest.approx(2 + 64 * 2)
    assert len({b.tobytes() for b in (x // 4)}) == 4  # the band map takes exactly K values


def test_tolerance_and_table():
    assert V.tolerance(0.0) == 0.5 and V.tolerance(130.0) == pytest.approx(6.5)
    rep = V.ValidationReport([V.Row("f", "id", 2.0, 2.1, 1.9, 2.3, 0.5, True)], {"f": False}, 1.0)
    assert not rep.ok
    table = V.format_table(rep)
    assert "f: id" in table and "[1.90, 2.30]" in table and "FAIL" in table


@pytest.fixture(scope="module")
def quick_report():
    return V.run_validation(quick=True, device="cpu", seed=0, progress=False, log=None)  # restores threads itself


def test_quick_known_answer_suite_meets_every_tolerance(quick_report):
    """Every quick case within max(0.5 bits, 5%) of the truth, and the estimates order as the truth."""
    names = [r.case for r in quick_report.rows]
    assert names == ["noise", "id mod 2", "id", "id map 2x2", "image"]
    assert quick_report.ordering == {"planes": True}, "\n" + V.format_table(quick_report)
    assert quick_report.ok, "\n" + V.format_table(quick_report)


def test_quick_suite_intervals_contain_their_estimates(quick_report):
    """Each CI holds its estimate; a code whose decoder loses to the reference on validation images is scored as the
    reference (optional ignorance), exactly 0 with a CI of width 0, and only then."""
    for r in quick_report.rows:
        assert r.ci_low <= r.estimate <= r.ci_high
        assert r.ci_low < r.ci_high or r.estimate == r.ci_low == r.ci_high == 0.0, r


def test_cli_exit_code_follows_the_report(monkeypatch, capsys):
    from ibprobe.cli import main

    seen = {}

    def fake(**kw):
        seen.update(kw)
        ok = V.Row("f", "id", 2.0, 2.1, 1.9, 2.3, 0.5, True)
        return V.ValidationReport([ok], {"f": kw["seed"] == 0}, 0.1, references=[V.Reference("f", 10.0, 10.4,
                                                                                              "codes:id", 11.0)])

    monkeypatch.setattr("ibprobe.cli.validate.run_validation", fake)
    assert main(["validate", "--quick", "--device", "cpu", "--quiet"]) == 0
    assert seen == {"quick": True, "hard": False, "device": "cpu", "seed": 0, "progress": False, "log": None,
                    "reference": "best"}
    out = capsys.readouterr().out
    assert "f: id" in out and "reference f: H(X) = 10.00, chosen codes:id 10.40 (eps_X = +0.40)" in out
    assert main(["validate", "--quick", "--seed", "3", "--quiet"]) == 1
    assert main(["validate", "--hard", "--quiet"]) == 0 and seen["hard"] is True
