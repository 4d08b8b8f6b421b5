"""Accuracy of the solvers, checked against independent truth only.

Truth is a closed-form solution or scipy's ``solve_ivp`` (and, for the adaptive step
sequence, scipy's own Dormand-Prince / Bogacki-Shampine integrators); no expected value
here comes from symode itself. Every test over methods is parametrized over
``symode.TABLEAUS``, so a tableau added to the catalogue is tested automatically.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp
from scipy.linalg import expm

import symode

F64 = torch.float64
ALL_METHODS = sorted(symode.TABLEAUS)
ADAPTIVE_METHODS = [name for name in ALL_METHODS if symode.TABLEAUS[name].adaptive]
FSAL_ADAPTIVE_METHODS = [name for name in ADAPTIVE_METHODS if symode.TABLEAUS[name].fsal]


def _t(values, dtype=F64) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype)


# --------------------------------------------------------------------------------------
# Test problems with closed-form solutions

# "Swirl": y' = 2 cos(t) exp((|y|^2 - 1) / 2) J y, y(0) = (1, 0), J the rotation by +90
# degrees. The radius stays 1, so y(t) = (cos(2 sin t), sin(2 sin t)). The vector field is
# nonautonomous and transcendental in y (every derivative in t and y is nonzero), so all
# elementary differentials of every order contribute to the error.
_JT = torch.tensor([[0.0, 1.0], [-1.0, 0.0]], dtype=F64)  # y @ _JT == (-y[1], y[0])


def swirl(t, y):
    return (y @ _JT.to(y.dtype)) * (2.0 * torch.cos(t) * torch.exp(0.5 * (y.dot(y) - 1.0)))


def swirl_exact(t: torch.Tensor) -> torch.Tensor:
    theta = 2.0 * torch.sin(t.to(F64))
    return torch.stack([torch.cos(theta), torch.sin(theta)], dim=-1)


# Harmonic oscillator x'' = -x, as one tensor y = (x, v) (shape (2, n)) and as a tuple.
def oscillator(t, y):
    return torch.stack([y[1], -y[0]])


def oscillator_tuple(t, state):
    x, v = state
    return v, -x


def oscillator_exact(t: torch.Tensor, x0: torch.Tensor, v0: torch.Tensor):
    c, s = torch.cos(t)[:, None], torch.sin(t)[:, None]
    return x0 * c + v0 * s, v0 * c - x0 * s


# --------------------------------------------------------------------------------------
# 1. Convergence order on fixed steps

CONV_T1 = 3.0
CONV_FLOOR = 3e-12  # errors below this are too close to round-off (~1e-14 here) to fit
CONV_EVAL_BUDGET = 700  # at most this many evaluations of f per solve (n_steps * stages)
CONV_POINTS = 4  # fit over the 4 smallest step sizes whose error is above the floor
ORDER_TOL = 0.3


def _convergence_data(name: str) -> tuple[list[float], list[float]]:
    """Errors (max over every step endpoint) for step sizes h = T1/n, n = 8 * 2**(k/2),
    k = 0, 1, ..., stopping before n * stages exceeds the budget or once the error falls
    below the round-off floor. The last CONV_POINTS step sizes are the most asymptotic ones
    that are still well above round-off."""
    tableau = symode.TABLEAUS[name]
    y0 = swirl_exact(_t(0.0))
    hs, errors = [], []
    k = 0
    while True:
        n = round(8 * 2 ** (k / 2))
        k += 1
        if n * tableau.num_stages > CONV_EVAL_BUDGET:
            break
        t = torch.linspace(0.0, CONV_T1, n + 1, dtype=F64)
        try:
            sol = symode.solve(swirl, y0, t, method=name, steps=symode.FixedSteps(step_size=CONV_T1 / n))
        except symode.SolveError:  # unstable at the largest steps (explicit Euler): not yet asymptotic
            continue
        assert sol.stats.num_accepted == n  # one step per output interval: a uniform grid
        assert isinstance(sol.ys, torch.Tensor)  # a tensor state
        error = (sol.ys - swirl_exact(t)).abs().max().item()
        if error < CONV_FLOOR:
            break
        hs.append(CONV_T1 / n)
        errors.append(error)
    return hs[-CONV_POINTS:], errors[-CONV_POINTS:]


@pytest.mark.parametrize("name", ALL_METHODS)
def test_convergence_order_fixed_steps(name):
    order = symode.TABLEAUS[name].order
    hs, errors = _convergence_data(name)
    assert len(hs) == CONV_POINTS, f"{name}: too few usable step sizes: h={hs}, errors={errors}"
    # the error must fall monotonically, and stay well above round-off
    assert all(e1 > e2 for e1, e2 in zip(errors, errors[1:])), errors
    assert min(errors) >= CONV_FLOOR
    slope = np.polyfit(np.log(hs), np.log(errors), 1)[0]
    detail = ", ".join(f"h={h:.4g}: {e:.2e}" for h, e in zip(hs, errors))
    assert abs(slope - order) <= ORDER_TOL, f"{name}: fitted order {slope:.3f}, expected {order} ({detail})"


# --------------------------------------------------------------------------------------
# 2. Adaptive solutions against scipy's DOP853 at rtol = atol = 1e-12

_A = np.array([[-0.1, -1.0], [1.0, -0.1]])  # rotation with decay


def _linear_t(t, y):
    return torch.as_tensor(_A, dtype=y.dtype) @ y


def _linear_np(t, y):
    return _A @ y


def _vdp_t(t, y, mu=1.0):
    return torch.stack([y[1], mu * (1 - y[0] ** 2) * y[1] - y[0]])


def _vdp_np(t, y, mu=1.0):
    return np.array([y[1], mu * (1 - y[0] ** 2) * y[1] - y[0]])


def _lv_t(t, y):
    return torch.stack([1.5 * y[0] - y[0] * y[1], -3.0 * y[1] + y[0] * y[1]])


def _lv_np(t, y):
    return np.array([1.5 * y[0] - y[0] * y[1], -3.0 * y[1] + y[0] * y[1]])


PROBLEMS = {
    # name: (torch f, numpy f, y0, output times)
    "linear": (_linear_t, _linear_np, [1.0, 0.5], np.linspace(0.0, 6.0, 7)),
    "van_der_pol": (_vdp_t, _vdp_np, [2.0, 0.0], np.linspace(0.0, 5.0, 6)),
    "lotka_volterra": (_lv_t, _lv_np, [1.0, 1.0], np.linspace(0.0, 5.0, 6)),
}

_REFERENCES: dict[str, np.ndarray] = {}


def _reference(problem: str) -> np.ndarray:
    if problem not in _REFERENCES:
        _, f_np, y0, ts = PROBLEMS[problem]
        ref = solve_ivp(f_np, (ts[0], ts[-1]), np.array(y0), method="DOP853", rtol=1e-12, atol=1e-12, t_eval=ts)
        assert ref.success
        _REFERENCES[problem] = ref.y.T
    return _REFERENCES[problem]


def test_reference_linear_matches_matrix_exponential():
    _, _, y0, ts = PROBLEMS["linear"]
    exact = np.stack([expm(_A * t) @ np.array(y0) for t in ts])
    np.testing.assert_allclose(_reference("linear"), exact, rtol=0, atol=1e-11)


def _rtols(name: str) -> tuple[float, ...]:
    """Three tolerances, tightest first last; a low embedded order needs ~tol**(-1/(q+1))
    steps, so low-order pairs get looser tolerances to keep the test fast."""
    q = symode.TABLEAUS[name].error_order
    assert q is not None  # an adaptive method
    if q == 1:
        return 3e-4, 1e-4, 3e-5
    if q <= 3:
        return 1e-4, 1e-5, 1e-6
    return 1e-4, 1e-6, 1e-8


# Global error in units of the tolerance |err| / (atol + rtol |y|), at every output time.
# The error accumulates over steps (the controller bounds local errors), so a few units is
# normal; the worst seen is ~10 (dopri5, Lotka-Volterra). 50 still catches an error
# estimate that is off by an order of magnitude (a wrong b_err, a norm summing instead
# of averaging, ...).
TOL_UNITS_BOUND = 50.0
# Fehlberg's RK1(2) with local extrapolation: the estimator is the error of the embedded
# 1st-order solution, whose leading coefficient Fehlberg made tiny (err ~ h^2 y''/512),
# while the propagated 2nd-order solution has an O(h^3 / 6) local error; the estimate
# undershoots the true error for h > ~0.01, so the global error is 100-1000 tolerance
# units (the same tableau as torchdiffeq's fehlberg2). Seen: up to ~1000 units.
# dopri8's outputs between steps come from its continuous extension of order 5 (not 8): with
# its long steps that costs up to about 170 tolerance units here at rtol 1e-8, less at looser
# tolerances (interpolate=False: below 50)
# kvaerno5's outputs between steps come from the cubic Hermite interpolant (diffrax's choice for the
# ESDIRK pairs too) within 5th-order steps: up to ~350 tolerance units at rtol 1e-8 on Lotka-Volterra
# (interpolate=False: ~60, the unfiltered error estimate of a stiffly accurate pair on a non-stiff problem)
TOL_UNITS_BOUND_BY_METHOD = {"fehlberg2": 3000.0, "dopri8": 250.0, "kvaerno5": 500.0}


@pytest.mark.parametrize("problem", sorted(PROBLEMS))
@pytest.mark.parametrize("name", ADAPTIVE_METHODS)
def test_adaptive_matches_scipy(name, problem):
    f_t, _, y0, ts = PROBLEMS[problem]
    ref = _reference(problem)
    bound = TOL_UNITS_BOUND_BY_METHOD.get(name, TOL_UNITS_BOUND)
    max_errors = []
    for rtol in _rtols(name):
        atol = rtol * 1e-2
        ys = symode.odeint(f_t, _t(y0), torch.as_tensor(ts, dtype=F64), method=name, rtol=rtol, atol=atol)
        ys = ys.numpy()
        units = np.abs(ys - ref) / (atol + rtol * np.abs(ref))
        assert units.max() <= bound, (
            f"{name} on {problem} at rtol={rtol}: error is {units.max():.1f} tolerance units "
            f"(bound {bound}); per output time: {units.max(axis=1).round(2)}"
        )
        max_errors.append(np.abs(ys - ref).max())
    # tightening the tolerance must pay off: the error does not grow from one tolerance to the
    # next (up to 10%: dopri8's conservative estimate leaves the linear problem ~1e-7 at both
    # rtol 1e-4 and 1e-6, a thousandth of the looser tolerance), and over the whole range it
    # shrinks at least like sqrt(tolerance) (seen: about like the tolerance itself)
    rtols = _rtols(name)
    detail = f"{name} on {problem}: errors {[f'{e:.2e}' for e in max_errors]} at rtol {rtols}"
    assert all(e2 < 1.1 * e1 for e1, e2 in zip(max_errors, max_errors[1:])), detail
    assert max_errors[-1] <= max_errors[0] * math.sqrt(rtols[-1] / rtols[0]), detail


# scipy's RK45 is Dormand-Prince 5(4) and RK23 Bogacki-Shampine 3(2), both with the RMS
# error norm, scale atol + rtol * max(|y_n|, |y_n+1|), Hairer's initial step heuristic and
# the integral controller (safety 0.9, factors in [0.2, 10], no growth right after a
# rejection): with controller='i' symode must take the very same steps.
SCIPY_TWINS = {"dopri5": "RK45", "bosh3": "RK23"}


@pytest.mark.parametrize("rtol", [1e-3, 1e-6])
@pytest.mark.parametrize("problem", ["van_der_pol", "lotka_volterra"])
@pytest.mark.parametrize("name", sorted(SCIPY_TWINS))
def test_step_sequence_matches_scipy(name, problem, rtol):
    f_t, f_np, y0, ts = PROBLEMS[problem]
    atol = rtol * 1e-2
    ref = solve_ivp(f_np, (ts[0], ts[-1]), np.array(y0), method=SCIPY_TWINS[name], rtol=rtol, atol=atol)
    sol = symode.solve(
        f_t, _t(y0), _t([ts[0], ts[-1]]), method=name, steps=symode.AdaptiveSteps(rtol=rtol, atol=atol, controller="i")
    )
    grid = sol.grid.numpy()
    # symode clips a last step that would end within 1% of a step of t[-1]; scipy only an
    # overshooting one, so the last step may differ by one
    assert abs(len(grid) - len(ref.t)) <= 1
    n = min(len(grid), len(ref.t)) - 1
    np.testing.assert_allclose(grid[:n], ref.t[:n], rtol=1e-7, atol=0)
    if len(grid) == len(ref.t):
        assert sol.stats.nfe_forward == ref.nfev


# --------------------------------------------------------------------------------------
# 3. Time direction, output times, step_size and grid


def _reverse_swirl(s, z):
    """z(s) = y(1 - s) for y' = swirl(t, y): z' = -swirl(1 - s, z)."""
    return -swirl(1.0 - s, z)


@pytest.mark.parametrize(
    "name,steps",
    [
        ("rk4", symode.FixedSteps(step_size=0.05)),
        ("dopri5", symode.FixedSteps(step_size=0.05)),
        ("dopri5", symode.AdaptiveSteps(rtol=1e-8, atol=1e-10)),
        ("bosh3", symode.AdaptiveSteps(rtol=1e-6, atol=1e-8)),
    ],
    ids=["rk4-fixed", "dopri5-fixed", "dopri5-adaptive", "bosh3-adaptive"],
)
def test_decreasing_time_equals_reversed_problem(name, steps):
    t_back = _t([1.0, 0.75, 0.5, 0.0])
    y1 = swirl_exact(_t(1.0))
    back = symode.solve(swirl, y1, t_back, method=name, steps=steps)
    fwd = symode.solve(_reverse_swirl, y1, 1.0 - t_back, method=name, steps=steps)
    # the same steps mirrored, so the same numbers up to the rounding of the stage times;
    # adaptive steps see that rounding through the error estimate (a difference of O(1)
    # terms that is ~1e-10 here, so relatively ~1e-6), hence the looser grid tolerance
    assert back.stats.num_accepted == fwd.stats.num_accepted
    if isinstance(steps, symode.FixedSteps):
        torch.testing.assert_close(back.grid, 1.0 - fwd.grid, rtol=0, atol=1e-14)
        torch.testing.assert_close(back.ys, fwd.ys, rtol=0, atol=1e-13)
    else:
        torch.testing.assert_close(back.grid, 1.0 - fwd.grid, rtol=0, atol=1e-6)
        torch.testing.assert_close(back.ys, fwd.ys, rtol=0, atol=steps.rtol)
    # and both are the true solution
    tol = 1e-5 if isinstance(steps, symode.FixedSteps) else 50 * steps.rtol
    torch.testing.assert_close(back.ys, swirl_exact(t_back), rtol=0, atol=tol)
    assert back.grid[0].item() == 1.0 and back.grid[-1].item() == 0.0
    assert bool((back.grid[1:] < back.grid[:-1]).all())


@pytest.mark.parametrize("t_values", [[0.0, 0.3, 0.7, 1.1, 2.0], [2.0, 1.3, 0.25, -0.5]])
@pytest.mark.parametrize("name", ADAPTIVE_METHODS)
def test_adaptive_hits_every_output_time_exactly(name, t_values):
    t = _t(t_values)
    rtol = _rtols(name)[0]
    steps = symode.AdaptiveSteps(rtol=rtol, atol=rtol, interpolate=False)
    sol = symode.solve(swirl, swirl_exact(t[:1])[0], t, method=name, steps=steps)
    grid = sol.grid.tolist()
    assert grid[0] == t_values[0] and grid[-1] == t_values[-1]
    for value in t_values:
        assert value in grid, f"output time {value!r} is not a step endpoint"
    sign = 1.0 if t_values[-1] > t_values[0] else -1.0
    assert all(sign * (b - a) > 0 for a, b in zip(grid, grid[1:]))
    assert sol.ys.shape == (len(t_values), 2)
    assert torch.equal(sol.ts, t)


def test_step_size_not_dividing_the_interval_ends_exactly_on_output_times():
    t = _t([0.0, 0.25, 1.0])
    sol = symode.solve(swirl, swirl_exact(_t(0.0)), t, method="rk4", steps=symode.FixedSteps(step_size=0.1))
    # each interval is crossed in steps of h from its start, the last one shortened
    expected = [0.0, 0.1, 0.2, 0.25] + [0.25 + i * 0.1 for i in range(1, 8)] + [1.0]
    assert sol.grid.tolist() == pytest.approx(expected, abs=1e-15)
    assert sol.grid[3].item() == 0.25 and sol.grid[-1].item() == 1.0
    assert sol.stats.num_accepted == len(expected) - 1
    torch.testing.assert_close(sol.ys, swirl_exact(t), rtol=0, atol=3e-4)  # rk4, h = 0.1: ~6e-5


def test_step_size_dividing_the_interval_up_to_rounding_takes_no_sliver_step():
    # 1.0 / 0.1 is 10.000000000000002 in floating point: ten steps, no extra sliver
    sol = symode.solve(
        swirl, swirl_exact(_t(0.0)), _t([0.0, 1.0]), method="rk4", steps=symode.FixedSteps(step_size=0.1)
    )
    assert sol.stats.num_accepted == 10
    steps = np.diff(sol.grid.numpy())
    np.testing.assert_allclose(steps, 0.1, rtol=1e-12)
    assert sol.grid[-1].item() == 1.0


def test_step_size_with_decreasing_time():
    t = _t([1.0, 0.0])
    sol = symode.solve(swirl, swirl_exact(_t(1.0)), t, method="rk4", steps=symode.FixedSteps(step_size=0.3))
    assert sol.grid.tolist() == pytest.approx([1.0, 0.7, 0.4, 0.1, 0.0], abs=1e-15)
    assert sol.grid[-1].item() == 0.0
    torch.testing.assert_close(sol.ys[-1], swirl_exact(_t(0.0)), rtol=0, atol=1e-2)  # rk4, h = 0.3: ~3e-3


def test_grid_option():
    t = _t([0.0, 0.25, 1.0])
    grid = torch.linspace(0.0, 1.0, 11, dtype=F64)
    y0 = swirl_exact(_t(0.0))
    ys = symode.odeint(swirl, y0, t, method="rk4", options={"grid": grid})
    sol = symode.solve(swirl, y0, t, method="rk4", steps=symode.FixedSteps(grid=grid))
    expected = sorted(set(grid.tolist()) | set(t.tolist()))
    assert sol.grid.tolist() == expected  # the grid points and the output times, exactly
    assert sol.stats.num_accepted == len(expected) - 1
    torch.testing.assert_close(ys, sol.ys, rtol=0, atol=0)
    torch.testing.assert_close(ys, swirl_exact(t), rtol=0, atol=3e-4)  # rk4, h <= 0.1: ~6e-5
    # a grid of the same points as step_size takes the same steps
    plain = symode.odeint(swirl, y0, _t([0.0, 1.0]), method="rk4", options={"grid": grid})
    stepped = symode.odeint(swirl, y0, _t([0.0, 1.0]), method="rk4", options={"step_size": 0.1})
    torch.testing.assert_close(plain, stepped, rtol=0, atol=1e-14)


def test_grid_option_decreasing():
    t = _t([1.0, 0.0])
    grid = torch.linspace(1.0, 0.0, 9, dtype=F64)
    sol = symode.solve(swirl, swirl_exact(_t(1.0)), t, method="dopri5", steps=symode.FixedSteps(grid=grid))
    assert sol.grid.tolist() == grid.tolist()
    torch.testing.assert_close(sol.ys, swirl_exact(t), rtol=0, atol=1e-5)


# --------------------------------------------------------------------------------------
# 4. Tuple states

X0 = _t([1.0, 0.0, -0.5])
V0 = _t([0.0, 2.0, 0.25])
OSC_T = torch.linspace(0.0, 4.0, 5, dtype=F64)


@pytest.mark.parametrize("name", ALL_METHODS)
def test_tuple_state_fixed_steps_matches_single_tensor(name):
    options = {"step_size": 0.05}
    xs, vs = symode.odeint(oscillator_tuple, (X0, V0), OSC_T, method=name, options=options)
    ys = symode.odeint(oscillator, torch.stack([X0, V0]), OSC_T, method=name, options=options)
    assert xs.shape == vs.shape == (len(OSC_T), 3)
    torch.testing.assert_close(xs, ys[:, 0], rtol=0, atol=1e-14)
    torch.testing.assert_close(vs, ys[:, 1], rtol=0, atol=1e-14)


@pytest.mark.parametrize("name", ADAPTIVE_METHODS)
def test_tuple_state_adaptive_reaches_tolerance(name):
    rtol = _rtols(name)[1]
    atol = rtol * 1e-2
    xs, vs = symode.odeint(oscillator_tuple, (X0, V0), OSC_T, method=name, rtol=rtol, atol=atol)
    ys = symode.odeint(oscillator, torch.stack([X0, V0]), OSC_T, method=name, rtol=rtol, atol=atol)
    x_exact, v_exact = oscillator_exact(OSC_T, X0, V0)
    bound = TOL_UNITS_BOUND_BY_METHOD.get(name, TOL_UNITS_BOUND)
    for got, exact in [(xs, x_exact), (vs, v_exact), (ys[:, 0], x_exact), (ys[:, 1], v_exact)]:
        units = ((got - exact).abs() / (atol + rtol * exact.abs())).max().item()
        assert units <= bound, f"{name}: {units:.1f} tolerance units"


def test_tuple_state_uses_max_of_component_norms():
    # the tuple norm is the largest per-component RMS, never below the RMS of everything:
    # a tuple state takes at least as many steps as the same state as one tensor
    tuple_sol = symode.solve(
        oscillator_tuple, (X0, V0), OSC_T, method="dopri5", steps=symode.AdaptiveSteps(rtol=1e-6, atol=1e-8)
    )
    single_sol = symode.solve(
        oscillator, torch.stack([X0, V0]), OSC_T, method="dopri5", steps=symode.AdaptiveSteps(rtol=1e-6, atol=1e-8)
    )
    assert tuple_sol.stats.num_accepted >= single_sol.stats.num_accepted
    assert isinstance(tuple_sol.ys, tuple) and len(tuple_sol.ys) == 2


# --------------------------------------------------------------------------------------
# 5. Per-component tolerances

VDP_T = _t([0.0, 2.5, 5.0])
VDP_Y0 = _t([2.0, 0.0])


def _vdp_solve(rtol, atol, y0=VDP_Y0, func=_vdp_t):
    return symode.solve(func, y0, VDP_T, method="dopri5", steps=symode.AdaptiveSteps(rtol=rtol, atol=atol))


@pytest.mark.parametrize("which", ["rtol", "atol"])
def test_tolerance_tensor_equal_entries_is_the_scalar(which):
    scalar = {"rtol": 1e-6, "atol": 1e-8}
    tensor = dict(scalar)
    tensor[which] = torch.full((2,), scalar[which], dtype=F64)
    a, b = _vdp_solve(**scalar), _vdp_solve(**tensor)
    assert torch.equal(a.grid, b.grid)
    assert torch.equal(a.ys, b.ys)


@pytest.mark.parametrize("component", [0, 1])
@pytest.mark.parametrize("which", ["rtol", "atol"])
def test_tighter_tolerance_on_one_component_takes_more_steps(which, component):
    # atol dominates the scale where |y| is small; make each test honest by giving the
    # other tolerance a value that does not mask the one being tightened
    base = {"rtol": 1e-10, "atol": 1e-6} if which == "atol" else {"rtol": 1e-6, "atol": 1e-10}
    loose = _vdp_solve(**base)
    tight_tol = torch.full((2,), base[which], dtype=F64)
    tight_tol[component] = base[which] * 1e-3
    tight = _vdp_solve(**{**base, which: tight_tol})
    assert tight.stats.num_accepted > 1.5 * loose.stats.num_accepted, (loose.stats, tight.stats)
    ref = solve_ivp(
        _vdp_np, (0.0, 5.0), VDP_Y0.numpy(), method="DOP853", rtol=1e-12, atol=1e-12, t_eval=VDP_T.numpy()
    ).y.T
    err_loose = np.abs(loose.ys.numpy() - ref)[:, component].max()
    err_tight = np.abs(tight.ys.numpy() - ref)[:, component].max()
    assert err_tight < err_loose


def test_tuple_of_tolerances_for_tuple_state():
    def run(rtol):
        return symode.solve(
            oscillator_tuple, (X0, V0), OSC_T, method="dopri5", steps=symode.AdaptiveSteps(rtol=rtol, atol=1e-12)
        )

    same = run((1e-6, 1e-6))
    scalar = run(1e-6)
    assert torch.equal(same.grid, scalar.grid)
    x_exact, v_exact = oscillator_exact(OSC_T, X0, V0)
    for tight_index in (0, 1):
        rtol = [1e-6, 1e-6]
        rtol[tight_index] = 1e-9
        tight = run(tuple(rtol))
        assert tight.stats.num_accepted > 2 * same.stats.num_accepted
        exact = (x_exact, v_exact)[tight_index]
        err_same = (same.ys[tight_index] - exact).abs().max()
        err_tight = (tight.ys[tight_index] - exact).abs().max()
        assert err_tight < err_same / 10
    # a per-component tensor inside the tuple works too
    mixed = run((torch.full((3,), 1e-6, dtype=F64), 1e-6))
    assert torch.equal(mixed.grid, scalar.grid)


# --------------------------------------------------------------------------------------
# 6. Controllers, first_step, max_num_steps


def test_controllers_i_and_pi_both_reach_tolerance():
    rtol, atol = 1e-7, 1e-9
    ref = _reference("van_der_pol")
    _, _, y0, ts = PROBLEMS["van_der_pol"]
    grids = {}
    for controller in ("i", "pi"):
        sol = symode.solve(
            _vdp_t,
            _t(y0),
            torch.as_tensor(ts),
            method="dopri5",
            steps=symode.AdaptiveSteps(rtol=rtol, atol=atol, controller=controller),
        )
        units = np.abs(sol.ys.numpy() - ref) / (atol + rtol * np.abs(ref))
        assert units.max() <= TOL_UNITS_BOUND, (controller, units.max())
        grids[controller] = sol.grid
        # odeint's option reaches the controller too
        ys = symode.odeint(
            _vdp_t,
            _t(y0),
            torch.as_tensor(ts),
            method="dopri5",
            rtol=rtol,
            atol=atol,
            options={"controller": controller},
        )
        assert torch.equal(ys, sol.ys)
    assert grids["i"].shape != grids["pi"].shape or not torch.equal(grids["i"], grids["pi"])


@pytest.mark.parametrize("name", ADAPTIVE_METHODS)
def test_first_step_is_honoured(name):
    first = 1e-3
    t = _t([0.0, 1.0])
    sol = symode.solve(
        swirl, swirl_exact(_t(0.0)), t, method=name, steps=symode.AdaptiveSteps(rtol=1e-4, atol=1e-6, first_step=first)
    )
    assert sol.grid[1].item() == first  # small enough to be accepted
    # a first step far too large is rejected and shrunk, never taken
    rtol = _rtols(name)[0]
    sol = symode.solve(
        swirl,
        swirl_exact(_t(0.0)),
        _t([0.0, 3.0]),
        method=name,
        steps=symode.AdaptiveSteps(rtol=rtol, atol=rtol, first_step=2.5),
    )
    assert sol.stats.num_rejected >= 1
    assert sol.grid[1].item() < 2.5
    units = (sol.ys[-1] - swirl_exact(_t(3.0))).abs().max().item() / (2 * rtol)
    assert units <= TOL_UNITS_BOUND_BY_METHOD.get(name, TOL_UNITS_BOUND)


def test_first_step_via_odeint_options():
    ys_default = symode.odeint(swirl, swirl_exact(_t(0.0)), _t([0.0, 1.0]), rtol=1e-6, atol=1e-8)
    ys = symode.odeint(swirl, swirl_exact(_t(0.0)), _t([0.0, 1.0]), rtol=1e-6, atol=1e-8, options={"first_step": 1e-4})
    torch.testing.assert_close(ys, ys_default, rtol=0, atol=1e-5)
    assert not torch.equal(ys, ys_default)  # a different step sequence


@pytest.mark.parametrize("name", ADAPTIVE_METHODS)
def test_max_num_steps_exceeded_raises(name):
    with pytest.raises(symode.SolveError, match=r"max_num_steps = 5 at t = .*accepted.*rejected") as info:
        symode.odeint(
            swirl,
            swirl_exact(_t(0.0)),
            _t([0.0, 3.0]),
            method=name,
            rtol=1e-8,
            atol=1e-10,
            options={"max_num_steps": 5},
        )
    err = info.value
    assert 0.0 < err.t < 3.0
    assert repr(err.t) in str(err)  # the message names the time reached
    assert 0 <= err.num_steps <= 5
    assert f"{err.num_steps} accepted" in str(err)


# --------------------------------------------------------------------------------------
# 7. Statistics


@pytest.mark.parametrize("rtol", [1e-3, 1e-6])
@pytest.mark.parametrize("name", FSAL_ADAPTIVE_METHODS)
def test_nfe_fsal_adaptive(name, rtol):
    # f(t0, y0) once, one evaluation in the initial step heuristic, then s - 1 new stages
    # per attempted step (the first stage is the last one of the previous accepted step,
    # or f(t0, y0); a rejected step keeps it)
    s = symode.TABLEAUS[name].num_stages
    sol = symode.solve(_vdp_t, VDP_Y0, VDP_T, method=name, steps=symode.AdaptiveSteps(rtol=rtol, atol=rtol * 1e-2))
    st = sol.stats
    assert st.num_accepted > 0
    assert st.nfe_forward == (s - 1) * (st.num_accepted + st.num_rejected) + 2, st
    # with first_step the heuristic's evaluation is not made
    sol = symode.solve(
        _vdp_t, VDP_Y0, VDP_T, method=name, steps=symode.AdaptiveSteps(rtol=rtol, atol=rtol * 1e-2, first_step=1e-3)
    )
    st = sol.stats
    assert st.nfe_forward == (s - 1) * (st.num_accepted + st.num_rejected) + 1, st


def test_nfe_dopri5_is_six_per_step_plus_two_with_rejections():
    # rtol 1e-3 on Van der Pol gives rejected steps too (each costs 6 evaluations as well)
    sol = symode.solve(
        _vdp_t,
        VDP_Y0,
        _t([0.0, 5.0]),
        method="dopri5",
        steps=symode.AdaptiveSteps(rtol=1e-3, atol=1e-5, controller="i"),
    )
    st = sol.stats
    assert st.num_rejected > 0
    assert st.nfe_forward == 6 * (st.num_accepted + st.num_rejected) + 2
    # and scipy's RK45 (the same method and controller) counts the same
    ref = solve_ivp(_vdp_np, (0.0, 5.0), VDP_Y0.numpy(), method="RK45", rtol=1e-3, atol=1e-5)
    assert st.nfe_forward == ref.nfev


@pytest.mark.parametrize(
    "t_values,h,n_steps", [([0.0, 1.0], 0.1, 10), ([0.0, 0.25, 1.0], 0.1, 11), ([0.0, 1.0], 0.3, 4)]
)
def test_nfe_rk4_fixed_steps(t_values, h, n_steps):
    sol = symode.solve(swirl, swirl_exact(_t(0.0)), _t(t_values), method="rk4", steps=symode.FixedSteps(step_size=h))
    assert sol.stats.num_accepted == n_steps
    assert sol.stats.num_rejected == 0
    assert sol.stats.nfe_forward == 4 * n_steps


def test_nfe_euler_fixed_steps():
    sol = symode.solve(
        swirl, swirl_exact(_t(0.0)), _t([0.0, 1.0]), method="euler", steps=symode.FixedSteps(step_size=0.01)
    )
    assert sol.stats.num_accepted == 100
    assert sol.stats.nfe_forward == 100


# --------------------------------------------------------------------------------------
# 8. dtypes


class _Recorder:
    """A vector field that records the dtype and shape of the t and y it receives."""

    def __init__(self, func):
        self.func = func
        self.t_dtypes, self.t_shapes, self.y_dtypes, self.ts = set(), set(), set(), []

    def __call__(self, t, y):
        assert isinstance(t, torch.Tensor)
        self.t_dtypes.add(t.dtype)
        self.t_shapes.add(tuple(t.shape))
        self.y_dtypes.add(y.dtype)
        self.ts.append(float(t))
        return self.func(t, y)


@pytest.mark.parametrize(
    "name,options", [("dopri5", None), ("rk4", {"step_size": 0.05}), ("tsit5", {"step_size": 0.1})]
)
def test_float32_state_with_float64_times(name, options):
    rec = _Recorder(swirl)
    t = torch.linspace(0.0, 1.0, 5, dtype=F64)
    y0 = swirl_exact(_t(0.0)).float()
    ys = symode.odeint(rec, y0, t, method=name, rtol=1e-5, atol=1e-6, options=options)
    assert ys.dtype == torch.float32
    assert rec.t_dtypes == {torch.float32}
    assert rec.t_shapes == {()}
    assert rec.y_dtypes == {torch.float32}
    assert min(rec.ts) >= 0.0 and max(rec.ts) <= 1.0
    torch.testing.assert_close(ys.double(), swirl_exact(t), rtol=0, atol=2e-5)
    sol = symode.solve(
        rec,
        y0,
        t,
        method=name,
        steps=(
            symode.FixedSteps(**options) if options else symode.AdaptiveSteps(rtol=1e-5, atol=1e-6, interpolate=False)
        ),
    )
    assert sol.ts.dtype == F64 and torch.equal(sol.ts, t)
    for value in t.tolist():  # float64 output times are hit exactly despite the float32 state
        assert value in sol.grid.tolist()


@pytest.mark.parametrize("name,options", [("dopri5", None), ("rk4", {"step_size": 0.05})])
def test_float64_state_with_float32_times(name, options):
    rec = _Recorder(swirl)
    t = torch.linspace(0.0, 1.0, 5, dtype=torch.float32)
    ys = symode.odeint(rec, swirl_exact(_t(0.0)), t, method=name, rtol=1e-9, atol=1e-11, options=options)
    assert ys.dtype == F64
    assert rec.t_dtypes == {F64}
    assert rec.t_shapes == {()}
    assert rec.y_dtypes == {F64}
    tol = 1e-8 if options is None else 2e-5  # rk4, h = 0.05: ~4e-6
    torch.testing.assert_close(ys, swirl_exact(t.double()), rtol=0, atol=tol)


def test_float32_rounding_does_not_accumulate_per_term():
    """In float32 the step's increment h * sum_j b_j k_j is formed first and added to y once:
    200 steps of the 3/8 rule stay within ~1e-6 of the float64 solve (adding the terms to y
    one at a time drifted to ~7e-6 on this problem)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))
    y0 = torch.randn(16, 2)
    t = torch.tensor([0.0, 1.0])
    with torch.no_grad():
        y32 = symode.odeint(lambda t, y: net(y), y0, t, method="rk38", options={"step_size": 1 / 200})[-1]
        net64 = net.double()
        y64 = symode.odeint(
            lambda t, y: net64(y), y0.double(), t.double(), method="rk38", options={"step_size": 1 / 200}
        )[-1]
    assert (y32.double() - y64).abs().max() <= 1.5e-6
