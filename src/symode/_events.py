"""Solving until an event: the first time a component of an event function changes sign.

The event time ``t*`` is where ``g(t, y(t))`` first crosses zero, ``y`` being the solve's dense
output (its continuous extension). It is found in three parts:

1. **The search** (no graph): the time loop steps freely (``integrate(until=...)``) and, after
   each accepted step, evaluates every event function at the step's end. A component whose
   sign changed (in the allowed direction) means the step holds an event; ``t*`` is then
   located within the step on its interpolant ``Y(t)``, by the Illinois method on
   ``phi(t) = min_i s_i g_i(t, Y(t))`` (``s_i`` the components' signs before the step,
   taken over the components that changed), to round-off unless a tolerance is given; the
   time returned is the last one found before the crossing (or the root, where ``phi`` is 0).
   ``phi`` is positive until the first of them crosses, and not positive after it: its
   root is the earliest crossing. A component that is 0 at ``t0`` (a ball starting on the
   ground after a bounce) takes its sign from the first step's end: the start is not an event.
2. **The differentiated solve**: the gradient method solves again on the same steps
   (``RecordedSteps``), with ``t*`` an interpolated output time of the last one, so that the
   state at the event is ``Y(t*)`` of the search, differentiated by any gradient method at the
   fixed time ``t*``. (The continuous adjoint solves ``[t0, t*]`` with its own adaptive
   steps.)
3. **The implicit function theorem**: ``t*`` solves ``g_j(t*, Y(t*; p)) = 0`` for the component
   ``j`` that crossed, so ``dt*/dp = -(dg_j/dp) / c``, with ``c = dg_j/dt + dg_j/dy . Y'(t*)``
   the time derivative of ``g_j`` along the interpolant (whose slope ``Y'`` is used, not
   ``f(t*, Y)``: ``t*`` is the root of the computed interpolant, so this is the exact
   derivative of the computed event time). ``p`` is anything ``y0``, the parameters, ``t0``
   or the event function depend on. The gradient enters through a zero-valued term,
   ``t* - (g - g.detach()) / c`` and ``Y(t*) + Y' dt*``, so every gradient method's own
   backward pass carries it. A zero ``c`` (a tangential crossing) has no derivative: a
   ``ValueError`` when a gradient is asked for. The second derivative is not formed: a
   backward pass with ``create_graph=True`` through an event raises.

Batches: the event functions' components are all watched, and the solve stops at the first
crossing of any of them, for the whole state (torchdiffeq's rule). ``symode.Solution`` says
which event and which component it was.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ._dense import dense_terms, interpolate
from ._ivp import ODEProblem
from ._random import rng_states, same_states
from ._stats import SolveError
from ._step_size import AdaptiveSteps, FixedSteps, RecordedSteps

__all__ = ["Event", "EventHit", "as_events", "solve_to_event"]


@dataclass(frozen=True)
class Event:
    """A terminal event: the solve stops where a component of ``fn(t, y)`` first changes sign.

    Args:
        fn: ``fn(t, y) -> tensor``, ``t`` a 0-dim tensor of the state's dtype and ``y`` in
            ``y0``'s structure; any shape (each component is watched).
        direction: ``0``: any crossing; ``+1``: only from negative to positive; ``-1``: only
            from positive to negative.
        tol: locate the crossing to this absolute tolerance in time (a float ``> 0``);
            ``None`` (the default): to round-off, which costs no evaluation of ``f`` (only of
            ``fn`` on the interpolant).
    """

    fn: Callable[..., Any]
    direction: int = 0
    tol: float | None = None

    def __post_init__(self) -> None:
        if not callable(self.fn):
            raise TypeError(f"Event: fn must be callable as fn(t, y), got {self.fn!r}")
        if isinstance(self.direction, bool) or self.direction not in (-1, 0, 1):
            raise ValueError(f"Event: direction must be -1, 0 or +1, got {self.direction!r}")
        if self.tol is not None and (
            isinstance(self.tol, bool) or not isinstance(self.tol, (int, float)) or not self.tol > 0
        ):
            raise ValueError(f"Event: tol must be a positive float or None (to round-off), got {self.tol!r}")


@dataclass(frozen=True)
class EventHit:
    """Which event stopped the solve: ``index`` into the events given, ``component`` the flat
    index into that event function's output; ``t`` its time (a float)."""

    index: int
    component: int
    t: float


def as_events(event: Any) -> tuple[Event, ...]:
    """``solve``'s ``event`` argument: an ``Event``, a callable, or a sequence of them."""
    items = list(event) if isinstance(event, (list, tuple)) else [event]
    if not items:
        raise ValueError("event must be a symode.Event, a callable fn(t, y) or a non-empty list of them; got []")
    events = []
    for item in items:
        if isinstance(item, Event):
            events.append(item)
        elif callable(item):
            events.append(Event(item))
        else:
            raise TypeError(f"event must be a symode.Event or a callable fn(t, y), got {item!r}")
    return tuple(events)


class _Search:
    """``integrate``'s ``until``: watches the event functions at every step end, and locates the
    first crossing within the step that holds it."""

    def __init__(self, problem: ODEProblem, events: Sequence[Event], tableau) -> None:
        self.problem, self.events, self.tableau = problem, events, tableau
        values = self.values(problem.t_out[0], problem.y0)
        self.sizes = [v.numel() for v in values]
        flat = torch.cat(values)
        self.sign = flat.sign()
        self.direction = torch.cat([torch.full((n,), float(e.direction)) for n, e in zip(self.sizes, events)])
        tols = [e.tol for e in events if e.tol is not None]
        self.tol = min(tols) if tols else 0.0
        self.hit: EventHit | None = None
        self.slope: torch.Tensor | None = None
        self.spread = 0.0  # the crossing component's mean rate of change over the step holding it
        self.rng: list[torch.Tensor] | None = rng_states(problem.y0.device)

    def values(self, t: float, y: torch.Tensor) -> list[torch.Tensor]:
        time, state = self.problem.time(t), self.problem.layout.unflatten(y)
        out = []
        for i, event in enumerate(self.events):
            v = event.fn(time, state)
            if not isinstance(v, torch.Tensor) or not (v.is_floating_point() or v.dtype == torch.bool):
                raise TypeError(f"event function {i} must return a real floating tensor, got {v!r}")
            out.append(v.detach().reshape(-1).to("cpu", torch.float64))
        return out

    def locate(self, flat: int) -> tuple[int, int]:
        for index, n in enumerate(self.sizes):
            if flat < n:
                return index, flat
            flat -= n
        raise IndexError(flat)

    def __call__(self, t: float, t_next: float, y: torch.Tensor, y_next: torch.Tensor, ks) -> bool:
        if self.rng is not None:  # after the first step: did f draw random numbers?
            if not same_states(self.rng, rng_states(y.device)):
                raise ValueError(
                    "func or an event function draws random numbers (dropout, torch.randn, ...): the event found "
                    "would not belong to the trajectory that is differentiated. Events need a deterministic func: put "
                    "the module in eval mode (func.eval()) or fix its noise"
                )
            self.rng = None
        sign = torch.cat(self.values(t_next, y_next)).sign()
        changed = (sign != self.sign) & (self.sign != 0) & ((self.direction == 0) | (self.direction == -self.sign))
        if not bool(changed.any()):
            self.sign = torch.where(sign == 0, self.sign, sign)  # a component at 0 keeps the sign it had
            return False
        watched, before = changed.nonzero().reshape(-1), self.sign[changed]
        h = t_next - t

        def time(theta: float) -> tuple[float, float]:
            """The time at ``theta``, and the fraction the dense output computes from it (so the
            differentiated solve interpolates at exactly the fraction searched)."""
            tau = t + theta * h if theta < 1.0 else t_next
            return tau, (tau - t) / h

        def phi(theta: float) -> tuple[float, int]:
            tau, fraction = time(theta)
            state = interpolate(self.tableau, y, h, fraction, ks) if tau != t_next else y_next
            v = torch.cat(self.values(tau, state))[watched] * before
            j = int(v.argmin())
            return float(v[j]), int(watched[j])

        theta, component, spread = _illinois(phi, _tol(self.tol, t, t_next))
        tau, fraction = time(theta)
        self.spread = spread / abs(h)
        _, slopes = dense_terms(self.tableau, fraction)
        self.slope = sum((w * ks[i] for i, w in slopes), torch.zeros_like(y))
        index, local = self.locate(component)
        self.hit = EventHit(index, local, tau)
        return True


def _tol(tol: float, t: float, t_next: float) -> float:
    """The tolerance in ``theta``: the event's in time, and at least round-off."""
    h = abs(t_next - t)
    return max(tol / h, 4 * math.ulp(max(abs(t), abs(t_next))) / h, 4 * math.ulp(1.0))


def _illinois(phi: Callable[[float], tuple[float, int]], tol: float) -> tuple[float, int, float]:
    """The root of ``phi`` in ``[0, 1]`` (``phi(0) > 0 >= phi(1)``) by the Illinois variant of
    regula falsi, bisecting when it stalls; returns the root if ``phi`` is 0 there, else the
    end of the final bracket where ``phi > 0`` (just before the crossing: a solve restarted
    there, after a jump map, does not meet the same crossing at its start), the component that
    crossed and ``phi(0) - phi(1)``."""
    a, b = 0.0, 1.0
    fa, _ = phi(0.0)
    fb, component = phi(1.0)
    spread = fa - fb
    if not fa > 0:  # the watched components start on zero: the crossing is at the step's start
        return 0.0, phi(0.0)[1], spread
    side = 0
    for iteration in range(200):
        if b - a <= tol or fb == 0.0:
            break
        m = b - fb * (b - a) / (fb - fa)
        if iteration % 4 == 3 or not (a < m < b) or not math.isfinite(m):
            m = 0.5 * (a + b)  # every 4th: a bisection, which bounds the number of iterations
            if not a < m < b:
                break
        fm, cm = phi(m)
        if not math.isfinite(fm):
            raise SolveError(f"an event function is not finite on the interpolant at theta = {m!r}", m, 0)
        if fm <= 0:
            b, fb, component = m, fm, cm
            if side == -1:
                fa *= 0.5
            side = -1
        else:
            a, fa = m, fm
            if side == 1:
                fb *= 0.5
            side = 1
    return (b if fb == 0.0 else a), component, spread


def solve_to_event(problem: ODEProblem, grad_method, events: Sequence[Event], ts: torch.Tensor, bounded: bool):
    """Solve ``problem`` until the first event (module docstring). ``ts``: the user's output times
    (``[t0, t_end]``; only ``t0``'s gradient is used). ``bounded``: reaching ``t_out[-1]``
    without an event returns the solve there (``hit`` ``None``); else it is an error.

    Returns ``(ys, trajectory, hit, t_event)``: ``ys`` the flat states at ``t0`` and at the
    event, ``t_event`` the event time as a 0-dim tensor of ``ts``'s dtype (``None`` without an
    event)."""
    tableau = problem.tableau
    search = _Search(problem, events, tableau)
    try:
        with torch.no_grad():
            found = problem.integrate(problem.y0.detach(), until=search)
    except SolveError as e:
        raise SolveError(f"no event found by t = {e.t!r}: {e}", e.t, e.num_steps) from None
    stats = problem.stats
    accepted, rejected = stats.num_accepted, stats.num_rejected
    if search.hit is None:
        if not bounded:
            raise SolveError(
                f"no event by t = {found.grid[-1]!r}, after {accepted} accepted steps", found.grid[-1], accepted
            )
        ys, trajectory = grad_method.solve(dataclasses.replace(problem, callbacks=None))
        stats.num_accepted, stats.num_rejected = accepted, rejected
        return ys, trajectory, None, None
    hit, slope = search.hit, search.slope
    assert slope is not None  # set with the hit
    t0 = ts[0] if ts.is_floating_point() else ts[0].double()
    t_star = hit.t
    times = torch.stack([t0, torch.as_tensor(t_star, dtype=t0.dtype, device=t0.device)])
    steps: FixedSteps | AdaptiveSteps | RecordedSteps
    if not grad_method.exact:  # the continuous adjoint: its own adaptive steps, or the grid to t*
        fixed = isinstance(problem.steps, FixedSteps)
        steps = FixedSteps(grid=[*found.grid[:-1], t_star]) if fixed else problem.steps
    else:
        steps = RecordedSteps(
            grid=tuple(found.grid),
            out_index=(0, len(found.grid) - 1),
            anchors=tuple(found.anchors),
            interpolate=True,
            nudges=None if found.nudges is None else tuple(found.nudges),
        )
    again = dataclasses.replace(
        problem,
        t_out=[problem.t_out[0], t_star],
        steps=steps,
        t=times if problem.t is not None else None,
        callbacks=None,
    )
    ys, trajectory = grad_method.solve(again)
    stats.num_accepted, stats.num_rejected = accepted, rejected
    t_event, y_event = _implicit_gradient(problem, events[hit.index], hit, ys[-1], slope, times[1], search.spread)
    return torch.stack([ys[0], y_event]), trajectory, hit, t_event


def _implicit_gradient(problem: ODEProblem, event: Event, hit: EventHit, y_star, slope, t_star, spread: float):
    """The event time and state, carrying ``dt*/dp = -(dg/dp) / c`` (module docstring)."""
    t_value = t_star.detach()
    if not torch.is_grad_enabled():
        return t_value, y_star
    with torch.enable_grad():
        time = problem.time(hit.t).requires_grad_()
        y = y_star.detach().requires_grad_()
        g = event.fn(time, problem.layout.unflatten(y)).reshape(-1)[hit.component]
        g_t, g_y = torch.autograd.grad(g, (time, y), allow_unused=True)
    c = (0.0 if g_t is None else float(g_t)) + (0.0 if g_y is None else float((g_y * slope).sum()))
    g = event.fn(problem.time(hit.t), problem.layout.unflatten(y_star)).reshape(-1)[hit.component]
    if not g.requires_grad:  # nothing the event time depends on requires grad
        return t_value, y_star
    if not math.isfinite(c) or abs(c) <= 1e-8 * spread:  # spread: the mean rate over the step
        raise ValueError(
            f"the event at t = {hit.t!r} is tangential: the time derivative of event function {hit.index} "
            f"(component {hit.component}) along the solution is {c!r} there (its mean over the step: {spread!r}), so "
            f"the event time has no derivative. "
            f"Use an event function that crosses zero with a nonzero slope, or detach what it depends on"
        )
    delta = _FirstOrder.apply(g - g.detach()) / c  # zero-valued; its gradient is -dt*/dp
    t_event = t_value - delta.to(t_value.dtype)
    return t_event, y_star - slope.to(y_star.dtype) * delta.to(y_star.dtype)


class _FirstOrder(torch.autograd.Function):
    """The identity, whose backward refuses ``create_graph=True`` (the event time's second
    derivative is not formed)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            raise RuntimeError(
                "double backward through an event time is not supported: its second derivative is not formed. "
                "Differentiate the event time once (no create_graph=True), or use a fixed end time"
            )
        return grad
