"""``compile=True``: the compiled step against the eager one (the independent truth here).

torch.compile takes seconds per configuration, so this file compiles few: a fixed-step
rk38 step with gradient (backprop), and an adaptive dopri5 step without (the symplectic
adjoint's forward pass). Compiled arithmetic may fuse operations, so agreement is to
round-off in float64, not bitwise.
"""

from __future__ import annotations

import pytest
import torch

import symode

# torch.compile: a cold inductor cache compiles for tens of seconds
pytestmark = pytest.mark.slow


class MLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))

    def forward(self, t, y):
        return self.net(y) * torch.cos(t)


def _flat(func, y0):
    return torch.cat([y0.grad.reshape(-1)] + [p.grad.reshape(-1) for p in func.parameters()])


def _solve_and_grad(func, y0, t, compile, **kwargs):
    func.zero_grad()
    y0.grad = None
    sol = symode.solve(func, y0, t, compile=compile, **kwargs)
    sol.ys.pow(2).sum().backward()
    return sol, _flat(func, y0)


@pytest.fixture(scope="module")
def problem():
    torch.manual_seed(0)
    func = MLP().double()
    y0 = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    return func, y0


def test_compiled_backprop_matches_eager_and_does_not_recompile(problem):
    func, y0 = problem
    t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    kwargs = dict(method="rk38", steps=symode.FixedSteps(step_size=0.03))
    eager, g_eager = _solve_and_grad(func, y0, t, False, **kwargs)
    compiled, g_compiled = _solve_and_grad(func, y0, t, True, **kwargs)
    torch.testing.assert_close(compiled.ys, eager.ys, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(g_compiled, g_eager, rtol=1e-11, atol=1e-13)
    assert compiled.stats.nfe_forward == eager.stats.nfe_forward == 4 * (len(eager.grid) - 1)
    assert torch.equal(compiled.grid, eager.grid)

    # other step sizes and times reuse the compiled graph: the times and h are tensors
    before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    _solve_and_grad(
        func,
        y0,
        torch.tensor([0.1, 0.7], dtype=torch.float64),
        True,
        method="rk38",
        steps=symode.FixedSteps(step_size=0.017),
    )
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == before


def test_compiled_forward_of_the_symplectic_adjoint_is_exact_on_its_grid(problem):
    # The step-size controller amplifies round-off (the error estimate is a difference of
    # nearly equal sums), so the compiled solve's grid matches the eager one to ~1e-8, not
    # 1e-12. The exact truth is backprop on the compiled solve's own grid.
    func, y0 = problem
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    eager, _ = _solve_and_grad(func, y0, t, False, method="dopri5", steps=symode.AdaptiveSteps(rtol=1e-6, atol=1e-8))
    compiled, g_compiled = _solve_and_grad(
        func,
        y0,
        t,
        True,
        method="dopri5",
        gradient="symplectic_adjoint",
        steps=symode.AdaptiveSteps(rtol=1e-6, atol=1e-8),
    )
    assert len(compiled.grid) == len(eager.grid)
    torch.testing.assert_close(compiled.grid, eager.grid, rtol=1e-6, atol=0.0)
    assert compiled.stats.nfe_forward == eager.stats.nfe_forward
    replay, g_replay = _solve_and_grad(func, y0, t, False, method="dopri5", steps=symode.FixedSteps(grid=compiled.grid))
    torch.testing.assert_close(compiled.ys, replay.ys, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(g_compiled, g_replay, rtol=1e-11, atol=1e-13)


def test_compiled_solve_differentiates_the_output_times(problem):
    # steps carrying the gradient of t run eagerly; the result is the eager one
    func, y0 = problem
    grads = []
    for compile in (False, True):
        t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64, requires_grad=True)
        ys = symode.odeint(func, y0, t, method="rk38", options={"step_size": 0.03}, compile=compile)
        grads.append(torch.autograd.grad(ys.pow(2).sum(), t)[0])
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-12, atol=1e-14)


def test_compile_must_be_a_bool(problem):
    func, y0 = problem
    with pytest.raises(TypeError, match="compile must be True or False"):
        symode.odeint(func, y0, torch.tensor([0.0, 1.0]), compile="yes")


class TraceFlow(torch.nn.Module):
    """A func that differentiates itself (a CNF's Hutchinson trace estimate)."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
        self.noise = torch.randn(4, 3)

    def forward(self, t, state):
        z, _ = state
        with torch.enable_grad():
            z = z if z.requires_grad else z.detach().requires_grad_(True)
            dz = self.net(z)
            div = (torch.autograd.grad(dz, z, self.noise.to(z), create_graph=True)[0] * self.noise.to(z)).sum(-1)
        return dz, -div


def test_compiled_symplectic_adjoint_of_a_self_differentiating_func_matches_eager():
    # backprop through it would need a double backward of the compiled graphs (unsupported
    # by torch.compile, documented); the symplectic adjoint's forward records no graph
    torch.manual_seed(1)
    func = TraceFlow().double()
    z0 = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    logp0 = torch.zeros(4, dtype=torch.float64)
    grads = []
    for compile in (False, True):
        func.zero_grad()
        z0.grad = None
        zs, logps = symode.odeint(
            func,
            (z0, logp0),
            torch.tensor([0.0, 1.0], dtype=torch.float64),
            method="rk4",
            options={"step_size": 0.1},
            gradient="symplectic_adjoint",
            compile=compile,
        )
        (zs[-1].pow(2).sum() + logps[-1].sum()).backward()
        grads.append(_flat(func, z0))
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-12, atol=1e-14)
