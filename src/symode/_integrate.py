"""The time loop: the only place that steps through time.

It takes steps with a tableau, accepts or rejects them, ends a step exactly on every output
time, or (dense output) steps freely to the last one and interpolates the others within the
steps that hold them (``symode._dense``), and records the accepted grid (and, on request, the
state at every grid point: the checkpoints of the symplectic adjoint). It knows nothing of
gradients: whether an autograd graph is built is the caller's choice (``torch.no_grad()``
around it or not). The step-size logic always runs without gradient.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ._dense import interpolate, interpolation_stages
from ._initial_step import initial_step
from ._random import RandomTape
from ._runge_kutta import rk_step
from ._stats import SolveError, Stats
from ._step_size import AdaptiveSteps, FixedSteps, Norm, RecordedSteps
from ._tableau import ButcherTableau

__all__ = ["Trajectory", "integrate"]


@dataclass
class Trajectory:
    """What the time loop recorded: the accepted steps and what was asked to be kept.

    Attributes:
        grid: the accepted step endpoints, Python floats, ``grid[0] = t0``; step ``n`` goes
            from ``grid[n]`` to ``grid[n + 1]``.
        out_index: the grid index of each output time (``grid[out_index[k]] == t_out[k]``);
            for an interpolated output, the end ``n + 1`` of the step ``n`` that holds it.
        outputs: the state at each output time (``outputs[0]`` is ``y0``).
        out_theta: per output time, ``None`` when it is a step end, else the fraction
            ``theta`` in (0, 1) of the step holding it at which it was interpolated (empty:
            no output was interpolated).
        derivatives: with ``keep_derivatives=True``, ``derivatives[n][i]`` is ``k_i`` of step
            ``n`` for the stages the continuous extension uses (``None`` for the others).
        nudges: per step, whether its start/end stages were evaluated just inside it (beside a
            ``jump_t`` discontinuity, or every step with ``perturb``); ``None``: no step was.
        ys: the state at every grid point (``keep_states=True``), else ``None``.
        stats: the counts of the solve.
        stages: with ``keep_stages=True``, ``stages[n][i]`` is the state of stage ``i`` of
            step ``n`` for the stages that influence the solution (``None`` for the others).
        anchors: ``anchors[n]`` is the index of the output time that grid point ``n`` moves
            with when the output times move (the steps being held fixed: a point inside an
            output interval moves with the interval's start, the end of a step clipped to an
            output time with that time), ``None`` for a fixed user grid point.
    """

    grid: list[float]
    out_index: list[int]
    outputs: list[torch.Tensor]
    ys: list[torch.Tensor] | None = None
    stats: Stats = field(default_factory=Stats)
    stages: list[list[torch.Tensor | None]] | None = None
    anchors: list[int | None] = field(default_factory=list)
    out_theta: list[float | None] = field(default_factory=list)
    derivatives: list[list[torch.Tensor | None]] | None = None
    nudges: list[tuple[bool, bool]] | None = None

    def nudge(self, n: int) -> tuple[bool, bool] | None:
        """Whether step ``n`` evaluated its start/end stages just inside it (``jump_t``,
        ``perturb``); ``None``: neither (``symode._runge_kutta.stage_time``)."""
        if self.nudges is None or self.nudges[n] == (False, False):
            return None
        return self.nudges[n]


class _DenseOutput:
    """Emits the output times that an accepted step reaches: the step's end, or interpolated
    within the step (``symode._dense.interpolate``)."""

    def __init__(self, tableau: ButcherTableau, t_out: Sequence[float], time_carriers, trajectory: Trajectory):
        if tableau.b_dense is None:
            raise ValueError(
                f"interpolated output times need a continuous extension: pass "
                f"symode._dense.interpolation_tableau({tableau.name}), not the tableau itself"
            )
        self.tableau, self.t_out, self.carriers, self.trajectory = tableau, t_out, time_carriers, trajectory
        self.direction = 1.0 if t_out[-1] > t_out[0] else -1.0
        self.k = 1  # the next output time
        trajectory.out_theta = [None]

    def step(self, t: float, t_next: float, y: torch.Tensor, y_next: torch.Tensor, ks, dts, stats: Stats) -> None:
        traj, t_out = self.trajectory, self.t_out
        while self.k < len(t_out) and self.direction * (t_out[self.k] - t_next) <= 0:
            target = t_out[self.k]
            if target == t_next:
                out, theta = y_next, None
            else:
                theta = (target - t) / (t_next - t)
                carrier = None if self.carriers is None else self.carriers[self.k]
                out = interpolate(self.tableau, y, t_next - t, theta, ks, dts, carrier)
                _check_finite(out, target, stats)
            traj.outputs.append(out)
            traj.out_index.append(len(traj.grid) - 1)
            traj.out_theta.append(theta)
            self.k += 1


def _check_finite(y: torch.Tensor, t: float, stats: Stats) -> None:
    if not bool(torch.isfinite(y).all()):
        raise SolveError(
            f"the state became non-finite (inf or nan) by t = {t!r}, after {stats.num_accepted} "
            f"accepted steps; f may blow up there, or the steps may be too large for stability "
            f"(try a smaller step_size or an adaptive method)",
            t,
            stats.num_accepted,
        )


def _check_progress(
    y: torch.Tensor, y_next: torch.Tensor, ks: Sequence[torch.Tensor | None], t: float, t_next: float, stats: Stats
) -> None:
    """A float16/bfloat16 step that leaves the state exactly as it was while ``f`` is not zero:
    the increments round away, and the solve would silently return (nearly) ``y0``."""
    with torch.no_grad():
        if torch.equal(y_next, y) and any(k is not None and bool(k.ne(0).any()) for k in ks):
            raise SolveError(
                f"the step from t = {t!r} to t = {t_next!r} left the {str(y.dtype).replace('torch.', '')} state "
                f"unchanged although f is not zero there: its increments are below what the dtype resolves "
                f"(after {stats.num_accepted} accepted steps). Take larger steps (a larger step_size, or looser "
                f"rtol/atol), or solve in float32 (y0.float())",
                t,
                stats.num_accepted,
            )


def integrate(
    rhs: Callable[..., torch.Tensor],
    y0: torch.Tensor,
    t_out: Sequence[float],
    tableau: ButcherTableau,
    steps: FixedSteps | AdaptiveSteps | RecordedSteps,
    *,
    rtol: float | torch.Tensor | None = None,
    atol: float | torch.Tensor | None = None,
    norm: Norm | None = None,
    keep_states: bool = False,
    keep_stages: bool = False,
    keep_derivatives: bool = False,
    stats: Stats | None = None,
    f0: torch.Tensor | None = None,
    time_carriers: Sequence[torch.Tensor] | None = None,
    step: Callable[..., Any] | None = None,
    tape: RandomTape | None = None,
    callbacks: Any = None,
    until: Callable[..., bool] | None = None,
) -> Trajectory:
    """Solve from ``y0`` at ``t_out[0]`` through the output times ``t_out``.

    ``rhs(t, y)`` takes a float time; ``rtol``/``atol`` (floats or tensors shaped like
    ``y0``) and ``norm`` are needed for adaptive steps. With ``AdaptiveSteps(interpolate=True)``
    (and ``RecordedSteps`` of such a solve) the steps go freely to ``t_out[-1]`` and the other
    output times are interpolated: ``tableau`` must then carry ``b_dense``
    (``symode._dense.interpolation_tableau``). ``keep_states``/``keep_stages``
    record the state/the stage states at every accepted step, ``keep_derivatives`` the stage
    derivatives the continuous extension uses (``symode._dense_solution``). ``time_carriers[k]``: a
    zero-valued tensor carrying the gradient of ``t_out[k]`` into the graph (see
    ``symode._runge_kutta``), for backpropagation with respect to the output times. ``f0 = rhs(t_out[0], y0)`` may be
    passed if already evaluated. ``step``: takes the steps instead of
    ``rk_step(rhs, tableau, ...)``, with its signature (``symode._compiled.CompiledStep``).
    ``tape``: told when each trial step starts and ends, to record the random generators'
    states (``symode._random``; ``rhs`` is then ``tape.recording(...)``). ``callbacks``: an
    object with ``step(t, y, h)``, ``accept(t, y, h)`` and ``reject(t, y, h)`` (torchdiffeq's
    step callbacks, ``symode._ivp``), told of every trial step (fixed steps: ``step`` only).
    ``until(t, t_next, y, y_next, ks)``: asked after every accepted step (``ks``: its stage
    derivatives, those of the continuous extension included); the solve ends there when it
    returns true (``symode._events``: the step holds an event).
    Raises ``SolveError`` if the solve cannot succeed.
    """
    stats = Stats() if stats is None else stats
    low_precision = y0.dtype in (torch.float16, torch.bfloat16)  # the dtypes whose steps can round away
    if step is None:
        step = functools.partial(rk_step, rhs, tableau)
    t = float(t_out[0])
    y = y0
    traj = Trajectory([t], [0], [y0], [y0] if keep_states else None, stats, [] if keep_stages else None, [0])
    grid, ys, outputs, out_index, stages, anchors = (
        traj.grid,
        traj.ys,
        traj.outputs,
        traj.out_index,
        traj.stages,
        traj.anchors,
    )
    fsal = tableau.fsal
    derivatives = traj.derivatives = [] if keep_derivatives else None
    carrier_zero = None if time_carriers is None else torch.zeros_like(time_carriers[0])
    dense = None
    kept_stages = tableau.solution_stages  # the stage states keep_stages keeps
    interpolated = interpolation_stages(tableau) if keep_derivatives else ()
    if getattr(steps, "interpolate", False) and len(t_out) > 1:
        dense = _DenseOutput(tableau, t_out, time_carriers, traj)
        kept_stages = interpolation_stages(tableau)

    def carriers(a: int | None, b: int | None):
        if time_carriers is None:
            return None
        return (carrier_zero if a is None else time_carriers[a], carrier_zero if b is None else time_carriers[b])

    def accept(t_next: float, y_next: torch.Tensor, Ys, ks, anchor: int | None, nudge=None) -> None:
        stats.num_accepted += 1
        if nudge is not None:
            if traj.nudges is None:
                traj.nudges = [(False, False)] * (len(grid) - 1)
            traj.nudges.append(nudge)
        elif traj.nudges is not None:
            traj.nudges.append((False, False))
        if derivatives is not None:
            derivatives.append([ks[i] if i in interpolated else None for i in range(len(ks))])
        grid.append(t_next)
        anchors.append(anchor)
        if ys is not None:  # keep_states
            ys.append(y_next)
        if stages is not None:  # keep_stages
            stages.append([Ys[i] if i in kept_stages else None for i in range(len(Ys))])

    if isinstance(steps, (FixedSteps, RecordedSteps)):
        points, idx, point_anchors = steps.plan(t_out)
        holds = set(idx) if dense is not None else set()  # the ends of the steps that hold an output
        perturb = isinstance(steps, FixedSteps) and steps.perturb
        recorded_nudges = steps.nudges if isinstance(steps, RecordedSteps) else None
        k1 = f0
        for n, t_next in enumerate(points[1:]):
            nudge = (True, True) if perturb else None if recorded_nudges is None else recorded_nudges[n]
            if nudge is not None and nudge[0]:
                k1 = None  # f just after the start: evaluated, not reused
            y_prev = y
            if tape is not None:
                tape.try_started(k1 is not None)
            dts = carriers(point_anchors[n], point_anchors[n + 1])
            extra: dict[str, Any] = {}
            if n + 1 in holds or keep_derivatives or (until is not None and tableau.b_dense is not None):
                extra["stages"] = interpolation_stages(tableau)
            if nudge is not None and nudge != (False, False):
                extra["nudge"] = nudge
            if callbacks is not None:
                callbacks.step(t, y, t_next - t)
            y, _, ks, Ys = step(t, t_next, y, k1, with_error=False, keep_stage_states=keep_stages, dts=dts, **extra)
            if low_precision:
                _check_progress(y_prev, y, ks, t, t_next, stats)
            if tape is not None:
                tape.try_ended(True, fsal)
            k1 = ks[-1] if fsal else None
            accept(t_next, y, Ys, ks, point_anchors[n + 1], nudge)
            if dense is not None:
                dense.step(t, t_next, y_prev, y, ks, dts, stats)
            elif len(grid) - 1 == idx[len(outputs)]:
                _check_finite(y, t_next, stats)
                outputs.append(y)
                out_index.append(len(grid) - 1)
            if until is not None and until(t, t_next, y_prev, y, ks):
                return traj
            t = t_next
            del ks, Ys, y_prev  # not alive during the next step
        if dense is not None:
            _check_finite(y, t, stats)
        return traj

    # adaptive steps ---------------------------------------------------------------------
    tableau.check_adaptive()
    if rtol is None or atol is None or norm is None:
        raise ValueError("adaptive steps need rtol, atol and norm")
    _check_finite(y0, t, stats)
    direction = 1.0 if t_out[-1] > t_out[0] else -1.0
    error_order = tableau.error_order
    assert error_order is not None  # an adaptive tableau has one (ButcherTableau checks it)
    exponent = error_order + 1
    if f0 is not None:
        k1 = f0
    else:
        k1 = rhs(t, y0) if time_carriers is None else rhs(t, y0, time_carriers[0])
    with torch.no_grad():
        if steps.first_step is not None:
            h = steps.first_step
        else:
            h = initial_step(
                rhs,
                t,
                y0.detach(),
                k1.detach(),
                direction,
                error_order,
                rtol,
                atol,
                norm,
                abs(t_out[-1] - t_out[0]),
            )
    prev_ratio = prev_prev_ratio = 1.0
    after_reject = False
    # steps forced to end on these times (options["step_t"]), inside the span, in the direction of the solve
    jumps = set(steps.jump_t)
    forced = sorted(
        (v for v in (*steps.step_t, *steps.jump_t) if direction * (v - t) > 0 and direction * (t_out[-1] - v) > 0),
        key=lambda v: direction * v,
    )
    next_forced = 0
    after_jump = False  # the step starts on a jump_t discontinuity
    ratio: float | None = None  # the last step's error ratio (None: no step tried yet)
    # the stretches the steps are clipped to end on: every output interval, or with dense output the whole span
    # (a step inside it moves with t[0] when the output times move; the last, clipped to t[-1], with it)
    last = len(t_out) - 1
    targets = list(enumerate(t_out[1:])) if dense is None else [(0, t_out[-1])]
    for k, target in targets:
        end_anchor = last if dense is not None else k + 1
        base_anchor: int | None = k  # what a step end inside the stretch moves with (None after a step_t point)
        while t != target:
            if stats.num_steps >= steps.max_num_steps:
                raise SolveError(
                    f"reached max_num_steps = {steps.max_num_steps} at t = {t!r} "
                    f"({stats.num_accepted} accepted, {stats.num_rejected} rejected steps) before "
                    f"t = {target!r}; raise options['max_num_steps'] or loosen rtol/atol",
                    t,
                    stats.num_accepted,
                )
            if h <= 4 * math.ulp(abs(t)) or not math.isfinite(h):  # t + h would not move t
                if ratio is None:
                    cause = "no step was tried: the first step is below what t resolves; give a larger first_step. "
                elif not math.isfinite(ratio):
                    cause = "the state or f became non-finite there. "
                else:
                    cause = "the problem may be stiff or singular there, or rtol/atol too tight. "
                raise SolveError(
                    f"step size underflow (h = {h!r}) at t = {t!r}, after {stats.num_accepted} accepted "
                    f"and {stats.num_rejected} rejected steps (last error ratio {ratio!r}); " + cause,
                    t,
                    stats.num_accepted,
                )
            h = steps.clamp(h)
            t_next = t + direction * h
            stop = target
            while next_forced < len(forced) and direction * (forced[next_forced] - t) <= 0:
                next_forced += 1
            if next_forced < len(forced) and direction * (forced[next_forced] - target) < 0:
                stop = forced[next_forced]
            clipped = direction * (stop - t_next) <= 0.01 * h
            if clipped:
                t_next = stop
            on_forced = clipped and stop != target
            on_jump = on_forced and stop in jumps
            nudge = (after_jump, on_jump) if (after_jump or on_jump) else None
            if tape is not None:
                tape.try_started(k1 is not None)
            if callbacks is not None:
                callbacks.step(t, y, t_next - t)
            next_anchor = (None if on_forced else end_anchor) if clipped else base_anchor
            dts = carriers(anchors[-1], next_anchor)
            nudged = {} if nudge is None else {"nudge": nudge}
            y_next, err, ks, Ys = step(t, t_next, y, k1, keep_stage_states=keep_stages, dts=dts, **nudged)
            with torch.no_grad():
                scale = atol + rtol * torch.maximum(y.detach().abs(), y_next.detach().abs())
                ratio = float(norm(err.detach() / scale))
            h_proposed, h_taken = h, abs(t_next - t)
            accepted = ratio <= 1.0 or h_taken <= steps.min_step  # torchdiffeq's min_step: such a step is taken
            if tape is not None:
                tape.try_ended(accepted, fsal)
            factor = steps.factor(ratio, prev_ratio, exponent, accepted, after_reject, prev_prev_ratio)
            h = h_taken * factor
            if accepted:
                if low_precision:
                    _check_progress(y, y_next, ks, t, t_next, stats)
                if callbacks is not None:
                    callbacks.accept(t, y, t_next - t)
                accept(t_next, y_next, Ys, ks, next_anchor, nudge)
                if on_forced:
                    base_anchor = None
                if dense is not None:
                    dense.step(t, t_next, y, y_next, ks, dts, stats)
                if until is not None and until(t, t_next, y, y_next, ks):
                    return traj
                t, y = t_next, y_next
                k1 = ks[-1] if fsal and not on_jump else None  # after a jump, f is evaluated on its far side
                after_jump = on_jump
                prev_prev_ratio, prev_ratio = prev_ratio, max(ratio, 1e-4)
                after_reject = False
                if clipped:  # a step shortened to meet an output time says little of the next
                    h = max(h, min(h_proposed, h_taken * steps.ifactor))
            else:
                if callbacks is not None:
                    callbacks.reject(t, y, t_next - t)
                stats.num_rejected += 1
                after_reject = True
                k1 = ks[0]  # same (t, y): the retry reuses its first stage
            del ks, Ys, err, y_next, scale  # not alive during the next try
        _check_finite(y, t, stats)
        if dense is None:
            outputs.append(y)
            out_index.append(len(grid) - 1)
    return traj
