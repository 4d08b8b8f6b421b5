"""The step-size controller alone: ``AdaptiveSteps.factor`` and ``initial_step``.

``factor(ratio, prev_ratio, k, accepted, after_reject)`` is checked against the formulas of
``AdaptiveSteps``' docstring (``k = error_order + 1``)::

    accepted:  clip(safety * r**(-(icoeff + pcoeff)/k) * r_prev**(pcoeff/k), dfactor, ifactor)
               ("i": icoeff 1, pcoeff 0; "pi": 0.3, 0.4), not above 1 right after a rejection
    rejected:  max(dfactor, safety * r**(-1/k))

and ``initial_step`` against Hairer's heuristic (Hairer, Norsett & Wanner, Solving ODEs I,
II.4), computed by hand in numpy.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from symode import AdaptiveSteps
from symode._initial_step import initial_step
from symode._step_size import rms_norm

F64 = torch.float64

CONTROLLERS = [
    AdaptiveSteps(),
    AdaptiveSteps(safety=0.8, ifactor=5.0, dfactor=0.3),
    AdaptiveSteps(safety=1.0, ifactor=2.0, dfactor=0.5),
]
CONTROLLER_IDS = ["default", "custom", "tight"]
ACCEPTED_RATIOS = [1e-12, 1e-6, 1e-3, 0.05, 0.3, 0.7, 0.99, 1.0]
REJECTED_RATIOS = [1.0 + 1e-9, 1.01, 1.5, 4.0, 100.0, 1e6, 1e300]
PREV_RATIOS = [1e-4, 0.01, 0.5, 1.0]
ORDERS = [2, 3, 5, 8]  # k = error_order + 1


def clip(f, steps):
    return min(steps.ifactor, max(steps.dfactor, f))


def test_defaults():
    steps = AdaptiveSteps()
    assert (steps.controller, steps.safety, steps.ifactor, steps.dfactor) == ("i", 0.9, 10.0, 0.2)
    assert steps.gains == (1.0, 0.0, 0.0)
    assert AdaptiveSteps(controller="pi").gains == (0.3, 0.4, 0.0)
    assert AdaptiveSteps(controller="PI").controller == "pi"


@pytest.mark.parametrize("steps", CONTROLLERS, ids=CONTROLLER_IDS)
def test_integral_controller(steps):
    assert steps.controller == "i"
    for r, prev, k in itertools.product(ACCEPTED_RATIOS, PREV_RATIOS, ORDERS):
        expected = clip(steps.safety * r ** (-1.0 / k), steps)
        got = steps.factor(r, prev, k, True, False)
        assert got == pytest.approx(expected, rel=1e-14), (r, prev, k)
        assert steps.dfactor <= got <= steps.ifactor


def test_integral_controller_hits_both_bounds():
    steps = AdaptiveSteps()
    assert steps.factor(1e-12, 1.0, 3, True, False) == steps.ifactor  # 0.9 * 1e4 clipped
    # no accepted ratio (<= 1) can reach dfactor with safety 0.9 > dfactor: the lower clip
    # shows with a smaller safety
    low = AdaptiveSteps(safety=0.1, dfactor=0.5)
    assert low.factor(1.0, 1.0, 3, True, False) == 0.5
    # an unclipped value in between
    assert steps.factor(0.5, 1.0, 3, True, False) == pytest.approx(0.9 * 0.5 ** (-1 / 3), rel=1e-15)


@pytest.mark.parametrize("kw", [{}, {"safety": 0.8, "ifactor": 5.0, "dfactor": 0.3}], ids=["default", "custom"])
def test_pi_controller(kw):
    steps = AdaptiveSteps(controller="pi", **kw)
    for r, prev, k in itertools.product(ACCEPTED_RATIOS, PREV_RATIOS, ORDERS):
        expected = clip(steps.safety * r ** (-(0.3 + 0.4) / k) * prev ** (0.4 / k), steps)
        assert steps.factor(r, prev, k, True, False) == pytest.approx(expected, rel=1e-14), (r, prev, k)
    # the previous ratio matters (unlike the integral controller): a smaller one, a smaller step
    assert steps.factor(0.5, 0.01, 5, True, False) < steps.factor(0.5, 1.0, 5, True, False)
    integral = AdaptiveSteps(**kw)
    assert integral.factor(0.5, 0.01, 5, True, False) == integral.factor(0.5, 1.0, 5, True, False)


@pytest.mark.parametrize("controller", ["i", "pi"])
@pytest.mark.parametrize("steps", CONTROLLERS, ids=CONTROLLER_IDS)
def test_zero_ratio_gives_ifactor(steps, controller):
    steps = AdaptiveSteps(controller=controller, safety=steps.safety, ifactor=steps.ifactor, dfactor=steps.dfactor)
    for prev, k in itertools.product(PREV_RATIOS, ORDERS):
        assert steps.factor(0.0, prev, k, True, False) == steps.ifactor
        # right after a rejection: capped at 1
        assert steps.factor(0.0, prev, k, True, True) == 1.0


@pytest.mark.parametrize("controller", ["i", "pi"])
def test_non_finite_ratio_gives_dfactor(controller):
    steps = AdaptiveSteps(controller=controller, dfactor=0.25)
    for r, accepted, after_reject in itertools.product([math.inf, math.nan, -math.inf], [True, False], [True, False]):
        assert steps.factor(r, 1.0, 3, accepted, after_reject) == 0.25


@pytest.mark.parametrize("controller", ["i", "pi"])
@pytest.mark.parametrize("steps", CONTROLLERS, ids=CONTROLLER_IDS)
def test_rejection_shrinks(steps, controller):
    steps = AdaptiveSteps(controller=controller, safety=steps.safety, ifactor=steps.ifactor, dfactor=steps.dfactor)
    for r, prev, k, after_reject in itertools.product(REJECTED_RATIOS, PREV_RATIOS, ORDERS, [True, False]):
        expected = max(steps.dfactor, steps.safety * r ** (-1.0 / k))  # the integral rule, for both
        got = steps.factor(r, prev, k, False, after_reject)
        assert got == pytest.approx(expected, rel=1e-14), (r, prev, k)
        assert steps.dfactor <= got < 1.0  # a rejected step is always retried shorter
    assert steps.factor(1e300, 1.0, 3, False, False) == steps.dfactor


@pytest.mark.parametrize("controller", ["i", "pi"])
def test_after_reject_caps_the_factor_at_one(controller):
    steps = AdaptiveSteps(controller=controller)
    icoeff, pcoeff = {"i": (1.0, 0.0), "pi": (0.3, 0.4)}[controller]
    grew = shrank = 0
    for r, prev, k in itertools.product(ACCEPTED_RATIOS, PREV_RATIOS, ORDERS):
        free = clip(steps.safety * r ** (-(icoeff + pcoeff) / k) * prev ** (pcoeff / k), steps)
        got = steps.factor(r, prev, k, True, True)
        assert got == pytest.approx(min(free, 1.0), rel=1e-14), (r, prev, k)
        assert got <= 1.0
        grew += free > 1.0
        shrank += free < 1.0
    assert grew and shrank  # both sides of the cap were exercised


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"safety": 1.5}, "safety"),
        ({"safety": 0.0}, "safety"),
        ({"ifactor": 1.0}, "ifactor"),
        ({"dfactor": 1.0}, "dfactor"),
        ({"dfactor": -0.1}, "dfactor"),
        ({"controller": "pd"}, "controller"),
        ({"max_num_steps": 0}, "max_num_steps"),
        ({"first_step": -1.0}, "first_step"),
    ],
)
def test_invalid_controller_settings(kw, match):
    with pytest.raises(ValueError, match=match):
        AdaptiveSteps(**kw)


# --------------------------------------------------------------------------------------
# initial_step


def hairer_initial_step(y0, f, f0, direction, order, rtol, atol, span, t0=0.0):
    """Hairer's heuristic, in numpy float64, from the book's formulas."""
    y0 = np.asarray(y0, dtype=np.float64)
    f0 = np.asarray(f0, dtype=np.float64)

    def rms(x):
        return float(np.sqrt(np.mean(np.square(x))))

    scale = atol + rtol * np.abs(y0)
    d0 = rms(y0 / scale)
    d1 = rms(f0 / scale)
    h0 = 1e-6 if (d0 < 1e-5 or d1 < 1e-5) else 0.01 * d0 / d1
    h0 = min(h0, span)
    y1 = y0 + direction * h0 * f0
    f1 = f(t0 + direction * h0, y1)
    d2 = rms((f1 - f0) / scale) / h0
    if max(d1, d2) <= 1e-15:
        h1 = max(1e-6, h0 * 1e-3)
    else:
        h1 = (0.01 / max(d1, d2)) ** (1.0 / (order + 1))
    return min(100 * h0, h1, span)


class Decay:
    """dy/dt = -y, recording its calls."""

    def __init__(self):
        self.calls = []

    def __call__(self, t, y):
        self.calls.append((t, y.clone()))
        return -y


@pytest.mark.parametrize("direction", [1.0, -1.0], ids=["forward", "backward"])
@pytest.mark.parametrize("order", [1, 2, 4, 7])
@pytest.mark.parametrize("rtol,atol", [(1e-3, 1e-6), (1e-7, 1e-9), (1e-2, 1e-2)])
@pytest.mark.parametrize("y0", [[1.0], [1.0, -2.0, 0.5]], ids=["scalar", "vector"])
def test_initial_step_matches_hairer(y0, rtol, atol, order, direction):
    span = 10.0
    y0_t = torch.tensor(y0, dtype=F64)
    rhs = Decay()
    f0 = -y0_t
    got = initial_step(rhs, 0.0, y0_t, f0, direction, order, rtol, atol, rms_norm, span)
    expected = hairer_initial_step(y0, lambda t, y: -y, -np.asarray(y0), direction, order, rtol, atol, span)
    assert isinstance(got, float)
    assert got == pytest.approx(expected, rel=1e-12)
    assert 0.0 < got <= span
    # one evaluation, at t0 + direction * h0, from y0 + direction * h0 * f0
    assert len(rhs.calls) == 1
    t1, y1 = rhs.calls[0]
    h0 = 0.01  # dy/dt = -y: d0 == d1, so h0 = 0.01 * d0 / d1 = 0.01
    assert t1 == pytest.approx(direction * h0, rel=1e-14)
    np.testing.assert_allclose(y1.numpy(), np.asarray(y0) * (1 - direction * h0), rtol=1e-14)


def test_initial_step_decay_by_hand():
    """y0 = 1, rtol = 1e-3, atol = 1e-6, order 4: scale = 1.001e-3, d0 = d1, h0 = 0.01,
    d2 = d0 (f1 - f0 = h0 y0), h1 = (0.01 / d0)**(1/5), result min(1, h1, span)."""
    y0 = torch.ones(1, dtype=F64)
    scale = 1e-6 + 1e-3
    d0 = 1.0 / scale
    h1 = (0.01 / d0) ** (1.0 / 5)
    assert h1 == pytest.approx(0.1 * 1.001**0.2, rel=1e-12)
    got = initial_step(Decay(), 0.0, y0, -y0, 1.0, 4, 1e-3, 1e-6, rms_norm, 10.0)
    assert got == pytest.approx(min(1.0, h1, 10.0), rel=1e-12)
    # bounded by a shorter span
    assert initial_step(Decay(), 0.0, y0, -y0, 1.0, 4, 1e-3, 1e-6, rms_norm, 0.05) == 0.05


def test_initial_step_zero_span():
    rhs = Decay()
    y0 = torch.ones(2, dtype=F64)
    assert initial_step(rhs, 0.0, y0, -y0, 1.0, 4, 1e-6, 1e-9, rms_norm, 0.0) == 0.0
    assert rhs.calls == []  # no step: nothing evaluated


@pytest.mark.parametrize("span", [1e-9, 1e-6, 1e-3, 0.05, 1.0, 1e3])
@pytest.mark.parametrize(
    "y0,f",
    [
        ([1.0], lambda t, y: -y),
        ([1.0, 2.0], lambda t, y: -50.0 * y),
        ([0.0, 0.0], lambda t, y: torch.zeros_like(y)),
        ([0.0], lambda t, y: torch.ones_like(y) * t),
        ([1e-8, 3.0], lambda t, y: y * y),
    ],
)
def test_initial_step_never_exceeds_span(span, y0, f):
    y0_t = torch.tensor(y0, dtype=F64)
    f0 = f(0.0, y0_t)
    for direction in (1.0, -1.0):
        got = initial_step(f, 0.0, y0_t, f0, direction, 4, 1e-6, 1e-9, rms_norm, span)

        def numpy_f(t, y):
            return f(t, torch.tensor(y, dtype=F64)).numpy()

        expected = hairer_initial_step(y0, numpy_f, f0.numpy(), direction, 4, 1e-6, 1e-9, span)
        assert 0.0 < got <= span
        assert got == pytest.approx(expected, rel=1e-12)


def test_initial_step_zero_state_and_field():
    """d0, d1 < 1e-5: h0 = 1e-6; f constant: d2 = 0 <= 1e-15: h1 = max(1e-6, 1e-3 h0) = 1e-6."""
    y0 = torch.zeros(3, dtype=F64)
    got = initial_step(
        lambda t, y: torch.zeros_like(y), 0.0, y0, torch.zeros_like(y0), 1.0, 4, 1e-6, 1e-9, rms_norm, 1.0
    )
    assert got == 1e-6


def test_initial_step_non_finite_state_returns_span():
    y0 = torch.tensor([1.0, math.nan], dtype=F64)
    rhs = Decay()
    assert initial_step(rhs, 0.0, y0, -y0, 1.0, 4, 1e-6, 1e-9, rms_norm, 2.5) == 2.5
    assert rhs.calls == []
