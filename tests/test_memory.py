"""Memory of the symplectic adjoint vs backprop through the solver (issue 2, small instance).

The deterministic profiler measure (``symode.bench.peak_memory``) makes peak memory exact
and repeatable, so it can be asserted. The full-size table (MLP 43 -> 860 -> 860 -> 43,
N = 25 / 100 / 200) is ``benchmarks/memory.py``, recorded in ``benchmarks/RESULTS.md``.

Problem: MLP vector field 43 -> W -> W -> 43 (softplus), W = 128, batch B = 32, float64,
rk4 (s = 4 network uses per step), t in [0, 1] with N = 10, 20, 40 fixed steps; one training
iteration (solve, loss = y(1)^2 mean, loss.backward()) with the parameters and y0 (requiring
grad) created outside the measured call and every .grad set to None before it.

Sizes (float64, itemsize 8):
    |y|     = B * 43 * 8                                    =  11,008 B  (one state)
    H       = 4 * B * W * 8                                 = 131,072 B  (hidden activations
              that one use of f saves for backward: two pre-activations, which softplus's
              backward needs, and two softplus outputs, which the next linear's backward needs)
    A       = H + |y|                                       = 142,080 B  (plus the input,
              saved by the first linear)
    |theta| = (43*W + W + W*W + W + W*43 + 43) * 8          = 221,528 B
"""

import pytest
import torch

import symode
from symode.bench import MLPField, peak_memory

DIM, WIDTH, BATCH = 43, 128, 32
DTYPE = torch.float64
STEPS = (10, 20, 40)
STAGES = 4  # rk4
ITEM = 8

STATE = BATCH * DIM * ITEM  # |y|
HIDDEN = 4 * BATCH * WIDTH * ITEM  # H: hidden activations saved by one use of f
ACTIVATIONS = HIDDEN + STATE  # A: ... plus its input


def _iteration(func, y0, t, n_steps, gradient):
    ys = symode.odeint(func, y0, t, method="rk4", options={"step_size": 1.0 / n_steps}, gradient=gradient)
    loss = ys[-1].pow(2).mean()
    loss.backward()
    return loss.item()


@pytest.fixture(scope="module")
def measured():
    """Peak bytes and gradients of one training iteration, per (gradient, N)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the figures do not depend on it; time on a shared 2-core machine does
    try:
        return _measure_all()
    finally:
        torch.set_num_threads(threads)


def _measure_all():
    torch.manual_seed(0)
    func = MLPField(DIM, WIDTH).to(DTYPE)
    y0 = torch.randn(BATCH, DIM, dtype=DTYPE).requires_grad_(True)
    t = torch.tensor([0.0, 1.0], dtype=DTYPE)
    theta = sum(p.numel() for p in func.parameters()) * ITEM
    peaks, grads = {}, {}
    for n in STEPS:
        for gradient in ("backprop", "symplectic_adjoint"):
            func.zero_grad(set_to_none=True)
            y0.grad = None
            peaks[gradient, n] = peak_memory(_iteration, func, y0, t, n, gradient).peak_bytes
            grads[gradient, n] = torch.cat([y0.grad.reshape(-1)] + [p.grad.reshape(-1) for p in func.parameters()])
    # determinism: the same call measures the same bytes
    func.zero_grad(set_to_none=True)
    y0.grad = None
    again = peak_memory(_iteration, func, y0, t, STEPS[0], "symplectic_adjoint").peak_bytes
    return {"peaks": peaks, "grads": grads, "theta": theta, "again": again}


def _slopes(peaks, gradient):
    return [(peaks[gradient, n2] - peaks[gradient, n1]) / (n2 - n1) for n1, n2 in zip(STEPS, STEPS[1:])]


def test_sizes_match_the_network():
    assert STATE == 11_008 and HIDDEN == 131_072 and ACTIVATIONS == 142_080
    assert sum(p.numel() for p in MLPField(DIM, WIDTH).parameters()) * ITEM == 221_528


def test_symplectic_adjoint_memory_vs_backprop(measured):
    peaks, grads, theta = measured["peaks"], measured["grads"], measured["theta"]
    assert measured["again"] == peaks["symplectic_adjoint", STEPS[0]]

    # (d) both methods compute the same gradient (y0 and parameters), so the memory
    # comparison is of two correct computations.
    for n in STEPS:
        b, s = grads["backprop", n], grads["symplectic_adjoint", n]
        assert torch.isfinite(b).all()
        assert (b - s).norm() <= 1e-10 * b.norm(), n

    # (a) the symplectic adjoint stores one checkpoint per step and nothing else that
    # grows with N: growth per step at most 1.5 |y| (it is exactly |y| today).
    for slope in _slopes(peaks, "symplectic_adjoint"):
        assert 0 < slope <= 1.5 * STATE, slope / STATE

    # (b) backprop keeps every network use's graph: per rk4 step at least the hidden
    # activations of its s = 4 uses, s * H = 4 * 4 * B * W * 8 = 524,288 B = 47.6 |y|
    # (exactly s * A = 568,320 B today: the input of each use is saved too).
    for slope in _slopes(peaks, "backprop"):
        assert slope >= STAGES * HIDDEN, slope / HIDDEN
        assert slope <= 1.25 * STAGES * ACTIVATIONS, slope / ACTIVATIONS

    # (c) at the largest N the ratio follows from the two models: backprop at least
    # N s H + |theta| (its graph, and the parameter gradient the backward allocates); the
    # symplectic adjoint's floor N |y| + 2 s |y| + A + |theta| (checkpoints, stage states and
    # cotangents, one use's graph, the gradient). That predicts 23.8 at N = 40; asserting
    # half of it leaves room for the gradient buffers that the adjoint's backward holds beyond
    # the floor (see test_symplectic_adjoint_peak_close_to_floor).
    n = STEPS[-1]
    predicted = (n * STAGES * HIDDEN + theta) / (n * STATE + 2 * STAGES * STATE + ACTIVATIONS + theta)
    assert predicted > 23
    ratio = peaks["backprop", n] / peaks["symplectic_adjoint", n]
    assert ratio >= 0.5 * predicted, (ratio, predicted)


def test_symplectic_adjoint_peak_close_to_floor(measured):
    # Budget: the floor N|y| + 2s|y| + A + |theta| plus one more |theta| for the parameter
    # gradient that autograd.grad returns for a stage before it is added to the accumulator
    # (autograd.grad returns all of them at once), one more for the step's sums of the
    # parameter cotangents (added to the running totals once per step, for float32 rounding),
    # and 10% slack.
    peaks, theta = measured["peaks"], measured["theta"]
    for n in STEPS:
        floor = n * STATE + 2 * STAGES * STATE + ACTIVATIONS + theta
        assert peaks["symplectic_adjoint", n] <= 1.1 * (floor + 2 * theta), (n, peaks["symplectic_adjoint", n] / floor)


def _peak(func, y0, t, n, gradient):
    func.zero_grad(set_to_none=True)
    y0.grad = None
    return peak_memory(_iteration, func, y0, t, n, gradient).peak_bytes


@pytest.mark.slow
def test_memory_orders_as_the_theory_says_and_the_cap_is_flat():
    """backprop ~ one checkpoint > checkpoint > symplectic adjoint; the continuous adjoint
    flat in N; with max_checkpoints the
    symplectic adjoint's peak does not grow with N at all (the recomputed states replace the
    stored ones)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        func = MLPField(DIM, WIDTH).to(DTYPE)
        y0 = torch.randn(BATCH, DIM, dtype=DTYPE).requires_grad_(True)
        t = torch.tensor([0.0, 1.0], dtype=DTYPE)
        n = STEPS[-1]
        peak = {name: _peak(func, y0, t, n, name) for name in ("backprop", "one_checkpoint", "checkpoint")}
        peak["symplectic"] = _peak(func, y0, t, n, symode.SymplecticAdjoint())
        adjoint = {m: _peak(func, y0, t, m, symode.ContinuousAdjoint()) for m in (STEPS[0], n)}
        capped = {m: _peak(func, y0, t, m, symode.SymplecticAdjoint(max_checkpoints=3)) for m in (STEPS[0], n)}
    finally:
        torch.set_num_threads(threads)
    # one checkpoint rebuilds the whole graph: backprop's memory, within the stored y0 and outputs
    assert abs(peak["one_checkpoint"] - peak["backprop"]) <= 0.05 * peak["backprop"]
    # checkpoint: N states + one step's graph (s uses) < the whole graph
    assert peak["checkpoint"] < 0.25 * peak["backprop"]
    # ... and more than the symplectic adjoint by at least s - 1 network uses' hidden activations
    # (the symplectic adjoint's step sums of the parameter cotangents, |theta|, aside)
    theta = sum(p.numel() * p.element_size() for p in func.parameters())
    assert peak["checkpoint"] - (peak["symplectic"] - theta) >= (STAGES - 1) * HIDDEN
    # the continuous adjoint stores no state per step: its peak does not grow with N. (Its
    # stages carry the parameter integrals, s |theta| and more, so whether it is below the
    # symplectic adjoint's N |y| + A + 2 |theta| depends on N |y| against s |theta|: here, at
    # B = 32 and N = 40, it is not.)
    assert adjoint[STEPS[0]] == adjoint[n]
    # the cap: the same peak at N = 10 and N = 40, below the uncapped adjoint's at N = 40
    assert capped[STEPS[0]] == capped[n]
    assert capped[n] < peak["symplectic"]
