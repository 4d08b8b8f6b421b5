"""The continuous adjoint (Chen et al. 2018) and its torchdiffeq-style ``odeint_adjoint``.

The continuous adjoint is not exact: its gradient is that of the continuous problem, computed
by a second solve. The truth here is backprop through a forward solve accurate enough that its
exact (discrete) gradient equals the continuous one far below the errors asserted, checked
against finite differences too; the adjoint must approach it as its tolerances tighten.
"""

import pytest
import torch

import symode
from fields import CNF, Field
from symode import odeint_adjoint
from symode.gradients import ContinuousAdjoint

DTYPE = torch.float64


class MLP(torch.nn.Module):
    """An autonomous MLP vector field dim -> width -> width -> dim (tanh), weights scaled."""

    def __init__(self, dim=4, width=64, scale=1.0, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(dim, width),
            torch.nn.Tanh(),
            torch.nn.Linear(width, width),
            torch.nn.Tanh(),
            torch.nn.Linear(width, dim),
        ).to(DTYPE)
        with torch.no_grad():
            for p in self.net.parameters():
                p.mul_(scale)

    def forward(self, t, y):
        return self.net(y)


FINE = symode.FixedSteps(step_size=0.05)  # dopri8 with these steps: discrete = continuous to ~1e-14
TIGHT = symode.AdaptiveSteps(rtol=1e-11, atol=1e-11)


def randn(*shape, seed):
    return torch.randn(*shape, dtype=DTYPE, generator=torch.Generator().manual_seed(seed))


def flat_grads(func, y0, t, gradient, *, method="dopri8", steps=FINE, weights=None, params=None):
    """The gradient of a weighted sum of squares of all outputs w.r.t. y0 (its components)
    and the parameters, concatenated; and the solution."""
    leaves = [y for y in ([y0] if isinstance(y0, torch.Tensor) else y0) if y.requires_grad]
    params = list(func.parameters()) if params is None else list(params)
    sol = symode.solve(
        func,
        y0,
        t,
        method=method,
        steps=steps,
        gradient=gradient,
        adjoint_params=None if isinstance(func, torch.nn.Module) else params,
    )
    ys = [sol.ys] if isinstance(sol.ys, torch.Tensor) else list(sol.ys)
    weights = [torch.ones_like(y) for y in ys] if weights is None else weights
    loss = sum((w * y**2).sum() for w, y in zip(weights, ys))
    grads = torch.autograd.grad(loss, leaves + params)
    return torch.cat([g.reshape(-1) for g in grads]), sol


def rel(a, b):
    return float((a - b).norm() / b.norm())


# --------------------------------------------------------------------------------------
# accuracy


def test_gradient_approaches_the_exact_one_as_the_tolerances_tighten():
    func = MLP(scale=2.0)
    y0 = randn(8, 4, seed=1).requires_grad_(True)
    t = torch.tensor([0.0, 1.0], dtype=DTYPE)
    ref, _ = flat_grads(func, y0, t, "backprop")
    finer, _ = flat_grads(func, y0, t, "backprop", steps=symode.FixedSteps(step_size=0.025))
    assert rel(ref, finer) < 1e-13  # the reference is the continuous gradient to ~1e-14
    n = y0.numel()
    errors = []
    for tol in (1e-4, 1e-7, 1e-10):
        got, sol = flat_grads(
            func, y0, t, ContinuousAdjoint(method="dopri5", steps=symode.AdaptiveSteps(rtol=tol, atol=tol))
        )
        errors.append((rel(got, ref), rel(got[:n], ref[:n]), rel(got[n:], ref[n:]), sol.stats.nfe_backward))
    (e1, *_, n1), (e2, *_, n2), (e3, ey0, eth, n3) = errors
    assert e1 > e2 > e3, errors
    assert e1 < 1e-5 and e3 < 1e-10 and ey0 < 1e-10 and eth < 1e-10, errors
    assert n1 < n2 < n3, errors
    # (measured: 1.7e-7 / 6.3e-10 / 1.2e-12 with 32 / 80 / 230 backward evaluations)


def test_agrees_with_finite_differences():
    """The continuous gradient, in random directions of y0 and of a weight matrix."""
    func = Field(seed=2)
    y0 = randn(2, 3, seed=3).requires_grad_(True)
    t = torch.tensor([0.0, 0.4, 1.5], dtype=DTYPE)
    adjoint = ContinuousAdjoint(rtol=1e-11, atol=1e-11)
    ys = symode.solve(func, y0, t, steps=TIGHT, gradient=adjoint).ys
    gy0, gw = torch.autograd.grad((ys**2).sum(), (y0, func.w1))

    def loss(y0):
        with torch.no_grad():
            return float((symode.solve(func, y0, t, method="dopri8", steps=FINE).ys ** 2).sum())

    eps = 1e-6
    dy, dw = randn(2, 3, seed=4), randn(*func.w1.shape, seed=5)
    fd_y = (loss(y0 + eps * dy) - loss(y0 - eps * dy)) / (2 * eps)
    w = func.w1.detach().clone()
    func.w1.data = w + eps * dw
    plus = loss(y0)
    func.w1.data = w - eps * dw
    minus = loss(y0)
    func.w1.data = w
    fd_w = (plus - minus) / (2 * eps)
    assert float((gy0 * dy).sum()) == pytest.approx(fd_y, rel=1e-7)
    assert float((gw * dw).sum()) == pytest.approx(fd_w, rel=1e-7)


@pytest.mark.parametrize("times", [[0.0, 0.3, 0.5, 1.1], [1.0, 0.7, 0.0, -0.4]], ids=["increasing", "decreasing"])
@pytest.mark.parametrize("norm", ["default", "seminorm"])
def test_several_output_times(times, norm):
    func = Field(seed=1)
    y0 = randn(2, 3, seed=1).requires_grad_(True)
    t = torch.tensor(times, dtype=DTYPE)
    # a different weight for every output entry, so every output time's cotangent matters
    weights = [torch.rand(len(t), 2, 3, generator=torch.Generator().manual_seed(3), dtype=DTYPE)]
    ref, ref_sol = flat_grads(func, y0, t, "backprop", weights=weights)
    got, sol = flat_grads(
        func, y0, t, ContinuousAdjoint(steps=symode.AdaptiveSteps(rtol=1e-10, atol=1e-10), norm=norm), weights=weights
    )
    assert torch.equal(sol.ys, ref_sol.ys)  # the forward solve is the same
    assert rel(got, ref) < 1e-8
    assert sol.stats.nfe_backward == sol.stats.nfe_backward_vjp > 0
    # the output cotangents matter: dropping the middle ones changes the gradient
    weights[0][1:-1] = 0
    assert rel(flat_grads(func, y0, t, ContinuousAdjoint(), weights=weights)[0], got) > 1e-3


def test_tuple_state():
    class TupleField(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = Field(dim=3, seed=1)

        def forward(self, t, state):
            x, v = state
            out = self.inner(t, torch.cat([x, v[:, None]], dim=-1))
            return out[:, :2], out[:, 2]

    func = TupleField()
    x0 = randn(2, 2, seed=2).requires_grad_(True)
    v0 = randn(2, seed=3).requires_grad_(True)
    t = torch.tensor([1.0, 0.7, 0.0, -0.4], dtype=DTYPE)
    ref, _ = flat_grads(func, (x0, v0), t, "backprop")
    for norm in ("default", "seminorm"):
        got, sol = flat_grads(
            func, (x0, v0), t, ContinuousAdjoint(steps=symode.AdaptiveSteps(rtol=1e-10, atol=1e-10), norm=norm)
        )
        assert isinstance(sol.ys, tuple) and sol.ys[0].shape == (4, 2, 2) and sol.ys[1].shape == (4, 2)
        assert rel(got, ref) < 1e-8


def test_vector_field_that_calls_autograd():
    """A continuous normalizing flow: f returns (dz/dt, -tr(df/dz)) with a Hutchinson estimate,
    so f itself calls torch.autograd.grad (with create_graph)."""

    z0 = randn(5, 3, seed=6).requires_grad_(True)
    logp0 = torch.zeros(5, dtype=DTYPE)
    t = torch.tensor([0.0, 1.0], dtype=DTYPE)
    func = CNF()
    ref, _ = flat_grads(func, (z0, logp0), t, "backprop")
    got, _ = flat_grads(func, (z0, logp0), t, ContinuousAdjoint(steps=symode.AdaptiveSteps(rtol=1e-10, atol=1e-10)))
    assert rel(got, ref) < 1e-8
    # the log-density's gradient (second derivatives of the net) is part of it
    assert got.abs().sum() > 0


def test_fixed_steps_are_reused_backward_by_default():
    """With no adjoint settings, the backward solve takes the forward solve's step rule (here
    rk4 with a step size, or a grid): its gradient error is O(h^4)."""
    func = Field(seed=3)
    y0 = randn(2, 3, seed=4).requires_grad_(True)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=DTYPE)
    truth, _ = flat_grads(func, y0, t, "backprop")
    errors = []
    for h in (0.25, 0.125):
        got, sol = flat_grads(func, y0, t, ContinuousAdjoint(), method="rk4", steps=symode.FixedSteps(step_size=h))
        assert sol.stats.nfe_backward == 4 * round(1.0 / h)  # rk4: 4 evaluations a step, no heuristic
        errors.append(rel(got, truth))
    assert errors[0] / errors[1] > 10  # 4th order: about 16
    grid = torch.linspace(0, 1, 9, dtype=DTYPE)
    got_grid, sol = flat_grads(func, y0, t, ContinuousAdjoint(), method="rk4", steps=symode.FixedSteps(grid=grid))
    assert sol.stats.nfe_backward == 32
    assert rel(got_grid, got) < 1e-12  # the same steps as step_size=0.125


# --------------------------------------------------------------------------------------
# the seminorm


def test_seminorm_needs_fewer_backward_evaluations():
    func = MLP(scale=1.5)  # 4 -> 64 -> 64 -> 4: 4,740 parameters
    y0 = randn(16, 4, seed=0).requires_grad_(True)
    t = torch.tensor([0.0, 1.0], dtype=DTYPE)
    # the PI controller of the recorded figures (issue 3); with the default integral controller
    # the forward takes fewer steps: 44 vs 32 backward evaluations, errors 2e-7
    steps = symode.AdaptiveSteps(rtol=1e-6, atol=1e-8, controller="pi")
    ref, ref_sol = flat_grads(func, y0, t, "backprop", method="dopri5", steps=steps)
    results = {}
    for norm in ("default", "seminorm"):
        got, sol = flat_grads(func, y0, t, ContinuousAdjoint(norm=norm), method="dopri5", steps=steps)
        assert sol.stats.nfe_forward == ref_sol.stats.nfe_forward
        results[norm] = (sol.stats.nfe_backward, rel(got, ref))
    (nfe_default, err_default), (nfe_semi, err_semi) = results["default"], results["seminorm"]
    assert nfe_semi < 0.8 * nfe_default, results  # measured: 38 vs 80 (forward: 38)
    assert err_semi < 1e-7 and err_default < 1e-7, results


def test_norms_coincide_without_parameters():
    y0 = randn(3, seed=1).requires_grad_(True)
    t = torch.tensor([0.0, 2.0], dtype=DTYPE)

    def f(t, y):
        return torch.sin(y) - 0.3 * y

    counts = []
    for norm in ("default", "seminorm"):
        sol = symode.solve(f, y0, t, gradient=ContinuousAdjoint(norm=norm))
        (g,) = torch.autograd.grad(sol.ys[-1].sum(), y0)
        counts.append((sol.stats.nfe_backward, g))
    assert counts[0][0] == counts[1][0] and torch.equal(counts[0][1], counts[1][1])


# --------------------------------------------------------------------------------------
# parameters


def test_unused_parameter_gets_zero_gradient():
    func = Field()
    func.unused = torch.nn.Parameter(torch.ones(3, dtype=DTYPE))
    y0 = torch.ones(1, 3, dtype=DTYPE)
    t = torch.tensor([0.0, 1.0], dtype=DTYPE)
    ys = symode.odeint(func, y0, t, method="rk4", options={"step_size": 0.5}, gradient=ContinuousAdjoint())
    ys.sum().backward()
    assert func.unused.grad is not None and torch.count_nonzero(func.unused.grad) == 0
    assert func.w1.grad is not None and func.w1.grad.abs().sum() > 0


def test_adjoint_params_for_a_plain_function():
    weight = torch.tensor([[-0.5, 1.0], [-1.0, -0.2]], dtype=DTYPE, requires_grad=True)
    y0 = torch.ones(2, dtype=DTYPE, requires_grad=True)
    t = torch.tensor([0.0, 1.0], dtype=DTYPE)

    def f(t, y):
        return weight @ y

    with pytest.raises(ValueError, match="adjoint_params"):  # not silently without a gradient
        odeint_adjoint(f, y0, t)
    ys = odeint_adjoint(f, y0, t, rtol=1e-10, atol=1e-10, adjoint_params=(weight,))
    got = torch.autograd.grad(ys[-1].sum(), (y0, weight))
    # exact: y(1) = expm(W) y0, so d(sum y(1))/dy0 = expm(W)^T 1
    assert torch.allclose(
        got[0], torch.linalg.matrix_exp(weight.detach()).T @ torch.ones(2, dtype=DTYPE), rtol=1e-8, atol=0
    )
    ref = torch.autograd.grad(symode.odeint(f, y0, t, rtol=1e-10, atol=1e-10)[-1].sum(), (y0, weight))
    for a, b in zip(got, ref):
        assert rel(a, b) < 1e-8


def test_no_gradient_wanted_solves_once():
    func = Field()
    y0 = randn(2, 3, seed=0)
    t = torch.tensor([0.0, 1.0], dtype=DTYPE)
    with torch.no_grad():
        sol = symode.solve(func, y0, t, gradient=ContinuousAdjoint())
    ref = symode.solve(func, y0, t)
    assert not sol.ys.requires_grad and torch.equal(sol.ys, ref.ys.detach())
    assert sol.stats.nfe_backward == 0


def test_gradient_in_the_output_times():
    """The usual formula (dL/dt_k = <dL/dy_k, f(t_k, y_k)>, dL/dt_0 = -<a(t_0), f(t_0, y_0)>)
    is the derivative of the exact flow: with a tight solve it approaches the exact gradient
    of the discrete solve in t (backprop's), every output time included."""
    func = Field()
    y0 = randn(2, 3, seed=0).requires_grad_(True)
    weights = torch.rand(4, 2, 3, dtype=DTYPE, generator=torch.Generator().manual_seed(3))
    errors = []
    for tol in (1e-5, 1e-8, 1e-11):
        grads = {}
        for name, gradient in (("exact", "backprop"), ("adjoint", ContinuousAdjoint())):
            t = torch.tensor([0.1, 0.4, 0.7, 1.3], dtype=DTYPE, requires_grad=True)
            ys = symode.odeint(func, y0, t, rtol=tol, atol=tol, gradient=gradient)
            grads[name] = torch.autograd.grad((weights * ys**2).sum(), t)[0]
        errors.append(((grads["adjoint"] - grads["exact"]).norm() / grads["exact"].norm()).item())
        assert grads["exact"].abs().min() > 1e-3
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-8, errors


def test_no_second_derivatives():
    func = Field()
    y0 = randn(2, 3, seed=0).requires_grad_(True)
    t = torch.tensor([0.0, 1.0], dtype=DTYPE)
    ys = symode.solve(func, y0, t, gradient=ContinuousAdjoint()).ys
    # refused at the first backward with create_graph=True: never a second derivative that
    # silently lacks the solver's part
    with pytest.raises(RuntimeError, match=r"ContinuousAdjoint cannot be differentiated twice.*gradient='backprop'"):
        torch.autograd.grad(ys.sum(), y0, create_graph=True)


# --------------------------------------------------------------------------------------
# odeint_adjoint: torchdiffeq's signature, every argument honoured


class Counting(torch.nn.Module):
    """A field that counts its calls."""

    def __init__(self):
        super().__init__()
        self.field = MLP(dim=2, width=16, seed=7)
        self.calls = 0

    def forward(self, t, y):
        self.calls += 1
        return self.field(t, y)


def backward_calls(**kwargs):
    """(calls of f in the backward pass, the gradient w.r.t. y0) of an odeint_adjoint solve."""
    func = Counting()
    y0 = randn(4, 2, seed=8).requires_grad_(True)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=DTYPE)
    ys = odeint_adjoint(func, y0, t, **kwargs)
    before = func.calls
    (g,) = torch.autograd.grad((ys**2).sum(), y0)
    return func.calls - before, g


def test_odeint_adjoint_signature_is_torchdiffeqs():
    import inspect

    params = inspect.signature(odeint_adjoint).parameters
    # torchdiffeq's parameters in its order, then symode's own keyword (compile)
    assert list(params) == [
        "func",
        "y0",
        "t",
        "rtol",
        "atol",
        "method",
        "options",
        "event_fn",
        "adjoint_rtol",
        "adjoint_atol",
        "adjoint_method",
        "adjoint_options",
        "adjoint_params",
        "compile",
    ]
    assert params["compile"].kind is inspect.Parameter.KEYWORD_ONLY and params["compile"].default is False
    assert params["rtol"].default == 1e-7 and params["atol"].default == 1e-9
    assert params["method"].default == "dopri5"
    assert symode.odeint_adjoint is odeint_adjoint and symode.ContinuousAdjoint is ContinuousAdjoint


def test_odeint_adjoint_method_and_options():
    calls, g = backward_calls(adjoint_method="rk4", adjoint_options={"step_size": 0.1})
    assert calls == 4 * 10  # rk4, 5 steps in each of the two output intervals
    calls_coarse, g_coarse = backward_calls(adjoint_method="rk4", adjoint_options={"step_size": 0.5})
    assert calls_coarse == 4 * 2
    _, g_ref = backward_calls(adjoint_rtol=1e-11, adjoint_atol=1e-11)
    assert rel(g, g_ref) < rel(g_coarse, g_ref)
    # the forward method and options are those of the forward solve only
    calls_fwd_fixed, _ = backward_calls(method="rk4", options={"step_size": 0.25})
    assert calls_fwd_fixed == 4 * 4  # backward defaults to the forward's steps
    calls_mixed, _ = backward_calls(
        method="rk4", options={"step_size": 0.25}, adjoint_method="euler", adjoint_options={"step_size": 0.05}
    )
    assert calls_mixed == 20


def test_odeint_adjoint_tolerances():
    loose, g_loose = backward_calls(adjoint_rtol=1e-3, adjoint_atol=1e-3)
    tight, g_tight = backward_calls(adjoint_rtol=1e-10, adjoint_atol=1e-10)
    default, _ = backward_calls()  # the forward's rtol=1e-7, atol=1e-9
    assert loose < default < tight
    assert backward_calls(adjoint_rtol=1e-10)[0] > default  # each one is used
    assert backward_calls(adjoint_atol=1e-14)[0] > default
    assert backward_calls(rtol=1e-3, atol=1e-3)[0] < default  # ... and the forward's by default
    _, g_ref = backward_calls(adjoint_rtol=1e-12, adjoint_atol=1e-12)
    assert rel(g_tight, g_ref) < rel(g_loose, g_ref)


def test_odeint_adjoint_seminorm_option():
    func = MLP(scale=1.5)
    y0 = randn(16, 4, seed=0).requires_grad_(True)
    t = torch.tensor([0.0, 1.0], dtype=DTYPE)
    counts = {}
    for options in (None, {"norm": "seminorm"}, {"norm": "seminorm", "max_num_steps": 1000}):
        ys = odeint_adjoint(func, y0, t, rtol=1e-6, atol=1e-8, adjoint_options=options)
        calls = []
        hook = func.net[0].register_forward_hook(lambda *args: calls.append(1))
        torch.autograd.grad(ys.pow(2).sum(), y0)
        hook.remove()
        counts[repr(options)] = len(calls)
    plain, semi, semi_with_option = counts.values()
    assert semi == semi_with_option < 0.8 * plain, counts
    with pytest.raises(ValueError, match="unknown option"):
        odeint_adjoint(func, y0, t, adjoint_options={"norm": "seminorm", "stepsize": 0.1})
    with pytest.raises(ValueError, match="norm must be one of"):
        odeint_adjoint(func, y0, t, adjoint_options={"norm": "semi"})


# --------------------------------------------------------------------------------------
# bad arguments


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"rtol": -1e-3}, ValueError, "rtol must be positive"),
        ({"atol": "tight"}, TypeError, "atol must be a positive number"),
        ({"rtol": (1e-3, 1e-3)}, TypeError, "rtol must be a positive number or a tensor"),
        ({"method": "rk5"}, ValueError, "unknown method 'rk5'"),
        ({"method": 5}, TypeError, "method must be a method name"),
        ({"steps": {"step_size": 0.1}}, TypeError, "steps must be symode.FixedSteps or symode.AdaptiveSteps"),
        ({"rtol": 1e-3, "steps": symode.AdaptiveSteps()}, ValueError, "give the tolerances there"),
        (
            {"method": "rk4", "steps": symode.AdaptiveSteps(first_step=0.1)},
            ValueError,
            "method 'rk4' takes fixed steps",
        ),
        ({"norm": "max"}, ValueError, r"norm must be one of \['default', 'seminorm'\]"),
        ({"norm": None}, TypeError, "norm must be one of"),
    ],
)
def test_bad_constructor_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        ContinuousAdjoint(**kwargs)


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"adjoint_options": 0.1}, TypeError, "options must be a dict"),
        ({"adjoint_options": {"stepsize": 0.1}}, ValueError, r"unknown option\(s\) \['stepsize'\]"),
        ({"adjoint_options": {"step_size": -0.1}}, ValueError, "step_size must be positive"),
        (
            {"adjoint_method": "rk4", "adjoint_options": {"first_step": 0.1}},
            ValueError,
            "method 'rk4' takes fixed steps",
        ),
    ],
)
def test_bad_adjoint_options(kwargs, error, match):
    """torchdiffeq's adjoint_options dict is translated (and checked) by odeint_adjoint."""
    y0 = randn(2, 3, seed=0).requires_grad_(True)
    with pytest.raises(error, match=match):
        odeint_adjoint(Field(), y0, torch.tensor([0.0, 1.0], dtype=DTYPE), **kwargs)


def test_bad_arguments_at_solve_time():
    func = Field()
    y0 = randn(2, 3, seed=0).requires_grad_(True)
    t = torch.tensor([0.0, 1.0], dtype=DTYPE)
    with pytest.raises(ValueError, match="method 'rk4' takes fixed steps"):  # adaptive forward, no step size
        symode.solve(func, y0, t, gradient=ContinuousAdjoint(method="rk4"))
    with pytest.raises(ValueError, match=r"rtol of shape \(5,\) does not broadcast"):
        symode.solve(func, y0, t, gradient=ContinuousAdjoint(rtol=torch.full((5,), 1e-6)))
    # a tensor tolerance that broadcasts is used entry by entry
    sol = symode.solve(func, y0, t, gradient=ContinuousAdjoint(rtol=torch.full((3,), 1e-6)))
    sol.ys.sum().backward()
    assert y0.grad is not None


def test_repr_and_equality():
    assert repr(ContinuousAdjoint()) == "ContinuousAdjoint()"
    assert repr(ContinuousAdjoint(rtol=1e-6, norm="seminorm")) == "ContinuousAdjoint(rtol=1e-06, norm='seminorm')"
    assert ContinuousAdjoint(norm="seminorm") == ContinuousAdjoint(norm="SemiNorm")
    assert ContinuousAdjoint() != ContinuousAdjoint(norm="seminorm")
    assert ContinuousAdjoint.name == "adjoint" and not ContinuousAdjoint.exact
    assert {m.norm for m in ContinuousAdjoint.configurations()} == {"default", "seminorm"}


def test_backward_steps_with_per_component_tolerances_of_a_tuple_state():
    """``steps=AdaptiveSteps(rtol=(...), atol=(...))``: a tolerance per tuple component, shaped
    by the state's layout, gives the gradient of backprop to about the tolerance."""
    func = Field()
    x0, v0 = randn(2, 3, seed=1).requires_grad_(True), randn(2, 3, seed=2).requires_grad_(True)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=DTYPE)

    def oscillator(t, state):
        x, v = state
        return v, -func(t, x)

    def grads(gradient):
        xs, vs = symode.solve(
            oscillator, (x0, v0), t, steps=TIGHT, gradient=gradient, adjoint_params=tuple(func.parameters())
        ).ys
        loss = xs.pow(2).sum() + vs[-1].sum()
        return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, (x0, v0, *func.parameters()))])

    ref = grads("backprop")
    steps = symode.AdaptiveSteps(rtol=(1e-10, 1e-10), atol=(1e-10, torch.full((2, 3), 1e-10, dtype=DTYPE)))
    got = grads(ContinuousAdjoint(steps=steps))
    assert float((got - ref).norm() / ref.norm()) < 1e-7
    loose = grads(ContinuousAdjoint(steps=symode.AdaptiveSteps(rtol=(1e-10, 1e-2), atol=(1e-10, 1e-2))))
    assert float((loose - ref).norm() / ref.norm()) > float((got - ref).norm() / ref.norm())
