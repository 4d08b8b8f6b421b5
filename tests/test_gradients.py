"""Every exact gradient method equals backprop through the solver, to round-off.

Backprop with the step-size logic detached is the reference (see
shared design notes): the gradient of the discrete solve with the accepted steps held fixed.
Methods and tableaus are discovered from the package, so a new one is checked here without
editing this file.
"""

import pytest
import torch

import symode
from fields import CNF, Field
from symode.gradients import GRADIENT_METHODS

#: every configuration of every exact method but the reference
EXACT = [
    method
    for name, cls in sorted(GRADIENT_METHODS.items())
    if cls.exact and name != "backprop"
    for method in cls.configurations()
]
TABLEAUS = sorted({tab.name: tab for tab in symode.TABLEAUS.values()})
ADAPTIVE = [name for name in TABLEAUS if symode.TABLEAUS[name].adaptive]


class TupleField(torch.nn.Module):
    """The same kind of field on a tuple state (x of shape (B, 2), v of shape (B,))."""

    def __init__(self, dtype=torch.float64):
        super().__init__()
        self.inner = Field(dim=3, dtype=dtype, seed=1)

    def forward(self, t, state):
        x, v = state
        out = self.inner(t, torch.cat([x, v[:, None]], dim=-1))
        return out[:, :2], out[:, 2]


def steps_for(method, kind, dtype=torch.float64):
    if kind == "fixed":
        return symode.FixedSteps(step_size=0.13)
    tol = 1e-6 if dtype == torch.float64 else 1e-4
    return symode.AdaptiveSteps(rtol=tol, atol=tol)


def gradients(func, y0, t, method, steps, gradient, weights):
    """The gradient of a loss on all outputs w.r.t. y0 (a tuple's components), t (if it
    requires grad) and func's parameters."""
    leaves = [y for y in ([y0] if isinstance(y0, torch.Tensor) else y0) if y.requires_grad]
    leaves += [t] if t.requires_grad else []
    sol = symode.solve(func, y0, t, method=method, steps=steps, gradient=gradient)
    ys = [sol.ys] if isinstance(sol.ys, torch.Tensor) else list(sol.ys)
    loss = sum((w * (y**2)).sum() for w, y in zip(weights, ys))
    grads = torch.autograd.grad(loss, leaves + list(func.parameters()))
    return torch.cat([g.reshape(-1) for g in grads]), sol


def relative_difference(a, b):
    return ((a - b).norm() / b.norm()).item()


def check_against_backprop(func, y0, t, method, steps, gradient, tol):
    gen = torch.Generator().manual_seed(3)
    dtype = (y0 if isinstance(y0, torch.Tensor) else y0[0]).dtype
    outputs = [y0] if isinstance(y0, torch.Tensor) else y0
    # a different weight for every output entry, so every output time's cotangent matters
    weights = [torch.rand(len(t), *y.shape, generator=gen, dtype=torch.float64).to(dtype) for y in outputs]
    ref, ref_sol = gradients(func, y0, t, method, steps, "backprop", weights)
    got, sol = gradients(func, y0, t, method, steps, gradient, weights)
    assert torch.equal(sol.grid, ref_sol.grid), "the two solves took different steps"
    for a, b in zip(
        [sol.ys] if isinstance(sol.ys, torch.Tensor) else sol.ys,
        [ref_sol.ys] if isinstance(ref_sol.ys, torch.Tensor) else ref_sol.ys,
    ):
        assert torch.equal(a, b), "forward solutions differ"
    assert relative_difference(got, ref) <= tol
    return sol


@pytest.mark.parametrize("gradient", EXACT, ids=repr)
@pytest.mark.parametrize("kind", ["fixed", "adaptive"])
@pytest.mark.parametrize("method", TABLEAUS)
def test_exact_gradients_float64(method, kind, gradient):
    if kind == "adaptive" and not symode.TABLEAUS[method].adaptive:
        pytest.skip("fixed-step method")
    func = Field()
    y0 = torch.randn(2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1), requires_grad=True)
    t = torch.tensor([0.0, 0.3, 0.5, 1.1], dtype=torch.float64, requires_grad=True)
    check_against_backprop(func, y0, t, method, steps_for(method, kind), gradient, 1e-12)


@pytest.mark.parametrize("gradient", EXACT, ids=repr)
@pytest.mark.parametrize("method", ["euler", "midpoint", "rk4", "bosh3", "dopri5", "tsit5", "dopri8"])
def test_exact_gradients_decreasing_time_and_tuple_state(method, gradient):
    kind = "adaptive" if symode.TABLEAUS[method].adaptive else "fixed"
    func = TupleField()
    gen = torch.Generator().manual_seed(2)
    x0 = torch.randn(2, 2, dtype=torch.float64, generator=gen, requires_grad=True)
    v0 = torch.randn(2, dtype=torch.float64, generator=gen, requires_grad=True)
    t = torch.tensor([1.0, 0.7, 0.0, -0.4], dtype=torch.float64, requires_grad=True)
    check_against_backprop(func, (x0, v0), t, method, steps_for(method, kind), gradient, 1e-12)


@pytest.mark.parametrize("gradient", EXACT, ids=repr)
@pytest.mark.parametrize("method", ["rk4", "dopri5", "dopri8"])
def test_exact_gradients_float32(method, gradient):
    kind = "adaptive" if symode.TABLEAUS[method].adaptive else "fixed"
    func = Field(dtype=torch.float32)
    y0 = torch.randn(4, 3, generator=torch.Generator().manual_seed(1), requires_grad=True)
    t = torch.tensor([0.0, 0.5, 1.0])
    check_against_backprop(func, y0, t, method, steps_for(method, kind, torch.float32), gradient, 1e-5)


@pytest.mark.parametrize("gradient", [symode.Backprop(), *EXACT], ids=repr)
@pytest.mark.parametrize(
    "method,steps",
    [
        ("rk4", symode.FixedSteps(step_size=0.25)),
        ("dopri5", symode.AdaptiveSteps(rtol=1e-5, atol=1e-5, first_step=0.2)),
    ],
)
def test_gradcheck(method, steps, gradient):
    """Against finite differences (first_step fixed so that the grid does not move with y0)."""
    func = Field(dim=2, hidden=4)
    params = list(func.parameters())
    y0 = torch.randn(2, dtype=torch.float64, generator=torch.Generator().manual_seed(0), requires_grad=True)
    t = torch.tensor([0.0, 0.6, 1.0], dtype=torch.float64)
    grid = symode.solve(func, y0, t, method=method, steps=steps).grid

    def run(y0, *ps):
        for p, v in zip(params, ps):
            p.data = v.detach()  # finite differences perturb the parameters through these copies

        def f(t, y):
            ty = torch.cat([y, t.reshape(1)])
            return torch.tanh(ty @ ps[0] + ps[1]) @ ps[2] - 0.1 * y

        fixed = symode.FixedSteps(grid=grid)  # freeze the grid of the unperturbed solve
        return symode.solve(f, y0, t, method=method, steps=fixed, gradient=gradient, adjoint_params=ps).ys

    inputs = (y0, *[p.detach().clone().requires_grad_(True) for p in params])
    assert torch.autograd.gradcheck(run, inputs, eps=1e-6, atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("gradient", EXACT, ids=repr)
def test_vector_field_that_calls_autograd(gradient):
    """A continuous normalizing flow: f returns (dz/dt, -tr(df/dz)) with a Hutchinson estimate,
    so f itself calls torch.autograd.grad (with create_graph)."""

    z0 = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(6), requires_grad=True)
    logp0 = torch.zeros(5, dtype=torch.float64)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    check_against_backprop(CNF(), (z0, logp0), t, "dopri5", symode.AdaptiveSteps(rtol=1e-6, atol=1e-6), gradient, 1e-12)


@pytest.mark.parametrize("gradient", [symode.Backprop(), *EXACT], ids=repr)
def test_unused_parameter_gets_zero_gradient(gradient):
    func = Field()
    func.unused = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    y0 = torch.ones(1, 3, dtype=torch.float64)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    ys = symode.odeint(func, y0, t, method="rk4", options={"step_size": 0.5}, gradient=gradient)
    ys.sum().backward()
    assert func.unused.grad is None or torch.count_nonzero(func.unused.grad) == 0
    assert func.w1.grad is not None and func.w1.grad.abs().sum() > 0


@pytest.mark.parametrize("gradient", EXACT, ids=repr)
def test_closure_over_tensors_is_not_silently_ignored(gradient):
    weight = torch.tensor([[-0.5, 1.0], [-1.0, -0.2]], dtype=torch.float64, requires_grad=True)
    y0 = torch.ones(2, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)

    def f(t, y):
        return weight @ y

    with pytest.raises(ValueError, match="adjoint_params"):
        symode.odeint(f, y0, t, method="rk4", options={"step_size": 0.1}, gradient=gradient)
    ys = symode.odeint(f, y0, t, method="rk4", options={"step_size": 0.1}, gradient=gradient, adjoint_params=(weight,))
    got = torch.autograd.grad(ys[-1].sum(), (y0, weight))
    ref = torch.autograd.grad(symode.odeint(f, y0, t, method="rk4", options={"step_size": 0.1})[-1].sum(), (y0, weight))
    for g, r in zip(got, ref):
        assert relative_difference(g, r) <= 1e-13


def test_frozen_parameters_get_no_gradient():
    func = Field()
    func.w2.requires_grad_(False)
    y0 = torch.ones(1, 3, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    symode.odeint_symplectic_adjoint(func, y0, t, method="rk4", options={"step_size": 0.5}).sum().backward()
    assert func.w2.grad is None and func.w1.grad is not None and y0.grad is not None


def test_symplectic_adjoint_backward_evaluations_per_step():
    """Per accepted step: (stages that matter - 1) recomputations + one differentiated
    evaluation per stage that matters: dopri5 5 + 6, rk4 3 + 4, bosh3 2 + 3."""
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    for method, steps, recompute, swept in [
        ("dopri5", symode.AdaptiveSteps(rtol=1e-6, atol=1e-6), 5, 6),
        ("rk4", symode.FixedSteps(step_size=0.1), 3, 4),
        ("bosh3", symode.AdaptiveSteps(rtol=1e-6, atol=1e-6), 2, 3),
        ("euler", symode.FixedSteps(step_size=0.1), 0, 1),
    ]:
        func = Field()
        y0 = torch.ones(1, 3, dtype=torch.float64, requires_grad=True)
        sol = symode.solve(func, y0, t, method=method, steps=steps, gradient=symode.SymplecticAdjoint())
        assert sol.stats.nfe_backward == 0
        sol.ys.sum().backward()
        n = sol.stats.num_accepted
        assert sol.stats.nfe_backward_vjp == swept * n, method
        assert sol.stats.nfe_backward == (recompute + swept) * n, method


def test_odeint_symplectic_adjoint_is_odeint_with_the_gradient_object():
    func = Field()
    y0 = torch.ones(2, 3, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    a = symode.odeint_symplectic_adjoint(func, y0, t, rtol=1e-6, atol=1e-6)
    b = symode.odeint(func, y0, t, rtol=1e-6, atol=1e-6, gradient=symode.SymplecticAdjoint())
    c = symode.odeint(func, y0, t, rtol=1e-6, atol=1e-6, gradient="symplectic_adjoint")
    assert torch.equal(a, b) and torch.equal(a, c)


def test_no_grad_solve_keeps_no_checkpoints():
    """Without a gradient wanted, the symplectic adjoint is a plain solve (no stored states)."""
    func = Field()
    y0 = torch.ones(2, 3, dtype=torch.float64)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    with torch.no_grad():
        ys = symode.odeint_symplectic_adjoint(func, y0, t, rtol=1e-6, atol=1e-6)
    ref = symode.odeint(func, y0, t, rtol=1e-6, atol=1e-6)
    assert not ys.requires_grad and torch.equal(ys, ref.detach())


def test_backward_evaluations_per_step_of_every_stepwise_method():
    """dopri5 (6 stages that matter, FSAL): checkpoint rebuilds 6 stages per step; the
    symplectic adjoint with stored stages only sweeps 6; with a memory cap it also recomputes
    steps (6 evaluations each) as many times as the binomial schedule says; one checkpoint
    re-runs the forward pass on the grid (1 + 6 per step)."""
    from symode.gradients._revolve import optimal_recomputations

    t = torch.tensor([0.0, 0.4, 1.0], dtype=torch.float64)
    steps = symode.AdaptiveSteps(rtol=1e-7, atol=1e-7, interpolate=False)  # outputs as step ends

    def run(gradient):
        func = Field()
        y0 = torch.ones(1, 3, dtype=torch.float64, requires_grad=True)
        sol = symode.solve(func, y0, t, method="dopri5", steps=steps, gradient=gradient)
        sol.ys.sum().backward()
        return sol.stats

    stats = run(symode.Checkpoint())
    n = stats.num_accepted
    assert n > 5 and stats.nfe_backward == stats.nfe_backward_vjp == 6 * n
    stats = run(symode.SymplecticAdjoint(store_stages=True))
    assert stats.nfe_backward == stats.nfe_backward_vjp == 6 * n
    stats = run(symode.SymplecticAdjoint(max_checkpoints=2))
    assert stats.nfe_backward_vjp == 6 * n
    assert stats.nfe_backward == 11 * n + 6 * optimal_recomputations(n, 2)
    stats = run(symode.OneCheckpoint())
    assert stats.nfe_backward == stats.nfe_backward_vjp == 1 + 6 * n


def test_memory_cap_recomputes_the_forward_states_exactly():
    """With one slot, states are recomputed many times over; the gradient is still bitwise
    that of the uncapped adjoint, whose states were stored in the forward pass."""
    func = Field()
    y0 = torch.randn(2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0), requires_grad=True)
    t = torch.tensor([0.0, 0.5, 2.0], dtype=torch.float64)
    grads = []
    for gradient in (
        symode.SymplecticAdjoint(),
        symode.SymplecticAdjoint(max_checkpoints=1),
        symode.SymplecticAdjoint(max_checkpoints=0),
    ):
        ys = symode.odeint(func, y0, t, rtol=1e-8, atol=1e-8, gradient=gradient)
        grads.append(torch.autograd.grad(ys.pow(2).sum(), (y0, *func.parameters())))
    for other in grads[1:]:
        for a, b in zip(grads[0], other):
            assert torch.equal(a, b)


def test_gradient_method_arguments_are_validated():
    with pytest.raises(ValueError, match="max_checkpoints"):
        symode.SymplecticAdjoint(max_checkpoints=-1)
    with pytest.raises(ValueError, match="store_stages"):
        symode.SymplecticAdjoint(store_stages=True, max_checkpoints=3)
    with pytest.raises(TypeError, match="store_stages"):
        symode.SymplecticAdjoint(store_stages="yes")


@pytest.mark.parametrize("method", ["euler", "rk4", "dopri5"])
def test_time_gradient_of_backprop_against_finite_differences(method):
    """With step_size, the grid moves with the output times (t_k + i h), so central finite
    differences in t are the derivative of the discrete solve: an independent truth for the
    gradient in t (t[0] included) and its zero-valued carriers."""
    func = Field()
    y0 = torch.randn(2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    weights = torch.rand(4, 2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    steps = symode.FixedSteps(step_size=0.1)

    def loss(t):
        ys = symode.solve(func, y0, t, method=method, steps=steps).ys
        return (weights * ys**2).sum()

    t = torch.tensor([0.05, 0.43, 0.61, 1.27], dtype=torch.float64, requires_grad=True)
    grad = torch.autograd.grad(loss(t), t)[0]
    eps = 1e-6
    with torch.no_grad():
        fd = torch.stack([(loss(t + eps * e) - loss(t - eps * e)) / (2 * eps) for e in torch.eye(4, dtype=t.dtype)])
    assert torch.allclose(grad, fd, rtol=1e-7, atol=1e-9), (grad, fd)
    assert grad.abs().min() > 1e-3  # every output time matters


@pytest.mark.parametrize("gradient", [symode.Backprop(), *EXACT], ids=repr)
def test_time_carriers_do_not_change_the_solution(gradient):
    func = Field()
    y0 = torch.randn(2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1), requires_grad=True)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    plain = symode.solve(func, y0, t, gradient=gradient)
    timed = symode.solve(func, y0, t.clone().requires_grad_(True), gradient=gradient)
    assert torch.equal(plain.ys, timed.ys) and torch.equal(plain.grid, timed.grid)


def test_gradcheck_in_time():
    func = Field(dim=2, hidden=4)
    y0 = torch.randn(2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for gradient in [symode.Backprop(), *EXACT]:

        def run(t):
            return symode.solve(func, y0, t, method="rk4", steps=symode.FixedSteps(step_size=0.2), gradient=gradient).ys

        t = torch.tensor([0.0, 0.35, 0.9], dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(run, (t,), eps=1e-6, atol=1e-7, rtol=1e-6), gradient


@pytest.mark.parametrize(
    "name,cls",
    [
        ("odeint_checkpoint", symode.Checkpoint),
        ("odeint_onecheckpoint", symode.OneCheckpoint),
        ("odeint_symplectic_adjoint", symode.SymplecticAdjoint),
    ],
)
def test_authors_function_names(name, cls):
    """The authors' names (torch_symplectic_adjoint) are odeint with the matching gradient object."""
    func = Field()
    y0 = torch.ones(2, 3, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    ys = getattr(symode, name)(func, y0, t, rtol=1e-6, atol=1e-6, method="bosh3")
    ref = symode.odeint(func, y0, t, rtol=1e-6, atol=1e-6, method="bosh3", gradient=cls())
    assert torch.equal(ys, ref)
    assert ys.grad_fn is not None and ref.grad_fn is not None
    assert type(ys.grad_fn).__name__ == type(ref.grad_fn).__name__
