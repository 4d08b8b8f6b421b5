"""``method="explicit_adams"`` / ``"implicit_adams"``: torchdiffeq's fixed-step Adams methods.

Truths: torchdiffeq itself (same grid: equal to round-off), the exactness of the Adams weights
on polynomials, a closed form, backprop for the checkpointing methods (round-off in float64)
and finite differences for backprop.
"""

import math
import warnings

import pytest
import torch

import symode
from symode._adams import adams_coefficients

METHODS = ("explicit_adams", "implicit_adams")


@pytest.fixture(autouse=True)
def _float64():
    """Every tensor these tests make is float64; the default is restored for the other modules."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def _net(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))


class Field(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = _net()

    def forward(self, t, y):
        return self.net(y) * torch.cos(t)


Y0 = torch.linspace(-1, 1, 12, dtype=torch.float64).reshape(4, 3)
T = torch.linspace(0, 2, 5, dtype=torch.float64)


@pytest.mark.parametrize("k", range(1, 13))
def test_weights_integrate_polynomials_exactly(k):
    """k-step Adams-Bashforth integrates degree < k exactly over [0, 1] from the nodes 0..-(k-1);
    Adams-Moulton with the new node 1 integrates degree <= k exactly."""
    for implicit, degrees in ((False, range(k)), (True, range(k + 1))):
        weights = adams_coefficients(k, implicit)
        nodes = ([1] if implicit else []) + [-j for j in range(k)]
        for d in degrees:
            terms = [w * s**d for s, w in zip(nodes, weights)]
            scale = sum(abs(x) for x in terms)  # the sum cancels: its rounding is relative to this
            assert math.fsum(terms) == pytest.approx(1 / (d + 1), rel=0, abs=1e-14 * scale)


def test_weights_are_torchdiffeqs():
    pytest.importorskip("torchdiffeq")
    from torchdiffeq._impl.fixed_adams import _BASHFORTH_DIVISOR, _MOULTON_DIVISOR

    for k in range(1, 13):
        assert torch.allclose(torch.tensor(adams_coefficients(k, False)), _BASHFORTH_DIVISOR[k], rtol=1e-14, atol=0)
    for k in range(2, 13):  # torchdiffeq's Moulton row k: the new point and k - 1 past ones
        assert torch.allclose(torch.tensor(adams_coefficients(k - 1, True)), _MOULTON_DIVISOR[k], rtol=1e-14, atol=0)


OPTIONS = [
    {"step_size": 0.05},
    {"step_size": 0.07, "interp": "linear"},
    {"step_size": 0.07, "interp": "cubic"},
    {},
    {"step_size": 0.05, "perturb": True},
    {"step_size": 0.1, "max_order": 5},
    {"step_size": 0.3, "max_iters": 1, "interp": "linear"},
    {"grid_constructor": lambda f, y0, t: torch.linspace(0, 2, 41), "interp": "linear"},
]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    "options", OPTIONS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items() if not callable(v)) or "t-grid"
)
def test_agrees_with_torchdiffeq(method, options):
    torchdiffeq = pytest.importorskip("torchdiffeq")
    func = Field()
    theirs_options = {k: v for k, v in options.items() if (k, v) != ("interp", "linear")}  # their default
    with warnings.catch_warnings(record=True) as theirs_warnings:
        warnings.simplefilter("always")
        theirs = torchdiffeq.odeint(func, Y0, T, method=method, options=theirs_options)
    with warnings.catch_warnings(record=True) as ours_warnings:
        warnings.simplefilter("always")
        ours = symode.odeint(func, Y0, T, method=method, options=options)
    assert (ours - theirs).abs().max() < 1e-13
    # the same steps fail to converge (every warning of theirs is one of ours)
    assert len(ours_warnings) == len(theirs_warnings)


@pytest.mark.parametrize("method", METHODS)
def test_agrees_with_torchdiffeq_tuple_state_and_decreasing_time(method):
    torchdiffeq = pytest.importorskip("torchdiffeq")

    def func(t, y):
        return (-y[1] * t, 0.5 * y[0].sum() * torch.ones_like(y[1]))

    y0 = (torch.tensor([1.0, 0.5]), torch.tensor([0.3, -0.2]))
    t = torch.linspace(1, -1, 4)
    options = {"step_size": 1 / 30, "max_order": 6}  # stable at these steps: round-off is not amplified
    ours = symode.odeint(func, y0, t, method=method, options=options)
    theirs = torchdiffeq.odeint(func, y0, t, method=method, options=options)
    for a, b in zip(ours, theirs):
        assert (a - b).abs().max() < 1e-13 * max(1.0, b.abs().max().item())


@pytest.mark.parametrize("method", METHODS)
def test_closed_form_and_order(method):
    """y' = -y with max_order=5 (the higher orders' stability regions are too small for these
    steps, in torchdiffeq too): Adams-Bashforth of order 4, and Adams-Moulton one order higher,
    so the error shrinks by 2^4 (explicit) or 2^5 (implicit) as the steps halve."""
    t = torch.tensor([0.0, 3.0])
    y0 = torch.tensor([1.0])
    exact = math.exp(-3.0)
    errors = []
    for h in (0.02, 0.01):
        y = symode.odeint(lambda t, y: -y, y0, t, method=method, options={"step_size": h, "max_order": 5})[-1]
        errors.append(abs(y.item() - exact))
    expected = 2.0 ** (5 if method == "implicit_adams" else 4)
    assert 0.75 * expected < errors[0] / errors[1] < 1.3 * expected
    assert errors[0] < 1e-7


def test_max_order_below_four_is_the_three_eighths_rule():
    func = Field()
    with pytest.warns(UserWarning, match="reduces to"):
        ours = symode.odeint(func, Y0, T, method="explicit_adams", options={"step_size": 0.1, "max_order": 3})
    rk38 = symode.odeint(func, Y0, T, method="rk38", options={"step_size": 0.1})
    assert (ours - rk38).abs().max() < 1e-14


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("options", [{"step_size": 0.1}, {"step_size": 0.07, "interp": "cubic"}])
def test_checkpointing_methods_equal_backprop(method, options):
    func = Field()
    y0 = Y0.clone().requires_grad_(True)
    results = []
    for odeint in (symode.odeint, symode.odeint_checkpoint, symode.odeint_onecheckpoint):
        ys = odeint(func, y0, T, method=method, options=options)
        loss = (ys**2).sum() + ys[2].sum()
        results.append(torch.autograd.grad(loss, (y0, *func.parameters())))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert (a - b).abs().max() < 1e-12 * max(1.0, a.abs().max().item())


@pytest.mark.parametrize("method", METHODS)
def test_backprop_agrees_with_finite_differences(method):
    func = Field()
    y0 = Y0.clone().requires_grad_(True)

    def loss(y):
        return symode.odeint(func, y, T, method=method, options={"step_size": 0.1})[-1].pow(2).sum()

    (grad,) = torch.autograd.grad(loss(y0), y0)
    eps, direction = 1e-6, torch.linspace(0.3, -0.5, 12).reshape(4, 3)
    with torch.no_grad():
        fd = (loss(Y0 + eps * direction) - loss(Y0 - eps * direction)) / (2 * eps)
    assert (grad * direction).sum().item() == pytest.approx(fd.item(), rel=1e-7)


class Noisy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = _net(1)

    def forward(self, t, y):
        return self.net(y) + 0.1 * torch.randn_like(y)


@pytest.mark.parametrize("gradient", ["checkpoint", "onecheckpoint"])
def test_stochastic_func_checkpointing_replays_the_noise(gradient):
    func, y0 = Noisy(), Y0.clone().requires_grad_(True)
    grads = []
    for g in ("backprop", gradient):
        torch.manual_seed(5)
        ys = symode.odeint(func, y0, T, method="explicit_adams", options={"step_size": 0.1}, gradient=g)
        grads.append(torch.autograd.grad(ys.sum(), (y0, *func.parameters())))
    for a, b in zip(*grads):
        assert (a - b).abs().max() < 1e-12


@pytest.mark.parametrize("gradient", ["backprop", "checkpoint"])
def test_double_backward(gradient):
    func, y0 = Field(), Y0.clone().requires_grad_(True)
    results = []
    for g in ("backprop", gradient):
        ys = symode.odeint(func, y0, T, method="implicit_adams", options={"step_size": 0.1}, gradient=g)
        (gy,) = torch.autograd.grad(ys[-1].pow(2).sum(), y0, create_graph=True)
        results.append(torch.autograd.grad(gy.pow(2).sum(), y0)[0])
    assert (results[0] - results[1]).abs().max() < 1e-12


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_low_precision_states_follow_the_float64_solve(dtype):
    func = Field()
    ref = symode.odeint(func, Y0, T, method="explicit_adams", options={"step_size": 0.1})
    low = symode.odeint(func.to(dtype), Y0.to(dtype), T, method="explicit_adams", options={"step_size": 0.1})
    assert low.dtype == dtype
    assert (low.double() - ref).abs().max() < 50 * torch.finfo(dtype).eps * ref.abs().max()


def test_one_output_time_returns_y0():
    calls = []
    ys = symode.odeint(lambda t, y: calls.append(t) or y, Y0, T[:1], method="explicit_adams")
    assert torch.equal(ys, Y0[None]) and not calls


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    "odeint", [symode.odeint_symplectic_adjoint, symode.odeint_adjoint], ids=["symplectic", "adjoint"]
)
def test_one_step_gradient_methods_are_refused(method, odeint):
    with pytest.raises(ValueError, match="multistep"):
        odeint(Field(), Y0.clone().requires_grad_(True), T, method=method, options={"step_size": 0.1})


def test_bad_arguments():
    func = Field()
    with pytest.raises(ValueError, match="takes fixed steps"):
        symode.odeint(func, Y0, T, method="explicit_adams", options={"first_step": 0.1})
    with pytest.raises(ValueError, match="max_order"):
        symode.odeint(func, Y0, T, method="explicit_adams", options={"max_order": 13})
    with pytest.raises(ValueError, match="max_iters"):
        symode.odeint(func, Y0, T, method="implicit_adams", options={"max_iters": 0})
    with pytest.raises(ValueError, match="unknown option"):
        symode.odeint(func, Y0, T, method="explicit_adams", options={"stepsize": 0.1})
    with pytest.raises(ValueError, match="does not differentiate with respect to t"):
        symode.odeint(func, Y0, T.clone().requires_grad_(True), method="explicit_adams")
    with pytest.raises(ValueError, match="compile"):
        symode.odeint(func, Y0, T, method="explicit_adams", compile=True)


def test_buffers_changed_during_the_solve_are_refused_with_checkpointing():
    class WithStats(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3, 3)
            self.norm = torch.nn.BatchNorm1d(3)

        def forward(self, t, y):
            return self.norm(self.lin(y))

    func, y0 = WithStats(), Y0.clone().requires_grad_(True)
    with pytest.raises(ValueError, match="buffers"):
        symode.odeint(func, y0, T, method="explicit_adams", gradient="checkpoint", options={"step_size": 0.5})
    ys = symode.odeint(func, y0, T, method="explicit_adams", gradient="backprop", options={"step_size": 0.5})
    assert ys.requires_grad


@pytest.mark.parametrize("method", [*METHODS, "scipy_solver"])
def test_the_object_api_names_odeint_for_these_methods(method):
    with pytest.raises(ValueError, match=r"through symode\.odeint"):
        symode.solve(Field(), Y0, T, method=method)
