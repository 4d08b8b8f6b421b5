"""Matrix-free implicit steps, ``Newton(jacobian="krylov")`` (issue 13): GMRES with Jacobian-vector
products for Newton's linear systems, vector-Jacobian products for the adjoint's.

Truths: ``torch.linalg.solve`` and the Jacobian by ``torch.autograd.functional`` (the linear
algebra); the dense Jacobian's solves, themselves checked against scipy, finite differences and
a full Newton solve (``test_implicit.py``), on a discretised heat equation whose grid points all
interact; the closed form of implicit Euler on a linear problem too large for a dense Jacobian.
"""

import pytest
import torch

import symode
from symode._krylov import Linearisation, gmres
from symode.bench import MLPField, peak_memory

F64 = torch.float64


class Heat(torch.nn.Module):
    """``u_t = k u_xx + w sin(u) cos(t)`` on ``n`` interior points of [0, 1] (zero at the ends):
    stiff (eigenvalues down to ``-4 k (n + 1)^2``), and every point coupled to its neighbours."""

    def __init__(self, n: int, k: float = 0.05):
        super().__init__()
        self.dx = 1.0 / (n + 1)
        self.k = torch.nn.Parameter(torch.tensor(k, dtype=F64))
        self.w = torch.nn.Parameter(torch.tensor(0.5, dtype=F64))

    def forward(self, t, u):
        padded = torch.nn.functional.pad(u, (1, 1))
        lap = (padded[..., 2:] - 2 * u + padded[..., :-2]) / self.dx**2
        return self.k * lap + self.w * torch.sin(u) * torch.cos(t)


def _initial(n):
    x = torch.linspace(0, 1, n + 2, dtype=F64)[1:-1]
    return torch.sin(torch.pi * x) + 0.3 * torch.sin(3 * torch.pi * x)


def test_gmres_solves_to_its_tolerance_or_says_it_did_not():
    gen = torch.Generator().manual_seed(0)
    A = 3 * torch.eye(40, dtype=F64) + 0.3 * torch.randn(40, 40, generator=gen, dtype=F64)
    b = torch.randn(40, generator=gen, dtype=F64)
    x, converged = gmres(lambda v: A @ v, b, 1e-12, 40)
    assert converged and float((A @ x - b).norm() / b.norm()) <= 1e-12
    torch.testing.assert_close(x, torch.linalg.solve(A, b), rtol=1e-10, atol=1e-12)
    x, converged = gmres(lambda v: A @ v, b, 1e-12, 3)
    residual = float((A @ x - b).norm() / b.norm())
    assert not converged and 1e-12 < residual < 1.0  # the best in a three-dimensional space
    x, converged = gmres(lambda v: A @ v, torch.zeros_like(b), 1e-12, 3)
    assert converged and not x.any()


def test_linearisation_products_equal_the_jacobian():
    """``J v`` (the vector-Jacobian product differentiated once more) and ``J^T u``, also for a
    field that differentiates itself (a CNF's trace), which forward-mode AD cannot run."""
    gen = torch.Generator().manual_seed(1)
    W = torch.randn(5, 5, generator=gen, dtype=F64)

    def self_differentiating(y):
        with torch.enable_grad():
            x = y if y.requires_grad else y.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(torch.sin(x).sum(), x, create_graph=True)
        return torch.tanh(y @ W) + g * y

    y = torch.randn(3, 5, generator=gen, dtype=F64)
    v, u = torch.randn(2, 15, generator=gen, dtype=F64)
    for func in (lambda y: torch.tanh(y @ W), self_differentiating):
        J = torch.autograd.functional.jacobian(func, y).reshape(15, 15)
        point = Linearisation(func, y)
        torch.testing.assert_close(point.matvec(v), J @ v, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(point.rmatvec(u), J.T @ u, rtol=1e-12, atol=1e-14)
    constant = Linearisation(lambda y: torch.ones_like(y), y)
    assert not constant.matvec(v).any() and not constant.rmatvec(u).any()


@pytest.mark.parametrize(("name", "steps"), [("kvaerno5", None), ("radauIIA5", 0.05)])
def test_krylov_gives_the_dense_jacobians_solution_and_gradients(name, steps):
    """On the heat equation (24 coupled points): with Newton converged tightly, the matrix-free
    solve is the dense one's (the same discrete solution, so the same gradient); at the default
    tolerance the exact gradient methods agree with each other to round-off, in ``y0``, the
    parameters and the output times."""
    func = Heat(24)
    y0 = _initial(24).requires_grad_(True)
    rule = symode.AdaptiveSteps(rtol=1e-6, atol=1e-8) if steps is None else symode.FixedSteps(step_size=steps)

    def gradient_of(jacobian, gradient, **tolerance):
        t = torch.tensor([0.0, 0.25, 0.5], dtype=F64, requires_grad=True)
        newton = symode.Newton(jacobian=jacobian, **tolerance)
        sol = symode.solve(func, y0, t, method=name, steps=rule, gradient=gradient, newton=newton)
        loss = (sol.ys[1:] * torch.linspace(0.5, 1.5, 24, dtype=F64)).pow(2).sum()
        grads = torch.autograd.grad(loss, [y0, t, *func.parameters()])
        return sol.ys.detach(), torch.cat([g.reshape(-1) for g in grads]), sol.stats

    tight = {"rtol": 1e-12, "atol": 1e-12}
    ys_dense, grad_dense, _ = gradient_of("dense", "backprop", **tight)
    ys_krylov, grad_krylov, _ = gradient_of("krylov", "backprop", **tight)
    # adaptive steps: the error estimate's filter solves to GMRES's 1e-3, which moves the steps
    close = 1e-10 if steps else 1e-7
    torch.testing.assert_close(ys_krylov, ys_dense, rtol=close, atol=close)
    assert float((grad_krylov - grad_dense).norm() / grad_dense.norm()) < 100 * close
    ref = gradient_of("krylov", "backprop")[1]
    assert float((ref - grad_dense).norm() / grad_dense.norm()) < 1e-4  # a looser Newton: near
    for gradient in ("symplectic_adjoint", "checkpoint"):
        got = gradient_of("krylov", gradient)[1]
        assert float((got - ref).norm() / ref.norm()) < 1e-10, gradient


@pytest.mark.parametrize("name", ["kvaerno4", "radauIIA5"])
def test_tuple_state_with_a_0_dim_part_and_decreasing_time(name):
    """A tuple state ``(a, b)`` with ``b`` 0-dim, solved from ``t = 1`` down to ``0`` (stiff in
    that direction: ``W``'s eigenvalues are positive), matrix-free and dense: the same solution
    and gradients (Newton tight, fixed steps), and the exact methods agree with each other."""
    w = torch.tensor([[20.0, 1.0], [0.5, 3.0]], dtype=F64, requires_grad=True)

    def field(t, y):
        a, b = y
        return a @ w.T + torch.sin(b), 5 * b + torch.cos(t) * a.sum()

    a0 = torch.tensor([1.0, 2.0], dtype=F64, requires_grad=True)
    b0 = torch.tensor(0.3, dtype=F64, requires_grad=True)

    def gradient_of(jacobian, gradient):
        t = torch.tensor([1.0, 0.6, 0.0], dtype=F64, requires_grad=True)
        sol = symode.solve(
            field,
            (a0, b0),
            t,
            method=name,
            steps=symode.FixedSteps(step_size=0.05),
            gradient=gradient,
            adjoint_params=(w,),
            newton=symode.Newton(jacobian=jacobian, rtol=1e-12, atol=1e-12),
        )
        a, b = sol.ys
        assert a.shape == (3, 2) and b.shape == (3,)
        loss = a[1:].pow(2).sum() + (b[1:] * torch.tensor([0.5, 1.5], dtype=F64)).sum()
        grads = torch.autograd.grad(loss, [a0, b0, w, t])
        return torch.cat([a.detach().reshape(-1), b.detach()]), torch.cat([g.reshape(-1) for g in grads])

    ys_dense, ref = gradient_of("dense", "backprop")
    for gradient in ("backprop", "symplectic_adjoint", "checkpoint"):
        ys, got = gradient_of("krylov", gradient)
        torch.testing.assert_close(ys, ys_dense, rtol=1e-12, atol=1e-12)
        assert float((got - ref).norm() / ref.norm()) < 1e-10, gradient


def test_continuous_adjoint_with_a_matrix_free_backward_solve():
    """The continuous adjoint's implicit backward solve with GMRES on ``diag(J, -J^T, 0)``: its
    gradient is the dense-Jacobian backward solve's, to their tolerances (it is not exact)."""
    func = Heat(16, k=0.02)
    y0 = _initial(16).requires_grad_(True)
    t = torch.tensor([0.0, 0.3], dtype=F64)
    grads = {}
    for jacobian in ("dense", "krylov"):
        sol = symode.solve(
            func,
            y0,
            t,
            method="kvaerno3",
            steps=symode.AdaptiveSteps(rtol=1e-7, atol=1e-9),
            gradient=symode.gradients.ContinuousAdjoint(rtol=1e-7, atol=1e-9),
            newton=symode.Newton(jacobian=jacobian),
        )
        grads[jacobian] = torch.autograd.grad(sol.ys[-1].pow(2).sum(), [y0, *func.parameters()])
        assert sol.stats.num_jacobians > 0
    for dense, krylov in zip(grads["dense"], grads["krylov"]):
        torch.testing.assert_close(krylov, dense, rtol=1e-5, atol=1e-7)


def test_a_state_too_large_for_a_dense_jacobian():
    """10,000 numbers, all coupled through their mean: refused with the dense Jacobian (which
    names the fix), solved matrix-free. Implicit Euler on ``y' = -(y - mean(y)) - y`` has the
    closed form ``y_N = (y0 - m) / (1 + 2h)^N + m / (1 + h)^N`` (``m`` the mean of ``y0``), and
    the gradient of its sum is ``1 / (1 + h)^N`` in every entry of ``y0``."""
    y0 = torch.linspace(-1, 1, 10_000, dtype=F64).reshape(100, 100).add(0.3).requires_grad_(True)
    t = torch.tensor([0.0, 0.5], dtype=F64)

    def field(t, y):
        return -(y - y.mean()) - y

    steps = symode.FixedSteps(step_size=0.1)
    with pytest.raises(ValueError, match="krylov"):
        symode.solve(field, y0, t, method="implicit_euler", steps=steps)
    krylov = symode.Newton(jacobian="krylov")
    for gradient in ("backprop", "symplectic_adjoint"):
        sol = symode.solve(field, y0, t, method="implicit_euler", steps=steps, gradient=gradient, newton=krylov)
        m = y0.detach().mean()
        torch.testing.assert_close(sol.ys[-1], (y0.detach() - m) / 1.2**5 + m / 1.1**5, rtol=1e-9, atol=1e-10)
        (grad,) = torch.autograd.grad(sol.ys[-1].sum(), [y0])
        torch.testing.assert_close(grad, torch.full_like(grad, 1.1**-5), rtol=1e-9, atol=1e-12)


def test_symplectic_adjoint_memory_grows_by_one_state_per_step():
    """As with the dense Jacobian (``test_implicit.py``): GMRES's basis and one point's graphs
    are the same in every step, so the peak grows by one state per step."""
    torch.manual_seed(0)
    func = MLPField(8, 32).to(F64)
    y0 = torch.randn(4, 8, dtype=F64, requires_grad=True)
    state = y0.numel() * 8
    t = torch.tensor([0.0, 1.0], dtype=F64)

    def iteration(n):
        sol = symode.solve(
            func,
            y0,
            t,
            method="sdirk2",
            steps=symode.FixedSteps(step_size=1.0 / n),
            gradient="symplectic_adjoint",
            newton=symode.Newton(jacobian="krylov"),
        )
        sol.ys[-1].pow(2).mean().backward()

    def peak(n):
        for p in [y0, *func.parameters()]:
            p.grad = None
        return peak_memory(iteration, n).peak_bytes

    peaks = [peak(n) for n in (5, 10, 20)]
    # one state per step, and 8 bytes (one float64) that rk4's symplectic adjoint shows on this
    # measure too (the dense Jacobian's test cannot see them: its peak is in the forward solve)
    assert peaks[1] - peaks[0] == 5 * (state + 8) and peaks[2] - peaks[1] == 10 * (state + 8), (peaks, state)


def test_refusals_name_the_argument_and_the_fix():
    with pytest.raises(ValueError, match=r"Newton\.krylov_iters"):
        symode.Newton(jacobian="krylov", krylov_iters=0)
    with pytest.raises(ValueError, match="'krylov'"):
        symode.Newton(jacobian="gmres")

    class OnceDifferentiable(torch.autograd.Function):
        @staticmethod
        def forward(ctx, y):
            ctx.save_for_backward(y)
            return -(y**3)

        @staticmethod
        @torch.autograd.function.once_differentiable
        def backward(ctx, grad):
            (y,) = ctx.saved_tensors
            return -3 * y**2 * grad

    with pytest.raises(TypeError, match="jacobian='dense'"):
        symode.solve(
            lambda t, y: OnceDifferentiable.apply(y) - y,
            torch.ones(3, dtype=F64),
            torch.tensor([0.0, 1.0], dtype=F64),
            method="sdirk2",
            steps=symode.FixedSteps(step_size=0.5),
            newton=symode.Newton(jacobian="krylov"),
        )
