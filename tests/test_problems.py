"""Tests of the benchmark problems (symode.problems): the paper's CNF shapes and the neural ODE."""

import math

import pytest
import torch

from symode import AdaptiveSteps, FixedSteps, SymplecticAdjoint
from symode.bench.problems import PROBLEMS, CNFBlock, CNFProblem, MLPProblem, SummedStats, get_problem

TINY = dict(batch=3, width=8, dtype=torch.float64)
STEPS = AdaptiveSteps(rtol=1e-6, atol=1e-6)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: one thread (several are many times slower on a loaded 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _rel(a, b):
    return float((a - b).norm() / b.norm())


def test_registry_holds_the_papers_configurations():
    assert list(PROBLEMS) == ["power", "gas", "hepmass", "miniboone", "bsds300", "mlp"]
    shapes = {name: (s.dim, s.blocks, s.layers, s.width, s.activation) for name, s in PROBLEMS.items() if name != "mlp"}
    assert shapes == {
        "power": (6, 5, 3, 60, "tanh"),
        "gas": (8, 5, 3, 160, "tanh"),
        "hepmass": (21, 10, 2, 210, "softplus"),
        "miniboone": (43, 1, 2, 860, "softplus"),
        "bsds300": (63, 2, 3, 1260, "tanh"),
    }


def test_miniboone_at_full_size():
    p = get_problem("miniboone", batch=2)
    assert isinstance(p, CNFProblem) and p.num_blocks == 1
    # 43+1 -> 860, 860+1 -> 860, 860+1 -> 43 (t concatenated to every layer's input)
    n = (44 * 860 + 860) + (861 * 860 + 860) + (861 * 43 + 43)
    assert p.description["parameters"] == n == sum(x.numel() for x in p.inputs)
    assert p.data.shape == (2, 43) and p.data.dtype == torch.float32
    assert "cannot be downloaded" in p.description["data"]


@pytest.mark.parametrize("name", list(PROBLEMS))
def test_backprop_equals_symplectic_adjoint(name):
    p = get_problem(name, **TINY)
    assert p.description["blocks"] == PROBLEMS[name].blocks  # the size overrides keep the block count
    inputs = p.inputs
    assert inputs and all(x.dtype == torch.float64 for x in inputs)
    loss_bp, stats_bp = p.loss("backprop", "dopri5", STEPS)
    g_bp = torch.autograd.grad(loss_bp, inputs)
    loss_sa, stats_sa = p.loss(SymplecticAdjoint(), "dopri5", STEPS)
    g_sa = torch.autograd.grad(loss_sa, inputs)
    assert torch.isfinite(loss_bp) and float(loss_bp.detach()) == float(loss_sa.detach())
    assert stats_bp.num_accepted == stats_sa.num_accepted > 0
    assert len(stats_sa.parts) == len(stats_sa.grids) == PROBLEMS[name].blocks
    assert stats_sa.nfe_backward > 0 and stats_bp.nfe_backward == 0  # backward counts are read after backward
    num = sum(float((a - b).pow(2).sum()) for a, b in zip(g_sa, g_bp))
    den = sum(float(b.pow(2).sum()) for b in g_bp)
    assert den > 0 and math.sqrt(num / den) < 1e-10
    for a, b in zip(g_sa, g_bp):
        assert float((a - b).norm()) <= 1e-10 * float(b.norm()) + 1e-14


def _exact_trace(net, t, z):
    """tr(dg/dz) per sample, from the full Jacobian."""
    out = []
    for zi in z:
        jac = torch.autograd.functional.jacobian(lambda v: net(t, v[None])[0], zi)
        out.append(torch.diagonal(jac).sum())
    return torch.stack(out)


@pytest.mark.parametrize("activation", ["tanh", "softplus"])
def test_hutchinson_with_every_basis_vector_is_the_exact_trace(activation):
    dim, batch = 5, 4
    torch.manual_seed(0)
    block = CNFBlock(dim, [7, 7], activation, batch).double()
    z = torch.randn(batch, dim, dtype=torch.float64)
    logp = torch.zeros(batch, dtype=torch.float64)
    t = torch.tensor(0.3, dtype=torch.float64)
    total = torch.zeros(batch, dtype=torch.float64)
    for i in range(dim):
        block.noise.zero_()
        block.noise[:, i] = 1.0
        dz, dlogp = block(t, (z, logp))
        total += dlogp
    assert torch.allclose(dz, block.net(t, z))
    assert torch.allclose(-total, _exact_trace(block.net, t, z), rtol=1e-12, atol=1e-12)


def test_hutchinson_noise_is_fixed_per_iteration_and_resampled():
    p = get_problem("power", **TINY)
    noise = [b.noise.clone() for b in p.modules]
    assert all(n.shape == (3, 6) and n.abs().sum() > 0 for n in noise)
    assert not torch.equal(noise[0], noise[1])  # each block draws its own
    p.loss("backprop", "dopri5", STEPS)
    assert all(torch.equal(b.noise, n) for b, n in zip(p.modules, noise))  # f does not redraw it
    p.resample(p.noise_seed + 1)
    assert not torch.equal(p.modules[0].noise, noise[0])
    p.resample(p.noise_seed - 1)
    assert all(torch.equal(b.noise, n) for b, n in zip(p.modules, noise))  # a seed gives the same noise
    r = get_problem("gas", noise="rademacher", **TINY)
    assert set(r.modules[0].noise.unique().tolist()) == {-1.0, 1.0}


def test_blocks_chain():
    p = get_problem("power", **TINY)
    z, logp, stats = p.flow("backprop", "dopri5", STEPS)
    # by hand: each block starts from the previous block's (z, log p)
    from symode import solve

    zh, lh = p.data, torch.zeros(3, dtype=torch.float64)
    for block in p.modules:
        zs, ls = solve(block, (zh, lh), p.t, steps=STEPS).ys
        zh, lh = zs[-1], ls[-1]
    assert torch.equal(z, zh) and torch.equal(logp, lh)
    assert len(stats.parts) == 5
    assert stats.nfe_forward == sum(s.nfe_forward for s in stats.parts)
    # every block's parameters get a gradient
    loss, _ = p.loss("backprop", "dopri5", STEPS)
    loss.backward()
    for block in p.modules:
        assert all(q.grad is not None and q.grad.abs().sum() > 0 for q in block.parameters())


def test_loss_is_the_negative_log_likelihood_of_a_linear_flow():
    """With no hidden layer g(t, z) = A z + w t + b: z(1) is a matrix exponential and the
    Hutchinson term integrates to e^T A e, so the loss has a closed form (FFJORD's signs)."""
    p = get_problem("power", batch=4, layers=0, blocks=1, dim=3, dtype=torch.float64)
    (layer,) = p.modules[0].net.layers
    W = layer.weight.detach()  # (3, 1 + 3): the t column first
    w, A, b = W[:, 0], W[:, 1:], layer.bias.detach()
    M = torch.zeros(5, 5, dtype=torch.float64)  # d/dt (z, t, 1) = M (z, t, 1)
    M[:3, :3], M[:3, 3], M[:3, 4], M[3, 4] = A, w, b, 1.0
    aug = torch.cat([p.data, torch.zeros(4, 1, dtype=torch.float64), torch.ones(4, 1, dtype=torch.float64)], 1)
    z1 = (aug @ torch.linalg.matrix_exp(M).T)[:, :3]
    e = p.modules[0].noise
    logp1 = -((e @ A) * e).sum(-1)
    z, logp, _ = p.flow("backprop", "dopri5", AdaptiveSteps(rtol=1e-12, atol=1e-12))
    assert torch.allclose(z, z1, rtol=1e-9, atol=1e-10) and torch.allclose(logp, logp1, rtol=1e-9, atol=1e-12)
    log_normal = -0.5 * z1.pow(2).sum(-1) - 1.5 * math.log(2 * math.pi)
    loss, _ = p.loss("backprop", "dopri5", AdaptiveSteps(rtol=1e-12, atol=1e-12))
    assert abs(float(loss.detach()) - float((-log_normal + logp1).mean())) < 1e-9


def test_mlp_problem_differentiates_y0():
    p = get_problem("mlp", **TINY)
    assert isinstance(p, MLPProblem) and p.inputs[0] is p.y0 and p.y0.shape == (3, 43)
    assert p.noise_seed is None
    p.resample(5)  # draws nothing
    loss, stats = p.loss("backprop", "dopri5", STEPS)
    assert isinstance(stats, SummedStats) and stats.num_accepted > 0
    assert torch.autograd.grad(loss, p.y0)[0].abs().sum() > 0


@pytest.mark.parametrize("name", ["miniboone", "mlp"])
def test_converted_holds_the_same_values(name):
    p = get_problem(name, batch=3, width=8, dtype=torch.float32)
    q = p.converted(torch.float64)
    assert all(a.dtype == torch.float32 for a in p.inputs) and all(b.dtype == torch.float64 for b in q.inputs)
    assert all(torch.equal(a.double(), b) for a, b in zip(p.inputs, q.inputs))
    # on the same accepted steps, the float64 gradient is the float32 one to float32 round-off
    loss, stats = p.loss("backprop", "dopri5", STEPS)
    g32 = torch.autograd.grad(loss, p.inputs)
    loss64, stats64 = q.loss("backprop", "dopri5", [FixedSteps(grid=g) for g in stats.grids])
    g64 = torch.autograd.grad(loss64, q.inputs)
    assert stats64.num_accepted == stats.num_accepted
    assert max(_rel(a.double(), b) for a, b in zip(g32, g64)) < 1e-4


def test_bad_names_and_sizes():
    with pytest.raises(ValueError, match="unknown problem"):
        get_problem("mnist")
    with pytest.raises(ValueError, match="batch"):
        get_problem("gas", batch=0)
    with pytest.raises(ValueError, match="one block"):
        get_problem("mlp", blocks=2)
    with pytest.raises(ValueError, match="noise"):
        get_problem("gas", noise="uniform", **TINY)


def test_building_leaves_the_global_rng_alone():
    state = torch.random.get_rng_state()
    get_problem("gas", **TINY)
    assert torch.equal(torch.random.get_rng_state(), state)
