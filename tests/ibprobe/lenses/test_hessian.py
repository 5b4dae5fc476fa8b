"""Loss Hessians: Li et al.'s three claims on deep linear residual networks, and Hessian-vector-product
eigensolvers against the exact eigendecomposition on our ResNet (shortcut depths 1-3, zero init)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ibprobe.lenses.hessian import (HessianOperator, LinearProblem, fixed_batch, full_hessian, hessian_rows, lanczos,
                                    linear_resnet_hessian, linear_resnet_table, power_iteration, summarize_spectrum,
                                    synthetic_problem, top_hessian_eigenvalues)
from ibprobe.models import build_model

WIDTH = 3


@pytest.fixture(scope="module")
def problem():
    return synthetic_problem(WIDTH, seed=0)  # one fixed input covariance and target for every depth


def test_shortcut_two_at_zero_is_depth_invariant_and_equals_cond_of_the_residual_moment(problem):
    conds = [linear_resnet_hessian(n, 2, problem=problem).condition_number for n in range(2, 7)]
    assert (max(conds) - min(conds)) / min(conds) < 1e-6
    s = torch.linalg.svdvals(problem.residual_moment())
    assert conds[0] == pytest.approx(float(s[0] / s[-1]), rel=1e-9)
    spec = linear_resnet_hessian(4, 2, problem=problem)
    assert spec.n_zero == 0 and spec.n_negative == len(spec.eigenvalues) // 2  # +/- singular values: a saddle


def test_shortcut_one_grows_monotonically_with_depth():
    # M = m I (here m = 0.25): the couplings commute with the shared Gauss-Newton term, and for n >= 2 units the
    # spectrum is 2 (n sigma_max + m (n - 1)) at the top and +/- 2m at the bottom: cond = n (spread / 0.5 + 1) - 1
    p = synthetic_problem(WIDTH, seed=0, spread=4.0, target_scale=0.5, isotropic_residual=True)
    conds = [linear_resnet_hessian(n, 1, problem=p).condition_number for n in range(1, 9)]
    assert all(b > a for a, b in zip(conds, conds[1:]))
    assert conds[1:] == pytest.approx([9.0 * n - 1 for n in range(2, 9)], rel=1e-9)
    assert conds[0] == pytest.approx(4.0, rel=1e-9)  # one unit: 2 (sxx kron I), the input covariance's spread
    assert linear_resnet_hessian(5, 2, problem=p).condition_number == pytest.approx(1.0, rel=1e-9)


def test_shortcut_one_trends_up_for_a_generic_residual(problem):
    """A generic M: lambda_max grows with every unit; the smallest nonzero |eigenvalue| wanders, so the
    condition number trends up without growing at every step."""
    specs = [linear_resnet_hessian(n, 1, problem=problem) for n in range(1, 9)]
    lam = [s.lambda_max for s in specs]
    assert all(b > a for a, b in zip(lam, lam[1:]))
    slope = np.polyfit(np.arange(1, 9), np.log([s.condition_number for s in specs]), 1)[0]
    assert slope > 0.3


def test_shortcut_three_has_an_exactly_zero_hessian_at_zero(problem):
    for n in (1, 4, 8):
        spec = linear_resnet_hessian(n, 3, problem=problem)
        assert spec.lambda_max == 0.0 and spec.n_zero == len(spec.eigenvalues) == n * 3 * WIDTH ** 2
        assert np.isnan(spec.condition_number)
    # small random weights move it off the saddle
    assert linear_resnet_hessian(3, 3, init="random", problem=problem).lambda_max > 0


def test_table_rows_and_problem_from_data():
    rows = linear_resnet_table((1, 2), range(1, 4), ("zero", "random"), width=WIDTH)
    assert len(rows) == 2 * 3 * 2
    assert set(rows[0]) == {"shortcut_depth", "depth", "init", "n_params", "condition_number", "lambda_max",
                            "lambda_min_nonzero", "n_zero", "n_negative"}
    assert rows[-1]["n_params"] == 3 * 2 * WIDTH ** 2
    g = np.random.default_rng(0)
    x = g.normal(size=(50, WIDTH))
    y = x @ g.normal(size=(WIDTH, WIDTH)).T
    p = LinearProblem.from_data(x, y)
    f = torch.as_tensor(g.normal(size=(WIDTH, WIDTH)))
    direct = float(((torch.as_tensor(y) - torch.as_tensor(x) @ f.T) ** 2).sum(1).mean())
    assert float(p.loss(f)) == pytest.approx(direct, rel=1e-10)


def test_zero_tolerance_is_relative_to_the_largest():
    s = summarize_spectrum(np.array([-2.0, 1e-13, 0.5, 4.0]))
    assert s.n_zero == 1 and s.n_negative == 1 and s.condition_number == pytest.approx(8.0)
    assert s.lambda_min_nonzero == 0.5


def test_eigensolvers_on_a_known_matrix():
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(60, 60, generator=g, dtype=torch.float64))
    eig = torch.cat([torch.tensor([9.0, -7.0, 5.0]), torch.linspace(-1, 1, 57)]).double()
    a = q @ torch.diag(eig) @ q.T
    theta, res = lanczos(lambda v: a @ v, 60, 40)
    top = theta[np.argsort(-np.abs(theta))[:3]]
    assert np.allclose(top, [9.0, -7.0, 5.0], atol=1e-8)
    vals, _ = power_iteration(lambda v: a @ v, 60, 3, iters=500, tol=1e-12)
    assert np.allclose(vals, [9.0, -7.0, 5.0], atol=1e-6)


def _tiny_resnet(shortcut_depth: int, init: str):
    torch.manual_seed(0)
    return build_model("resnet", in_shape=(1, 4, 4), num_classes=3, widths=(2, 3), blocks=1,
                       shortcut_depth=shortcut_depth, init=init).double()


@pytest.mark.parametrize("shortcut_depth,init", [(1, "zero"), (2, "zero"), (3, "zero"), (2, "kaiming")])
def test_top_eigenvalues_match_the_exact_hessian_of_our_resnet(shortcut_depth, init):
    model = _tiny_resnet(shortcut_depth, init)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(12, 1, 4, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (12,), generator=g)
    model.train()  # the solver must switch BatchNorm to eval mode itself, and switch back
    # a BatchNorm trained a little, so eval mode differs from train mode
    with torch.no_grad():
        model(x)
    model.eval()
    exact = torch.linalg.eigvalsh(full_hessian(model, x, y, "classify")).numpy()
    model.train()
    by_abs = exact[np.argsort(-np.abs(exact))]
    lz = top_hessian_eigenvalues(model, x, y, "classify", k=4, method="lanczos", steps=80)
    pw = top_hessian_eigenvalues(model, x, y, "classify", k=1, method="power", iters=2000)
    assert model.training
    assert np.allclose(lz.eigenvalues, by_abs[:4], rtol=1e-6, atol=1e-9)
    assert pw.eigenvalues[0] == pytest.approx(by_abs[0], rel=1e-4)
    assert lz.cond_estimate == pytest.approx(abs(by_abs[0] / by_abs[3]), rel=1e-5)
    assert lz.cond_estimate <= summarize_spectrum(exact).condition_number


def test_hessian_operator_is_symmetric_and_autoencoder_loss_works():
    torch.manual_seed(0)
    ae = build_model("resnet_ae", in_shape=(1, 4, 4), widths=(2, 2), bottleneck_channels=1).double().eval()
    x = torch.rand(6, 1, 4, 4, dtype=torch.float64)
    op = HessianOperator(ae, x, x, "autoencode")
    g = torch.Generator().manual_seed(0)
    u, v = (torch.randn(op.dim, generator=g, dtype=torch.float64) for _ in range(2))
    assert float(u @ op(v)) == pytest.approx(float(v @ op(u)), rel=1e-8)
    rows = hessian_rows([(0, ae), (3, ae)], x, x, "autoencode", k=2, steps=20)
    assert [r["step"] for r in rows] == [0, 3] and rows[0]["eig_1"] == rows[1]["eig_1"]
    assert abs(rows[0]["eig_1"]) >= abs(rows[0]["eig_2"])


def test_fixed_batch_is_seeded_and_fits_the_regime():
    images = np.random.default_rng(0).integers(0, 17, size=(40, 1, 4, 4)).astype(np.uint8)
    labels = np.arange(40) % 3
    x, y = fixed_batch(images, labels, 17, "classify", n=8, seed=3)
    x2, y2 = fixed_batch(images, labels, 17, "classify", n=8, seed=3)
    assert torch.equal(x, x2) and torch.equal(y, y2) and y.dtype == torch.long and x.shape == (8, 1, 4, 4)
    xa, target = fixed_batch(images, labels, 17, "autoencode", n=8, seed=3, normalize=(0.5, 0.25))
    assert torch.allclose(xa, (target - 0.5) / 0.25) and 0 <= target.min() and target.max() <= 1
