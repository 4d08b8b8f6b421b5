"""Dense output: the continuous extensions, the interpolated solve, and exact gradients through it.

Truths: the order conditions of a continuous extension (``sum_i b_i(theta) Phi_i(t) =
theta^|t| / gamma(t)``, the rooted trees of ``test_tableau``), the observed order of the
interpolation error on a problem with a closed form, scipy's DOP853 dense solution at tight
tolerance, backprop through the same computation (the exact methods, to round-off) and finite
differences (backprop itself).
"""

import math

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

import symode
from fields import Field
from symode._dense import dense_terms, interpolate, interpolation_stages, interpolation_tableau
from symode._implicit import implicit_step
from symode._runge_kutta import rk_step
from symode.gradients import GRADIENT_METHODS
from test_tableau import gamma, trees_of_order

F64 = torch.float64
ADAPTIVE = sorted(name for name, tab in symode.TABLEAUS.items() if tab.adaptive)
#: the order of each method's continuous extension (dopri5: Shampine's; tsit5: Tsitouras'; dopri8:
#: symode's; the others: the cubic Hermite interpolant, of at most the method's order)
DENSE_ORDER = {"adaptive_heun": 2, "fehlberg2": 2, "bosh3": 3, "dopri5": 4, "tsit5": 4, "dopri8": 5}
DENSE_ORDER |= {"kvaerno3": 3, "kvaerno4": 3, "kvaerno5": 3}  # the cubic Hermite interpolant of the ESDIRKs


def _step(f, tableau, *args, **kwargs):
    """One step of ``tableau``: an implicit one solves its stages (to round-off, fixed-step settings)."""
    if tableau.implicit:
        return implicit_step(f, tableau, *args, newton=symode.Newton().settings(F64), **kwargs)
    return rk_step(f, tableau, *args, **kwargs)


EXACT = [m for name, cls in sorted(GRADIENT_METHODS.items()) if cls.exact for m in cls.configurations()]


def _dense_residual(tableau, order: int) -> float:
    """The largest violation of the order-``order`` conditions of the extension, over a few theta."""
    A = np.array(tableau.a)
    memo: dict = {}

    def phi(tree):
        if tree not in memo:
            p = np.ones(A.shape[0])
            for child in tree:
                p = p * (A @ phi(child))
            memo[tree] = p
        return memo[tree]

    worst = 0.0
    for theta in (0.1, 0.37, 0.5, 0.81, 1.0):
        w = np.zeros(A.shape[0])
        for i, v in dense_terms(tableau, theta)[0]:
            w[i] = v
        worst = max(worst, max(abs(w @ phi(t) - theta**order / gamma(t)) for t in trees_of_order(order)))
    return worst


@pytest.mark.parametrize("name", ADAPTIVE)
def test_continuous_extension_has_its_order(name):
    tableau = interpolation_tableau(symode.TABLEAUS[name])
    order = DENSE_ORDER[name]
    assert all(_dense_residual(tableau, q) < 1e-12 for q in range(1, order + 1))
    assert _dense_residual(tableau, order + 1) > 1e-6  # and not more: the order is not understated


@pytest.mark.parametrize("name", ADAPTIVE)
def test_continuous_extension_is_fsal_and_meets_the_step(name):
    """Every interpolation tableau evaluates f(t_n+1, y_n+1) as its last stage (reused by the next
    step), the interpolant ends on y_n+1 and its slope there is f(t_n+1, y_n+1) (C1)."""
    tableau = interpolation_tableau(symode.TABLEAUS[name])
    # an implicit method's last stage is f(t_n+1, y_n+1) too: its first is explicit, its last stiffly accurate
    last_is_f_at_the_end = tableau.implicit and tableau.stiffly_accurate and tableau.explicit_first_stage
    assert (tableau.fsal or last_is_f_at_the_end) and tableau.solution_stages == symode.TABLEAUS[name].solution_stages
    values, slopes = dense_terms(tableau, 1.0)
    b = dict(values)
    assert all(abs(b.get(i, 0.0) - bi) < 1e-14 for i, bi in enumerate(tableau.b))
    slope = dict(slopes)
    last = tableau.num_stages - 1
    tol = 1e-10 if name == "tsit5" else 1e-12  # Tsitouras' published digits
    assert abs(slope.get(last, 0.0) - 1.0) < tol and all(abs(v) < tol for i, v in slope.items() if i != last)


@pytest.mark.parametrize("name", ADAPTIVE)
def test_interpolation_error_has_the_observed_order(name):
    """One step of y' = (cos t) y from t = 0.3, interpolated within it: the local error of an
    extension of order q (the largest over a few theta) shrinks like h^(q+1)."""
    tableau = interpolation_tableau(symode.TABLEAUS[name])
    t0 = 0.3
    y0 = torch.tensor([1.0], dtype=F64)

    def f(t, y):
        return math.cos(t) * y

    def error(h):
        _, _, ks, _ = _step(f, tableau, t0, t0 + h, y0)
        worst = 0.0
        for theta in (0.2, 0.37, 0.6, 0.85):
            y = interpolate(tableau, y0, h, theta, ks)
            worst = max(worst, abs(float(y) - math.exp(math.sin(t0 + theta * h) - math.sin(t0))))
        return worst

    hs = [0.4, 0.2, 0.1] if DENSE_ORDER[name] >= 4 else [0.05, 0.025, 0.0125]  # asymptotic, above round-off
    errors = [error(h) for h in hs]
    slopes = [math.log2(a / b) for a, b in zip(errors, errors[1:])]
    assert min(slopes) > DENSE_ORDER[name] + 1 - 0.6, (errors, slopes)


def _swirl(t, y):
    return torch.stack([-y[..., 1], y[..., 0]], dim=-1) * (1 + 0.5 * torch.cos(t))


@pytest.mark.parametrize("name", ADAPTIVE)
def test_cost_does_not_depend_on_the_number_of_output_times(name):
    y0 = torch.tensor([1.0, 0.0], dtype=F64)
    steps = symode.AdaptiveSteps(rtol=1e-6, atol=1e-8)
    stats = [
        symode.solve(_swirl, y0, torch.linspace(0, 5, n, dtype=F64), method=name, steps=steps).stats for n in (2, 1000)
    ]
    assert stats[0] == stats[1]
    clipped = symode.AdaptiveSteps(rtol=1e-6, atol=1e-8, interpolate=False)
    many = symode.solve(_swirl, y0, torch.linspace(0, 5, 1000, dtype=F64), method=name, steps=clipped).stats
    assert many.nfe_forward > stats[0].nfe_forward  # the other behaviour: every output ends a step


def _ode_demo(t, y):
    return (y**3) @ torch.tensor([[-0.1, 2.0], [-2.0, -0.1]], dtype=y.dtype)


_DEMO_A = np.array([[-0.1, 2.0], [-2.0, -0.1]])
_DEMO_Y0 = torch.tensor([2.0, 0.0], dtype=F64)


def _demo_scipy(method, t, rtol, atol):
    return solve_ivp(
        lambda t, y: (y**3) @ _DEMO_A, (0, 10), _DEMO_Y0.numpy(), method, t_eval=t, rtol=rtol, atol=atol
    ).y.T


@pytest.mark.parametrize("name, twin", [("dopri5", "RK45"), ("bosh3", "RK23")])
def test_interpolated_outputs_equal_scipys_dense_output(name, twin):
    """torchdiffeq's ode_demo dynamics, 1000 output times: scipy's twin takes the same steps and
    interpolates with the same extension (Shampine's for dopri5, the cubic Hermite for bosh3)."""
    t = torch.linspace(0, 10, 1000, dtype=F64)
    ys = symode.odeint(_ode_demo, _DEMO_Y0, t, method=name, rtol=1e-7, atol=1e-9).numpy()
    np.testing.assert_allclose(ys, _demo_scipy(twin, t.numpy(), 1e-7, 1e-9), rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ADAPTIVE)
def test_interpolated_outputs_are_as_accurate_as_the_step_ends(name):
    """Against scipy's DOP853 at 1e-13: the error of 1000 interpolated outputs is that of the solve
    at its own step ends (the outputs at the grid), within 1% (dopri8, whose extension is of
    order 5 for an 8th-order method: within 5 times)."""
    tableau = symode.TABLEAUS[name]
    rtol = 1e-7 if tableau.order > 2 and not tableau.implicit else 1e-5  # the ESDIRKs: few steps, same check
    steps = symode.AdaptiveSteps(rtol=rtol, atol=rtol * 1e-2)
    grid = symode.solve(_ode_demo, _DEMO_Y0, torch.tensor([0.0, 10.0], dtype=F64), method=name, steps=steps).grid
    t = torch.linspace(0, 10, 1000, dtype=F64)
    errors = []
    for times in (grid, t):
        ys = symode.solve(_ode_demo, _DEMO_Y0, times, method=name, steps=steps).ys.numpy()
        errors.append(np.abs(ys - _demo_scipy("DOP853", times.numpy(), 1e-13, 1e-13)).max())
    assert errors[1] <= (5.0 if name == "dopri8" else 1.01) * errors[0], errors


def test_step_ends_are_outputs_only_when_asked():
    t = torch.tensor([0.0, 0.3, 0.7, 1.0], dtype=F64)
    y0 = torch.tensor([1.0, 0.0], dtype=F64)
    dense = symode.solve(_swirl, y0, t, steps=symode.AdaptiveSteps(rtol=1e-5, atol=1e-7))
    clipped = symode.solve(_swirl, y0, t, steps=symode.AdaptiveSteps(rtol=1e-5, atol=1e-7, interpolate=False))
    assert 0.3 not in dense.grid.tolist() and dense.grid[-1] == 1.0
    assert all(v in clipped.grid.tolist() for v in t.tolist())
    torch.testing.assert_close(dense.ys, clipped.ys, rtol=0, atol=1e-5)
    with pytest.raises(TypeError, match="interpolate"):
        symode.AdaptiveSteps(interpolate="no")
    clipped_odeint = symode.odeint(_swirl, y0, t, rtol=1e-5, atol=1e-7, options={"interpolate": False})
    assert torch.equal(clipped_odeint, clipped.ys)


# ----------------------------------------------------------------------------------------------
# gradients


def _loss_and_grads(func, y0, t, method, gradient, rtol=1e-6):
    y0 = y0.detach().requires_grad_(True)
    t = t.detach().requires_grad_(True)
    sol = symode.solve(func, y0, t, method=method, steps=symode.AdaptiveSteps(rtol=rtol, atol=rtol), gradient=gradient)
    weights = torch.cos(torch.arange(sol.ys.numel(), dtype=F64).reshape(sol.ys.shape) * 0.37)
    loss = (weights * sol.ys**2).sum()
    inputs = (y0, t, *func.parameters())
    grads = torch.autograd.grad(loss, inputs, allow_unused=True)
    return loss.detach(), [torch.zeros_like(x) if g is None else g for g, x in zip(grads, inputs)], sol


@pytest.mark.parametrize("name", ADAPTIVE)
def test_exact_methods_equal_backprop_through_the_interpolant(name):
    """200 interpolated output times: every exact method equals backprop to 1e-12 in y0, the
    parameters and every output time."""
    func = Field(dim=3, hidden=8)
    y0 = torch.randn(2, 3, dtype=F64, generator=torch.Generator().manual_seed(0))
    t = torch.linspace(0.0, 1.5, 200, dtype=F64)
    rtol = 1e-6 if symode.TABLEAUS[name].order > 2 else 1e-4
    reference_loss, reference, sol = _loss_and_grads(func, y0, t, name, symode.Backprop(), rtol)
    assert sol.stats.num_accepted < 100  # most outputs lie inside steps
    for gradient in EXACT:
        loss, grads, _ = _loss_and_grads(func, y0, t, name, gradient, rtol)
        assert loss == reference_loss, gradient
        for g, r in zip(grads, reference):
            assert ((g - r).norm() / r.norm()).item() < 1e-12, gradient


def test_backprop_through_the_interpolant_matches_finite_differences():
    func = Field(dim=2, hidden=6, seed=3)
    y0 = torch.tensor([[0.5, -0.3]], dtype=F64)
    t = torch.tensor([0.0, 0.21, 0.55, 0.9, 1.3], dtype=F64)
    # fixed steps taken by the adaptive solve (first_step and loose tolerances would move the grid under
    # a perturbation); the grid is held fixed by replaying the accepted one
    _, grads, sol = _loss_and_grads(func, y0, t, "dopri5", symode.Backprop(), rtol=1e-4)
    assert sol.stats.num_accepted < len(t)  # outputs inside steps
    grid = sol.grid

    def loss_at(y0_, t_):
        ys = symode.solve(func, y0_, t_, steps=symode.AdaptiveSteps(rtol=1e-4, atol=1e-4)).ys
        return (torch.cos(torch.arange(ys.numel(), dtype=F64).reshape(ys.shape) * 0.37) * ys**2).sum()

    eps = 1e-6
    for k in (1, 2, 3):  # interior output times: moving them does not move the steps
        tp, tm = t.clone(), t.clone()
        tp[k] += eps
        tm[k] -= eps
        fd = (loss_at(y0, tp) - loss_at(y0, tm)) / (2 * eps)
        assert (
            symode.solve(func, y0, tp, steps=symode.AdaptiveSteps(rtol=1e-4, atol=1e-4)).grid.tolist() == grid.tolist()
        )
        assert abs(fd.item() - grads[1][k].item()) < 1e-7 * max(1.0, abs(fd.item()))


@pytest.mark.parametrize("gradient", EXACT, ids=repr)
def test_dense_output_fuzz_cases_agree_with_backprop(gradient):
    """Decreasing time, one output time and a 0-dim state, interpolated."""
    func = Field(dim=1, hidden=4, seed=2)

    class Scalar(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = Field(dim=1, hidden=4, seed=5)

        def forward(self, t, y):
            return self.inner(t, y.reshape(1, 1)).reshape(())

    cases = [
        (func, torch.tensor([[0.4]], dtype=F64), torch.linspace(1.0, -0.5, 37, dtype=F64)),
        (func, torch.tensor([[0.4]], dtype=F64), torch.tensor([0.3], dtype=F64)),
        (Scalar(), torch.tensor(0.7, dtype=F64), torch.linspace(0.0, 1.0, 23, dtype=F64)),
    ]
    for field, y0, t in cases:
        ref = _loss_and_grads(field, y0, t, "dopri5", symode.Backprop())[1]
        got = _loss_and_grads(field, y0, t, "dopri5", gradient)[1]
        for g, r in zip(got, ref):
            torch.testing.assert_close(g, r, rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("gradient", [g for g in EXACT if not isinstance(g, symode.Backprop)], ids=repr)
def test_stochastic_func_with_interpolated_outputs_is_replayed(gradient):
    """Dropout in training mode, 40 interpolated outputs: the methods that evaluate f again replay
    its random numbers, so they equal backprop."""

    class Noisy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = Field(dim=3, hidden=16, seed=7)
            self.drop = torch.nn.Dropout(0.2)

        def forward(self, t, y):
            return self.drop(self.inner(t, y))

    func = Noisy()
    y0 = torch.randn(2, 3, dtype=F64, generator=torch.Generator().manual_seed(1))
    t = torch.linspace(0.0, 1.0, 40, dtype=F64)
    torch.manual_seed(11)
    ref = _loss_and_grads(func, y0, t, "dopri5", symode.Backprop(), rtol=1e-3)[1]
    torch.manual_seed(11)
    got = _loss_and_grads(func, y0, t, "dopri5", gradient, rtol=1e-3)[1]
    for g, r in zip(got, ref):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)


def test_interpolation_stages_include_the_fsal_stage():
    dopri5 = interpolation_tableau(symode.TABLEAUS["dopri5"])
    assert dopri5.solution_stages == (0, 1, 2, 3, 4, 5) and interpolation_stages(dopri5) == tuple(range(7))
    fehlberg2 = interpolation_tableau(symode.TABLEAUS["fehlberg2"])
    assert fehlberg2.num_stages == 4 and fehlberg2.c[-1] == 1.0 and fehlberg2.a[-1][:3] == fehlberg2.b[:3]


@pytest.mark.parametrize(
    "b_dense, match",
    [
        (((1.0,), (0.0,)), "b_dense\\[0\\] sums to"),  # b_0(1) = 1 but b_0 = 1/2
        (((0.5,), (0.5,), (0.0,), (0.0,)), "must have 2 rows"),
        (((0.5, 0.0), (0.5,)), "one, nonzero length"),
        (((0.25, 0.25), (0.25, 0.25)), "theta\\*\\*1 coefficients"),
    ],
)
def test_invalid_continuous_extensions_are_refused(b_dense, match):
    with pytest.raises(ValueError, match=match):
        symode.ButcherTableau("heun", c=(0, 1), a=((), (1,)), b=(0.5, 0.5), order=2, b_dense=b_dense)


def test_symplectic_adjoint_memory_with_many_interpolated_outputs():
    """1000 interpolated outputs cost the symplectic adjoint what the outputs and the loss on them
    take by themselves (the same loss on a tensor of 1000 outputs), within 5% of the outputs'
    size: its floor (steps + stages + network) is unchanged (deterministic profiler measure)."""
    from symode.bench import peak_memory

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 8))
    y0 = torch.randn(16, 8, requires_grad=True)

    def iteration(n):
        sol = symode.solve(
            lambda s, y: net(y),
            y0,
            torch.linspace(0.0, 2.0, n),
            steps=symode.AdaptiveSteps(rtol=1e-5, atol=1e-7),
            gradient="symplectic_adjoint",
            adjoint_params=tuple(net.parameters()),
        )
        sol.ys.pow(2).mean().backward()
        return sol.stats.num_accepted

    def outputs_and_loss(n):
        torch.zeros(n, 16, 8).requires_grad_(True).pow(2).mean().backward()

    few, many = peak_memory(iteration, 2), peak_memory(iteration, 1000)
    assert few.result == many.result  # the same steps
    own = peak_memory(outputs_and_loss, 1000).peak_bytes - peak_memory(outputs_and_loss, 2).peak_bytes
    outputs = 1000 * 16 * 8 * 4
    assert abs((many.peak_bytes - few.peak_bytes) - own) < 0.05 * outputs


# ----------------------------------------------------------------------------------------------
# the dense solution object


@pytest.mark.parametrize("name", ADAPTIVE + ["rk4"])
def test_dense_solution_agrees_with_the_interpolated_outputs(name):
    func = Field(dim=3, hidden=8)
    y0 = torch.randn(2, 3, dtype=F64, generator=torch.Generator().manual_seed(0))
    t = torch.linspace(0.0, 1.5, 37, dtype=F64)
    steps = symode.FixedSteps(step_size=0.1) if name == "rk4" else symode.AdaptiveSteps(rtol=1e-6, atol=1e-8)
    sol = symode.solve(func, y0, t, method=name, steps=steps, dense=True)
    if name != "rk4":  # fixed steps end on every output time: compare with interpolated outputs of the adaptive solve
        plain = symode.solve(func, y0, t, method=name, steps=steps)
        torch.testing.assert_close(sol.ys, plain.ys, rtol=0, atol=0)
    torch.testing.assert_close(sol.dense(t), sol.ys, rtol=1e-13, atol=1e-13)
    # the slope at the step ends is f there (every extension is C1), and between them the derivative of the
    # interpolant (central differences)
    ends = sol.grid
    with torch.no_grad():
        f_ends = torch.stack([func(s, y) for s, y in zip(ends, sol.dense(ends))])
    tol = 1e-9 if name == "tsit5" else 1e-11  # Tsitouras' published digits
    if symode.TABLEAUS[name].implicit:  # the last stage is f at the converged stage state: y_n+1 to Newton's tolerance
        tol = 1e-6
    torch.testing.assert_close(sol.dense.derivative(ends).detach(), f_ends, rtol=tol, atol=tol)
    mid = torch.tensor([0.123, 0.777, 1.3], dtype=F64)
    eps = 1e-6
    fd = (sol.dense(mid + eps) - sol.dense(mid - eps)) / (2 * eps)
    torch.testing.assert_close(sol.dense.derivative(mid), fd, rtol=1e-7, atol=1e-8)


def test_dense_solution_is_differentiable():
    func = Field(dim=2, hidden=6, seed=3)
    y0 = torch.tensor([[0.5, -0.3]], dtype=F64, requires_grad=True)
    sol = symode.solve(
        func, y0, torch.tensor([0.0, 1.3], dtype=F64), steps=symode.AdaptiveSteps(rtol=1e-4, atol=1e-4), dense=True
    )
    times = torch.tensor([0.21, 0.55, 0.9], dtype=F64, requires_grad=True)
    value = sol.dense(times)
    loss = (value**2).sum()
    g_y0, g_t = torch.autograd.grad(loss, (y0, times))
    # d/dt of the evaluation is the interpolant's derivative
    torch.testing.assert_close(
        g_t, (2 * value * sol.dense.derivative(times)).sum((1, 2)).detach(), rtol=1e-12, atol=1e-14
    )
    # and y0's gradient is backprop's through the same interpolated outputs
    y0b = y0.detach().requires_grad_(True)
    ys = symode.solve(
        func,
        y0b,
        torch.cat([torch.zeros(1, dtype=F64), times.detach(), torch.tensor([1.3], dtype=F64)]),
        steps=symode.AdaptiveSteps(rtol=1e-4, atol=1e-4),
    ).ys
    (g_ref,) = torch.autograd.grad((ys[1:4] ** 2).sum(), y0b)
    torch.testing.assert_close(g_y0, g_ref, rtol=1e-12, atol=1e-14)


def test_dense_solution_refuses_what_it_cannot_do():
    func = Field(dim=2, hidden=4)
    y0 = torch.zeros(1, 2, dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    sol = symode.solve(func, y0, t, dense=True)
    for bad in (1.5, -0.1, float("nan"), torch.tensor([0.5, 2.0])):
        with pytest.raises(ValueError, match="outside the solved span"):
            sol.dense(bad)
    with pytest.raises(ValueError, match="backprop only"):
        symode.solve(func, y0, t, dense=True, gradient="symplectic_adjoint")
    with pytest.raises(ValueError, match="must not require grad"):
        symode.solve(func, y0, t.clone().requires_grad_(True), dense=True)
    with pytest.raises(TypeError, match="dense"):
        symode.solve(func, y0, t, dense=1)
    with torch.no_grad():  # nothing to differentiate: any gradient method
        assert symode.solve(func, y0, t, dense=True, gradient="symplectic_adjoint").dense is not None
    single = symode.solve(func, y0, t[:1], dense=True).dense
    torch.testing.assert_close(single(0.0), y0.detach())


def test_odeint_dense_matches_torchdiffeq():
    torchdiffeq = pytest.importorskip("torchdiffeq")
    y0 = torch.tensor([2.0, 0.0], dtype=F64)
    ours = symode.odeint_dense(_ode_demo, y0, torch.tensor(0.0, dtype=F64), torch.tensor(5.0, dtype=F64))
    theirs = torchdiffeq.odeint_dense(_ode_demo, y0, torch.tensor(0.0, dtype=F64), torch.tensor(5.0, dtype=F64))
    for s in (0.0, 0.77, 2.5, 5.0):
        # both within their tolerance of the truth: torchdiffeq's error weights and interpolant differ
        torch.testing.assert_close(ours(s), theirs(torch.tensor(s, dtype=F64)), rtol=0, atol=1e-5)
    assert ours(0.77).shape == y0.shape and ours.t0 == 0.0 and ours.t1 == 5.0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_low_precision_interpolated_outputs(dtype):
    """float16/bfloat16 states with 20 interpolated outputs: the outputs are the float64 solve's
    within the tolerance asked for, and every gradient method runs and agrees with backprop to a
    few units of the dtype's resolution (the steps, the same in every method, hold)."""
    y0 = torch.tensor([1.0, 0.0], dtype=dtype)
    t = torch.linspace(0.0, 1.0, 20)
    ref = symode.odeint(_swirl, y0.double(), t.double(), rtol=1e-2, atol=1e-3)
    grads = {}
    for cls in GRADIENT_METHODS.values():
        for gradient in cls.configurations():
            y = y0.clone().requires_grad_(True)
            ys = symode.odeint(_swirl, y, t, rtol=1e-2, atol=1e-3, gradient=gradient)
            assert ys.dtype == dtype and (ys.double() - ref).abs().max() < 2e-2
            (grad,) = torch.autograd.grad(ys.float().sum(), y)
            grads[repr(gradient)] = grad.double()
    eps = torch.finfo(dtype).eps
    reference = grads["Backprop()"]
    for name, grad in grads.items():
        assert ((grad - reference).abs() / reference.abs().max()).max() < 8 * eps, name
