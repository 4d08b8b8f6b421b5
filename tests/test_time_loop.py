"""The time loop ``symode._integrate.integrate`` against a scripted stub step.

The stub has ``rk_step``'s signature and takes no real step: it records every step tried
(``t``, ``t_next``, the ``y`` and ``k1`` it was handed), returns ``y_next = y + (t_next - t)``,
fresh stage derivatives ``ks`` (distinct tensors, so that the loop's reuse of ``ks[0]`` /
``ks[-1]`` is visible by identity) and an error estimate scripted to give a chosen error
ratio: with ``atol = 1`` and ``rtol = 1e-30`` the scale ``atol + rtol * max(|y|, |y_next|)``
is exactly 1, so a constant error ``r`` has RMS ratio ``r`` (the state has 2 entries, for
which ``sqrt(mean(r^2, r^2)) == |r|`` exactly).

The expected steps are computed here from the documented rules (``AdaptiveSteps``'
docstring, ``FixedSteps``' docstring), not by running the loop.
"""

from __future__ import annotations

import functools
import itertools
import math

import pytest
import torch

import symode
from symode import AdaptiveSteps, FixedSteps, SolveError, Stats
from symode._integrate import Trajectory, integrate
from symode._step_size import rms_norm

#: adaptive steps that end on every output time: what these tests of the time loop check
CLIPPED = functools.partial(AdaptiveSteps, interpolate=False)

F64 = torch.float64
Y0 = torch.tensor([1.0, -2.0], dtype=F64)
TOL = {"rtol": 1e-30, "atol": 1.0, "norm": rms_norm}
GAINS = {"i": (1.0, 0.0), "pi": (0.3, 0.4)}  # (icoeff, pcoeff), from AdaptiveSteps' docstring


class ScriptDone(Exception):
    """Raised by the stub when its script of error ratios is exhausted."""


class StubStep:
    """A fake ``rk_step`` (``step(t, t_next, y, k1, *, with_error, keep_stage_states, dts)``).

    ``ratio(n, t, t_next)`` gives the error ratio of try ``n`` (a list: ``ratio[n]``, then
    ``ScriptDone``); ``bad(t, t_next)`` says whether ``y_next`` is made non-finite.
    """

    def __init__(self, tableau, ratio=None, bad=None) -> None:
        self.s = tableau.num_stages
        self.ratio = ratio
        self.bad = bad
        self.tries: list[dict] = []

    def __call__(self, t, t_next, y, k1, *, with_error=True, keep_stage_states=False, dts=None):
        n = len(self.tries)
        record = {"t": t, "t_next": t_next, "y": y, "k1": k1, "with_error": with_error}
        self.tries.append(record)
        if isinstance(self.ratio, list):
            if n >= len(self.ratio):
                raise ScriptDone
            r = self.ratio[n]
        elif self.ratio is not None:
            r = self.ratio(n, t, t_next)
        else:
            r = 0.5
        y_next = y + (t_next - t)
        if self.bad is not None and self.bad(t, t_next):
            y_next = torch.full_like(y, math.nan)
        ks = [torch.full_like(y, 1000.0 * n + i) for i in range(self.s)]
        err = torch.full_like(y, r) if with_error else None
        record.update(y_next=y_next, ks=ks)
        return y_next, err, ks, [None] * self.s


class RecordingRhs:
    def __init__(self):
        self.calls = []

    def __call__(self, t, y, dt=None):
        out = torch.full_like(y, -7.0)
        self.calls.append((t, y, out))
        return out


def run(tableau, t_out, steps, stub, *, stats=None, keep_states=False, **kw):
    rhs = RecordingRhs()
    tol = TOL if isinstance(steps, AdaptiveSteps) else {}
    traj = integrate(rhs, Y0, t_out, tableau, steps, step=stub, stats=stats, keep_states=keep_states, **tol, **kw)
    return traj, rhs


def endpoints(stub):
    return [(r["t"], r["t_next"]) for r in stub.tries]


# --------------------------------------------------------------------------------------
# fixed steps


def fixed_points(t_out, h):
    """``FixedSteps(step_size=h)``'s documented plan: each output interval crossed in steps
    of ``h`` from its start, the last one shortened to end on the output time (a remainder
    below 1e-9 h absorbed). Returns the step endpoints and the grid index of each output."""
    points, out_index = [t_out[0]], [0]
    for a, b in itertools.pairwise(t_out):
        d = 1.0 if b > a else -1.0
        i = 1
        while d * (b - (a + d * i * h)) > 1e-9 * h:
            points.append(a + d * i * h)
            i += 1
        points.append(b)
        out_index.append(len(points) - 1)
    return points, out_index


def check_fixed_run(tableau, t_out, steps, expected_points, expected_index):
    stub = StubStep(tableau)
    traj, rhs = run(tableau, t_out, steps, stub, keep_states=True)
    assert isinstance(traj, Trajectory)
    tried = endpoints(stub)
    assert len(tried) == len(expected_points) - 1
    # consecutive steps, starting at t_out[0]
    assert tried[0][0] == t_out[0]
    for (_, t_next), (t, _) in itertools.pairwise(tried):
        assert t == t_next
    assert [t_next for _, t_next in tried] == pytest.approx(expected_points[1:], abs=1e-12)
    # the grid is the accepted endpoints, the output times are exact grid points
    assert traj.grid == [t_out[0]] + [t_next for _, t_next in tried]
    assert traj.out_index == expected_index
    for k, i in enumerate(traj.out_index):
        assert traj.grid[i] == t_out[k]
    # the outputs and the kept states are the stub's y_next tensors themselves
    assert traj.outputs[0] is Y0 and traj.ys[0] is Y0
    for n, record in enumerate(stub.tries):
        assert traj.ys[n + 1] is record["y_next"]
    for k, i in enumerate(traj.out_index[1:], start=1):
        assert traj.outputs[k] is stub.tries[i - 1]["y_next"]
    # each step starts from the state the previous one returned, without an error estimate
    for prev, record in zip([None] + stub.tries, stub.tries):
        assert record["y"] is (Y0 if prev is None else prev["y_next"])
        assert record["with_error"] is False
        expected_k1 = prev["ks"][-1] if (prev is not None and tableau.fsal) else None
        assert record["k1"] is expected_k1
    assert traj.stats.num_accepted == len(tried) and traj.stats.num_rejected == 0
    assert rhs.calls == []  # fixed steps need no evaluation outside the steps
    return traj, stub


@pytest.mark.parametrize("method", ["bosh3", "rk4"])
def test_fixed_step_size_single_interval(method):
    tableau = symode.TABLEAUS[method]
    points, index = fixed_points([0.0, 1.0], 0.3)
    assert points == pytest.approx([0.0, 0.3, 0.6, 0.9, 1.0], abs=1e-15)
    traj, _ = check_fixed_run(tableau, [0.0, 1.0], FixedSteps(step_size=0.3), points, index)
    assert traj.grid[-1] == 1.0
    assert traj.grid[-1] - traj.grid[-2] == pytest.approx(0.1, abs=1e-12)  # the shortened last step
    assert traj.anchors == [0, 0, 0, 0, 1]


@pytest.mark.parametrize("method", ["bosh3", "rk4"])
def test_fixed_step_size_decreasing_time(method):
    tableau = symode.TABLEAUS[method]
    points, index = fixed_points([1.0, 0.0], 0.3)
    assert points == pytest.approx([1.0, 0.7, 0.4, 0.1, 0.0], abs=1e-15)
    traj, _ = check_fixed_run(tableau, [1.0, 0.0], FixedSteps(step_size=0.3), points, index)
    assert traj.grid[-1] == 0.0


def test_fixed_step_size_clips_at_every_output_time():
    t_out = [0.0, 0.5, 1.0]
    points, index = fixed_points(t_out, 0.3)
    assert points == pytest.approx([0.0, 0.3, 0.5, 0.8, 1.0], abs=1e-15)
    assert index == [0, 2, 4]
    traj, _ = check_fixed_run(symode.TABLEAUS["rk4"], t_out, FixedSteps(step_size=0.3), points, index)
    assert traj.anchors == [0, 0, 1, 1, 2]


@pytest.mark.parametrize("end,num_steps", [(1.0 + 1e-12, 4), (1.0 + 1e-6, 5)])
def test_fixed_step_size_absorbs_a_sliver(end, num_steps):
    """A remainder below 1e-9 of h is absorbed into the last step, a larger one is a step."""
    points, index = fixed_points([0.0, end], 0.25)
    assert len(points) - 1 == num_steps
    traj, _ = check_fixed_run(symode.TABLEAUS["rk4"], [0.0, end], FixedSteps(step_size=0.25), points, index)
    assert traj.grid[-1] == end


@pytest.mark.parametrize(
    "grid,t_out,points",
    [
        ((0.0, 0.2, 0.7, 1.0), [0.0, 0.5, 1.0], [0.0, 0.2, 0.5, 0.7, 1.0]),
        ((0.0, 0.5, 1.0), [0.0, 0.5, 1.0], [0.0, 0.5, 1.0]),
        ((1.0, 0.6, 0.0), [1.0, 0.3, 0.0], [1.0, 0.6, 0.3, 0.0]),
    ],
)
def test_fixed_grid_adds_the_output_times(grid, t_out, points):
    index = [points.index(t) for t in t_out]
    traj, _ = check_fixed_run(symode.TABLEAUS["bosh3"], t_out, FixedSteps(grid=grid), points, index)
    assert traj.grid == points  # exactly the user's points and the output times
    outputs = {t: k for k, t in enumerate(t_out)}
    assert traj.anchors == [outputs.get(p) for p in points]


# --------------------------------------------------------------------------------------
# adaptive steps


def expected_tries(t0, target, direction, steps: AdaptiveSteps, k, ratios):
    """The steps the controller should try for the error ratios ``ratios`` (one per try),
    from ``AdaptiveSteps``' docstring: accept iff ``r <= 1``; after an accepted step
    ``h <- h * clip(safety r_n^-(icoeff+pcoeff)/k r_{n-1}^(pcoeff/k), dfactor, ifactor)``
    (``r_{n-1}``: the previous accepted ratio, at least 1e-4, and 1 before the first;
    ``ratio 0``: ``ifactor``),
    not above 1 on the first accepted step after a rejection; after a rejection
    ``h <- h * max(dfactor, safety r^(-1/k))`` and the same ``t`` is retried. ``h`` is the
    step actually taken, ``|t_next - t|``. No step here comes near ``target`` (no clipping).
    Returns ``(t, t_next, accepted)`` per try and the ``(t, t_next)`` of the try after them."""
    icoeff, pcoeff = GAINS[steps.controller]
    t, h = t0, steps.first_step
    assert h is not None  # the scenarios give first_step
    prev, after_reject = 1.0, False
    tries = []
    for r in ratios:
        t_next = t + direction * h
        assert direction * (target - t_next) > 0.01 * h  # the scenario stays clear of clipping
        accepted = r <= 1.0
        tries.append((t, t_next, accepted))
        h_taken = abs(t_next - t)
        if accepted:
            f = steps.ifactor if r == 0.0 else steps.safety * r ** (-(icoeff + pcoeff) / k) * prev ** (pcoeff / k)
            f = min(steps.ifactor, max(steps.dfactor, f))
            if after_reject:
                f = min(f, 1.0)
            # r_{n-1} is floored at 1e-4 (not in the docstring: the loop's guard, without which a
            # step with zero error would make the PI controller shrink the next step to dfactor)
            t, prev, after_reject = t_next, max(r, 1e-4), False
        else:
            f = max(steps.dfactor, steps.safety * r ** (-1.0 / k))
            after_reject = True
        h = h_taken * f
    return tries, (t, t + direction * h)


RATIOS = [0.5, 2.0, 0.1, 1.0, 3.0, 50.0, 0.01, 0.3, 1e-3, 0.9, 0.0, 0.7]
STEPS = [
    AdaptiveSteps(interpolate=False, first_step=0.01),
    AdaptiveSteps(interpolate=False, first_step=0.01, controller="pi"),
    AdaptiveSteps(interpolate=False, first_step=0.02, safety=0.8, ifactor=4.0, dfactor=0.3),
    AdaptiveSteps(interpolate=False, first_step=0.02, controller="PI", safety=0.95, ifactor=3.0, dfactor=0.1),
]


@pytest.mark.parametrize("direction", [1.0, -1.0], ids=["forward", "backward"])
@pytest.mark.parametrize("steps", STEPS, ids=["i", "pi", "i-custom", "pi-custom"])
@pytest.mark.parametrize("method", ["bosh3", "fehlberg2"])
def test_adaptive_accept_reject_and_step_sizes(method, steps, direction):
    tableau = symode.TABLEAUS[method]
    k = tableau.error_order + 1
    t0, target = 0.5, 0.5 + direction * 1e3
    stub = StubStep(tableau, ratio=list(RATIOS))
    stats = Stats()
    with pytest.raises(ScriptDone):
        run(tableau, [t0, target], steps, stub, stats=stats)
    expected, after = expected_tries(t0, target, direction, steps, k, RATIOS)
    tried = endpoints(stub)
    assert len(tried) == len(RATIOS) + 1
    for n, ((t, t_next), (t_exp, t_next_exp, _)) in enumerate(zip(tried, expected)):
        assert t == pytest.approx(t_exp, rel=1e-13), f"try {n}"
        assert t_next == pytest.approx(t_next_exp, rel=1e-13), f"try {n}"
    assert tried[-1] == pytest.approx(after, rel=1e-13)
    assert stats.num_accepted == sum(r <= 1.0 for r in RATIOS)
    assert stats.num_rejected == sum(r > 1.0 for r in RATIOS)

    for n, (record, r) in enumerate(zip(stub.tries, RATIOS)):
        nxt = stub.tries[n + 1]
        h = abs(record["t_next"] - record["t"])
        h_next = abs(nxt["t_next"] - nxt["t"])
        if r <= 1.0:  # accepted: the next try starts at its end, from its state
            assert nxt["t"] == record["t_next"]
            assert nxt["y"] is record["y_next"]
            assert nxt["k1"] is (record["ks"][-1] if tableau.fsal else None)
            if n > 0 and RATIOS[n - 1] > 1.0:  # the first accepted step after a rejection
                assert h_next <= h * (1 + 1e-15)
        else:  # rejected: retried at the same t from the same state, with its first stage
            assert nxt["t"] == record["t"]
            assert nxt["y"] is record["y"]
            assert nxt["k1"] is record["ks"][0]
            shrink = max(steps.dfactor, steps.safety * r ** (-1.0 / k))
            assert h_next == pytest.approx(h * shrink, rel=1e-13)
            assert h_next < h
        assert record["with_error"] is True
    # the first try uses f(t0, y0), evaluated once by the loop (first_step given: no heuristic)
    rhs_k1 = stub.tries[0]["k1"]
    assert rhs_k1 is not None and torch.equal(rhs_k1, torch.full_like(Y0, -7.0))


def test_adaptive_initial_evaluation():
    """Without ``f0`` the loop evaluates ``f(t0, y0)`` once for the first try; with
    ``first_step`` no other evaluation is made; ``f0`` given is used as is."""
    tableau = symode.TABLEAUS["bosh3"]
    stub = StubStep(tableau, ratio=[0.5])
    rhs = RecordingRhs()
    with pytest.raises(ScriptDone):
        integrate(rhs, Y0, [0.0, 10.0], tableau, CLIPPED(first_step=0.1), step=stub, **TOL)
    assert len(rhs.calls) == 1
    t, y, out = rhs.calls[0]
    assert t == 0.0 and y is Y0
    assert stub.tries[0]["k1"] is out
    f0 = torch.zeros_like(Y0)
    stub = StubStep(tableau, ratio=[0.5])
    rhs = RecordingRhs()
    with pytest.raises(ScriptDone):
        integrate(rhs, Y0, [0.0, 10.0], tableau, CLIPPED(first_step=0.1), step=stub, f0=f0, **TOL)
    assert rhs.calls == []
    assert stub.tries[0]["k1"] is f0


def expected_clipped_run(t_out, steps: AdaptiveSteps, k, r):
    """Every try for a constant accepted ratio ``r``: a step that would pass the next output
    time, or end within 1% of ``h`` before it, ends exactly on it (``AdaptiveSteps``: "Steps
    are clipped to end exactly on every output time"); after such a clipped step the next one
    is not shortened below the step proposed before the clipping (``integrate``: "a step
    shortened to meet an output time says little of the next"), within ``ifactor``."""
    direction = 1.0 if t_out[-1] > t_out[0] else -1.0
    f = min(steps.ifactor, max(steps.dfactor, steps.safety * r ** (-1.0 / k)))
    t, h = t_out[0], steps.first_step
    assert h is not None  # the scenarios give first_step
    tries = []
    for target in t_out[1:]:
        while t != target:
            t_next = t + direction * h
            clipped = direction * (target - t_next) <= 0.01 * h
            if clipped:
                t_next = target
            tries.append((t, t_next))
            h_proposed, h_taken = h, abs(t_next - t)
            h = h_taken * f
            if clipped:
                h = max(h, min(h_proposed, h_taken * steps.ifactor))
            t = t_next
    return tries


@pytest.mark.parametrize(
    "t_out,first_step",
    [
        ([0.0, 1.0], 1.5),  # would overshoot
        ([0.0, 1.0], 0.995),  # would end within 1% of h before the output time
        ([0.0, 1.0], 0.98),  # ends 2% before it: not clipped, the next step is
        ([1.0, 0.0], 0.995),  # the same, backwards
        ([0.0, 0.5, 1.0], 0.3),
        ([0.0, 0.1, 0.15, 0.7, 3.0], 0.05),
        ([2.0, 1.9, 0.3, -0.4], 0.07),
    ],
)
def test_adaptive_steps_end_exactly_on_output_times(t_out, first_step):
    tableau = symode.TABLEAUS["bosh3"]
    steps = AdaptiveSteps(interpolate=False, first_step=first_step)
    stub = StubStep(tableau, ratio=lambda n, t, t_next: 0.5)
    traj, _ = run(tableau, t_out, steps, stub)
    expected = expected_clipped_run(t_out, steps, tableau.error_order + 1, 0.5)
    tried = endpoints(stub)
    assert len(tried) == len(expected)
    for got, exp in zip(tried, expected):
        assert got == pytest.approx(exp, rel=1e-13)
    # every output time is an exact endpoint (bitwise), at the grid index out_index says
    assert traj.grid == [t_out[0]] + [t_next for _, t_next in tried]
    for k, i in enumerate(traj.out_index):
        assert traj.grid[i] == t_out[k]
    assert traj.out_index == [0] + [traj.grid.index(t) for t in t_out[1:]]
    for k, i in enumerate(traj.out_index[1:], start=1):
        assert traj.outputs[k] is stub.tries[i - 1]["y_next"]
    assert traj.stats.num_accepted == len(tried) and traj.stats.num_rejected == 0
    # no try passes an output time
    direction = 1.0 if t_out[-1] > t_out[0] else -1.0
    for t, t_next in tried:
        nxt = next(tk for tk in t_out if direction * (tk - t) > 0)
        assert direction * (nxt - t_next) >= 0


def test_first_step_clipped_to_the_output_time():
    tableau = symode.TABLEAUS["bosh3"]
    for first_step in (1.5, 0.995):
        stub = StubStep(tableau, ratio=[0.5])
        traj, _ = run(tableau, [0.0, 1.0], AdaptiveSteps(interpolate=False, first_step=first_step), stub)
        assert endpoints(stub) == [(0.0, 1.0)]
        assert traj.grid == [0.0, 1.0] and traj.out_index == [0, 1]
    stub = StubStep(tableau, ratio=[0.5, 0.5])
    traj, _ = run(tableau, [0.0, 1.0], AdaptiveSteps(interpolate=False, first_step=0.98), stub)
    assert endpoints(stub) == [(0.0, 0.98), (0.98, 1.0)]


# --------------------------------------------------------------------------------------
# failures


def test_max_num_steps():
    tableau = symode.TABLEAUS["bosh3"]
    # one accepted step, then every try rejected
    stub = StubStep(tableau, ratio=lambda n, t, t_next: 0.5 if n == 0 else 2.0)
    with pytest.raises(SolveError, match=r"max_num_steps = 3") as info:
        run(tableau, [0.0, 1.0], AdaptiveSteps(interpolate=False, first_step=0.1, max_num_steps=3), stub)
    assert len(stub.tries) == 3  # the tries counted: accepted plus rejected
    assert info.value.t == stub.tries[0]["t_next"] == 0.1
    assert info.value.num_steps == 1
    # always rejected from the start: the time reached is t0
    stub = StubStep(tableau, ratio=lambda n, t, t_next: 2.0)
    with pytest.raises(SolveError, match=r"max_num_steps = 3") as info:
        run(tableau, [0.25, 1.0], AdaptiveSteps(interpolate=False, first_step=0.1, max_num_steps=3), stub)
    assert len(stub.tries) == 3
    assert info.value.t == 0.25 and info.value.num_steps == 0


@pytest.mark.parametrize("t0", [1.0, 0.0])
def test_step_size_underflow(t0):
    tableau = symode.TABLEAUS["bosh3"]
    steps = AdaptiveSteps(interpolate=False, first_step=0.1)
    stub = StubStep(tableau, ratio=lambda n, t, t_next: 1e30)
    with pytest.raises(SolveError, match="step size underflow") as info:
        run(tableau, [t0, t0 + 1.0], steps, stub)
    assert info.value.t == t0 and info.value.num_steps == 0
    assert "1e+30" in str(info.value)  # the last error ratio is reported
    assert "stiff or singular" in str(info.value)  # not "non-finite": the ratio was finite
    hs = [t_next - t for t, t_next in endpoints(stub)]
    assert all(t == t0 for t, _ in endpoints(stub))
    # each retry shrinks by max(dfactor, safety * r^(-1/k)) = dfactor, down to the point where
    # one more would not move t (h <= 4 ulp(t)), long before max_num_steps
    for h, h_next in itertools.pairwise(hs):
        assert h_next == pytest.approx(h * steps.dfactor, rel=1e-13)
    assert 4 * math.ulp(t0) < hs[-1] <= 4 * math.ulp(t0) / steps.dfactor
    assert len(hs) < (100 if t0 else 500)


def test_non_finite_field_ends_in_step_size_underflow():
    """Where ``f`` is non-finite (``y_next`` nan past t = 0.5) every try is rejected: the
    error names the non-finite state, at a time before 0.5."""
    tableau = symode.TABLEAUS["bosh3"]
    stub = StubStep(tableau, ratio=lambda n, t, t_next: 0.5, bad=lambda t, t_next: t_next > 0.5)
    with pytest.raises(SolveError, match="non-finite") as info:
        run(tableau, [0.0, 1.0], AdaptiveSteps(interpolate=False, first_step=0.1), stub)
    assert "step size underflow" in str(info.value)
    assert 0.4 < info.value.t <= 0.5


def test_non_finite_state_at_an_output_fixed_steps():
    tableau = symode.TABLEAUS["rk4"]
    stub = StubStep(tableau, bad=lambda t, t_next: t_next == 0.5)
    with pytest.raises(SolveError, match="non-finite") as info:
        run(tableau, [0.0, 0.5, 1.0], FixedSteps(step_size=0.25), stub)
    assert info.value.t == 0.5
    assert info.value.num_steps == 2
    assert endpoints(stub)[-1] == (0.25, 0.5)  # no step is taken past the bad output


def test_non_finite_initial_state_adaptive():
    tableau = symode.TABLEAUS["bosh3"]
    stub = StubStep(tableau, ratio=[0.5])
    y0 = torch.tensor([1.0, math.inf], dtype=F64)
    with pytest.raises(SolveError, match="non-finite") as info:
        integrate(RecordingRhs(), y0, [0.0, 1.0], tableau, CLIPPED(first_step=0.1), step=stub, **TOL)
    assert info.value.t == 0.0
    assert stub.tries == []


def test_adaptive_steps_need_an_error_estimate_and_tolerances():
    stub = StubStep(symode.TABLEAUS["rk4"], ratio=[0.5])
    with pytest.raises(ValueError, match="takes fixed steps"):
        run(symode.TABLEAUS["rk4"], [0.0, 1.0], AdaptiveSteps(interpolate=False, first_step=0.1), stub)
    stub = StubStep(symode.TABLEAUS["bosh3"], ratio=[0.5])
    with pytest.raises(ValueError, match="rtol, atol and norm"):
        integrate(
            RecordingRhs(),
            Y0,
            [0.0, 1.0],
            symode.TABLEAUS["bosh3"],
            AdaptiveSteps(interpolate=False, first_step=0.1),
            step=stub,
            rtol=1e-6,
            atol=1e-6,
        )
    assert stub.tries == []
