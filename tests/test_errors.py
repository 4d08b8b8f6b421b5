"""Bad inputs and failing solves raise clear errors.

Every bad argument must raise ``ValueError`` or ``TypeError`` (never an ``AssertionError``,
a raw ``RuntimeError`` from deep inside torch, or a silent wrong answer) whose message names
the argument; a solve that cannot succeed raises ``symode.SolveError`` saying where and why.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import symode

F64 = torch.float64
ADAPTIVE_METHODS = [name for name in sorted(symode.TABLEAUS) if symode.TABLEAUS[name].adaptive]
FIXED_ONLY_METHODS = [name for name in sorted(symode.TABLEAUS) if not symode.TABLEAUS[name].adaptive]

Y0 = torch.tensor([1.0, 0.5], dtype=F64)
T = torch.tensor([0.0, 0.5, 1.0], dtype=F64)


def decay(t, y):
    return -y


def pair_decay(t, state):
    x, v = state
    return -x, -v


# (method, options) pairs covering the adaptive and the fixed-step paths
PATHS = [("dopri5", None), ("rk4", {"step_size": 0.1}), ("dopri5", {"step_size": 0.1})]
PATH_IDS = ["dopri5-adaptive", "rk4-fixed", "dopri5-fixed"]


# --------------------------------------------------------------------------------------
# y0


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_y0(bad):
    y0 = torch.tensor([1.0, bad], dtype=F64)
    with pytest.raises(ValueError, match=r"y0 has non-finite entries"):
        symode.odeint(decay, y0, T)
    with pytest.raises(ValueError, match=r"y0\[1\] has non-finite entries"):
        symode.odeint(pair_decay, (Y0, y0), T)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.complex128])
def test_non_float_y0(dtype):
    y0 = torch.ones(2, dtype=dtype)
    with pytest.raises(TypeError, match=r"y0 must have a real floating dtype"):
        symode.odeint(decay, y0, T)
    with pytest.raises(TypeError, match=r"y0\[0\] must have a real floating dtype"):
        symode.odeint(pair_decay, (y0, Y0), T)


@pytest.mark.parametrize(
    "y0", [1.0, np.array([1.0, 0.5]), None, "1.0", {"x": Y0}], ids=["float", "ndarray", "None", "str", "dict"]
)
def test_y0_not_a_tensor(y0):
    with pytest.raises(TypeError, match=r"y0 must be a tensor"):
        symode.odeint(decay, y0, T)


def test_y0_list_of_numbers():
    with pytest.raises(TypeError, match=r"y0\[0\] must be a tensor, got float"):
        symode.odeint(decay, [1.0, 0.5], T)


def test_y0_empty():
    with pytest.raises(ValueError, match=r"y0 is empty"):
        symode.odeint(decay, torch.zeros(0, dtype=F64), T)
    with pytest.raises(TypeError, match=r"y0 must be a tensor or a non-empty tuple"):
        symode.odeint(decay, (), T)


def test_tuple_y0_mixed_dtypes():
    with pytest.raises(TypeError, match=r"components of y0 must share one dtype"):
        symode.odeint(pair_decay, (Y0, Y0.float()), T)


# --------------------------------------------------------------------------------------
# t


@pytest.mark.parametrize(
    "t",
    [torch.zeros(2, 2, dtype=F64), torch.tensor(1.0, dtype=F64), torch.zeros(0, dtype=F64)],
    ids=["2-D", "0-D", "empty"],
)
def test_t_not_1d(t):
    with pytest.raises(ValueError, match=r"t must be a 1-D tensor"):
        symode.odeint(decay, Y0, t)


@pytest.mark.parametrize(
    "t_values,bad_index",
    [
        ([0.0, 0.5, 0.5, 1.0], 1),  # a repeated time
        ([0.0, 0.0], 0),  # a repeated first time
        ([0.0, 1.0, 0.5], 1),  # zig-zag
        ([1.0, 0.5, 0.75, 0.0], 1),  # zig-zag while decreasing
    ],
    ids=["repeat", "repeat-first", "zigzag", "zigzag-decreasing"],
)
@pytest.mark.parametrize("method,options", PATHS, ids=PATH_IDS)
def test_t_not_strictly_monotone(t_values, bad_index, method, options):
    t = torch.tensor(t_values, dtype=F64)
    with pytest.raises(ValueError, match=r"t must be strictly increasing or strictly decreasing") as info:
        symode.odeint(decay, Y0, t, method=method, options=options)
    # the message names the pair of times that break the order
    assert f"t[{bad_index}] = {t_values[bad_index]!r}" in str(info.value)
    assert f"t[{bad_index + 1}] = {t_values[bad_index + 1]!r}" in str(info.value)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_t_not_finite(bad):
    with pytest.raises(ValueError, match=r"t must be finite"):
        symode.odeint(decay, Y0, torch.tensor([0.0, bad], dtype=F64))


def test_t_complex():
    with pytest.raises(TypeError, match=r"t must hold real times"):
        symode.odeint(decay, Y0, torch.tensor([0.0, 1.0], dtype=torch.complex128))


def test_t_not_convertible():
    with pytest.raises(TypeError, match=r"t must be a 1-D tensor of times"):
        symode.odeint(decay, Y0, "0 to 1")


# --------------------------------------------------------------------------------------
# method, options, steps


@pytest.mark.parametrize("method", ["dopri6", "", "RK45"])
def test_unknown_method(method):
    with pytest.raises(ValueError, match=rf"unknown method {method!r}.*available methods: .*dopri5"):
        symode.odeint(decay, Y0, T, method=method)
    with pytest.raises(ValueError, match=rf"unknown method {method!r}"):
        symode.solve(decay, Y0, T, method=method)


def test_method_wrong_type():
    with pytest.raises(TypeError, match=r"method must be a method name"):
        symode.odeint(decay, Y0, T, method=5)


@pytest.mark.parametrize("options", [{"stepsize": 0.1}, {"step_size": 0.1, "foo": 1}, {"atol": 1e-6}])
def test_unknown_option(options):
    unknown = sorted(set(options) - {"step_size"})
    with pytest.raises(ValueError, match=rf"unknown option\(s\) \[{unknown[0]!r}"):
        symode.odeint(decay, Y0, T, method="dopri5", options=options)


def test_options_not_a_dict():
    with pytest.raises(TypeError, match=r"options must be a dict"):
        symode.odeint(decay, Y0, T, options=[("step_size", 0.1)])


@pytest.mark.parametrize("method", FIXED_ONLY_METHODS)
def test_fixed_method_without_step_size(method):
    name = symode.TABLEAUS[method].name  # an alias (heun2) reports the tableau's own name
    # odeint, as torchdiffeq: one step from each output time to the next
    torch.testing.assert_close(
        symode.odeint(decay, Y0, T, method=method),
        symode.solve(decay, Y0, T, method=method, steps=symode.FixedSteps(grid=T)).ys,
        rtol=0,
        atol=0,
    )
    with pytest.raises(ValueError, match=rf"method {name!r} takes fixed steps"):
        symode.odeint(decay, Y0, T, method=method, options={"step_size": None, "first_step": 0.1})
    with pytest.raises(ValueError, match=r"needs a step size.*FixedSteps\(step_size="):
        symode.solve(decay, Y0, T, method=method)
    with pytest.raises(ValueError, match=r"has no error estimate.*step_size"):
        symode.solve(decay, Y0, T, method=method, steps=symode.AdaptiveSteps())
    # adaptive-only options do not make a fixed method adaptive
    with pytest.raises(ValueError, match=r"takes fixed steps"):
        symode.odeint(decay, Y0, T, method=method, options={"first_step": 0.1})


@pytest.mark.parametrize(
    "option,value",
    [
        ("first_step", 0.01),
        ("controller", "i"),
        ("safety", 0.8),
        ("ifactor", 5.0),
        ("dfactor", 0.5),
    ],
)
def test_adaptive_option_with_step_size(option, value):
    with pytest.raises(ValueError, match=rf"option\(s\) \[{option!r}\] apply to adaptive steps.*'step_size'"):
        symode.odeint(decay, Y0, T, method="dopri5", options={"step_size": 0.1, option: value})


def test_max_num_steps_limits_fixed_steps_before_any_step():
    """``max_num_steps`` limits fixed steps too, checked before the grid of times is built
    (``step_size=1e-9`` on [0, 1] would otherwise build a list of 1e9 times)."""
    with pytest.raises(symode.SolveError, match=r"step_size=1e-09 takes 1000000000 steps .* max_num_steps = 100000"):
        symode.odeint(decay, Y0, T, method="rk4", options={"step_size": 1e-9})
    with pytest.raises(symode.SolveError, match=r"takes 20 steps .* max_num_steps = 10"):
        symode.odeint(decay, Y0, T, method="rk4", options={"step_size": 0.05, "max_num_steps": 10})
    ys = symode.odeint(decay, Y0, T, method="rk4", options={"step_size": 0.05, "max_num_steps": 20})
    assert torch.allclose(ys[-1], Y0 * math.exp(-1.0), rtol=1e-6)
    grid = torch.linspace(0.0, 1.0, 12, dtype=torch.float64)
    with pytest.raises(symode.SolveError, match=r"grid takes 12 steps"):  # the grid's 11 and t = 0.5 splits one
        symode.solve(decay, Y0, T, method="rk4", steps=symode.FixedSteps(grid=grid, max_num_steps=10))


def test_step_size_and_grid_together():
    with pytest.raises(ValueError, match=r"exactly one of step_size .* or grid"):
        symode.odeint(decay, Y0, T, method="rk4", options={"step_size": 0.1, "grid": T})


@pytest.mark.parametrize("h", [0.0, -0.1, float("nan"), float("inf")])
def test_bad_step_size(h):
    with pytest.raises(ValueError, match=r"step_size must be positive and finite"):
        symode.odeint(decay, Y0, T, method="rk4", options={"step_size": h})


def test_step_size_wrong_type():
    with pytest.raises(TypeError, match=r"step_size must be a positive number"):
        symode.odeint(decay, Y0, T, method="rk4", options={"step_size": "0.1"})


@pytest.mark.parametrize(
    "grid,match",
    [
        (torch.tensor([0.1, 0.5, 1.0]), r"grid must start at t\[0\] = 0.0"),
        (torch.tensor([0.0, 0.5, 0.9]), r"grid must start at t\[0\] = 0.0 and end at t\[-1\] = 1.0"),
        (torch.tensor([0.0, 0.6, 0.4, 1.0]), r"grid must be strictly increasing or strictly decreasing"),
        (torch.tensor([0.0]), r"grid must hold at least two finite times"),
        (torch.zeros(2, 2), r"grid must be a 1-D tensor"),
    ],
    ids=["start", "end", "zigzag", "short", "2-D"],
)
def test_bad_grid(grid, match):
    with pytest.raises(ValueError, match=match):
        symode.odeint(decay, Y0, T, method="rk4", options={"grid": grid})


@pytest.mark.parametrize(
    "option,value,error,match",
    [
        ("first_step", 0.0, ValueError, r"first_step must be positive and finite"),
        ("first_step", -1e-3, ValueError, r"first_step must be positive and finite"),
        ("controller", "pd", ValueError, r"controller must be one of \['i', 'pi', 'pid'\]"),
        ("safety", 1.5, ValueError, r"safety must be in \(0, 1\]"),
        ("ifactor", 0.5, ValueError, r"ifactor .* must be > 1"),
        ("dfactor", 2.0, ValueError, r"dfactor .* must be < 1"),
        ("max_num_steps", 0, ValueError, r"max_num_steps must be a positive int"),
        ("max_num_steps", 10.5, ValueError, r"max_num_steps must be a positive int"),
    ],
)
def test_bad_adaptive_option(option, value, error, match):
    with pytest.raises(error, match=match):
        symode.odeint(decay, Y0, T, method="dopri5", options={option: value})


def test_steps_wrong_type():
    with pytest.raises(TypeError, match=r"steps must be symode.FixedSteps or symode.AdaptiveSteps"):
        symode.solve(decay, Y0, T, steps={"step_size": 0.1})


# --------------------------------------------------------------------------------------
# rtol / atol


@pytest.mark.parametrize("bad", [-1e-6, 0.0, float("nan"), float("inf")])
@pytest.mark.parametrize("which", ["rtol", "atol"])
def test_bad_scalar_tolerance(which, bad):
    with pytest.raises(ValueError, match=rf"{which} must be positive and finite"):
        symode.odeint(decay, Y0, T, **{which: bad})
    with pytest.raises(ValueError, match=rf"{which} must be positive and finite"):
        symode.AdaptiveSteps(**{which: bad})


@pytest.mark.parametrize("bad", [[1e-6, 0.0], [1e-6, -1e-6], [1e-6, float("nan")]])
@pytest.mark.parametrize("which", ["rtol", "atol"])
def test_bad_tensor_tolerance(which, bad):
    with pytest.raises(ValueError, match=rf"{which} must be positive and finite everywhere"):
        symode.odeint(decay, Y0, T, **{which: torch.tensor(bad, dtype=F64)})


@pytest.mark.parametrize("which", ["rtol", "atol"])
def test_tolerance_wrong_type(which):
    with pytest.raises(TypeError, match=rf"{which} must be a positive number or tensor"):
        symode.odeint(decay, Y0, T, **{which: "1e-6"})


@pytest.mark.parametrize("shape", [(3,), (2, 2), (1, 3)])
@pytest.mark.parametrize("which", ["rtol", "atol"])
def test_tolerance_tensor_does_not_broadcast(which, shape):
    tol = torch.full(shape, 1e-6, dtype=F64)
    with pytest.raises(
        ValueError, match=rf"{which} of shape {re_tuple(shape)} does not broadcast to the state's shape \(2,\)"
    ):
        symode.odeint(decay, Y0, T, **{which: tol})


def re_tuple(shape) -> str:
    return str(tuple(shape)).replace("(", r"\(").replace(")", r"\)")


@pytest.mark.parametrize("which", ["rtol", "atol"])
def test_tuple_tolerance_wrong_length(which):
    with pytest.raises(ValueError, match=rf"{which} has 3 entries but y0 has 2 components"):
        symode.odeint(pair_decay, (Y0, Y0), T, **{which: (1e-6, 1e-6, 1e-6)})


@pytest.mark.parametrize("which", ["rtol", "atol"])
def test_tuple_tolerance_entry_does_not_broadcast(which):
    tol = (torch.full((3,), 1e-6, dtype=F64), 1e-6)
    with pytest.raises(
        ValueError, match=rf"{which}\[0\] of shape \(3,\) does not broadcast to the shape \(2,\) of y0\[0\]"
    ):
        symode.odeint(pair_decay, (Y0, Y0), T, **{which: tol})


@pytest.mark.parametrize("which", ["rtol", "atol"])
def test_tuple_tolerance_for_single_tensor_state(which):
    with pytest.raises(TypeError, match=rf"{which} is a tuple of 2 entries, but y0 is a single tensor"):
        symode.odeint(decay, Y0, T, **{which: (1e-6, 1e-3)})


@pytest.mark.parametrize("which", ["rtol", "atol"])
def test_tuple_tolerance_with_bad_entry(which):
    with pytest.raises(ValueError, match=rf"{which} must be positive"):
        symode.odeint(pair_decay, (Y0, Y0), T, **{which: (1e-6, -1.0)})


# --------------------------------------------------------------------------------------
# func


def test_func_not_callable():
    with pytest.raises(TypeError, match=r"func must be callable"):
        symode.odeint(42, Y0, T)


@pytest.mark.parametrize("method,options", PATHS, ids=PATH_IDS)
def test_func_wrong_shape(method, options):
    with pytest.raises(ValueError, match=r"func returned shape \(3,\) for a state of shape \(2,\)"):
        symode.odeint(lambda t, y: torch.zeros(3, dtype=F64), Y0, T, method=method, options=options)
    # a shape that would broadcast silently is rejected too
    with pytest.raises(ValueError, match=r"func returned shape \(1,\) for a state of shape \(2,\)"):
        symode.odeint(lambda t, y: -y.sum().reshape(1), Y0, T, method=method, options=options)


@pytest.mark.parametrize("method,options", PATHS, ids=PATH_IDS)
def test_func_wrong_dtype(method, options):
    with pytest.raises(TypeError, match=r"func returned dtype torch.float32 for a state of dtype torch.float64"):
        symode.odeint(lambda t, y: (-y).float(), Y0, T, method=method, options=options)


@pytest.mark.parametrize("result", [None, 1.0, [0.0, 0.0], np.zeros(2)], ids=["None", "float", "list", "ndarray"])
@pytest.mark.parametrize("method,options", PATHS, ids=PATH_IDS)
def test_func_returns_non_tensor(method, options, result):
    with pytest.raises(TypeError, match=r"func must return a tensor like y"):
        symode.odeint(lambda t, y: result, Y0, T, method=method, options=options)


@pytest.mark.parametrize("method,options", PATHS, ids=PATH_IDS)
def test_tuple_func_wrong_length(method, options):
    with pytest.raises(TypeError, match=r"func must return a tuple of 2 tensors like y0, got tuple of length 1"):
        symode.odeint(lambda t, s: (-s[0],), (Y0, Y0), T, method=method, options=options)
    with pytest.raises(TypeError, match=r"func must return a tuple of 2 tensors like y0, got tuple of length 3"):
        symode.odeint(lambda t, s: (-s[0], -s[1], -s[1]), (Y0, Y0), T, method=method, options=options)
    with pytest.raises(TypeError, match=r"func must return a tuple of 2 tensors like y0, got Tensor"):
        symode.odeint(lambda t, s: -s[0], (Y0, Y0), T, method=method, options=options)


@pytest.mark.parametrize("method,options", PATHS, ids=PATH_IDS)
def test_tuple_func_bad_component(method, options):
    with pytest.raises(ValueError, match=r"func returned shape \(3,\) for a state of shape \(2,\)"):
        symode.odeint(lambda t, s: (-s[0], torch.zeros(3, dtype=F64)), (Y0, Y0), T, method=method, options=options)
    with pytest.raises(TypeError, match=r"func returned dtype torch.float32"):
        symode.odeint(lambda t, s: (-s[0], (-s[1]).float()), (Y0, Y0), T, method=method, options=options)
    with pytest.raises(TypeError, match=r"func must return a tensor like y, got float"):
        symode.odeint(lambda t, s: (-s[0], 0.0), (Y0, Y0), T, method=method, options=options)


# --------------------------------------------------------------------------------------
# gradient, adjoint_params


@pytest.mark.parametrize("gradient", ["adjoin", "symplectic-adjoin", ""])
def test_unknown_gradient(gradient):
    with pytest.raises(ValueError, match=rf"unknown gradient method {gradient!r}"):
        symode.odeint(decay, Y0, T, gradient=gradient)


def test_gradient_wrong_type():
    with pytest.raises(TypeError, match=r"gradient must be a string"):
        symode.odeint(decay, Y0, T, gradient=3)


@pytest.mark.parametrize(
    "params,match",
    [
        ([1.0], r"adjoint_params\[0\] must be a tensor, got float"),
        ((torch.ones(2), "w"), r"adjoint_params\[1\] must be a tensor, got str"),
        ([np.ones(2)], r"adjoint_params\[0\] must be a tensor, got ndarray"),
        (3.0, r"adjoint_params must be a sequence of tensors"),
    ],
    ids=["float", "str", "ndarray", "scalar"],
)
@pytest.mark.parametrize("gradient", ["backprop", "symplectic_adjoint"])
def test_adjoint_params_not_tensors(params, match, gradient):
    with pytest.raises(TypeError, match=match):
        symode.odeint(decay, Y0, T, gradient=gradient, adjoint_params=params)


# --------------------------------------------------------------------------------------
# Failing solves


@pytest.mark.parametrize("method", ADAPTIVE_METHODS)
def test_blow_up_adaptive(method):
    # y' = y^2, y(0) = 1 has y = 1 / (1 - t): it blows up at t = 1
    with pytest.raises(symode.SolveError, match=r"step size underflow .* at t = .*accepted") as info:
        symode.odeint(
            lambda t, y: y * y,
            torch.ones(1, dtype=F64),
            torch.tensor([0.0, 2.0], dtype=F64),
            method=method,
            rtol=1e-3,
            atol=1e-6,
        )
    err = info.value
    assert isinstance(err, RuntimeError)
    assert abs(err.t - 1.0) < 0.1, err.t  # fehlberg2's weak estimate gets to ~1.05
    assert repr(err.t) in str(err)
    assert err.num_steps > 10
    assert f"after {err.num_steps} accepted" in str(err)


@pytest.mark.parametrize("method", ["euler", "rk4", "dopri5"])
def test_blow_up_fixed_steps(method):
    # the state overflows to inf (then nan) long before t = 5; the solve says so
    with pytest.raises(symode.SolveError, match=r"non-finite \(inf or nan\) by t = 5.0") as info:
        symode.odeint(
            lambda t, y: y * y,
            torch.ones(1, dtype=F64),
            torch.tensor([0.0, 5.0], dtype=F64),
            method=method,
            options={"step_size": 0.1},
        )
    assert info.value.t == 5.0
    assert info.value.num_steps == 50


def test_blow_up_fixed_steps_reports_the_first_bad_output_time():
    t = torch.tensor([0.0, 0.5, 3.0, 5.0], dtype=F64)
    with pytest.raises(symode.SolveError, match=r"non-finite \(inf or nan\) by t = 3.0"):
        symode.odeint(lambda t, y: y * y, torch.ones(1, dtype=F64), t, method="rk4", options={"step_size": 0.1})


def test_unstable_fixed_steps_overflow():
    # a stiff linear problem with a step far outside the stability region overflows
    with pytest.raises(symode.SolveError, match=r"non-finite.*smaller step_size"):
        symode.odeint(
            lambda t, y: -1000.0 * y,
            torch.ones(2, dtype=F64),
            torch.tensor([0.0, 10.0], dtype=F64),
            method="rk4",
            options={"step_size": 0.1},
        )


@pytest.mark.parametrize("method", ADAPTIVE_METHODS)
def test_max_num_steps_too_small(method):
    with pytest.raises(
        symode.SolveError,
        match=r"reached max_num_steps = 3 at t = .* accepted, .* rejected steps\) "
        r"before t = 1.0.*max_num_steps",
    ) as info:
        symode.odeint(
            lambda t, y: torch.cos(10 * t) * y,
            torch.ones(1, dtype=F64),
            torch.tensor([0.0, 1.0], dtype=F64),
            method=method,
            rtol=1e-8,
            atol=1e-10,
            options={"max_num_steps": 3},
        )
    assert 0.0 < info.value.t < 1.0
    assert math.isfinite(info.value.t)


@pytest.mark.parametrize("method", ["dopri5", "bosh3"])
def test_func_turning_non_finite_mid_solve(method):
    # f is fine before t = 0.5 and nan after: the adaptive solve cannot pass t = 0.5, and
    # says that f or the state became non-finite there
    def func(t, y):
        return -y if float(t) < 0.5 else y * float("nan")

    with pytest.raises(symode.SolveError, match=r"step size underflow .* at t = .*non-finite") as info:
        symode.odeint(func, Y0, torch.tensor([0.0, 1.0], dtype=F64), method=method)
    assert abs(info.value.t - 0.5) < 1e-6
