"""Implicit Runge-Kutta methods (issue 13): stages solved by Newton's method, gradients by the
implicit function theorem, and the symplectic adjoint for them.

Truths: the matrix exponential (the observed order on a linear problem), a closed form and
scipy's Radau at tight tolerance (stiff problems), backprop through a *full* Newton solve
converged to round-off written here independently (differentiating through its iterates, which
converges to the implicit function theorem's gradient), finite differences, and the exact
methods against each other to round-off in float64. The tests that every method shares
(order conditions, gradients of every method, dense output, accuracy against scipy) find the
implicit tableaus in ``symode.TABLEAUS`` themselves.
"""

import math

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

import symode
from symode.bench import MLPField, peak_memory
from symode.gradients import GRADIENT_METHODS

F64 = torch.float64
IMPLICIT = sorted(name for name, tab in symode.TABLEAUS.items() if tab.implicit)
FIXED = [name for name in IMPLICIT if not symode.TABLEAUS[name].adaptive]
ADAPTIVE = [name for name in IMPLICIT if symode.TABLEAUS[name].adaptive]
EXACT = [m for _, cls in sorted(GRADIENT_METHODS.items()) if cls.exact for m in cls.configurations()]

M = torch.tensor([[-2.0, 1.0, 0.0], [-1.0, -2.0, 0.5], [0.0, -0.5, -1.0]], dtype=F64)


def _linear(t, y):
    return y @ M.T


class Stiff(torch.nn.Module):
    """A small nonlinear field with a stiff linear part (eigenvalues down to -50)."""

    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.w = torch.nn.Parameter(2.0 * torch.randn(3, 3, generator=gen, dtype=F64))
        self.b = torch.nn.Parameter(0.3 * torch.randn(3, generator=gen, dtype=F64))
        self.register_buffer("decay", torch.tensor([50.0, 5.0, 1.0], dtype=F64))

    def forward(self, t, y):
        return torch.tanh(y @ self.w.T + self.b) * (1 + t) - self.decay * y


def _steps(name, **adaptive):
    if symode.TABLEAUS[name].adaptive:
        rtol = 1e-4 if symode.TABLEAUS[name].order == 3 else 1e-5  # kvaerno3: fewer steps
        return symode.AdaptiveSteps(**{"rtol": rtol, "atol": rtol * 1e-2, **adaptive})
    return symode.FixedSteps(step_size=0.05)


def _flat(grads):
    return torch.cat([g.reshape(-1) for g in grads])


# --------------------------------------------------------------------------------------
# accuracy


@pytest.mark.parametrize("name", IMPLICIT)
def test_observed_order_on_a_linear_problem(name):
    """Fixed steps h and h/2 on y' = M y to t = 1 against expm(M): the error falls by 2^order."""
    tableau = symode.TABLEAUS[name]
    y0 = torch.tensor([1.0, 0.5, -1.0], dtype=F64)
    exact = torch.linalg.matrix_exp(M) @ y0
    n = 4 if tableau.order >= 5 else 8
    errors = []
    for steps in (n, 2 * n):
        sol = symode.solve(
            _linear,
            y0,
            torch.tensor([0.0, 1.0], dtype=F64),
            method=name,
            steps=symode.FixedSteps(step_size=1.0 / steps),
        )
        errors.append(float((sol.ys[-1] - exact).norm()))
    observed = math.log2(errors[0] / errors[1])
    assert tableau.order - 0.3 < observed < tableau.order + 0.8, (name, errors, observed)


def _prothero_robinson(t, y):
    return -1e6 * (y - torch.cos(t))


def _prothero_robinson_exact(t: float) -> float:
    lam = 1e6
    return (lam**2 * math.cos(t) + lam * math.sin(t)) / (lam**2 + 1) - lam**2 / (lam**2 + 1) * math.exp(-lam * t)


@pytest.mark.parametrize("name", ADAPTIVE)
def test_a_stiff_problem_that_dopri5_cannot_finish(name):
    """y' = -1e6 (y - cos t) (the issue's problem): dopri5 runs out of steps; the ESDIRK pairs
    follow the closed form within a few tolerance units, in few steps."""
    y0 = torch.tensor([0.0], dtype=F64)
    t = torch.tensor([0.0, 0.5, 1.0, 2.0], dtype=F64)
    with pytest.raises(symode.SolveError, match="max_num_steps"):
        symode.solve(_prothero_robinson, y0, t, steps=symode.AdaptiveSteps(rtol=1e-6, atol=1e-8, max_num_steps=2000))
    steps = symode.AdaptiveSteps(rtol=1e-6, atol=1e-8, interpolate=False)
    sol = symode.solve(_prothero_robinson, y0, t, method=name, steps=steps)
    exact = torch.tensor([_prothero_robinson_exact(v) for v in t.tolist()], dtype=F64)
    units = ((sol.ys[:, 0] - exact).abs() / (1e-8 + 1e-6 * exact.abs())).max()
    assert units < 5.0 and sol.stats.num_accepted < 200, (units, sol.stats)


class Robertson(torch.nn.Module):
    """Robertson's chemical kinetics, the rate constants (0.04, 3e7, 1e4) as log-parameters."""

    def __init__(self):
        super().__init__()
        self.log_k = torch.nn.Parameter(torch.tensor([0.04, 3e7, 1e4], dtype=F64).log())

    def forward(self, t, y):
        k1, k2, k3 = self.log_k.exp()
        y1, y2, y3 = y.unbind(-1)
        return torch.stack([-k1 * y1 + k3 * y2 * y3, k1 * y1 - k3 * y2 * y3 - k2 * y2**2, k2 * y2**2], -1)


def test_robertson_over_1e5_with_gradients():
    """Robertson over [0, 1e5] (dopri5 runs out of steps by t ~ 20): kvaerno4 within a few
    tolerance units of scipy's Radau at rtol 1e-11, with the symplectic adjoint's gradient in the
    rate constants. On the same steps with the stages held tightly, that gradient equals central
    differences of the same scheme; with the solve's own Newton tolerance (1% of rtol/atol) it is
    the exact gradient at stages that hold to that tolerance, which on a problem this stiff moves
    it by ~1e-4 relative (Newton's tolerance, not the adjoint, bounds it)."""
    func = Robertson()
    y0 = torch.tensor([1.0, 0.0, 0.0], dtype=F64)
    t = torch.tensor([0.0, 1e-2, 1.0, 1e2, 1e4, 1e5], dtype=F64)
    rtol, atol = 1e-4, 1e-8
    with pytest.raises(symode.SolveError, match="max_num_steps"):
        symode.solve(func, y0, t, steps=symode.AdaptiveSteps(rtol=rtol, atol=atol, max_num_steps=3000))

    def rhs(_, y):
        with torch.no_grad():
            return func(None, torch.as_tensor(y)).numpy()

    ref = solve_ivp(rhs, (0, 1e5), y0.numpy(), "Radau", t_eval=t.numpy(), rtol=1e-11, atol=1e-16).y.T

    def loss_and_grad(steps, newton=None):
        sol = symode.solve(func, y0, t, method="kvaerno4", steps=steps, gradient="symplectic_adjoint", newton=newton)
        loss = sol.ys[-1, 0] + 1e4 * sol.ys[2, 1]
        return sol, torch.autograd.grad(loss, [func.log_k])[0]

    sol, loose = loss_and_grad(symode.AdaptiveSteps(rtol=rtol, atol=atol, interpolate=False))
    units = np.abs(sol.ys.detach().numpy() - ref) / (atol + rtol * np.abs(ref))
    assert units.max() < 5.0, units.max(axis=0)
    grid, tight = symode.FixedSteps(grid=sol.grid), symode.Newton(rtol=1e-12, atol=1e-16, max_iters=100)
    _, grad = loss_and_grad(grid, tight)
    assert float((loose - grad).norm() / grad.norm()) < 1e-3
    eps, values = 1e-5, []  # central differences in k2 (log scale)
    with torch.no_grad():
        for sign in (1, -1):
            func.log_k[1] += sign * eps
            ys = symode.solve(func, y0, t, method="kvaerno4", steps=grid, newton=tight).ys
            values.append(float(ys[-1, 0] + 1e4 * ys[2, 1]))
            func.log_k[1] -= sign * eps
    fd = (values[0] - values[1]) / (2 * eps)
    assert abs(fd - float(grad[1])) <= 1e-6 * float(grad.abs().max()), (fd, grad)


def test_van_der_pol_with_mu_1000():
    """Van der Pol, mu = 1000, over [0, 1500] (past the first relaxation jump): kvaerno5 against
    scipy's Radau at rtol 1e-10, within a few tolerance units."""

    def vdp(t, y):
        return torch.stack([y[..., 1], 1000.0 * (1 - y[..., 0] ** 2) * y[..., 1] - y[..., 0]], -1)

    y0 = torch.tensor([2.0, 0.0], dtype=F64)
    t = torch.linspace(0, 1500, 7, dtype=F64)
    tol = 1e-6
    sol = symode.solve(vdp, y0, t, method="kvaerno5", steps=symode.AdaptiveSteps(rtol=tol, atol=tol, interpolate=False))
    ref = solve_ivp(
        lambda s, y: vdp(s, torch.tensor(y)).numpy(),
        (0, 1500),
        y0.numpy(),
        "Radau",
        t_eval=t.numpy(),
        rtol=1e-10,
        atol=1e-10,
    ).y.T
    units = np.abs(sol.ys.numpy() - ref) / (tol + tol * np.abs(ref))
    assert units.max() < 10.0, units.max(axis=0)
    assert sol.stats.num_accepted < 1500 and sol.stats.num_jacobians >= sol.stats.num_steps


# --------------------------------------------------------------------------------------
# gradients


def _newton_reference(func, y0, grid, tableau):
    """Backprop through a full Newton solve (exact Jacobian at every iterate, 12 iterations:
    converged to round-off) of each step, on the grid: an independent truth for the gradient
    of the discrete scheme whose stage equations hold."""
    a = torch.tensor(tableau.a, dtype=F64)
    b = torch.tensor(tableau.b, dtype=F64)
    s, y = tableau.num_stages, y0
    for t, t_next in zip(grid[:-1], grid[1:]):
        h = t_next - t
        times = [torch.tensor(t + c * h, dtype=F64) for c in tableau.c]

        def residual(Y, y=y, h=h, times=times):
            F = torch.stack([func(times[i], Y[i]) for i in range(s)])
            return Y - y - h * (a @ F)

        Y = y.expand(s, -1)
        for _ in range(12):
            J = torch.autograd.functional.jacobian(residual, Y, create_graph=True).reshape(s * y.numel(), -1)
            Y = Y - torch.linalg.solve(J, residual(Y).reshape(-1)).reshape(Y.shape)
        K = torch.stack([func(times[i], Y[i]) for i in range(s)])
        y = y + h * (b @ K)
    return y


@pytest.mark.parametrize("name", ["implicit_euler", "trapezoid", "sdirk2", "gl4", "radauIIA5", "kvaerno3"])
def test_backprop_equals_backprop_through_a_converged_newton_solve(name):
    func = Stiff()
    y0 = torch.tensor([0.7, -0.4, 0.2], dtype=F64, requires_grad=True)
    grid = [0.0, 0.1, 0.25, 0.4]
    tableau = symode.TABLEAUS[name]
    y_ref = _newton_reference(func, y0, grid, tableau)
    ref = _flat(torch.autograd.grad(y_ref.pow(2).sum(), [y0, *func.parameters()]))
    for gradient in ("backprop", "symplectic_adjoint"):
        sol = symode.solve(
            func,
            y0,
            torch.tensor([0.0, 0.4], dtype=F64),
            method=name,
            steps=symode.FixedSteps(grid=grid),
            gradient=gradient,
            newton=symode.Newton(rtol=1e-14, atol=1e-14),  # the stages to round-off, as the reference's
        )
        torch.testing.assert_close(sol.ys[-1], y_ref, rtol=1e-11, atol=1e-13)  # Newton's tolerance: 100 eps
        got = _flat(torch.autograd.grad(sol.ys[-1].pow(2).sum(), [y0, *func.parameters()]))
        assert float((got - ref).norm() / ref.norm()) < 1e-10, gradient


@pytest.mark.parametrize("name", IMPLICIT)
def test_exact_methods_agree_in_y0_parameters_and_output_times(name):
    """Every exact gradient method equals backprop to round-off, with outputs interpolated
    (the adaptive pairs) or on the fixed grid, and the output times requiring grad."""
    func = Stiff()
    y0 = torch.tensor([0.7, -0.4, 0.2], dtype=F64, requires_grad=True)
    results = {}
    for gradient in ["backprop", *EXACT]:
        t = torch.tensor([0.0, 0.3, 0.65, 1.0], dtype=F64, requires_grad=True)
        sol = symode.solve(func, y0, t, method=name, steps=_steps(name), gradient=gradient)
        loss = (sol.ys * torch.linspace(0.5, 1.5, 3, dtype=F64)).pow(2).sum()
        results[repr(gradient)] = _flat(torch.autograd.grad(loss, [y0, t, *func.parameters()]))
    ref = results["'backprop'"]
    for key, got in results.items():
        assert float((got - ref).norm() / ref.norm()) < 1e-10, key
    assert float(ref[3:7].abs().max()) > 0  # the output times' gradient is there to compare


def test_gradient_against_finite_differences():
    func = Stiff()
    y0 = torch.tensor([0.7, -0.4, 0.2], dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    steps = symode.FixedSteps(step_size=0.1)
    sol = symode.solve(func, y0, t, method="radauIIA5", steps=steps, gradient="symplectic_adjoint")
    (grad,) = torch.autograd.grad(sol.ys[-1].sum(), [y0])
    eps = 1e-6
    for i in range(3):
        e = torch.zeros(3, dtype=F64)
        e[i] = eps
        with torch.no_grad():
            plus = symode.solve(func, y0 + e, t, method="radauIIA5", steps=steps).ys[-1].sum()
            minus = symode.solve(func, y0 - e, t, method="radauIIA5", steps=steps).ys[-1].sum()
        assert abs(float((plus - minus) / (2 * eps)) - float(grad[i])) < 1e-8


@pytest.mark.parametrize("name", ["kvaerno5", "radauIIA5"])
def test_continuous_adjoint_with_an_implicit_backward_solve(name):
    """The continuous adjoint integrates its augmented system with the implicit method too
    (Newton's method preconditioned by the blocks J and -J^T): close to the exact gradient at a
    tight backward tolerance (adaptive), and to the step size's order (fixed). On a stiff field
    it is not: it reconstructs y backward in time, where the stiff modes grow (the exact
    methods' case)."""
    func = Stiff()
    func.decay.fill_(1.0)
    y0 = torch.tensor([0.7, -0.4, 0.2], dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=F64)
    grads = {}
    for gradient in ("backprop", symode.ContinuousAdjoint(rtol=1e-10, atol=1e-12)):
        sol = symode.solve(func, y0, t, method=name, steps=_steps(name), gradient=gradient)
        grads[str(gradient)] = _flat(torch.autograd.grad(sol.ys.pow(2).sum(), [y0, *func.parameters()]))
        if gradient != "backprop":
            assert sol.stats.num_jacobians > sol.stats.num_accepted  # the backward solve's Newton matrices
    exact, adjoint = grads["backprop"], grads[str(symode.ContinuousAdjoint(rtol=1e-10, atol=1e-12))]
    bound = 1e-4
    assert float((adjoint - exact).norm() / exact.norm()) < bound
    func.decay.copy_(torch.tensor([50.0, 5.0, 1.0], dtype=F64))  # stiff: the backward reconstruction of y errs
    sol = symode.solve(func, y0, t, method=name, steps=_steps(name), gradient=symode.ContinuousAdjoint(rtol=1e-10))
    adjoint = _flat(torch.autograd.grad(sol.ys.pow(2).sum(), [y0, *func.parameters()]))
    sol = symode.solve(func, y0, t, method=name, steps=_steps(name), gradient="symplectic_adjoint")
    exact = _flat(torch.autograd.grad(sol.ys.pow(2).sum(), [y0, *func.parameters()]))
    assert float((adjoint - exact).norm() / exact.norm()) > 10 * bound


@pytest.mark.parametrize("name", ["kvaerno3", "gl4"])
def test_decreasing_time_tuple_states_and_one_output_time(name):
    func = Stiff()
    func.decay.fill_(1.0)  # backward in time a stiff decay is a stiff growth: not a problem to solve
    parts = (torch.tensor([0.7, -0.4], dtype=F64, requires_grad=True), torch.tensor([0.2], dtype=F64))

    def tuple_field(t, y):
        out = func(t, torch.cat(y))
        return out[:2], out[2:]

    t = torch.tensor([1.0, 0.6, 0.0], dtype=F64)
    grads = []
    for gradient in ("backprop", "symplectic_adjoint"):
        sol = symode.solve(
            tuple_field,
            parts,
            t,
            method=name,
            steps=_steps(name),
            gradient=gradient,
            adjoint_params=tuple(func.parameters()),
        )
        grads.append(_flat(torch.autograd.grad(sol.ys[0].sum() + sol.ys[1].sum(), [parts[0], *func.parameters()])))
    assert float((grads[0] - grads[1]).norm() / grads[0].norm()) < 1e-10
    one = symode.solve(func, torch.cat(parts), t[:1], method=name, steps=_steps(name), gradient="symplectic_adjoint")
    torch.testing.assert_close(one.ys[0], torch.cat(parts), rtol=0, atol=0)
    scalar = symode.solve(lambda t, y: -3.0 * y, torch.tensor(1.0, dtype=F64), t, method=name, steps=_steps(name))
    assert abs(float(scalar.ys[-1]) - math.exp(3.0)) < 1e-4 * math.exp(3.0)


def test_an_event_with_an_implicit_method():
    """y' = -k y from 1 until y = 0.5: t* = ln 2 / k, and dt*/dk = -ln 2 / k^2, by every exact method."""
    k = torch.tensor(2.0, dtype=F64, requires_grad=True)
    y0 = torch.tensor([1.0], dtype=F64)
    grads = []
    for gradient in ("backprop", "symplectic_adjoint"):
        sol = symode.solve(
            lambda t, y: -k * y,
            y0,
            torch.tensor([0.0, 5.0], dtype=F64),
            method="kvaerno5",
            steps=symode.AdaptiveSteps(rtol=1e-10, atol=1e-12),
            gradient=gradient,
            event=lambda t, y: y[0] - 0.5,
            adjoint_params=(k,),
        )
        assert abs(float(sol.ts[-1]) - math.log(2) / 2) < 1e-8
        grads.append(float(torch.autograd.grad(sol.ts[-1], [k])[0]))
        assert abs(grads[-1] + math.log(2) / 4) < 1e-6  # to the Hermite interpolant's accuracy
    assert abs(grads[0] - grads[1]) < 1e-12


# --------------------------------------------------------------------------------------
# memory


def test_symplectic_adjoint_memory_grows_by_one_state_per_step():
    """The deterministic profiler measure (``symode.bench.peak_memory``) of one training iteration
    with N = 5, 10, 20 fixed sdirk2 steps: the implicit symplectic adjoint's peak grows by
    exactly one state per step; backprop's by at least its stages' network uses per step."""
    torch.manual_seed(0)
    func = MLPField(8, 32).to(F64)
    y0 = torch.randn(4, 8, dtype=F64, requires_grad=True)
    state = y0.numel() * 8
    t = torch.tensor([0.0, 1.0], dtype=F64)

    def iteration(n, gradient):
        sol = symode.solve(func, y0, t, method="sdirk2", steps=symode.FixedSteps(step_size=1.0 / n), gradient=gradient)
        sol.ys[-1].pow(2).mean().backward()

    def peak(n, gradient):
        for p in [y0, *func.parameters()]:
            p.grad = None
        return peak_memory(iteration, n, gradient).peak_bytes

    sa = [peak(n, "symplectic_adjoint") for n in (5, 10, 20)]
    # one state per step, and 8 bytes (one float64) that rk4's symplectic adjoint shows on this
    # measure too (before the Jacobian was kept across steps, the peak was in its formation in the
    # backward pass, where they were not seen)
    assert sa[1] - sa[0] == 5 * (state + 8) and sa[2] - sa[1] == 10 * (state + 8), (sa, state)
    bp = [peak(n, "backprop") for n in (5, 10)]
    hidden = 2 * 4 * 32 * 8  # one use of f saves at least its hidden activations
    assert bp[1] - bp[0] >= 5 * 2 * hidden


# --------------------------------------------------------------------------------------
# never silent


def test_refusals_name_the_argument_and_the_fix():
    func = Stiff()
    y0 = torch.tensor([0.7, -0.4, 0.2], dtype=F64)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    with pytest.raises(ValueError, match="compile=False"):
        symode.solve(func, y0, t, method="kvaerno5", compile=True)
    with pytest.raises(ValueError, match="float32 or float64"):
        symode.solve(lambda t, y: -y, y0.half(), t, method="kvaerno5", steps=symode.AdaptiveSteps(rtol=1e-2))
    with pytest.raises(ValueError, match="implicit methods"):
        symode.solve(func, y0, t, method="dopri5", newton=symode.Newton())
    with pytest.raises(TypeError, match=r"symode\.Newton"):
        symode.solve(func, y0, t, method="kvaerno5", newton={"max_iters": 3})
    with pytest.raises(ValueError, match="max_iters"):
        symode.Newton(max_iters=0)
    with pytest.raises(ValueError, match=r"Newton\.rtol"):
        symode.Newton(rtol=-1.0)
    with pytest.raises(ValueError, match="continuous extension"):
        symode.solve(func, y0, t, method="gl4", steps=symode.FixedSteps(step_size=0.1, interp="cubic"))


@pytest.mark.parametrize("gradient", ["backprop", "symplectic_adjoint", "checkpoint"])
def test_a_func_that_draws_random_numbers_is_refused(gradient):
    y0 = torch.tensor([0.7, -0.4, 0.2], dtype=F64, requires_grad=True)
    with pytest.raises(ValueError, match="random numbers"):
        symode.solve(
            lambda t, y: -y + 0.01 * torch.randn_like(y),
            y0,
            torch.tensor([0.0, 1.0], dtype=F64),
            method="sdirk2",
            steps=symode.FixedSteps(step_size=0.1),
            gradient=gradient,
        )


class _Counting(torch.nn.Module):
    """Counts its evaluations in a buffer; ``uses_count``: whether its output depends on it."""

    def __init__(self, uses_count: bool):
        super().__init__()
        self.uses_count = uses_count
        self.register_buffer("count", torch.zeros((), dtype=F64))
        self.rate = torch.nn.Parameter(torch.tensor(3.0, dtype=F64))

    def forward(self, t, y):
        self.count += 1
        return -(self.rate + (1e-3 * self.count if self.uses_count else 0.0)) * y


@pytest.mark.parametrize("gradient", ["backprop", "symplectic_adjoint", "checkpoint"])
def test_a_func_whose_output_depends_on_buffers_it_changes_is_refused(gradient):
    """Newton's iterates would each see another field: refused by every gradient method, naming
    the implicit method and the fix. A buffer the output ignores (a counter, BatchNorm's
    running statistics in training mode) is allowed: the gradient is the closed form's."""
    y0 = torch.tensor([0.7, -0.4], dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    steps = symode.FixedSteps(step_size=0.1)
    with pytest.raises(ValueError, match=r"buffers while its output depends on them.*'sdirk2'.*Newton iterate"):
        symode.solve(_Counting(True), y0, t, method="sdirk2", steps=steps, gradient=gradient)
    func = _Counting(False)
    sol = symode.solve(func, y0, t, method="sdirk2", steps=steps, gradient=gradient)
    assert func.count > 0
    grad = torch.autograd.grad(sol.ys[-1].sum(), [y0, func.rate])
    # sdirk2 on y' = -r y: y_1 = R(-r h)^10 y0, R the method's stability function
    sdirk = symode.TABLEAUS["sdirk2"]
    a, b = torch.tensor(sdirk.a, dtype=F64), torch.tensor(sdirk.b, dtype=F64)
    rate = func.rate.detach().clone().requires_grad_(True)
    z = -rate * 0.1
    growth = (1 + z * b @ torch.linalg.solve(torch.eye(len(b), dtype=F64) - z * a, torch.ones(len(b), dtype=F64))) ** 10
    expected = torch.autograd.grad((growth * y0.detach()).sum(), rate)[0]
    torch.testing.assert_close(grad[0], growth.detach().expand(2), rtol=1e-10, atol=0)
    torch.testing.assert_close(grad[1], expected, rtol=1e-9, atol=0)


def test_a_tensor_the_stages_cannot_differentiate_is_refused():
    """Backprop differentiates the stage equations in the parameters it knows: a tensor that
    func captures and that requires grad would get no gradient through them."""
    k = torch.tensor(2.0, dtype=F64, requires_grad=True)
    y0 = torch.tensor([1.0], dtype=F64)
    with pytest.raises(ValueError, match="adjoint_params"):
        sol = symode.solve(
            lambda t, y: -k * y,
            y0,
            torch.tensor([0.0, 1.0], dtype=F64),
            method="sdirk2",
            steps=symode.FixedSteps(step_size=0.1),
        )
        sol.ys.sum().backward()
    sol = symode.solve(
        lambda t, y: -k * y,
        y0,
        torch.tensor([0.0, 1.0], dtype=F64),
        method="sdirk2",
        steps=symode.FixedSteps(step_size=0.1),
        adjoint_params=(k,),
    )
    (g,) = torch.autograd.grad(sol.ys[-1].sum(), [k])
    assert abs(float(g) - (-1.0 * math.exp(-2.0))) < 1e-3  # d/dk e^{-k} at k = 2, to sdirk2's accuracy


@pytest.mark.parametrize("gradient", ["backprop", "symplectic_adjoint"])
def test_double_backward_is_refused(gradient):
    """A gradient with a graph (create_graph=True, e.g. a gradient penalty) would miss the stage
    equations' part of the second derivative: refused when it is asked for."""
    func = Stiff()
    y0 = torch.tensor([0.7, -0.4, 0.2], dtype=F64, requires_grad=True)
    steps = symode.FixedSteps(step_size=0.1)
    sol = symode.solve(func, y0, torch.tensor([0.0, 0.5], dtype=F64), method="sdirk2", steps=steps, gradient=gradient)
    with pytest.raises(RuntimeError, match="differentiated twice"):
        torch.autograd.grad(sol.ys[-1].sum(), [y0], create_graph=True)


def test_newton_that_cannot_converge_says_where():
    """A fixed step too long for the chord iteration: SolveError with the time reached; an
    adaptive solve instead rejects such steps and retries them smaller."""
    y0 = torch.tensor([1.5], dtype=F64)

    def cubic(t, y):
        return -(y**3) * 40.0

    t = torch.tensor([0.0, 1.0], dtype=F64)
    with pytest.raises(symode.SolveError, match="Newton") as raised:
        symode.solve(
            cubic,
            y0,
            t,
            method="implicit_euler",
            steps=symode.FixedSteps(step_size=0.5),
            newton=symode.Newton(max_iters=2),
        )
    assert raised.value.t == 0.0
    sol = symode.solve(
        cubic,
        y0,
        t,
        method="kvaerno3",
        steps=symode.AdaptiveSteps(rtol=1e-6, atol=1e-8, first_step=0.5),
        newton=symode.Newton(max_iters=2),
    )
    assert sol.stats.num_rejected > 0
    exact = 1.5 / math.sqrt(1 + 80 * 1.5**2)
    assert abs(float(sol.ys[-1]) - exact) < 1e-4


def test_torchdiffeq_api_with_implicit_methods():
    """``odeint(method='radauIIA5', options={'step_size': h, 'max_iters': n})``, torchdiffeq's names,
    and odeint_adjoint / odeint_symplectic_adjoint with them."""
    func = Stiff()
    y0 = torch.tensor([0.7, -0.4, 0.2], dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=F64)
    ys = symode.odeint(func, y0, t, method="radauIIA5", options={"step_size": 0.05, "max_iters": 20})
    ref = symode.solve(func, y0, t, method="radauIIA5", steps=symode.FixedSteps(step_size=0.05)).ys
    torch.testing.assert_close(ys, ref, rtol=0, atol=1e-14)
    a = torch.autograd.grad(ys.sum(), [y0])[0]
    b = torch.autograd.grad(
        symode.odeint_symplectic_adjoint(func, y0, t, method="radauIIA5", options={"step_size": 0.05}).sum(), [y0]
    )[0]
    torch.testing.assert_close(a, b, rtol=1e-10, atol=0)
    with pytest.raises(ValueError, match="unknown option"):
        symode.odeint(func, y0, t, method="dopri5", options={"max_iters": 3})
    krylov = symode.Newton(jacobian="krylov", rtol=1e-12, atol=1e-12)
    ys_krylov = symode.odeint(func, y0, t, method="radauIIA5", options={"step_size": 0.05, "newton": krylov})
    torch.testing.assert_close(ys_krylov, ref, rtol=0, atol=1e-10)
    with pytest.raises(TypeError, match=r"options\['newton'\]"):
        symode.odeint(func, y0, t, method="radauIIA5", options={"step_size": 0.05, "newton": "krylov"})
    with pytest.raises(ValueError, match="both 'max_iters' and 'newton'"):
        symode.odeint(func, y0, t, method="radauIIA5", options={"step_size": 0.05, "newton": krylov, "max_iters": 3})


def test_a_batched_jacobian_gives_the_dense_ones_results():
    """``Newton(jacobian="batched")`` forms each sample's block only (D products, not n): on a
    batch of independent samples the same solution and gradients as the dense Jacobian; on a
    batch whose samples interact (it only preconditions) the same solution, to Newton's tolerance."""
    torch.manual_seed(0)
    func = MLPField(4, 16).to(F64)
    y0 = torch.randn(6, 4, dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=F64)

    def stiff(t, y):
        return func(t, y) - torch.tensor([1.0, 10.0, 100.0, 1000.0], dtype=F64) * y

    results = {}
    for jacobian in ("dense", "batched"):
        for gradient in ("backprop", "symplectic_adjoint"):
            sol = symode.solve(
                stiff,
                y0,
                t,
                method="radauIIA3",
                steps=symode.FixedSteps(step_size=0.1),
                gradient=gradient,
                adjoint_params=tuple(func.parameters()),
                newton=symode.Newton(jacobian=jacobian),
            )
            grads = torch.autograd.grad(sol.ys.pow(2).sum(), [y0, *func.parameters()])
            results[jacobian, gradient] = (sol.ys.detach(), _flat(grads), sol.stats.num_jacobians)
    ys, grad, _ = results["dense", "backprop"]
    for key, (other_ys, other_grad, _) in results.items():
        torch.testing.assert_close(other_ys, ys, rtol=1e-12, atol=1e-14)
        assert float((other_grad - grad).norm() / grad.norm()) < 1e-10, key

    def coupled(t, y):
        return stiff(t, y) - 5.0 * (y - y.mean(0))

    solutions = [
        symode.solve(
            coupled,
            y0.detach(),
            t,
            method="radauIIA3",
            steps=symode.FixedSteps(step_size=0.1),
            newton=symode.Newton(jacobian=jacobian),
        ).ys
        for jacobian in ("dense", "batched")
    ]
    torch.testing.assert_close(solutions[1], solutions[0], rtol=1e-8, atol=1e-10)
    with pytest.raises(ValueError, match=r"Newton\.jacobian"):
        symode.Newton(jacobian="sparse")


def test_a_func_that_differentiates_itself_and_a_state_too_large_for_a_dense_jacobian():
    """A field that calls autograd inside (a CNF's trace) cannot be batched by vmap: its
    Jacobian is formed one product at a time, and every exact method still agrees. A state
    too large for a dense Jacobian is refused with the batched Jacobian as the fix."""

    def gradient_field(t, y):
        with torch.enable_grad():
            x = y if y.requires_grad else y.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(torch.sin(x).sum(), x, create_graph=True)
        return -20.0 * y + 0.5 * g

    y0 = torch.tensor([[0.3, -0.2], [0.1, 0.4]], dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 0.5], dtype=F64)
    grads = []
    for gradient in ("backprop", "symplectic_adjoint"):
        sol = symode.solve(
            gradient_field, y0, t, method="sdirk2", steps=symode.FixedSteps(step_size=0.1), gradient=gradient
        )
        grads.append(torch.autograd.grad(sol.ys[-1].sum(), [y0])[0])
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-10, atol=1e-14)
    big = torch.zeros(100, 100, dtype=F64)
    with pytest.raises(ValueError, match="batched"):
        symode.solve(lambda t, y: -y, big, t, method="sdirk2", steps=symode.FixedSteps(step_size=0.1))
    sol = symode.solve(
        lambda t, y: -y,
        big + 1.0,
        t,
        method="sdirk2",
        steps=symode.FixedSteps(step_size=0.1),
        newton=symode.Newton(jacobian="batched"),
    )
    assert abs(float(sol.ys[-1, 0, 0]) - math.exp(-0.5)) < 1e-3


@pytest.mark.parametrize("name", ["kvaerno4", "kvaerno5"])  # kvaerno3 takes 133 steps here
def test_a_jacobian_is_kept_across_steps_and_retries(name):
    """On a problem whose Jacobian is constant Newton's iteration converges at once, so the
    Jacobian formed at the first step serves every step and every retry of a rejected one
    (one Jacobian for the solve); every exact method agrees with backprop (their recomputations
    form it at the point the forward solve noted, and find the same stages)."""
    A = torch.tensor([[-1.0, 5.0, 0.0], [0.0, -30.0, 0.0], [0.0, 0.0, -1000.0]], dtype=F64)
    y0 = torch.tensor([1.0, 1.0, 1.0], dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 0.5], dtype=F64)
    grads = {}
    for gradient in ["backprop", *EXACT]:
        sol = symode.solve(
            lambda t, y: y @ A.T + torch.sin(t),
            y0,
            t,
            method=name,
            steps=symode.AdaptiveSteps(rtol=1e-4, atol=1e-7, first_step=0.5),
            gradient=gradient,
        )
        if gradient == "backprop":
            assert sol.stats.num_rejected > 0 and sol.stats.num_jacobians == 1, sol.stats
        grads[repr(gradient)] = torch.autograd.grad(sol.ys[-1].sum(), [y0])[0]
    ref = grads["'backprop'"]
    for key, got in grads.items():
        assert float((got - ref).norm() / ref.norm()) < 1e-12, key


def test_kept_jacobians_on_a_nonlinear_stiff_problem(name="kvaerno3"):
    """Robertson over [0, 10] (kvaerno3: 88 steps): the Jacobian is kept while Newton's iteration converges fast,
    formed again where it does not (and a step whose iteration fails with a kept one is solved
    again with a new one), so there are fewer Jacobians than steps; every exact method agrees
    with backprop in ``y0`` and the rate constants, and the solution with scipy's Radau."""
    func = Robertson()
    y0 = torch.tensor([1.0, 0.0, 0.0], dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 1.0, 10.0], dtype=F64)
    steps = symode.AdaptiveSteps(rtol=1e-5, atol=1e-9, interpolate=False)
    grads = {}
    for gradient in ["backprop", *EXACT]:
        sol = symode.solve(func, y0, t, method=name, steps=steps, gradient=gradient)
        if gradient == "backprop":
            assert 1 < sol.stats.num_jacobians < 0.75 * sol.stats.num_accepted, sol.stats  # 47 for 88
            ys, kept = sol.ys.detach(), sol.stats
        grads[repr(gradient)] = _flat(torch.autograd.grad(sol.ys[1:, 1].sum() * 1e4, [y0, func.log_k]))
    ref = grads["'backprop'"]
    for key, got in grads.items():
        assert float((got - ref).norm() / ref.norm()) < 1e-10, key
    exact = solve_ivp(
        lambda s, y: func(None, torch.tensor(y)).detach().numpy(),
        (0, 10),
        [1.0, 0.0, 0.0],
        "Radau",
        t_eval=[0.0, 1.0, 10.0],
        rtol=1e-12,
        atol=1e-16,
    ).y.T
    units = np.abs(ys.numpy() - exact) / (1e-9 + 1e-5 * np.abs(exact))
    assert units.max() < 10.0, (units.max(axis=0), kept)


def test_a_step_that_fails_with_a_kept_jacobian_is_solved_again_with_a_new_one(monkeypatch):
    """A rate that jumps from 1 to 1e4 at t = 0.5: the Jacobian kept from the slow part fails
    the stiff steps (with ``max_iters=4``), which are solved again from a Jacobian at their own
    start, without a rejection; the recomputations start from that one too, so every exact
    method agrees with backprop."""
    from symode import _newton

    anew = []
    inside_get = []
    get, fresh = _newton._Recorder.get, _newton._Recorder.fresh

    def spy_get(self, *args):
        inside_get.append(True)
        try:
            return get(self, *args)
        finally:
            inside_get.pop()

    def spy_fresh(self, t, *args):
        if not inside_get:
            anew.append(t)
        return fresh(self, t, *args)

    monkeypatch.setattr(_newton._Recorder, "get", spy_get)
    monkeypatch.setattr(_newton._Recorder, "fresh", spy_fresh)

    a = torch.tensor([1.0, -2.0], dtype=F64, requires_grad=True)

    def jump(t, y):
        return -(1 + 1e4 * torch.sigmoid((t - 0.5) * 200)) * (y - a * torch.cos(t))

    grads = {}
    for gradient in ["backprop", *EXACT]:
        anew.clear()
        y0 = torch.tensor([0.3, 1.0], dtype=F64, requires_grad=True)
        sol = symode.solve(
            jump,
            y0,
            torch.tensor([0.0, 0.45, 0.7], dtype=F64),
            method="kvaerno3",
            steps=symode.AdaptiveSteps(rtol=1e-5, atol=1e-7),
            gradient=gradient,
            adjoint_params=(a,),
            newton=symode.Newton(max_iters=4),
        )
        assert anew and all(t > 0.45 for t in anew), anew  # steps after the jump
        grads[repr(gradient)] = _flat(torch.autograd.grad(sol.ys[1:].pow(2).sum(), [y0, a]))
    ref = grads["'backprop'"]
    for key, got in grads.items():
        assert float((got - ref).norm() / ref.norm()) < 1e-10, key


@pytest.mark.parametrize("gradient", ["symplectic_adjoint", "checkpoint"])
def test_a_second_backward_pass_through_the_same_graph(gradient):
    """``backward(retain_graph=True)`` twice: the second pass recomputes the steps from the same
    noted Jacobians (the first pass drops only the one it kept), so it gives the same gradient,
    which is backprop's."""
    func = Stiff()
    y0 = torch.tensor([0.7, -0.4, 0.2], dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=F64)
    steps = _steps("kvaerno3")
    ref = torch.autograd.grad(symode.solve(func, y0, t, method="kvaerno3", steps=steps).ys.sum(), y0)[0]
    sol = symode.solve(func, y0, t, method="kvaerno3", steps=steps, gradient=gradient)
    assert sol.stats.num_jacobians < sol.stats.num_accepted  # kept across steps
    first = torch.autograd.grad(sol.ys.sum(), y0, retain_graph=True)[0]
    second = torch.autograd.grad(sol.ys.sum(), y0)[0]
    torch.testing.assert_close(second, first, rtol=0, atol=0)
    torch.testing.assert_close(first, ref, rtol=1e-10, atol=0)


@pytest.mark.parametrize("gradient", ["backprop", "symplectic_adjoint"])
def test_an_overflowing_cotangent_propagates_as_in_an_explicit_method(gradient):
    """float32, solved backwards through a decay of rate 50 (the state grows to 5e21): the loss's
    cotangents overflow. They come out non-finite, as dopri5's do, instead of failing the adjoint's
    refinement as "did not converge" after 200 sweeps."""
    func = Stiff().float()
    y0 = torch.tensor([0.7, -0.4, 0.2], requires_grad=True)
    t = torch.tensor([1.0, 0.0])
    grads = []
    for method, steps in (("sdirk2", symode.FixedSteps(step_size=0.05)), ("dopri5", None)):
        sol = symode.solve(func, y0, t, method=method, steps=steps, gradient=gradient)
        assert bool(torch.isfinite(sol.ys).all()) and float(sol.ys.abs().max()) > 1e20
        grads.append(torch.autograd.grad(sol.ys.pow(2).sum(), y0)[0])
    assert not bool(torch.isfinite(grads[0]).all()) and not bool(torch.isfinite(grads[1]).all())


def test_float32_at_the_default_tolerances(name="kvaerno5"):  # kvaerno3 takes 578 steps, 25 s
    """float32 with the default ``rtol = 1e-7`` (torchdiffeq's, near float32's epsilon): Newton's
    tolerance is floored at ``100 eps`` instead of 1% of ``rtol``, which float32 cannot hold (the
    solve stalled at ``t = 5e-6`` after 100,000 steps); the solution and the symplectic adjoint's
    gradient are float64's to float32's resolution, dense and matrix-free."""
    a = torch.tensor([[-30.0, 1.0], [0.0, -2.0]], dtype=F64)

    def field(t, y):
        return y @ a.to(y.dtype).T + torch.sin(t)

    t = torch.tensor([0.0, 1.0], dtype=F64)
    ref_y0 = torch.tensor([1.0, 2.0], dtype=F64, requires_grad=True)
    ref = symode.solve(field, ref_y0, t, method=name, steps=symode.AdaptiveSteps(rtol=1e-10, atol=1e-12))
    ref_grad = torch.autograd.grad(ref.ys[-1].pow(2).sum(), ref_y0)[0]
    for jacobian in ("dense", "krylov"):
        y0 = ref_y0.detach().float().requires_grad_(True)
        sol = symode.solve(
            field,
            y0,
            t.float(),
            method=name,
            steps=symode.AdaptiveSteps(max_num_steps=2000),  # the default rtol and atol
            gradient="symplectic_adjoint",
            newton=symode.Newton(jacobian=jacobian),
        )
        assert sol.stats.num_accepted < 1000 and sol.stats.num_rejected < 50, sol.stats
        torch.testing.assert_close(sol.ys.double(), ref.ys.detach(), rtol=1e-5, atol=1e-6)
        grad = torch.autograd.grad(sol.ys[-1].pow(2).sum(), y0)[0]
        torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-4, atol=1e-5)
