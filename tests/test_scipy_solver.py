"""``symode._scipy.scipy_solve`` (``method="scipy_solver"``): agreement with torchdiffeq's, the
closed form, and the errors (a gradient asked for, a bad ``func`` or option, a failed solve)."""

import math

import pytest
import torch

pytest.importorskip("scipy")

from symode._scipy import scipy_solve
from symode._stats import SolveError

DTYPE = torch.float64
T = torch.linspace(0.0, 2.0, 6, dtype=DTYPE)
Y0 = torch.tensor([1.0, -0.5], dtype=DTYPE)
TOL = {"rtol": 1e-9, "atol": 1e-11}
# scipy's RK methods warn that torchdiffeq's min_step=0 (which it always passes) has no effect
TDE_WARNING = "ignore:The following arguments have no effect"


def decay(t, y):
    return -y


def rotation(t, y):
    return torch.stack([-y[1], y[0]])


def exact_rotation(t, y0):
    c, s = torch.cos(t)[:, None], torch.sin(t)[:, None]
    return torch.cat([c * y0[0] - s * y0[1], s * y0[0] + c * y0[1]], dim=1)


# --------------------------------------------------------------------------------------
# agreement with torchdiffeq's scipy_solver (both call solve_ivp with the same arguments)


@pytest.mark.filterwarnings(TDE_WARNING)
@pytest.mark.parametrize("solver", ["LSODA", "RK45", "Radau", "DOP853"])
@pytest.mark.parametrize("func", [decay, rotation])
def test_agrees_with_torchdiffeq(solver, func):
    torchdiffeq = pytest.importorskip("torchdiffeq")
    kw = {"rtol": 1e-6, "atol": 1e-8, "options": {"solver": solver}}
    ours = scipy_solve(func, Y0, T, **kw)
    theirs = torchdiffeq.odeint(func, Y0, T, method="scipy_solver", **kw)
    assert ours.shape == theirs.shape == (len(T), 2)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)


@pytest.mark.filterwarnings(TDE_WARNING)
def test_agrees_with_torchdiffeq_tuple_state():
    torchdiffeq = pytest.importorskip("torchdiffeq")
    y0 = (torch.tensor([1.0, 2.0], dtype=DTYPE), torch.tensor([[0.5]], dtype=DTYPE))
    func = lambda t, y: (-y[0], t * y[1])
    kw = {"rtol": 1e-6, "atol": 1e-8, "options": {"solver": "RK45"}}
    ours, theirs = scipy_solve(func, y0, T, **kw), torchdiffeq.odeint(func, y0, T, method="scipy_solver", **kw)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


@pytest.mark.filterwarnings(TDE_WARNING)
def test_decreasing_t_agrees_with_torchdiffeq_to_the_tolerance():
    # torchdiffeq negates t and func and solves forwards; scipy_solve lets scipy solve backwards:
    # the same problem, other rounding, so the two agree to the tolerance, not to round-off
    torchdiffeq = pytest.importorskip("torchdiffeq")
    t = T.flip(0)
    kw = {"rtol": 1e-9, "atol": 1e-11, "options": {"solver": "DOP853"}}
    ours, theirs = scipy_solve(decay, Y0, t, **kw), torchdiffeq.odeint(decay, Y0, t, method="scipy_solver", **kw)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-8)


# --------------------------------------------------------------------------------------
# against the closed form


@pytest.mark.parametrize("solver", ["LSODA", "RK45", "RK23", "DOP853", "Radau", "BDF"])
def test_closed_form_increasing_and_decreasing(solver):
    for t in (T, T.flip(0) - 1.0):
        ys = scipy_solve(decay, Y0, t, options={"solver": solver}, **TOL)
        exact = Y0 * torch.exp(-(t - t[0]))[:, None]
        assert ys.dtype == DTYPE and ys.shape == (len(t), 2)
        torch.testing.assert_close(ys, exact, rtol=0, atol=1e-6)  # the global error of rtol=1e-9 (BDF's ~2e-7)
        assert torch.equal(ys[0], Y0)


def test_default_solver_is_lsoda_and_times_may_be_a_list():
    ys = scipy_solve(rotation, Y0, [0.0, 0.5, 1.5, 3.0], options=None, **TOL)
    t = torch.tensor([0.0, 0.5, 1.5, 3.0], dtype=DTYPE)
    torch.testing.assert_close(ys, exact_rotation(t, Y0), rtol=0, atol=1e-7)
    lsoda = scipy_solve(rotation, Y0, t, options={"solver": "LSODA"}, **TOL)
    assert torch.equal(ys, lsoda)


def test_tuple_state_shapes_and_values():
    y0 = (torch.ones(2, 3, dtype=DTYPE), torch.tensor(2.0, dtype=DTYPE))
    ys = scipy_solve(lambda t, y: (-y[0], -2 * y[1]), y0, T, options={"solver": "DOP853"}, **TOL)
    assert isinstance(ys, tuple) and ys[0].shape == (len(T), 2, 3) and ys[1].shape == (len(T),)
    torch.testing.assert_close(ys[0], torch.exp(-T)[:, None, None].expand(-1, 2, 3), rtol=0, atol=1e-8)
    torch.testing.assert_close(ys[1], 2 * torch.exp(-2 * T), rtol=0, atol=1e-8)


def test_float32_state_gives_float32_and_func_sees_float32():
    seen = []

    def func(t, y):
        seen.append((t.dtype, t.shape, y.dtype, torch.is_grad_enabled()))
        return -y

    y0 = Y0.float()
    ys = scipy_solve(func, y0, T.float(), options={"solver": "RK45"}, rtol=1e-6, atol=1e-8)
    assert ys.dtype == torch.float32
    torch.testing.assert_close(ys, (Y0 * torch.exp(-T)[:, None]).float(), rtol=0, atol=1e-5)
    assert seen and set(seen) == {(torch.float32, torch.Size([]), torch.float32, False)}


def test_single_output_time_returns_y0_without_calling_func():
    def func(t, y):
        raise AssertionError("func must not be called")

    ys = scipy_solve(func, Y0, torch.tensor([0.3]), options={"solver": "RK45"}, **TOL)
    assert ys.shape == (1, 2) and torch.equal(ys[0], Y0)
    yt = scipy_solve(func, (Y0, Y0[:1]), [0.3], options={}, **TOL)
    assert torch.equal(yt[0][0], Y0) and torch.equal(yt[1][0], Y0[:1])


def test_options_are_passed_on_and_tolerance_arrays():
    calls = []
    func = lambda t, y: calls.append(1) or -y
    scipy_solve(func, Y0, T, options={"solver": "RK45"}, rtol=1e-6, atol=1e-8)
    free = len(calls)
    calls.clear()
    ys = scipy_solve(
        func, Y0, T, options={"solver": "RK45", "max_step": 0.01, "first_step": 1e-3}, rtol=1e-6, atol=1e-8
    )
    assert len(calls) > 6 * 200 > free  # max_step bounds every step: at least 200 steps of 6 evaluations
    torch.testing.assert_close(ys, Y0 * torch.exp(-T)[:, None], rtol=0, atol=1e-6)
    ys = scipy_solve(decay, Y0, T, options={"solver": "Radau"}, rtol=torch.tensor([1e-9, 1e-9]), atol=[1e-11, 1e-11])
    torch.testing.assert_close(ys, Y0 * torch.exp(-T)[:, None], rtol=0, atol=1e-7)
    with pytest.raises(ValueError, match="atol"):
        scipy_solve(decay, Y0, T, options={}, rtol=1e-6, atol=torch.ones(3))


# --------------------------------------------------------------------------------------
# the errors


def test_gradient_needed_is_refused_before_solving():
    calls = []
    func = lambda t, y: calls.append(1) or -y
    with pytest.raises(ValueError, match=r"scipy_solver.*no_grad"):
        scipy_solve(func, Y0.clone().requires_grad_(), T, options={}, **TOL)
    with pytest.raises(ValueError, match="scipy_solver"):
        scipy_solve(func, Y0, T.clone().requires_grad_(), options={}, **TOL)
    assert not calls
    with pytest.raises(ValueError, match="scipy_solver"):
        scipy_solve(NetField(torch.nn.Linear(2, 2).double()), Y0, T, options={}, **TOL)


class NetField(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, t, y):
        return self.net(y)


def test_under_no_grad_inputs_that_require_grad_are_solved():
    y0 = Y0.clone().requires_grad_()
    field = NetField(torch.nn.Linear(2, 2).double())
    with torch.no_grad():
        ys = scipy_solve(decay, y0, T, options={"solver": "RK45"}, **TOL)
        yn = scipy_solve(field, Y0, T, options={"solver": "RK45"}, **TOL)
    assert not ys.requires_grad and not yn.requires_grad
    torch.testing.assert_close(ys, Y0 * torch.exp(-T)[:, None], rtol=0, atol=1e-7)
    assert yn.shape == (len(T), 2) and torch.isfinite(yn).all()
    field.requires_grad_(False)  # parameters that do not require grad need no no_grad
    torch.testing.assert_close(scipy_solve(field, Y0, T, options={"solver": "RK45"}, **TOL), yn)


def test_wrong_output_shape_of_func():
    with pytest.raises(ValueError, match=r"func .* shape.*\(2,\).*\(3,\)"):
        scipy_solve(lambda t, y: torch.zeros(3, dtype=DTYPE), Y0, T, options={"solver": "RK45"}, **TOL)
    with pytest.raises(TypeError, match="func must return"):
        scipy_solve(lambda t, y: 1.0, Y0, T, options={"solver": "RK45"}, **TOL)
    with pytest.raises(ValueError, match=r"func .* shape"):
        scipy_solve(lambda t, y: (-y[0], y[1][:1]), (Y0, Y0), T, options={}, **TOL)
    with pytest.raises(TypeError, match="func must return a tuple"):
        scipy_solve(lambda t, y: -y[0], (Y0, Y0), T, options={}, **TOL)


def test_bad_solver_name_and_options():
    with pytest.raises(ValueError, match="'rk45'"):
        scipy_solve(decay, Y0, T, options={"solver": "rk45"}, **TOL)
    with pytest.raises(ValueError, match="'dopri5'"):
        scipy_solve(decay, Y0, [0.0], options={"solver": "dopri5"}, **TOL)  # checked without a solve too
    with pytest.raises(ValueError, match="'max_stepp'"):
        scipy_solve(decay, Y0, T, options={"max_stepp": 0.1}, **TOL)
    with pytest.raises(ValueError, match="'min_step'"):  # only LSODA has min_step: scipy would ignore it
        scipy_solve(decay, Y0, T, options={"solver": "RK45", "min_step": 1e-3}, **TOL)
    with pytest.raises(ValueError, match="'t_eval'"):
        scipy_solve(decay, Y0, T, options={"t_eval": [1.0]}, **TOL)
    ys = scipy_solve(decay, Y0, T, options={"min_step": 0.0}, **TOL)  # LSODA's
    torch.testing.assert_close(ys, Y0 * torch.exp(-T)[:, None], rtol=0, atol=1e-7)


def test_bad_y0_and_t():
    with pytest.raises(TypeError, match="y0"):
        scipy_solve(decay, torch.tensor([1.0 + 1j]), T, options={}, **TOL)
    with pytest.raises(TypeError, match="y0"):
        scipy_solve(decay, torch.tensor([1, 2]), T, options={}, **TOL)
    with pytest.raises(TypeError, match="y0"):
        scipy_solve(decay, (Y0, Y0.float()), T, options={}, **TOL)
    with pytest.raises(ValueError, match="strictly"):
        scipy_solve(decay, Y0, [0.0, 1.0, 1.0], options={}, **TOL)
    with pytest.raises(ValueError, match="1-D"):
        scipy_solve(decay, Y0, torch.zeros(2, 2), options={}, **TOL)


@pytest.mark.parametrize("solver", ["RK45", "LSODA"])
def test_blow_up_raises_solve_error(solver):
    # dy/dt = y**2, y(0) = 1: y = 1 / (1 - t) blows up at t = 1
    y0 = torch.tensor([1.0], dtype=DTYPE)
    with pytest.raises(SolveError, match=f"method='{solver}'") as info:
        scipy_solve(lambda t, y: y**2, y0, [0.0, 0.5, 2.0], options={"solver": solver}, rtol=1e-6, atol=1e-8)
    assert 0.99 < info.value.t < 1.01 and info.value.num_steps > 10
    assert math.isfinite(info.value.t)


# --------------------------------------------------------------------------------------
# through symode.odeint, as torchdiffeq users call it


@pytest.mark.filterwarnings(TDE_WARNING)
def test_odeint_routes_to_scipy_and_agrees_with_torchdiffeq():
    import symode

    torchdiffeq = pytest.importorskip("torchdiffeq")
    kw = {"rtol": 1e-8, "atol": 1e-10, "options": {"solver": "RK45"}}
    ours = symode.odeint(rotation, Y0, T, method="scipy_solver", **kw)
    assert torch.equal(ours, scipy_solve(rotation, Y0, T, **kw))
    assert (ours - torchdiffeq.odeint(rotation, Y0, T, method="scipy_solver", **kw)).abs().max() < 1e-12
    assert (ours - exact_rotation(T, Y0)).abs().max() < 1e-7


@pytest.mark.parametrize("name", ["odeint", "odeint_adjoint", "odeint_symplectic_adjoint", "odeint_checkpoint"])
def test_odeint_with_a_gradient_wanted_is_refused(name):
    import symode

    odeint = getattr(symode, name)
    field = NetField(torch.nn.Linear(2, 2).double())
    with pytest.raises(ValueError, match=r"scipy_solver.*cannot be differentiated"):
        odeint(field, Y0, T, method="scipy_solver")
    weight = torch.ones(2, dtype=DTYPE, requires_grad=True)
    with pytest.raises(ValueError, match="scipy_solver"):  # adjoint_params count as inputs to differentiate
        odeint(lambda t, y: -weight.detach() * y, Y0, T, method="scipy_solver", adjoint_params=(weight,))
    with torch.no_grad():
        ys = odeint(field, Y0, T, method="scipy_solver")
    assert ys.shape == (len(T), 2) and not ys.requires_grad
