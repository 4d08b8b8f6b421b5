"""Step-size selection: fixed steps and adaptive (I / PI) control.

Step sizes are constants of every gradient method: everything here runs on Python floats
and detached tensors, under ``torch.no_grad()``, and is never differentiated. That is what
makes "an exact gradient method equals backprop through the solver" hold to round-off.

Times are Python floats (float64) here; see ``symode.solve`` for the dtype policy.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ._checks import check_bool, check_tolerance, is_real, optional_positive_float, positive_float, positive_int
from ._stats import SolveError

__all__ = [
    "FixedSteps",
    "AdaptiveSteps",
    "RecordedSteps",
    "StepPlan",
    "rms_norm",
    "mixed_rms_norm",
    "DEFAULT_RTOL",
    "DEFAULT_ATOL",
    "Norm",
    "Tolerance",
]

#: The default tolerances of adaptive steps (torchdiffeq's), everywhere in symode.
DEFAULT_RTOL = 1e-7
DEFAULT_ATOL = 1e-9
#: The default limit on the steps of one solve, fixed or adaptive.
DEFAULT_MAX_NUM_STEPS = 100_000

Norm = Callable[[torch.Tensor], torch.Tensor]
#: A step plan: the step endpoints (``t[0]`` first), the grid index of each output time and,
#: per endpoint, the index of the output time it moves with (``None``: a fixed grid point).
StepPlan = tuple[list[float], list[int], list[int | None]]
#: A tolerance: a positive number, a tensor broadcastable to the state, or (tuple states) a
#: tuple of them, one per component.
Tolerance = float | torch.Tensor | Sequence[float | torch.Tensor]


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    """Root mean square of all entries."""
    return x.pow(2).mean().sqrt()


def mixed_rms_norm(sizes: Sequence[int]) -> Norm:
    """For a flat state made of tuple components of ``sizes``: the max of their RMS norms
    (as torchdiffeq does for tuple states, so that a small component is not drowned)."""
    sizes = [int(s) for s in sizes]

    def norm(x: torch.Tensor) -> torch.Tensor:
        return torch.stack([rms_norm(part) for part in torch.split(x.reshape(-1), sizes)]).max()

    return norm


# --------------------------------------------------------------------------------------
@dataclass(frozen=True, init=False)
class FixedSteps:
    """Fixed steps: ``step_size`` steps per output interval, or a user ``grid``.

    With ``step_size=h`` each interval between consecutive output times is crossed in steps
    of ``h``; the last step of an interval is shortened to end exactly on the output time
    (a remainder below 1e-9 of ``h`` is absorbed instead of taking a sliver of a step).
    With ``grid`` the steps end at the grid points and at every output time; the grid must
    start at ``t[0]`` and end at ``t[-1]``. ``grid`` may be given as a 1-D tensor or any
    sequence of times; it is stored as a tuple of floats. More than ``max_num_steps`` steps
    is an error, raised before any step is taken (or any list of times built).

    ``interp="linear"`` or ``"cubic"`` (torchdiffeq's fixed-grid behaviour): the steps ignore
    the output times (with ``step_size``: one grid of steps of ``h`` from ``t[0]``, the last
    shortened to end on ``t[-1]``; with ``grid``: the grid itself) and each output time is
    interpolated within the step that holds it, linearly between the step's ends or with the
    cubic Hermite interpolant through them and their derivatives. ``perturb=True``
    (torchdiffeq's ``perturb``): every step evaluates ``f`` just after its start and just before
    its end, so that a discontinuity of ``f`` at a grid point is seen from the step's side.
    """

    step_size: float | None = None
    grid: tuple[float, ...] | None = None
    max_num_steps: int = DEFAULT_MAX_NUM_STEPS
    interp: str | None = None
    perturb: bool = False

    def __init__(
        self,
        step_size: float | None = None,
        grid: Sequence[float] | torch.Tensor | None = None,
        max_num_steps: int = DEFAULT_MAX_NUM_STEPS,
        interp: str | None = None,
        perturb: bool = False,
    ) -> None:
        object.__setattr__(self, "max_num_steps", positive_int(max_num_steps, "max_num_steps"))
        object.__setattr__(self, "perturb", check_bool(perturb, "perturb"))
        if interp is not None and interp not in ("linear", "cubic"):
            raise ValueError(
                f"interp must be 'linear' or 'cubic' (or None: every output time ends a step), got {interp!r}"
            )
        object.__setattr__(self, "interp", interp)
        if (step_size is None) == (grid is None):
            raise ValueError(
                "fixed steps need exactly one of step_size (e.g. options={'step_size': 0.01}) "
                f"or grid; got step_size={step_size!r}, grid={grid!r}"
            )
        if step_size is not None:
            # positive: the direction of the steps is that of t
            object.__setattr__(self, "step_size", positive_float(step_size, "step_size"))
            object.__setattr__(self, "grid", None)
        else:
            assert grid is not None  # exactly one of the two is given (checked above)
            times: Sequence[float] | torch.Tensor = grid
            if isinstance(times, torch.Tensor):
                if times.ndim != 1:
                    raise ValueError(f"grid must be a 1-D tensor of times, got shape {tuple(times.shape)}")
                times = times.detach().cpu().double().tolist()
            try:
                points = tuple(float(g) for g in times)
            except TypeError:
                raise TypeError(f"grid must be a 1-D tensor or sequence of times, got {grid!r}") from None
            if len(points) < 2 or not all(math.isfinite(g) for g in points):
                raise ValueError(f"grid must hold at least two finite times, got {points!r}")
            diffs = [b - a for a, b in zip(points, points[1:])]
            if not (all(d > 0 for d in diffs) or all(d < 0 for d in diffs)):
                raise ValueError("grid must be strictly increasing or strictly decreasing")
            object.__setattr__(self, "step_size", None)
            object.__setattr__(self, "grid", points)

    @property
    def interpolate(self) -> bool:
        """Whether output times are interpolated (``interp``) rather than step ends."""
        return self.interp is not None

    def plan(self, t_out: Sequence[float]) -> StepPlan:
        """The step endpoints (``t_out[0]`` first), the grid index of each output time and,
        per endpoint, the index of the output time it moves with (``None``: a fixed point
        of a user grid). With ``step_size`` a point ``t_k + i h`` moves with ``t_k``. With
        ``interp``: the steps ignore the output times; the index of an output is that of the
        end of the step that holds it; the interior points are fixed."""
        if self.interp is not None and len(t_out) > 1:
            return self._interp_plan(t_out)
        if self.step_size is not None:
            h = self.step_size
            counts = [max(1, math.ceil(abs(b - a) / h - 1e-9)) for a, b in zip(t_out, t_out[1:])]
            self._check_count(sum(counts), t_out, f"step_size={h!r}")
            points = [t_out[0]]
            out_idx = [0]
            anchors: list[int | None] = [0]
            for k, ((a, b), n) in enumerate(zip(zip(t_out, t_out[1:]), counts)):
                d = 1.0 if b > a else -1.0
                points.extend(a + d * i * h for i in range(1, n))
                anchors.extend([k] * (n - 1))
                points.append(b)
                anchors.append(k + 1)
                out_idx.append(len(points) - 1)
            return points, out_idx, anchors
        grid = self.grid
        assert grid is not None
        self._check_count(
            len(set(grid) | set(t_out)) - 1, t_out, "grid"
        )  # exactly one of step_size and grid is set (__init__)
        if grid[0] != t_out[0] or grid[-1] != t_out[-1]:
            raise ValueError(
                f"grid must start at t[0] = {t_out[0]!r} and end at t[-1] = {t_out[-1]!r}; "
                f"got {grid[0]!r} .. {grid[-1]!r}"
            )
        if (grid[-1] - grid[0] > 0) != (t_out[-1] - t_out[0] > 0):
            raise ValueError("grid must run in the same direction as t")
        sign = 1.0 if t_out[-1] > t_out[0] else -1.0
        points = sorted(set(grid) | set(t_out), key=lambda v: sign * v)
        index = {p: i for i, p in enumerate(points)}
        outputs = {t: k for k, t in enumerate(t_out)}
        return points, [index[t] for t in t_out], [outputs.get(p) for p in points]

    def _interp_plan(self, t_out: Sequence[float]) -> StepPlan:
        t0, t1 = t_out[0], t_out[-1]
        sign = 1.0 if t1 > t0 else -1.0
        if self.step_size is not None:
            n = max(1, math.ceil(abs(t1 - t0) / self.step_size - 1e-9))
            self._check_count(n, t_out, f"step_size={self.step_size!r}")
            points = [t0 + sign * i * self.step_size for i in range(n)] + [t1]
        else:
            assert self.grid is not None
            points = list(self.grid)
            self._check_count(len(points) - 1, t_out, "grid")
            if points[0] != t0 or points[-1] != t1:
                raise ValueError(
                    f"grid must start at t[0] = {t0!r} and end at t[-1] = {t1!r}; got {points[0]!r} .. {points[-1]!r}"
                )
        idx = [0] + [next(i for i, p in enumerate(points) if i > 0 and sign * (p - t) >= 0) for t in t_out[1:]]
        anchors: list[int | None] = [0] + [None] * (len(points) - 2) + [len(t_out) - 1]
        return points, idx, anchors

    def _check_count(self, num_steps: int, t_out: Sequence[float], what: str) -> None:
        if num_steps > self.max_num_steps:
            raise SolveError(
                f"{what} takes {num_steps} steps from t = {t_out[0]!r} to t = {t_out[-1]!r}, more than "
                f"max_num_steps = {self.max_num_steps}; raise max_num_steps (options['max_num_steps']) or take "
                f"larger steps",
                t_out[0],
                0,
            )


@dataclass(frozen=True)
class RecordedSteps:
    """Replay the accepted steps of an earlier solve (its ``Trajectory``): the grid, the
    output indices and the anchors of the grid points (what moves with the output times)."""

    grid: tuple[float, ...]
    out_index: tuple[int, ...]
    anchors: tuple[int | None, ...]
    #: the solve interpolated its output times (``Trajectory.out_theta``): so does the replay
    interpolate: bool = False
    #: per step, whether its start/end stages were evaluated just inside it (``Trajectory.nudges``)
    nudges: tuple[tuple[bool, bool], ...] | None = None

    def plan(self, t_out: Sequence[float]) -> StepPlan:
        return list(self.grid), list(self.out_index), list(self.anchors)


# --------------------------------------------------------------------------------------
_CONTROLLERS = {"pi": (0.3, 0.4), "i": (1.0, 0.0)}  # name -> (icoeff, pcoeff)
#: the PID controller's default gains (icoeff, pcoeff, dcoeff): Söderlind's H312PID, as in diffrax's docs
_PID_GAINS = (1.0 / 9.0, 1.0 / 18.0, 1.0 / 18.0)


@dataclass(frozen=True)
class AdaptiveSteps:
    """Adaptive steps from an embedded error estimate.

    A step is accepted when ``||err / (atol + rtol * max(|y_n|, |y_{n+1}|))|| <= 1`` in the
    RMS norm (for tuple states: the largest RMS over the components). The next step is
    ``h * clip(safety * r_n**(-(icoeff + pcoeff)/k) * r_{n-1}**(pcoeff/k), dfactor, ifactor)``
    with ``k = error_order + 1`` and ``r`` the error ratios of the last two accepted steps:
    ``controller="i"`` (the default, as in torchdiffeq, scipy, torchode and diffrax) is the
    classic integral controller (icoeff 1, pcoeff 0); ``"pi"`` uses Hairer's PI gains (0.3,
    0.4), smoother where the step size oscillates but slower to grow the step on easy stretches
    (about 5 steps where the integral controller takes 3 on ``symode bench``'s default
    problem). After a rejection the step shrinks by
    ``max(dfactor, safety * r**(-1/k))`` and does not grow on the next accepted step.

    ``rtol``/``atol`` are positive scalars or tensors broadcastable to the state (a tuple of
    them for tuple states). ``first_step`` overrides the initial step heuristic
    (Hairer, Norsett & Wanner, Solving ODEs I, II.4). More than ``max_num_steps`` attempted
    steps is an error.

    ``min_step``/``max_step`` bound every step (torchdiffeq's options: a step of ``min_step``
    is taken whatever its error); ``step_t``: times every step must end on (torchdiffeq's
    ``step_t``; they are not outputs); ``jump_t``: discontinuities of ``f`` in time, where a
    step ends too, the step before evaluating ``f`` just before the jump and the step after it
    just after (the first stage is evaluated again rather than reused; torchdiffeq's
    ``jump_t``); ``norm``: the error norm, a callable on the state (a tuple state is handed to
    it as a tuple) returning a scalar, instead of the RMS norm.
    ``controller="pid"``: the PID controller with gains ``pcoeff``, ``icoeff``, ``dcoeff``
    (default Söderlind's H312PID, 1/18, 1/9, 1/18; diffrax's and torchode's parametrisation:
    the factor is ``r_n^(-(i+p+d)/k) r_{n-1}^((p+2d)/k) r_{n-2}^(-d/k)``).

    ``interpolate=True`` (the default, as torchdiffeq, scipy, diffrax and torchode do): the
    steps go freely from ``t[0]`` to ``t[-1]`` (the last one clipped to end there) and the
    other output times are interpolated within the steps that hold them, with the method's
    continuous extension (dense output), so the cost does not depend on how many output times
    are asked for. ``interpolate=False``: every output time ends a step (the outputs are step
    ends; more steps when the output times are dense).
    """

    rtol: Tolerance = DEFAULT_RTOL
    atol: Tolerance = DEFAULT_ATOL
    first_step: float | None = None
    controller: str = "i"
    safety: float = 0.9
    ifactor: float = 10.0
    dfactor: float = 0.2
    max_num_steps: int = DEFAULT_MAX_NUM_STEPS
    interpolate: bool = True
    min_step: float = 0.0
    max_step: float = math.inf
    step_t: tuple[float, ...] = ()
    jump_t: tuple[float, ...] = ()
    pcoeff: float | None = None
    icoeff: float | None = None
    dcoeff: float | None = None
    norm: Callable[[Any], Any] | None = None

    def __post_init__(self) -> None:
        check_bool(self.interpolate, "interpolate")
        if self.norm is not None and not callable(self.norm):
            raise TypeError(f"norm must be a callable (state -> scalar tensor), got {self.norm!r}")
        self._check_limits()
        self._check_gains()
        check_tolerance(self.rtol, "rtol")
        check_tolerance(self.atol, "atol")
        object.__setattr__(self, "first_step", optional_positive_float(self.first_step, "first_step"))
        if not isinstance(self.controller, str) or self.controller.lower() not in (*_CONTROLLERS, "pid"):
            raise ValueError(f"controller must be one of {sorted((*_CONTROLLERS, 'pid'))}, got {self.controller!r}")
        object.__setattr__(self, "controller", self.controller.lower())
        safety = positive_float(self.safety, "safety")
        if safety > 1:
            raise ValueError(f"safety must be in (0, 1], got {safety!r}")
        ifactor = positive_float(self.ifactor, "ifactor")
        dfactor = positive_float(self.dfactor, "dfactor")
        if ifactor <= 1:
            raise ValueError(f"ifactor (largest growth of a step) must be > 1, got {ifactor!r}")
        if dfactor >= 1:
            raise ValueError(f"dfactor (largest shrink of a step) must be < 1, got {dfactor!r}")
        object.__setattr__(self, "max_num_steps", positive_int(self.max_num_steps, "max_num_steps"))
        object.__setattr__(self, "safety", safety)
        object.__setattr__(self, "ifactor", ifactor)
        object.__setattr__(self, "dfactor", dfactor)

    def _check_limits(self) -> None:
        for name in ("min_step", "max_step"):
            value = getattr(self, name)
            if not is_real(value) or not float(value) >= 0.0 or math.isnan(float(value)):
                raise ValueError(f"{name} must be a non-negative number, got {value!r}")
            object.__setattr__(self, name, float(value))
        if self.max_step == 0.0 or self.min_step > self.max_step or math.isinf(self.min_step):
            raise ValueError(
                f"need 0 <= min_step <= max_step, max_step > 0 and a finite min_step; got min_step={self.min_step!r}, "
                f"max_step={self.max_step!r}"
            )
        for name in ("step_t", "jump_t"):
            times = getattr(self, name)
            if isinstance(times, torch.Tensor):
                times = times.detach().reshape(-1).cpu().double().tolist()
            try:
                points = tuple(sorted({float(v) for v in times}))
            except TypeError:
                raise TypeError(f"{name} must be a 1-D tensor or sequence of times, got {times!r}") from None
            if not all(math.isfinite(v) for v in points):
                raise ValueError(f"{name} must hold finite times, got {points!r}")
            object.__setattr__(self, name, points)
        both = sorted(set(self.step_t) & set(self.jump_t))
        if both:
            raise ValueError(f"step_t and jump_t must not share times (as in torchdiffeq), got {both} in both")

    def _check_gains(self) -> None:
        given = [g is not None for g in (self.pcoeff, self.icoeff, self.dcoeff)]
        if any(given) and self.controller.lower() != "pid":
            raise ValueError(
                f"pcoeff/icoeff/dcoeff set the gains of controller='pid'; got controller={self.controller!r}"
            )
        for name in ("pcoeff", "icoeff", "dcoeff"):
            value = getattr(self, name)
            if value is not None and not (is_real(value) and math.isfinite(float(value))):
                raise ValueError(f"{name} must be a finite number, got {value!r}")

    @property
    def gains(self) -> tuple[float, float, float]:
        """``(icoeff, pcoeff, dcoeff)`` of the controller."""
        if self.controller == "pid":
            i, p, d = _PID_GAINS
            return (
                i if self.icoeff is None else float(self.icoeff),
                p if self.pcoeff is None else float(self.pcoeff),
                d if self.dcoeff is None else float(self.dcoeff),
            )
        return (*_CONTROLLERS[self.controller], 0.0)

    def factor(
        self, ratio: float, prev_ratio: float, k: int, accepted: bool, after_reject: bool, prev_prev_ratio: float = 1.0
    ) -> float:
        """The factor by which to multiply the step just tried: ``safety * r_n^(-b1/k) *
        r_{n-1}^(-b2/k) * r_{n-2}^(-b3/k)`` with ``b1 = i + p + d``, ``b2 = -(p + 2 d)``, ``b3 = d``
        (the error ratios of the last three accepted steps)."""
        if not math.isfinite(ratio):
            return self.dfactor
        if not accepted:
            return max(self.dfactor, self.safety * ratio ** (-1.0 / k))
        if ratio == 0.0:
            f = self.ifactor
        else:
            icoeff, pcoeff, dcoeff = self.gains
            f = self.safety * ratio ** (-(icoeff + pcoeff + dcoeff) / k) * prev_ratio ** ((pcoeff + 2 * dcoeff) / k)
            if dcoeff:
                f *= prev_prev_ratio ** (-dcoeff / k)
        f = min(self.ifactor, max(self.dfactor, f))
        return min(f, 1.0) if after_reject else f

    def clamp(self, h: float) -> float:
        """``h`` within ``[min_step, max_step]``."""
        return min(self.max_step, max(self.min_step, h))
